"""Strategy plugins: files, FUSIONCLI_PLUGINS, entry points; run ids, records and the contract check."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from plugin_sources import BROKEN_BUILD, BROKEN_IMPORT, PLAIN_LIST, write_plugin

from fusioncli.config import RunConfig, run_id
from fusioncli.errors import BadInputError, RunFailedError
from fusioncli.models import create_model, get_strategy, strategy_names
from fusioncli.models.check import check_strategy
from fusioncli.models.plugins import (
    ENTRY_POINT_GROUP,
    ENV_VAR,
    load_plugin_file,
    load_plugins,
    loaded_plugin_files,
    unload_plugins,
)
from fusioncli.record import RunRecord

FP = "0" * 64


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    unload_plugins()
    yield
    unload_plugins()


def test_a_plugin_file_registers_with_its_source(tmp_path: Path) -> None:
    path = write_plugin(tmp_path)
    source = load_plugin_file(path)
    spec = get_strategy("tiny-plugin")
    assert spec.plugin == source and source.file == str(path.resolve()) and len(source.sha256) == 64
    assert loaded_plugin_files() == [str(path.resolve())]
    model = create_model("tiny-plugin", "seed", 3)
    assert sum(p.numel() for p in model.parameters()) > 0
    load_plugin_file(path)  # unchanged: nothing happens (no duplicate-name error)
    assert strategy_names().count("tiny-plugin") == 1


def test_editing_a_plugin_changes_its_run_ids_not_the_builtins(tmp_path: Path) -> None:
    late = RunConfig(strategy="late", device="cpu", precision="fp32")
    before = run_id(late, FP)
    path = write_plugin(tmp_path)
    load_plugin_file(path)
    cfg = RunConfig(strategy="tiny-plugin", device="cpu", precision="fp32")
    first = run_id(cfg, FP)
    assert run_id(late, FP) == before  # a loaded plugin leaves the built-ins' ids alone
    path.write_text(path.read_text() + "\n# tuned\n")
    load_plugin_file(path)  # the edited file replaces its strategies
    assert run_id(cfg, FP) != first
    assert run_id(late, FP) == before


def test_records_name_the_plugin_and_round_trip(tmp_path: Path) -> None:
    source = load_plugin_file(write_plugin(tmp_path))
    cfg = RunConfig(strategy="tiny-plugin", device="cpu", precision="fp32")
    record = RunRecord.failed(cfg.to_dict(), run_id(cfg, FP), "boom", started_at=None, finished_at="now")
    assert record.plugin == source.to_json()
    again = RunRecord.from_json(record.to_json())
    assert again.plugin == source.to_json() and again.to_json() == record.to_json()
    builtin = RunRecord.failed(RunConfig().to_dict(), "x", "boom", started_at=None, finished_at="now")
    assert "plugin" not in builtin.to_json()  # built-in records keep every earlier layout


def test_environment_variable_loads_every_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = write_plugin(tmp_path, name="env-a", file="a.py")
    b = write_plugin(tmp_path, name="env-b", file="b.py")
    monkeypatch.setenv(ENV_VAR, f"{a}{__import__('os').pathsep}{b}")
    load_plugins(entry_points=False)
    assert {"env-a", "env-b"} <= set(strategy_names())


def test_entry_point_plugins_load_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(tmp_path, name="from-entry-point", file="fusion_ep_plugin.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = metadata.EntryPoint(name="mine", value="fusion_ep_plugin", group=ENTRY_POINT_GROUP)
    calls: list[str] = []

    def entry_points(group: str) -> list[metadata.EntryPoint]:
        calls.append(group)
        return [ep] if group == ENTRY_POINT_GROUP else []

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    monkeypatch.delitem(sys.modules, "fusion_ep_plugin", raising=False)
    load_plugins()
    load_plugins()
    assert calls == [ENTRY_POINT_GROUP]
    spec = get_strategy("from-entry-point")
    assert spec.plugin is not None and spec.plugin.file == str(tmp_path / "fusion_ep_plugin.py")
    sys.modules.pop("fusion_ep_plugin", None)


def test_a_plugin_that_fails_to_import_names_its_file_and_line(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, BROKEN_IMPORT, file="broken.py")
    with pytest.raises(BadInputError) as caught:
        load_plugins([path], environment=False, entry_points=False)
    (problem,) = caught.value.problems
    assert str(path.resolve()) in problem and "line 4" in problem and "this plugin is broken" in problem
    with pytest.raises(BadInputError, match="cannot read"):
        load_plugin_file(tmp_path / "missing.py")


def test_a_plugin_that_fails_to_build_names_its_file(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, BROKEN_BUILD, file="bad_build.py")
    load_plugin_file(path)
    with pytest.raises(RunFailedError, match=f"plugin {path.resolve()} failed to build: KeyError"):
        create_model("broken-build")
    (problem,) = check_strategy("broken-build")
    assert "does not build" in problem and str(path.resolve()) in problem


def test_check_catches_a_plain_list_parameter_and_an_unused_one(tmp_path: Path) -> None:
    load_plugin_file(write_plugin(tmp_path, PLAIN_LIST, file="lowrank.py"))
    problems = check_strategy("lowrank-list")
    assert sum("not a registered parameter" in p for p in problems) == 2  # both factors
    assert any("head_unused.weight" in p and "no gradient" in p for p in problems)
    assert any("head_unused.bias" in p for p in problems)


def test_check_passes_good_plugins_and_builtins(tmp_path: Path) -> None:
    load_plugin_file(write_plugin(tmp_path))
    assert check_strategy("tiny-plugin", num_classes=5) == []
    assert check_strategy("late") == []
