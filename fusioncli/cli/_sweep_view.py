"""How a sweep looks on the terminal: progress lines, the summary, json outcomes.

Shared by ``fusioncli sweep`` and ``fusioncli demo`` (which runs a sweep of its own).
"""

import json
from pathlib import Path
from typing import Any

from fusioncli.cli._common import err, out, progress_bar
from fusioncli.errors import BadInputError


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
    record = outcome.record  # a RunRecord, or None (claimed by another sweep)
    if outcome.status == "skipped":
        acc = record.val_accuracy if record is not None else None
        extra = f": acc {acc * 100:.2f}%" if isinstance(acc, (int, float)) else ""
        return f"[dim]{head}  skipped (already finished{extra})[/]"
    if outcome.status == "claimed":
        return f"[yellow]{head}  being trained by another sweep: left to it[/]"
    if outcome.status == "failed":
        first = (outcome.error or "unknown error").splitlines()[0]
        return f"{head}  [bold red]FAILED:[/] {_escape(first)}"
    line = head
    figures = [] if record is None else [("acc", record.val_accuracy), ("F1", record.f1_macro)]
    for name, value in figures:
        if isinstance(value, (int, float)):
            line += f"  {name} {value * 100:.2f}%"
    seconds = record.train_seconds if record is not None else None
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
    minutes, seconds = divmod(round(summary.seconds), 60)
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
        try:
            label = run_label(best.run_config())
        except BadInputError:  # a best from an older version: show the id only
            label = ""
        acc = best.val_accuracy if best.val_accuracy is not None else float("nan")
        weights = summary.best_checkpoint
        err.print(
            f"best: {label} acc {acc * 100:.2f}% (run {best.run_id}) -> {weights}",
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


def outcomes_json(summary: Any, published: Any = None) -> str:
    """The ``--format json`` stdout: one object per grid point reached, with what the trackers
    missed of it (``tracker_problems``) and their run ids (``tracker_runs``); ``published``:
    what ``--log-existing`` logged of the skipped runs."""
    rows = []
    logged = published.tracker_runs if published is not None else {}
    late_problems = published.run_problems if published is not None else {}
    for o in summary.outcomes:
        problems = list(o.tracker_problems) + late_problems.get(o.run_id, [])
        rows.append(
            {
                "run_id": o.run_id,
                "status": o.status,
                **o.config.to_dict(),
                "val_accuracy": o.record.val_accuracy if o.record is not None else None,
                "f1_macro": o.record.f1_macro if o.record is not None else None,
                "error": o.error,
                "new_best": o.new_best,
                "tracker_problems": problems,
                "tracker_runs": dict(o.tracker_runs or logged.get(o.run_id, {})),
            }
        )
    return json.dumps(rows, indent=2)


def execute_sweep(plan: Any, store: Any, *, show_bar: bool, **options: Any) -> Any:
    """Run ``plan`` with one stderr line per grid point and an overall bar; returns the summary.

    ``options`` go to :func:`fusioncli.sweep.dispatch.run_plan` (``trackers``, ``keep_best``, ...).
    """
    from fusioncli.sweep.dispatch import run_plan

    on_ray = plan.spec.backend == "ray"
    with progress_bar("sweep", total=sum(run.config.epochs for run in plan.runs), enabled=show_bar) as advance:

        def on_run_start(index: int, total: int, run_id: str, config: Any) -> None:
            # Ray submits every run at once and reports epochs as each run ends.
            advance(0, description=f"{total} runs on Ray" if on_ray else f"[{index}/{total}] {run_label(config)}")

        def on_epoch(config: Any, row: dict[str, Any]) -> None:
            advance(1)

        def on_run_end(outcome: Any) -> None:
            # Skipped and failed runs still count as done for the bar.
            advance(max(outcome.config.epochs - len(_history_of(outcome)), 0))
            err.print(outcome_line(outcome), highlight=False, soft_wrap=True)

        return run_plan(plan, store, on_run_start=on_run_start, on_epoch=on_epoch, on_run_end=on_run_end, **options)


def equal_steps_line(plan: Any) -> str:
    """``100/class -> 8 epochs, all -> 2 epochs``: the epochs ``--equal-steps`` gave each size."""
    by_size: dict[Any, int] = {}
    for run in plan.runs:
        by_size.setdefault(run.config.train_per_class, run.config.epochs)
    return ", ".join(f"{f'{size}/class' if size else 'all'} -> {epochs} epochs" for size, epochs in by_size.items())


def print_plan(plan: Any, format: Any) -> None:
    """``sweep --dry-run``: each grid point with its stored status and whether the sweep trains it
    (json rows on stdout, or a table), then a count on stderr."""
    from rich.table import Table

    from fusioncli.cli._tables import print_table

    if format.value == "json":
        rows = [
            {"run_id": p.run_id, "stored_status": p.stored_status, "would_train": p.trains, **p.config.to_dict()}
            for p in plan.runs
        ]
        out.print(json.dumps(rows, indent=2), markup=False, highlight=False, emoji=False, soft_wrap=True)
    else:
        table = Table(title=f"{plan.total} runs planned ({plan.placement})")
        sized = any(p.config.train_per_class is not None for p in plan.runs)
        for col in ("#", "run id", "strategy", "lr", "scheduler", *(["train/class", "epochs"] if sized else []),
                    "seed", "stored", "action"):  # fmt: skip
            table.add_column(col)
        for p in plan.runs:
            c = p.config
            size = [str(c.train_per_class or "all"), str(c.epochs)] if sized else []
            table.add_row(
                str(p.index), p.run_id, c.strategy, format_lr(c.lr), c.scheduler, *size, str(c.seed),
                p.stored_status or "-", p.action,
            )  # fmt: skip
        print_table(table)
    err.print(
        f"dry run: {len(plan.to_train)} of {plan.total} runs would be trained "
        "(the others are finished and would be skipped)",
        highlight=False,
        soft_wrap=True,
    )


def _history_of(outcome: Any) -> list[dict[str, Any]]:
    if outcome.status == "skipped":
        return []
    return list(outcome.record.history) if outcome.record is not None else []
