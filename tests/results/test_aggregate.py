"""Aggregation over seeds (checked against the statistics module), filters, sorting."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
from sweep_fakes import fake_record, stored_as  # noqa: E402

from fusioncli.errors import BadInputError  # noqa: E402
from fusioncli.results.aggregate import (  # noqa: E402
    DEFAULT_GROUP_BY,
    aggregate,
    build_report,
    filter_runs,
    parse_filters,
    resolve_sort,
    run_metrics,
)
from fusioncli.results.store import runs_frame  # noqa: E402
from fusioncli.config import RunConfig  # noqa: E402


def _cfg(**kw) -> RunConfig:
    return RunConfig(**{"epochs": 1, "device": "cpu", "precision": "fp32", **kw})


def _runs(values_by_strategy: dict[str, list[tuple[float, float]]]):
    """Records: per strategy, one run per (accuracy, train_seconds) with seeds 0, 1, 2, ..."""
    records = []
    for strategy, values in values_by_strategy.items():
        for seed, (acc, seconds) in enumerate(values):
            records.append(fake_record(_cfg(strategy=strategy, seed=seed), accuracy=acc, train_seconds=seconds))
    return runs_frame(records)


accuracies = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
seconds = st.floats(min_value=0.1, max_value=1e4, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(accuracies, seconds), min_size=1, max_size=6))
def test_mean_and_sample_std_match_the_statistics_module(values: list[tuple[float, float]]) -> None:
    table = aggregate(_runs({"late": values}))
    assert len(table) == 1
    row = table.iloc[0]
    accs = [100 * a for a, _ in values]
    times = [s for _, s in values]
    assert row["n"] == len(values)
    assert row["accuracy_pct_mean"] == pytest.approx(statistics.fmean(accs), rel=1e-12, abs=1e-12)
    assert row["train_time_s_mean"] == pytest.approx(statistics.fmean(times), rel=1e-12)
    if len(values) >= 2:
        assert row["accuracy_pct_std"] == pytest.approx(statistics.stdev(accs), rel=1e-9, abs=1e-9)
        assert row["train_time_s_std"] == pytest.approx(statistics.stdev(times), rel=1e-9, abs=1e-9)
    else:
        assert math.isnan(row["accuracy_pct_std"])


def test_known_numbers() -> None:
    table = aggregate(_runs({"late": [(0.90, 10.0), (0.94, 14.0)], "intermediate-add": [(0.80, 5.0)]}))
    by = table.set_index("strategy")
    assert by.loc["late", "accuracy_pct_mean"] == pytest.approx(92.0)
    assert by.loc["late", "accuracy_pct_std"] == pytest.approx(math.sqrt(8.0))  # ddof=1: ((2²+2²)/1)
    assert by.loc["late", "seeds"] == "0,1"
    assert by.loc["intermediate-add", "n"] == 1
    assert math.isnan(by.loc["intermediate-add", "accuracy_pct_std"])
    assert by.loc["late", "params_m"] == pytest.approx(1.0)
    assert by.loc["late", "peak_host_rss_mib_mean"] == pytest.approx(300.0)


def test_failed_runs_are_left_out() -> None:
    records = [
        fake_record(_cfg(seed=0), accuracy=0.9),
        fake_record(_cfg(seed=1), status="failed", error="boom"),
    ]
    table = aggregate(runs_frame(records))
    assert table.iloc[0]["n"] == 1 and table.iloc[0]["accuracy_pct_mean"] == pytest.approx(90.0)


def test_group_by_a_subset_of_fields() -> None:
    records = [fake_record(_cfg(lr=lr, seed=s), accuracy=acc) for lr, s, acc in [(1e-3, 0, 0.9), (1e-4, 0, 0.7)]]
    assert len(aggregate(runs_frame(records))) == 2
    table = aggregate(runs_frame(records), ["strategy"])
    assert len(table) == 1 and table.iloc[0]["n"] == 2
    assert table.iloc[0]["accuracy_pct_mean"] == pytest.approx(80.0)


def test_null_limit_per_class_is_its_own_group() -> None:
    records = [fake_record(_cfg(seed=0)), fake_record(_cfg(seed=0, limit_per_class=10))]
    table = aggregate(runs_frame(records))
    assert len(table) == 2 and list(table["n"]) == [1, 1]


def test_unknown_group_by_field() -> None:
    with pytest.raises(BadInputError, match="--group-by: unknown field 'colour'"):
        aggregate(_runs({"late": [(0.9, 1.0)]}), ["strategy", "colour"])


def test_default_group_by_is_everything_but_the_seed() -> None:
    assert "seed" not in DEFAULT_GROUP_BY and "strategy" in DEFAULT_GROUP_BY and "lr" in DEFAULT_GROUP_BY


def test_filters() -> None:
    records = [fake_record(_cfg(strategy=s, lr=lr)) for s in ("late", "intermediate-add") for lr in (1e-3, 1e-4)]
    runs = runs_frame(records)
    assert len(filter_runs(runs, parse_filters(["strategy=late"]))) == 2
    assert len(filter_runs(runs, parse_filters(["strategy=late", "lr=0.0001"]))) == 1
    assert len(filter_runs(runs, parse_filters(["lr=1e-3,1e-4"]))) == 4
    assert len(filter_runs(runs, parse_filters(["limit_per_class=none"]))) == 4
    assert len(filter_runs(runs, parse_filters(["status=failed"]))) == 0


@pytest.mark.parametrize(
    "item, message",
    [("strategy", "not KEY=VALUE"), ("colour=red", "unknown key 'colour'"), ("=late", "not KEY=VALUE")],
)
def test_bad_filters(item: str, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        parse_filters([item])


def test_numeric_filter_needs_a_number() -> None:
    runs = _runs({"late": [(0.9, 1.0)]})
    with pytest.raises(BadInputError, match="lr takes a number"):
        filter_runs(runs, parse_filters(["lr=fast"]))


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, ("accuracy_pct_mean", False)),
        ("accuracy", ("accuracy_pct_mean", False)),
        ("time", ("train_time_s_mean", True)),
        ("loss:desc", ("val_loss_mean", False)),
        ("accuracy (%)", ("accuracy_pct_mean", False)),
        ("params", ("params_m", True)),
        ("lr", ("lr", True)),
        ("throughput", ("throughput_samples_per_s_mean", False)),
    ],
)
def test_resolve_sort(text, expected) -> None:
    assert resolve_sort(text) == expected


def test_resolve_sort_per_run_and_errors() -> None:
    assert resolve_sort("accuracy", per_run=True) == ("accuracy_pct", False)
    with pytest.raises(BadInputError, match="--sort: unknown column 'speed'"):
        resolve_sort("speed")
    with pytest.raises(BadInputError, match="direction"):
        resolve_sort("time:up")


def test_build_report_sorts_best_first_and_counts_failures() -> None:
    records = [
        fake_record(_cfg(strategy="intermediate-add"), accuracy=0.7, train_seconds=1.0),
        fake_record(_cfg(strategy="late"), accuracy=0.9, train_seconds=9.0),
        fake_record(_cfg(strategy="late", seed=7), status="failed", error="x"),
    ]
    report = build_report(runs_frame(records))
    assert list(report.table["strategy"]) == ["late", "intermediate-add"]
    assert report.n_failed == 1 and report.n_runs == 3
    assert list(build_report(runs_frame(records), sort="time").table["strategy"]) == ["intermediate-add", "late"]
    per_run = build_report(runs_frame(records), per_run=True)
    assert len(per_run.table) == 3 and per_run.table.iloc[-1]["status"] == "failed"


def test_build_report_errors() -> None:
    with pytest.raises(BadInputError, match="no runs yet") as info:
        build_report(runs_frame([]))
    assert "fusioncli demo" in info.value.hint
    runs = runs_frame([fake_record(_cfg())])
    with pytest.raises(BadInputError, match="no runs match") as info:
        build_report(runs, filters=["strategy=early"])
    assert "strategy: late" in info.value.hint
    failed_only = runs_frame([fake_record(_cfg(), status="failed", error="x")])
    with pytest.raises(BadInputError, match="none of the 1 selected runs finished"):
        build_report(failed_only)


def test_run_metrics_units() -> None:
    table = run_metrics(runs_frame([fake_record(_cfg(), accuracy=0.5, gpu_bytes=3 * 2**20)]))
    row = table.iloc[0]
    assert row["accuracy_pct"] == pytest.approx(50.0)
    assert row["peak_gpu_mem_mib"] == pytest.approx(3.0)
    assert row["params_m"] == pytest.approx(1.0)


def test_runs_on_different_datasets_are_not_averaged_together() -> None:
    records = [fake_record(_cfg(), "data-a", accuracy=0.9), fake_record(_cfg(), "data-b", accuracy=0.5)]
    table = aggregate(runs_frame(records))
    assert sorted(table["dataset_fingerprint"]) == ["data-a", "data-b"] and list(table["n"]) == [1, 1]
    merged = aggregate(runs_frame(records), ["strategy"])
    assert list(merged["n"]) == [2] and merged.loc[0, "accuracy_pct_mean"] == pytest.approx(70.0)


# -- 95 % confidence intervals and robustness columns (session 2) --------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_fakes import record as _record  # noqa: E402
from results_fakes import robustness as _robustness  # noqa: E402


def test_ci95_columns_on_known_data() -> None:
    table = aggregate(_runs({"late": [(0.90, 10.0), (0.94, 14.0), (0.92, 12.0)], "early": [(0.8, 1.0)]}))
    by = table.set_index("strategy")
    # 90, 94, 92: mean 92, s = 2, t_{0.975,2} = 4.302652729749464 -> half-width 4.3027 * 2 / sqrt(3)
    half = 4.302652729749464 * 2.0 / math.sqrt(3)
    assert by.loc["late", "accuracy_pct_ci95_lo"] == pytest.approx(92.0 - half, rel=1e-10)
    assert by.loc["late", "accuracy_pct_ci95_hi"] == pytest.approx(92.0 + half, rel=1e-10)
    assert by.loc["late", "train_time_s_ci95_hi"] == pytest.approx(12.0 + half, rel=1e-10)
    assert math.isnan(by.loc["early", "accuracy_pct_ci95_lo"]) and math.isnan(by.loc["early", "accuracy_pct_ci95_hi"])
    assert "params_m_ci95_lo" not in table.columns  # per-configuration constants have no spread
    order = list(table.columns)
    assert order.index("accuracy_pct_mean") + 1 == order.index("accuracy_pct_std")
    assert order.index("accuracy_pct_std") + 2 == order.index("accuracy_pct_ci95_hi")


@settings(max_examples=30, deadline=None)
@given(st.lists(accuracies, min_size=2, max_size=6))
def test_ci95_matches_scipy(values: list[float]) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    row = aggregate(_runs({"late": [(v, 1.0) for v in values]})).iloc[0]
    accs = [100 * v for v in values]
    sem = scipy_stats.sem(accs)
    if sem < 1e-9:
        assert row["accuracy_pct_ci95_lo"] == pytest.approx(row["accuracy_pct_mean"], abs=1e-6)
        return
    lo, hi = scipy_stats.t.interval(0.95, len(accs) - 1, loc=statistics.fmean(accs), scale=sem)
    assert row["accuracy_pct_ci95_lo"] == pytest.approx(lo, rel=1e-9, abs=1e-9)
    assert row["accuracy_pct_ci95_hi"] == pytest.approx(hi, rel=1e-9, abs=1e-9)


def test_robustness_metrics_are_aggregated() -> None:
    records = [_record(seed=s, accuracy=a, robust=_robustness(a)) for s, a in ((0, 0.8), (1, 0.9))]
    records.append(_record("early", accuracy=0.7))  # no robustness: its robust columns are NaN
    by = aggregate(runs_frame(records)).set_index("strategy")
    expected = statistics.fmean(100 * _robustness(a)["mean_auc"] for a in (0.8, 0.9))
    assert by.loc["late", "robust_auc_pct_mean"] == pytest.approx(expected)
    assert by.loc["late", "acc_rgb_missing_pct_mean"] == pytest.approx(100 * statistics.fmean([0.4, 0.45]))
    assert by.loc["late", "acc_lidar_missing_pct_mean"] == pytest.approx(100 * statistics.fmean([0.56, 0.63]))
    assert math.isnan(by.loc["early", "robust_auc_pct_mean"])
    assert resolve_sort("robust") == ("robust_auc_pct_mean", False)


def test_modality_dropout_groups_filters_and_defaults() -> None:
    records = [_record(seed=s, modality_dropout=p) for p in (0.0, 0.3) for s in (0, 1)]
    new = _record(seed=2)
    # written before the field: counts as 0.0
    old = stored_as(new, config={k: v for k, v in new.config.items() if k != "modality_dropout"})
    table = aggregate(runs_frame([*records, old]))
    assert sorted(zip(table["modality_dropout"], table["n"])) == [(0.0, 3), (0.3, 2)]
    assert len(filter_runs(runs_frame(records), parse_filters(["modality_dropout=0.3"]))) == 2
