"""`fusioncli sweep --config FILE`: keys, overrides, --print-config, the saved sweep, bad files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
from sweep_fakes import FakeTrainer  # noqa: E402

from fusioncli.cli import app  # noqa: E402
from fusioncli.sweep.config_file import tomllib  # noqa: E402

runner = CliRunner()

SWEEP = """
strategies = ["late", "intermediate-add"]
lrs = [1e-3, 1e-4]
schedulers = "constant"
train-per-class = [4, "all"]
epochs = 2
limit-per-class = 8
cache-dir = "cache"
robustness = true
"""


@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch) -> FakeTrainer:
    trainer = FakeTrainer()
    monkeypatch.setattr("fusioncli.sweep.runner.train_run", trainer)
    return trainer


def _print(args: list[str]) -> dict:
    result = runner.invoke(app, ["sweep", *args, "--print-config"])
    assert result.exit_code == 0, result.stderr
    return tomllib.loads(result.stdout)


def test_the_file_sets_options_and_the_command_line_overrides_it(tmp_path: Path) -> None:
    (tmp_path / "sweep.toml").write_text(SWEEP)
    resolved = _print(["--config", str(tmp_path / "sweep.toml"), "--epochs", "1", "--lrs", "1e-2"])
    assert resolved["strategies"] == ["late", "intermediate-add"]
    assert resolved["lrs"] == [1e-2]  # the command line wins
    assert resolved["epochs"] == 1
    assert resolved["schedulers"] == ["constant"] and resolved["train-per-class"] == [4, "all"]
    assert resolved["limit-per-class"] == 8 and resolved["robustness"] is True
    assert resolved["cache-dir"] == str(tmp_path / "cache")  # relative to the file
    assert resolved["seeds"] == [51] and resolved["backend"] == "local"  # defaults are spelled out
    assert not (tmp_path / "cache").exists()  # nothing planned, nothing trained


def test_print_config_alone_prints_the_defaults(tmp_path: Path) -> None:
    resolved = _print(["--cache-dir", str(tmp_path), "--results-dir", str(tmp_path / "r")])
    assert resolved["lrs"] == [1e-4, 1e-5, 1e-6] and resolved["epochs"] == 15
    assert not (tmp_path / "r").exists()


def test_a_sweep_saves_its_resolved_file_which_reproduces_it(
    cache_dir: Path, tmp_path: Path, fake_training: FakeTrainer
) -> None:
    results = tmp_path / "results"
    (tmp_path / "sweep.toml").write_text(
        f'strategies = ["late"]\nlrs = [1e-3]\nschedulers = ["constant"]\nepochs = 1\nseeds = [1, 2]\n'
        f'cache-dir = "{cache_dir}"\nresults-dir = "{results}"\n'
    )
    result = runner.invoke(app, ["sweep", "--config", str(tmp_path / "sweep.toml")])
    assert result.exit_code == 0, result.stderr
    assert len(fake_training.calls) == 2
    (saved,) = (results / "sweeps").glob("*.toml")
    assert str(saved) in result.stderr
    again = runner.invoke(app, ["sweep", "--config", str(saved)])
    assert again.exit_code == 0, again.stderr
    assert len(fake_training.calls) == 2  # the same sweep: every run already finished
    assert list((results / "sweeps").glob("*.toml")) == [saved]  # and the same resolved file
    printed = runner.invoke(app, ["sweep", "--config", str(saved), "--print-config"])
    assert printed.stdout == saved.read_text()


def test_bad_files_exit_2_one_line_per_problem_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('epochs = "many"\nfoo = 1\nmax-group = [1, 2]\nlrs = [1e-3]\n')
    result = runner.invoke(app, ["sweep", "--config", str(path), "--print-config"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 3 and all(str(path) in line for line in lines)
    assert "epochs" in lines[0] and "'foo'" in lines[1] and "max-group" in lines[2]
    assert result.stdout == "" and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "text, message",
    [("lrs = [", "not valid TOML"), ("[grid]\nlrs = [1e-3]\n", "[grid]: tables are not sweep options")],
)
def test_unreadable_files_exit_2(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    result = runner.invoke(app, ["sweep", "--config", str(path), "--print-config"])
    assert result.exit_code == 2 and message in result.stderr and str(path) in result.stderr
    missing = runner.invoke(app, ["sweep", "--config", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2 and "none.toml" in missing.stderr


def test_values_checked_by_the_sweep_are_bad_usage_too(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('lrs = [1e-3, -1]\nstrategies = ["late", "nope"]\n')
    result = runner.invoke(app, ["sweep", "--config", str(path), "--print-config", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--lrs" in result.stderr and "'nope'" in result.stderr
