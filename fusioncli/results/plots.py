"""PNG charts of an aggregate table (matplotlib, an optional extra: ``fusioncli[plot]``).

The seed notebook plotted accuracy and training time per configuration as bar charts; we draw
the same (with std error bars when there are several seeds) plus two trade-off scatters:
accuracy vs parameters and accuracy vs training time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusioncli.atomic import atomic_path
from fusioncli.errors import BadInputError
from fusioncli.results.render import format_field

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


def _bar(plt: Any, labels: list[str], means: pd.Series, stds: pd.Series, ylabel: str, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(labels) + 2), 4.5))
    x = np.arange(len(labels))
    err = stds.to_numpy(dtype="float64")
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
        table["accuracy_pct_std"],
        "accuracy (%)",
        "Validation accuracy per configuration",
        paths[0],
    )
    _bar(
        plt,
        labels,
        table["train_time_s_mean"],
        table["train_time_s_std"],
        "train time (s)",
        "Training time per configuration",
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
