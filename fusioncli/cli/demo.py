"""`fusioncli demo`: the whole pipeline on small synthetic data, then what to run next."""

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fusioncli.cli._common import err, progress_bar, progress_enabled, report_errors
from fusioncli.cli._options import Precision, PrecisionOption
from fusioncli.cli._sweep_view import outcome_line, print_summary, run_label
from fusioncli.cli._tables import print_table
from fusioncli.demo import DemoPlan

if TYPE_CHECKING:  # annotations only: these pull in torch
    from fusioncli.config import RunConfig
    from fusioncli.sweep.recorder import RunOutcome


@report_errors
def demo(
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            help="Folder for the demo's data, cache and results (default .fusioncli/demo).",
            show_default=False,
        ),
    ] = None,
    per_class: Annotated[int, typer.Option("--per-class", help="Synthetic samples per class.")] = DemoPlan.per_class,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs per run.")] = DemoPlan.epochs,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    precision: PrecisionOption = Precision["auto"],
    force: Annotated[bool, typer.Option("--force", help="Retrain the demo's runs even if they are finished.")] = False,
) -> None:
    """Synthesize a small dataset, prepare it, sweep a small grid, and print the report.

    300 cubes + 300 spheres; late vs early fusion, two seeds each, so the
    report shows means with 95% CIs (the plan and why: fusioncli.demo.DemoPlan).
    About half a minute on 2 CPU cores; running it again reuses the data, the
    cache and the finished runs. Ends with the commands for the full-size benchmark.

    Example:  fusioncli demo --workdir /tmp/fusion-demo
    """
    from fusioncli.demo import default_workdir, next_commands, run_demo
    from fusioncli.results.aggregate import build_report
    from fusioncli.results.render import render
    from fusioncli.results.store import ResultsStore

    plan = DemoPlan(per_class=per_class, epochs=epochs, device=device, precision=precision.value)
    where = workdir if workdir is not None else default_workdir()
    n_runs = len(plan.strategies) * len(plan.lrs) * len(plan.schedulers) * len(plan.seeds)
    bars = progress_enabled()
    stage_text = {
        "synth": f"1/3 synth: {plan.per_class} cubes + {plan.per_class} spheres into {where / 'raw'}",
        "prepare": f"2/3 prepare: validate, project LiDAR, {plan.val_fraction:.0%} validation split",
        "sweep": f"3/3 sweep: {n_runs} runs x {plan.epochs} epochs",
    }

    # One bar per stage: each stage's callback drives the bar opened when the stage starts.
    bars_stack = ExitStack()
    current: dict[str, Callable[..., None]] = {"advance": lambda *a, **k: None}

    def advance(*args: Any, **kwargs: Any) -> None:
        current["advance"](*args, **kwargs)

    def on_stage(name: str) -> None:
        bars_stack.close()
        err.print(stage_text[name], highlight=False, soft_wrap=True)
        total = n_runs * plan.epochs if name == "sweep" else None
        current["advance"] = bars_stack.enter_context(progress_bar(name, total=total, enabled=bars))

    def on_run_start(index: int, total: int, run_id: str, config: "RunConfig") -> None:
        advance(0, description=f"[{index}/{total}] {run_label(config)}")

    def on_epoch(config: "RunConfig", row: dict[str, Any]) -> None:
        advance(1)

    def on_run_end(outcome: "RunOutcome") -> None:
        done = len(outcome.record.history) if outcome.record is not None and outcome.status != "skipped" else 0
        advance(max(outcome.config.epochs - done, 0))
        err.print(outcome_line(outcome), highlight=False, soft_wrap=True)

    try:
        result = run_demo(
            where,
            plan,
            on_stage=on_stage,
            synth_progress=advance,
            prepare_progress=advance,
            force=force,
            on_run_start=on_run_start,
            on_epoch=on_epoch,
            on_run_end=on_run_end,
        )
    finally:
        bars_stack.close()

    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.stage_seconds.items())
    notes = [
        text for flag, text in ((result.synth_reused, "synthetic data reused"), (result.cache_hit, "cache hit")) if flag
    ]
    reused = f" ({', '.join(notes)})" if notes else ""
    err.print(f"demo done in {result.seconds:.1f}s: {timing}{reused}", highlight=False, soft_wrap=True)
    print_summary(result.sweep, result.paths.results)

    # Only this demo's grid: the store may also hold runs of an earlier --per-class or --epochs.
    ids = [o.run_id for o in result.sweep.outcomes if o.status in ("finished", "skipped")]
    if ids:
        runs = ResultsStore(result.paths.results).load_runs()
        table = render(build_report(runs, filters=[f"run_id={','.join(ids)}"]), "table")
        assert not isinstance(table, str)  # the "table" format renders a rich Table
        print_table(table)
    err.print("\nFull size next (real data in data/assessment, or synthesize it):", highlight=False, soft_wrap=True)
    for line in next_commands():
        err.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    if result.sweep.exit_code:
        raise typer.Exit(result.sweep.exit_code)
