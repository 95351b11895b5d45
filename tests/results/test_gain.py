"""Fusion gain over the best unimodal baseline: the bootstrap, the pairing, Holm, the report columns."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from results_fakes import record

from fusioncli.record import DatasetInfo, pack_correct
from fusioncli.results.aggregate import build_report
from fusioncli.results.gain import BOOTSTRAP_REPS, add_gain, bootstrap_gain
from fusioncli.results.render import render
from fusioncli.results.store import runs_frame

pytestmark = pytest.mark.numeric
N = 64


def scored(strategy: str, seed: int, right: int, *, per_sample: bool = True) -> Any:
    """A run that got the first ``right`` of N validation samples right (``seed`` shifts which)."""
    correct = np.zeros(N, dtype=bool)
    correct[:right] = True
    correct = np.roll(correct, seed)
    rec = record(strategy, seed, accuracy=right / N)
    metrics = replace(rec.metrics, val_correct=pack_correct(correct) if per_sample else None)
    return replace(rec, metrics=metrics, dataset=DatasetInfo(rec.fingerprint, rec.dataset.class_names, 6, N))


def test_bootstrap_by_hand() -> None:
    plus = bootstrap_gain(np.ones((2, 10)))
    assert plus["gain"] == 1.0 and plus["lo"] == plus["hi"] == 1.0
    assert plus["p"] == pytest.approx(2 / (BOOTSTRAP_REPS + 1), rel=1e-15)  # never 0
    zero = bootstrap_gain(np.zeros((2, 10)))
    assert zero["gain"] == 0.0 and zero["p"] == 1.0
    # a mixed matrix: the CI holds the mean, and the same seed gives the same answer
    d = np.random.default_rng(1).choice([-1.0, 0.0, 1.0], size=(3, 200), p=[0.1, 0.6, 0.3])
    b = bootstrap_gain(d)
    assert b["lo"] < b["gain"] < b["hi"] and b == bootstrap_gain(d)


def runs(per_sample: bool = True) -> Any:
    recs = []
    for seed in (0, 1):
        recs += [
            scored("late", seed, 60, per_sample=per_sample),
            scored("gmu", seed, 50, per_sample=per_sample),
            scored("rgb-only", seed, 50, per_sample=per_sample),
            scored("lidar-only", seed, 40, per_sample=per_sample),
        ]
    return runs_frame(recs)


def test_gain_against_the_better_unimodal_with_holm() -> None:
    table = build_report(runs()).table.set_index("strategy")
    late, gmu = table.loc["late"], table.loc["gmu"]
    assert late["gain_vs"] == "rgb-only" and late["gain_n_seeds"] == 2
    # 10 more of 64 samples right on each seed: +15.625 points; resampled samples move it, but a
    # resample without any of those 10 samples has probability (54/64)^64 < 2e-5 per seed
    assert late["gain_pts"] == pytest.approx(100 * 10 / 64, rel=1e-12)
    assert 0 < late["gain_ci95_lo"] < late["gain_pts"] < late["gain_ci95_hi"]
    assert gmu["gain_pts"] == 0.0 and gmu["gain_p"] == 1.0 and not gmu["gain_significant"]
    # Holm over the two fusion rows: the smaller p doubles, the larger stays at least that
    assert late["gain_p_holm"] == pytest.approx(2 * late["gain_p"], rel=1e-15) and late["gain_significant"]
    assert math.isnan(table.loc["rgb-only"]["gain_pts"])  # baselines get no gain
    assert "bootstrap" in late["gain_method"]


def test_older_records_fall_back_to_a_paired_t_test_over_seeds() -> None:
    table = build_report(runs(per_sample=False)).table.set_index("strategy")
    assert table.loc["late"]["gain_method"] == "paired t-test over seeds"
    assert table.loc["late"]["gain_pts"] == pytest.approx(100 * 10 / 64, rel=1e-12)


def test_report_formats_show_it_only_with_a_baseline() -> None:
    report = build_report(runs())
    md = render(report, "markdown")
    assert "gain vs best unimodal" in md and "no significant gain" in md and "Holm" in md
    rows = json.loads(render(report, "json"))
    late = next(r for r in rows if r["strategy"] == "late")
    assert late["gain_vs"] == "rgb-only" and late["gain_significant"] is True
    no_baseline = runs_frame([scored("late", s, 60) for s in (0, 1)])
    assert "gain_pts" not in build_report(no_baseline).table.columns
    table = build_report(no_baseline).table
    assert add_gain(table, no_baseline, ["strategy"]) is table
