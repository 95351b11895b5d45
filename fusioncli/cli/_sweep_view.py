"""How a sweep looks on the terminal: progress lines, the summary, json outcomes.

Shared by ``fusioncli sweep`` and ``fusioncli demo`` (which runs a sweep of its own).
"""

import json
from pathlib import Path
from typing import Any

from fusioncli.cli._common import err, progress_bar


def format_lr(value: float) -> str:
    from fusioncli.results.render import format_lr as _format_lr

    return _format_lr(value)


def run_label(config: Any) -> str:
    """``late lr=1e-4 cosine seed=51`` (``train=100/class`` when cut) -- a run in progress lines."""
    size = "" if getattr(config, "train_per_class", None) is None else f" train={config.train_per_class}/class"
    return f"{config.strategy} lr={format_lr(config.lr)} {config.scheduler}{size} seed={config.seed}"


def outcome_line(outcome: Any) -> str:
    """The one stderr line printed when a grid point is done (rich markup)."""
    head = f"[{outcome.index}/{outcome.total}] {run_label(outcome.config)}"
    record = outcome.record or {}
    metrics = record.get("metrics") or {}
    if outcome.status == "skipped":
        acc = metrics.get("val_accuracy")
        extra = f": acc {acc * 100:.2f}%" if isinstance(acc, (int, float)) else ""
        return f"[dim]{head}  skipped (already finished{extra})[/]"
    if outcome.status == "claimed":
        return f"[yellow]{head}  being trained by another sweep: left to it[/]"
    if outcome.status == "failed":
        first = (outcome.error or "unknown error").splitlines()[0]
        return f"{head}  [bold red]FAILED:[/] {_escape(first)}"
    line = head
    for name, key in (("acc", "val_accuracy"), ("F1", "f1_macro")):
        value = metrics.get(key)
        if isinstance(value, (int, float)):
            line += f"  {name} {value * 100:.2f}%"
    seconds = (record.get("timing") or {}).get("train_seconds")
    if isinstance(seconds, (int, float)):
        line += f"  {seconds:.1f}s"
    if outcome.new_best:
        line += "  [green](new best)[/]"
    return line


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def print_summary(summary: Any, results_dir: Path, *, kept_weights: bool = False) -> None:
    """Counts, failures, the best run and where things are (stderr)."""
    minutes, seconds = divmod(int(round(summary.seconds)), 60)
    parts = [f"{len(summary.finished)} finished", f"{len(summary.skipped)} skipped", f"{len(summary.failed)} failed"]
    if summary.claimed:
        parts.append(f"{len(summary.claimed)} left to another sweep")
    if summary.not_run:
        parts.append(f"{summary.not_run} not run")
    err.print(
        f"sweep: {', '.join(parts)} of {summary.total} in {minutes}m {seconds:02d}s; results in {results_dir}",
        highlight=False,
        soft_wrap=True,
    )
    for warning in summary.warnings:
        err.print(f"[yellow]warning:[/] {_escape(warning)}", highlight=False, soft_wrap=True)
    for outcome in summary.failed:
        err.print(
            f"  [red]failed[/] {outcome.run_id} {run_label(outcome.config)}: {_escape(outcome.error or '')}",
            highlight=False,
            soft_wrap=True,
        )
    if summary.failed:
        err.print(
            "  (each failed record keeps its error and traceback in records/<run_id>.json; "
            "re-running the sweep retries failed runs)",
            highlight=False,
            soft_wrap=True,
        )
    best = summary.best
    if best:
        from fusioncli.config import RunConfig

        try:
            label = run_label(RunConfig.from_dict(best["config"]))
        except Exception:  # a best from an older version: show the id only
            label = ""
        acc = (best.get("metrics") or {}).get("val_accuracy", float("nan"))
        weights = summary.best_checkpoint
        err.print(
            f"best: {label} acc {acc * 100:.2f}% (run {best['run_id']}) -> {weights}",
            highlight=False,
            soft_wrap=True,
        )
    if kept_weights:
        from fusioncli.results.store import ResultsStore

        weights_dir = ResultsStore(results_dir).weights_dir
        files = sorted(weights_dir.glob("*.safetensors"))
        size = sum(f.stat().st_size for f in files)
        err.print(
            f"weights: {len(files)} run(s) in {weights_dir} ({size / 1e9:.2f} GB); "
            "score them on other data with `fusioncli evaluate --runs --cache-dir OTHER --into DIR`",
            highlight=False,
            soft_wrap=True,
        )
    if summary.interrupted:
        err.print("[bold red]interrupted[/]: finished runs are kept; run the same command again to resume")
    elif summary.finished or summary.skipped:
        err.print(f"next: fusioncli report --results-dir {results_dir}", highlight=False, soft_wrap=True)


def outcomes_json(summary: Any) -> str:
    """The ``--format json`` stdout: one object per grid point reached."""
    rows = []
    for o in summary.outcomes:
        metrics = (o.record or {}).get("metrics") or {}
        rows.append(
            {
                "run_id": o.run_id,
                "status": o.status,
                **o.config.to_dict(),
                "val_accuracy": metrics.get("val_accuracy"),
                "f1_macro": metrics.get("f1_macro"),
                "error": o.error,
                "new_best": o.new_best,
            }
        )
    return json.dumps(rows, indent=2)


def execute_sweep(
    configs: list,
    cache_dir: Path,
    results_dir: Path,
    *,
    show_bar: bool,
    backend: str = "local",
    **kwargs: Any,
) -> Any:
    """Run the sweep with one stderr line per grid point and an overall bar; returns the summary.

    ``kwargs`` go to :func:`fusioncli.sweep.dispatch.sweep_from_cache` (and on to the backend).
    """
    from fusioncli.sweep.dispatch import sweep_from_cache

    total_epochs = sum(c.epochs for c in configs)
    with progress_bar("sweep", total=total_epochs, enabled=show_bar) as advance:

        def on_run_start(index: int, total: int, run_id: str, config: Any) -> None:
            # Ray submits every run at once and reports epochs as each run ends.
            label = f"[{index}/{total}] {run_label(config)}" if backend == "local" else f"{total} runs on Ray"
            advance(0, description=label)

        def on_epoch(config: Any, row: dict) -> None:
            advance(1)

        def on_run_end(outcome: Any) -> None:
            # Skipped and failed runs still count as done for the bar.
            advance(max(outcome.config.epochs - len(_history_of(outcome)), 0))
            err.print(outcome_line(outcome), highlight=False, soft_wrap=True)

        return sweep_from_cache(
            configs,
            cache_dir,
            results_dir,
            backend=backend,
            on_run_start=on_run_start,
            on_epoch=on_epoch,
            on_run_end=on_run_end,
            **kwargs,
        )


def _history_of(outcome: Any) -> list:
    if outcome.status == "skipped":
        return []
    return (outcome.record or {}).get("history") or []


