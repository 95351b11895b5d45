"""PNG charts (matplotlib is an optional extra: skipped when absent) and the missing-extra error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
from sweep_fakes import fake_record, stored_as  # noqa: E402

from fusioncli.errors import BadInputError  # noqa: E402
from fusioncli.results.aggregate import build_report  # noqa: E402
from fusioncli.results.plots import PLOT_FILES, config_labels, write_plots  # noqa: E402
from fusioncli.record import RunRecord  # noqa: E402
from fusioncli.results.store import runs_frame  # noqa: E402
from fusioncli.config import RunConfig  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _report():
    records = [
        fake_record(RunConfig(strategy=s, lr=lr, seed=seed, epochs=1, device="cpu", precision="fp32"))
        for s in ("late", "intermediate-add")
        for lr in (1e-3, 1e-4)
        for seed in (0, 1)
    ]
    return build_report(runs_frame(records))


def test_writes_four_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = _report()
    paths = write_plots(report.table, tmp_path / "plots", report.fields)
    assert [p.name for p in paths] == list(PLOT_FILES)
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
    assert not list((tmp_path / "plots").glob(".*"))  # no temp files left behind


def test_labels_name_what_varies() -> None:
    report = _report()
    labels = config_labels(report.table, report.fields)
    assert sorted(labels) == sorted(
        ["late lr=1e-3", "late lr=1e-4", "intermediate-add lr=1e-3", "intermediate-add lr=1e-4"]
    )


def test_missing_matplotlib_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    report = _report()
    with pytest.raises(BadInputError) as info:
        write_plots(report.table, tmp_path, report.fields)
    assert "pip install 'fusioncli[plot]'" in info.value.hint
    assert not list(tmp_path.iterdir())


def test_learning_curve_only_with_several_training_sizes(tmp_path: Path) -> None:
    from fusioncli.results.plots import LEARNING_CURVE_PLOT, learning_curve_points, write_learning_curve

    def record(strategy: str, size: int | None, seed: int, epochs: int) -> RunRecord:
        cfg = RunConfig(strategy=strategy, seed=seed, epochs=epochs, train_per_class=size, device="cpu", precision="fp32")
        rec = fake_record(cfg)
        dataset = rec.to_json()["dataset"]
        return stored_as(rec, dataset={**dataset, "n_train": 2 * (size or 40), "class_names": ["cubes", "spheres"]})

    # --equal-steps: each size has its own epochs; still one curve per strategy
    records = [record(s, size, seed, {10: 8, None: 2}[size]) for s in ("late", "gmu") for size in (10, None) for seed in (0, 1)]
    table, fields = learning_curve_points(runs_frame(records))
    assert "epochs" not in fields and "train_per_class" not in fields
    assert len(table) == 4 and set(table["n"]) == {2}
    assert sorted(set(table["train_samples_per_class"])) == [10.0, 40.0]  # "all" = the runs' 40 per class
    pytest.importorskip("matplotlib")
    path = write_learning_curve(runs_frame(records), tmp_path)
    assert path is not None and path.name == LEARNING_CURVE_PLOT and path.read_bytes().startswith(PNG_MAGIC)
    # one size only: no curve
    one = [r for r in records if r.config["train_per_class"] is None]
    assert write_learning_curve(runs_frame(one), tmp_path / "none") is None
    assert not (tmp_path / "none").exists()
