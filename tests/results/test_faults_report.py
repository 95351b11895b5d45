"""Reports of the sensor-fault suite: the config x fault matrix, mRA, rRA against a baseline,
per-fault keys in `report --runs`, and the calibration / mRA columns."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from results_fakes import SEVERITIES, record, trapezoid
from typer.testing import CliRunner

from fusioncli.cli import app
from fusioncli.errors import BadInputError
from fusioncli.results.aggregate import build_report
from fusioncli.results.robustness import build_robustness, fault_means, matrix_display, render_robustness, with_baseline
from fusioncli.results.store import open_store, runs_frame

pytestmark = pytest.mark.numeric

# Percentages from float64 arithmetic on accuracies <= 1: a fake curve (3 roundings), means over
# 4 severities, 2 seeds and 2 faults (<= 8), a ratio and a difference (2), the scaling to % (1):
# at most 20 roundings a side on values <= 100 (rra: <= 200 in %): 2 gamma_20 * 200 absolute.
U64 = 2.0**-53
ABS = 2 * 20 * U64 / (1 - 20 * U64) * 200
FAULTS = {"beam_loss": "lidar", "occlusion": "rgb"}
sys.path.insert(0, str(Path(__file__).parent))
runner = CliRunner()


def close(expected: object) -> object:
    return pytest.approx(expected, rel=0, abs=ABS)


def suite(clean: float, slopes: dict[str, float]) -> dict[str, Any]:
    """A version-2 ``robustness`` (the fault suite's): accuracy ``clean * (1 - slope * s)``."""
    curves = {}
    for name, slope in slopes.items():
        acc = [clean * (1 - slope * s) for s in SEVERITIES]
        auc = trapezoid(acc, SEVERITIES)
        curves[name] = {
            "modality": FAULTS[name], "severities": list(SEVERITIES), "accuracy": acc, "f1_macro": acc,
            "auc": auc, "relative_auc": auc / clean, "mean_accuracy": sum(acc[1:]) / 4,
        }  # fmt: skip
    mra = sum(c["mean_accuracy"] for c in curves.values()) / len(curves)
    return {
        "version": 2, "seed": 0, "clean_accuracy": clean, "curves": curves,
        "missing": {"rgb_missing": {"accuracy": 0.5, "f1_macro": 0.3, "relative": 0.5 / clean},
                    "lidar_missing": {"accuracy": 0.6, "f1_macro": 0.4, "relative": 0.6 / clean}},
        "mean_auc": sum(c["auc"] for c in curves.values()) / len(curves),
        "mean_relative_auc": sum(c["relative_auc"] for c in curves.values()) / len(curves),
        "mra": mra, "mean_relative_accuracy": mra / clean,
    }  # fmt: skip


SLOPES = {
    "late": {"beam_loss": 0.2, "occlusion": 0.2},
    "rgb-only": {"beam_loss": 0.0, "occlusion": 0.6},
    "lidar-only": {"beam_loss": 0.8, "occlusion": 0.0},
}
CLEAN = {"late": 0.9, "rgb-only": 0.8, "lidar-only": 0.7}


def mean_acc(strategy: str, fault: str) -> float:
    """Accuracy averaged over severities 0.25-1 of a linear fall: clean * (1 - slope * 0.625)."""
    return CLEAN[strategy] * (1 - SLOPES[strategy][fault] * 0.625)


def calibrated(rec: Any, ece: float) -> Any:
    cal = {"bins": 15, "ece": ece, "brier": 0.1, "nll": 0.3, "temperature": 1.5, "fit_n": 4, "score_n": 4,
           "raw_half": {"ece": ece, "brier": 0.1, "nll": 0.3}, "scaled_half": {"ece": ece / 2, "brier": 0.1, "nll": 0.2}}  # fmt: skip
    return replace(rec, metrics=replace(rec.metrics, calibration=cal))


def records() -> list[Any]:
    return [
        calibrated(record(s, seed, accuracy=CLEAN[s], robust=suite(CLEAN[s], SLOPES[s])), 0.05 + 0.01 * seed)
        for s in CLEAN
        for seed in (0, 1)
    ]


def test_the_matrix_holds_robust_accuracy_per_fault_and_mra() -> None:
    view = build_robustness(runs_frame(records()))
    means = fault_means(view)
    for i, strategy in enumerate(view.configs["strategy"]):
        for fault in FAULTS:
            assert means.at[i, fault] == close(100 * mean_acc(strategy, fault))
        assert means.at[i, "mra"] == close(
            100 * (mean_acc(strategy, "beam_loss") + mean_acc(strategy, "occlusion")) / 2
        )
    display = matrix_display(view)
    assert display.headers[-4:] == ["clean", "beam_loss", "occlusion", "mRA"]
    late = display.rows[list(view.configs["strategy"]).index("late")]
    assert late[-1] == f"{100 * 0.9 * (1 - 0.2 * 0.625):.1f}"


def test_rra_against_a_named_baseline_and_the_best_unimodal() -> None:
    view = with_baseline(build_robustness(runs_frame(records())), "rgb-only")
    long = view.long
    rra = long[(long["measure"] == "rra") & (long["strategy"] == "late")].set_index("corruption")["pct_mean"]
    per_fault = {f: 100 * (mean_acc("late", f) / mean_acc("rgb-only", f) - 1) for f in FAULTS}
    assert rra["beam_loss"] == close(per_fault["beam_loss"])
    assert rra["occlusion"] == close(per_fault["occlusion"])
    assert rra["mean"] == close(sum(per_fault.values()) / 2)  # MultiCorrupt: the mean over faults
    own = long[(long["measure"] == "rra") & (long["strategy"] == "rgb-only") & (long["corruption"] == "mean")]
    assert float(own["pct_mean"].iloc[0]) == 0.0  # a baseline against itself
    # unimodal: rgb-only has the higher mRA here (0.8 * (2 - 0.375) / 2 vs 0.7 * (2 - 0.5) / 2)
    best = with_baseline(build_robustness(runs_frame(records())), "unimodal")
    assert (
        best.long[best.long["measure"] == "rra"]["pct_mean"].tolist()
        == long[long["measure"] == "rra"]["pct_mean"].tolist()
    )
    text = render_robustness(view, "markdown")
    assert "### Robust accuracy per fault" in text and "rRA vs rgb-only" in text
    machine = pd.read_csv(io.StringIO(render_robustness(view, "csv")))
    assert set(machine["measure"]) >= {"accuracy", "auc", "mean_accuracy", "mra", "rra"}


def test_a_missing_baseline_is_bad_input() -> None:
    view = build_robustness(runs_frame(records()))
    with pytest.raises(BadInputError, match="no selected configuration .* strategy gmu"):
        with_baseline(view, "gmu")


def test_runs_view_has_per_fault_keys_and_the_report_has_mra_and_calibration() -> None:
    frame = runs_frame(records())
    per_run = build_report(frame, per_run=True).table
    assert {"beam_loss_sev0.25_acc_pct", "beam_loss_acc_pct", "beam_loss_auc_pct", "occlusion_sev1_acc_pct"} <= set(
        per_run.columns
    )
    row = per_run[per_run["strategy"] == "late"].iloc[0]
    assert row["occlusion_sev1_acc_pct"] == close(100 * 0.9 * 0.8)
    assert {"mra_pct", "ece_pct", "brier", "nll", "ece_scaled_pct", "temperature"} <= set(per_run.columns)
    table = build_report(frame).table
    late = table[table["strategy"] == "late"].iloc[0]
    assert late["ece_pct_mean"] == close(100 * 0.055) and late["ece_scaled_pct_mean"] == close(100 * 0.0275)
    assert late["mra_pct_mean"] == close(100 * 0.9 * (1 - 0.2 * 0.625))


def test_without_the_new_figures_the_columns_stay_as_before() -> None:
    plain = [record("late", seed) for seed in (0, 1)]
    frame = runs_frame(plain)
    assert not {"mra_pct_mean", "ece_pct_mean"} & set(build_report(frame).table.columns)
    assert not any("_sev" in c for c in build_report(frame, per_run=True).table.columns)


def test_cli_baseline(tmp_path: Path) -> None:
    store = open_store(tmp_path / "results")
    for rec in records():
        store.write(rec)
    base = ["report", "--results-dir", str(tmp_path / "results")]
    result = runner.invoke(app, [*base, "--robustness", "--baseline", "unimodal", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "rRA vs unimodal" in result.stdout
    bad = runner.invoke(app, [*base, "--baseline", "rgb-only"])
    assert bad.exit_code == 2 and "--robustness" in bad.output
    runs = runner.invoke(app, [*base, "--runs", "--format", "json"])
    assert "beam_loss_sev0.5_acc_pct" in json.loads(runs.stdout)[0]


def test_pareto_front() -> None:
    from fusioncli.results.plots import pareto_mask, pareto_points

    # (accuracy, -cost, robustness): b beats a everywhere; c trades accuracy for robustness; d has a NaN
    pts = [[90, -1, 50], [91, -1, 60], [85, -1, 80], [99, -1, float("nan")], [91, -1, 60]]
    assert pareto_mask(pts) == [False, True, True, False, True]  # equal points do not dominate each other
    frame = runs_frame(records())
    points = pareto_points(frame, build_report(frame).table)
    assert list(points.columns) == ["accuracy_pct", "gflops", "mra_pct", "pareto"]
    assert points["pareto"].any()


def test_pareto_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from fusioncli.results.plots import write_pareto_plot

    frame = runs_frame(records())
    report = build_report(frame)
    path = write_pareto_plot(frame, report.table, report.fields, tmp_path)
    assert path.read_bytes().startswith(b"\x89PNG")
