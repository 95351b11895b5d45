"""PNG charts of an aggregate table (matplotlib, an optional extra: ``fusioncli[plot]``).

The seed notebook plotted accuracy and training time per configuration as bar charts; we draw
the same (with 95 % CI error bars when there are several seeds) plus two trade-off scatters:
accuracy vs parameters and accuracy vs training time, and ``pareto.png``: accuracy vs inference
FLOPs coloured by mRA, with the Pareto front ringed. When runs carry robustness results,
``robustness.png`` adds accuracy vs corruption severity (one panel per corruption) and
``robustness_matrix.png`` a configuration x fault heatmap of robust accuracy; when they
span several training-set sizes (``--train-per-class``), ``learning_curve.png`` adds accuracy
vs training samples per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusioncli.atomic import atomic_path
from fusioncli.errors import BadInputError
from fusioncli.results.render import ci_half_widths, format_field

PLOT_FILES = ("accuracy.png", "train_time.png", "accuracy_vs_params.png", "accuracy_vs_time.png")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise BadInputError(
            "--plot needs matplotlib, which is not installed",
            hint="install the plot extra: pip install 'fusioncli[plot]'",
        ) from None
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def check_available() -> None:
    """Raise BadInputError naming the ``plot`` extra unless matplotlib can be imported."""
    _pyplot()


def config_labels(table: pd.DataFrame, fields: Sequence[str]) -> list[str]:
    """One short label per row from the fields that vary (e.g. ``late lr=1e-4 cosine``)."""
    varying = [f for f in fields if f in table.columns and table[f].astype("string").fillna("<NA>").nunique() > 1]
    if not varying:
        varying = [f for f in fields if f in table.columns][:1]
    labels = []
    for _, row in table.iterrows():
        parts = []
        for f in varying:
            text = format_field(f, row[f])
            parts.append(text if f in ("strategy", "scheduler", "backbone") else f"{f}={text}")
        labels.append(" ".join(parts))
    return labels


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def _bar(plt: Any, labels: list[str], means: pd.Series, errs: list[float], ylabel: str, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(labels) + 2), 4.5))
    x = np.arange(len(labels))
    err = np.asarray(errs, dtype="float64")
    yerr = None if np.isnan(err).all() else np.where(np.isnan(err), 0.0, err)  # no bars when n = 1 everywhere
    ax.bar(x, means.to_numpy(dtype="float64"), yerr=yerr, capsize=3, color="#4C72B0")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def _scatter(
    plt: Any, labels: list[str], x: pd.Series, y: pd.Series, xlabel: str, title: str, path: Path, *, logx: bool
) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    xs, ys = x.to_numpy(dtype="float64"), y.to_numpy(dtype="float64")
    ax.scatter(xs, ys, color="#DD8452")
    for label, xi, yi in zip(labels, xs, ys):
        if not (np.isnan(xi) or np.isnan(yi)):
            ax.annotate(label, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if logx and np.isfinite(xs).any() and np.nanmin(xs) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def write_plots(table: pd.DataFrame, out_dir: Path, fields: Sequence[str]) -> list[Path]:
    """Write the four PNG charts of an aggregate table into ``out_dir``; return their paths.

    ``fields`` are the group-by fields (labels show those that vary). Raises BadInputError
    naming the ``plot`` extra when matplotlib is missing.
    """
    plt = _pyplot()
    if table.empty:
        raise BadInputError("nothing to plot: no finished runs match")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = config_labels(table, fields)
    paths = [out_dir / name for name in PLOT_FILES]
    _bar(
        plt,
        labels,
        table["accuracy_pct_mean"],
        ci_half_widths(table, "accuracy_pct"),
        "accuracy (%)",
        "Validation accuracy per configuration (error bars: 95% CI)",
        paths[0],
    )
    _bar(
        plt,
        labels,
        table["train_time_s_mean"],
        ci_half_widths(table, "train_time_s"),
        "train time (s)",
        "Training time per configuration (error bars: 95% CI)",
        paths[1],
    )
    _scatter(
        plt,
        labels,
        table["params_m"],
        table["accuracy_pct_mean"],
        "params (M)",
        "Accuracy vs parameters",
        paths[2],
        logx=True,
    )
    _scatter(
        plt,
        labels,
        table["train_time_s_mean"],
        table["accuracy_pct_mean"],
        "train time (s)",
        "Accuracy vs training time",
        paths[3],
        logx=False,
    )
    return paths


ROBUSTNESS_PLOT = "robustness.png"


def write_robustness_plot(view: Any, out_dir: Path) -> Path:
    """Write ``robustness.png``: accuracy vs severity, one panel per corruption, one line per
    configuration (shaded 95 % CI where a configuration has several seeds); return its path.

    ``view`` is a :class:`~fusioncli.results.robustness.RobustnessView`.
    """
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corruptions = view.corruptions
    labels = config_labels(view.configs, view.fields)
    long = view.long
    fig, axes = plt.subplots(1, max(len(corruptions), 1), figsize=(4.2 * max(len(corruptions), 1), 4.0), squeeze=False)
    for ax, corruption in zip(axes[0], corruptions):
        points = long[(long["corruption"] == corruption) & (long["measure"] == "accuracy")]
        for index, label in enumerate(labels):
            line = points[points["config"] == index].sort_values("severity")
            if line.empty:
                continue
            x = line["severity"].to_numpy(dtype="float64")
            drawn = ax.plot(x, line["pct_mean"].to_numpy(dtype="float64"), marker="o", markersize=3, label=label)
            lo = line["pct_ci95_lo"].to_numpy(dtype="float64")
            hi = line["pct_ci95_hi"].to_numpy(dtype="float64")
            if np.isfinite(lo).any():
                ax.fill_between(x, lo, hi, color=drawn[0].get_color(), alpha=0.15, linewidth=0)
        ax.set_title(corruption)
        ax.set_xlabel("severity")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(names), 4), fontsize=8)
    shaded = bool(np.isfinite(long["pct_ci95_lo"].to_numpy(dtype="float64")).any())
    # y above 1: clear of the panel titles (bbox_inches="tight" keeps it in the file)
    fig.suptitle("Accuracy vs corruption severity" + (" (shaded: 95% CI over seeds)" if shaded else ""), y=1.03)
    path = out_dir / ROBUSTNESS_PLOT
    _save(fig, path)
    plt.close(fig)
    return path


PARETO_PLOT = "pareto.png"


def pareto_mask(points: np.ndarray) -> list[bool]:
    """Which rows of ``points`` (n, k), every column "higher is better", no other row dominates.

    Row ``j`` dominates row ``i`` when it is at least as good in every column and better in one.
    Rows with a NaN are never on the front (and never dominate).
    """
    points = np.asarray(points, dtype="float64")
    finite = np.isfinite(points).all(axis=1)
    front = []
    for i in range(len(points)):
        if not finite[i]:
            front.append(False)
            continue
        others = points[finite]
        dominated = ((others >= points[i]).all(axis=1) & (others > points[i]).any(axis=1)).any()
        front.append(not bool(dominated))
    return front


def pareto_points(runs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Per configuration of an aggregate ``table``: accuracy (%), GFLOPs per sample, mRA (%) (or NaN
    without fault-suite results), and whether it is on the Pareto front of the three (of the
    first two when no configuration has an mRA)."""
    by_id = runs.set_index("run_id")
    rows = []
    for _, config in table.iterrows():
        ids = [r for r in str(config["run_ids"]).split(",") if r in by_id.index]

        def mean(column: str, ids: list[str] = ids) -> float:
            if column not in by_id.columns:
                return float("nan")
            values = pd.to_numeric(by_id.loc[ids, column], errors="coerce").astype("float64")
            return float(values.mean()) if values.notna().any() else float("nan")

        rows.append({"accuracy_pct": float(config["accuracy_pct_mean"]), "gflops": mean("flops_per_sample") / 1e9,
                     "mra_pct": 100 * mean("robust_mra")})  # fmt: skip
    points = pd.DataFrame(rows, columns=["accuracy_pct", "gflops", "mra_pct"])
    criteria = points[["accuracy_pct", "gflops", "mra_pct"]].to_numpy(dtype="float64").copy()
    criteria[:, 1] *= -1  # fewer FLOPs is better
    if not np.isfinite(criteria[:, 2]).any():
        criteria = criteria[:, :2]
    points["pareto"] = pareto_mask(criteria)
    return points


def write_pareto_plot(runs: pd.DataFrame, table: pd.DataFrame, fields: Sequence[str], out_dir: Path) -> Path:
    """Write ``pareto.png``: accuracy vs inference FLOPs per sample, coloured by mRA when the runs
    have fault-suite results; configurations no other beats on all of accuracy, FLOPs and mRA
    (the Pareto front) are ringed and labelled."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points = pareto_points(runs, table)
    labels = config_labels(table, fields)
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    robust = bool(np.isfinite(points["mra_pct"]).any())
    if robust:
        image = ax.scatter(
            points["gflops"], points["accuracy_pct"], c=points["mra_pct"], cmap="viridis", s=40, zorder=2
        )
        fig.colorbar(image, ax=ax, label="mRA: accuracy under sensor faults (%)")
    else:
        ax.scatter(points["gflops"], points["accuracy_pct"], color="tab:blue", s=40, zorder=2)
    front = points[points["pareto"]]
    ax.scatter(front["gflops"], front["accuracy_pct"], s=160, facecolors="none", edgecolors="red", zorder=3,
               label="Pareto front (no other is better on all" + (" three)" if robust else " two)"))  # fmt: skip
    for (_, point), label in zip(points.iterrows(), labels):
        if point["pareto"]:
            ax.annotate(label, (point["gflops"], point["accuracy_pct"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")  # fmt: skip
    ax.set_xlabel("inference GFLOPs per sample")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Accuracy vs cost" + (", colour: robustness" if robust else ""))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    path = out_dir / PARETO_PLOT
    _save(fig, path)
    plt.close(fig)
    return path


MATRIX_PLOT = "robustness_matrix.png"


def write_robustness_matrix(view: Any, out_dir: Path) -> Path:
    """Write ``robustness_matrix.png``: a heatmap of robust accuracy (%) per configuration (rows)
    and fault (columns, mean over severities > 0), with mRA as the last column; return its path."""
    from fusioncli.results.robustness import fault_means

    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    means = fault_means(view)
    columns = [*view.corruptions, "mra"]
    values = means[columns].to_numpy(dtype="float64")
    labels = config_labels(view.configs, view.fields)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * len(columns), 1.2 + 0.42 * len(labels)))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(columns)), [c if c != "mra" else "mRA" for c in columns], rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for (row, col), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(col, row, f"{value:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 60 else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_title("Robust accuracy per fault (mean over severities 0.25-1)")
    path = out_dir / MATRIX_PLOT
    _save(fig, path)
    plt.close(fig)
    return path


LEARNING_CURVE_PLOT = "learning_curve.png"


def learning_curve_points(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Accuracy per (configuration, training-set size) for ``learning_curve.png``.

    Returns ``(table, fields)``: the aggregate over seeds grouped by the usual fields minus
    ``epochs`` (``--equal-steps`` gives each size its own) plus ``train_samples_per_class``
    (``train_per_class``, or for "all" the runs' training samples per class), and the fields
    that name a curve. Empty when fewer than two sizes are present.
    """
    from fusioncli.results.aggregate import DEFAULT_GROUP_BY, aggregate, finished_runs

    done = finished_runs(runs)
    if done["train_per_class"].astype("Int64").nunique(dropna=False) < 2:
        return pd.DataFrame(), []
    fields = [f for f in DEFAULT_GROUP_BY if f not in ("train_per_class", "epochs")]
    table = aggregate(done, [*fields, "train_per_class"])
    per_class = (
        (done["n_train"].astype("float64") / done["class_names"].str.count(",").add(1))
        .groupby(done["train_per_class"].astype("Int64").fillna(-1))
        .mean()
    )
    sizes = table["train_per_class"].astype("Int64").fillna(-1)
    table["train_samples_per_class"] = [float(per_class.get(size, np.nan)) for size in sizes]
    return table, fields


def write_learning_curve(runs: pd.DataFrame, out_dir: Path) -> Path | None:
    """Write ``learning_curve.png`` (accuracy vs training samples per class, one line per
    configuration, shaded 95 % CI) when the runs have two or more training-set sizes."""
    table, fields = learning_curve_points(runs)
    if table.empty:
        return None
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = table[fields].astype("string").fillna("<NA>").agg("|".join, axis=1)
    curves = table[fields][~keys.duplicated()].reset_index(drop=True)
    labels = config_labels(curves, fields)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, key in zip(labels, keys.drop_duplicates()):
        line = table[keys == key].sort_values("train_samples_per_class")
        x = line["train_samples_per_class"].to_numpy(dtype="float64")
        drawn = ax.plot(x, line["accuracy_pct_mean"].to_numpy(dtype="float64"), marker="o", label=label)
        lo = line["accuracy_pct_ci95_lo"].to_numpy(dtype="float64")
        hi = line["accuracy_pct_ci95_hi"].to_numpy(dtype="float64")
        if np.isfinite(lo).any():
            ax.fill_between(x, lo, hi, color=drawn[0].get_color(), alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    sizes = sorted(set(table["train_samples_per_class"].dropna().tolist()))
    ax.set_xticks(sizes)
    ax.set_xticklabels([f"{size:g}" for size in sizes])
    ax.minorticks_off()
    ax.set_ylim(0, 100)  # an interval past 0 or 100 % is clipped, not drawn
    ax.set_xlabel("training samples per class")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Learning curve (same validation samples at every size)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = out_dir / LEARNING_CURVE_PLOT
    _save(fig, path)
    plt.close(fig)
    return path


def write_report_plots(
    runs: pd.DataFrame,
    out_dir: Path,
    *,
    group_by: Sequence[str] | None = None,
    sort: str | None = None,
    filters: Sequence[str] = (),
) -> list[Path]:
    """Every chart ``report --plot`` writes for these runs: the four per-configuration charts and
    ``pareto.png``, plus ``robustness.png`` and ``robustness_matrix.png`` when a selected run has robustness results and
    ``learning_curve.png`` when the selected runs have several training-set sizes."""
    from fusioncli.results.aggregate import build_report, filter_runs, parse_filters
    from fusioncli.results.robustness import build_robustness, has_robustness

    check_available()
    report = build_report(runs, group_by=group_by, sort=sort, filters=filters)
    paths = write_plots(report.table, out_dir, report.fields)
    paths.append(write_pareto_plot(filter_runs(runs, parse_filters(filters)), report.table, report.fields, out_dir))
    if has_robustness(filter_runs(runs, parse_filters(filters))):
        view = build_robustness(runs, group_by=group_by, sort=sort, filters=filters)
        paths.append(write_robustness_plot(view, out_dir))
        paths.append(write_robustness_matrix(view, out_dir))
    curve = write_learning_curve(filter_runs(runs, parse_filters(filters)), out_dir)
    if curve is not None:
        paths.append(curve)
    return paths
