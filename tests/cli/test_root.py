"""The root command: help, version, `python -m fusioncli`, one-line errors."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from fusioncli import __version__
from fusioncli.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"fusioncli {__version__}"


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("synth", "prepare", "strategies", "train", "sweep", "report", "demo"):
        assert command in result.stdout


def test_every_command_has_help_with_an_example() -> None:
    for command in ("synth", "prepare", "strategies", "train", "sweep", "report", "demo"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, command
        # once in the usage line, at least once more in an example
        assert result.stdout.count("fusioncli " + command) >= 2, f"{command} --help shows no example"


def test_python_dash_m_runs_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fusioncli", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    assert __version__ in proc.stdout


def test_unknown_command_is_a_usage_error() -> None:
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2


def test_errors_are_one_line_each_with_brackets_kept_and_no_traceback() -> None:
    import typer

    from fusioncli.cli._common import report_errors
    from fusioncli.errors import BadInputError

    mini = typer.Typer()

    @mini.command()
    @report_errors
    def fail() -> None:
        raise BadInputError(["a/[x]/0001.png: truncated", "b.npy: not a .npy file"], hint="fix it")

    result = runner.invoke(mini, [])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: a/[x]/0001.png: truncated", "error: b.npy: not a .npy file", "hint: fix it"]
    assert "Traceback" not in result.output
