"""Shell completion (`fusioncli --install-completion`): commands, options and values complete."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fusioncli.cli import app


def complete(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], line: str) -> list[str]:
    """What bash completion offers for the last word of ``line`` (the way the shell asks)."""
    words = line.split(" ")
    monkeypatch.setenv("_FUSIONCLI_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", line)
    monkeypatch.setenv("COMP_CWORD", str(len(words) - 1))
    with pytest.raises(SystemExit):
        app(prog_name="fusioncli")
    return capsys.readouterr().out.split()


def test_commands_complete(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert complete(monkeypatch, capsys, "fusioncli sw") == ["sweep"]
    assert set(complete(monkeypatch, capsys, "fusioncli ")) >= {"synth", "prepare", "train", "sweep", "report"}


def test_options_complete(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert complete(monkeypatch, capsys, "fusioncli sweep --sch") == ["--schedulers"]
    assert "--modality-dropout" in complete(monkeypatch, capsys, "fusioncli train --mod")


def test_strategy_names_complete(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from fusioncli.models import strategy_names

    offered = complete(monkeypatch, capsys, "fusioncli train --strategy in")
    assert offered == [n for n in strategy_names() if n.startswith("in")] and len(offered) == 3


def test_comma_lists_complete_their_last_item(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    offered = complete(monkeypatch, capsys, "fusioncli sweep --strategies late,intermediate-a")
    assert offered == ["late,intermediate-add"]
    assert complete(monkeypatch, capsys, "fusioncli sweep --schedulers cosine,c") == ["cosine,constant"]


def test_choices_complete(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert complete(monkeypatch, capsys, "fusioncli train --precision ") == ["auto", "fp32", "bf16"]
    assert complete(monkeypatch, capsys, "fusioncli train --backbone l") == ["lab"]


def test_plugin_strategies_complete(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
    from plugin_sources import write_plugin

    from fusioncli.models.plugins import ENV_VAR, unload_plugins

    monkeypatch.setenv(ENV_VAR, str(write_plugin(tmp_path, name="tab-plugin")))
    try:
        assert complete(monkeypatch, capsys, "fusioncli sweep --strategies late,tab") == ["late,tab-plugin"]
    finally:
        unload_plugins()
