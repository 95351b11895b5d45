"""`fusioncli evaluate`: score saved models on a prepared dataset (the training one or another)."""

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from fusioncli.cli._common import OutputFormat, err, out, report_errors
from fusioncli.cli._options import CacheDirOption, Precision, PrecisionOption, ResultsDirOption
from fusioncli.cli._tables import print_table, robustness_table
from fusioncli.errors import BadInputError
from fusioncli.paths import default_cache_dir, default_results_dir

if TYPE_CHECKING:
    from fusioncli.record import RunRecord


class Split(str, Enum):
    auto = "auto"
    val = "val"
    train = "train"
    all = "all"


def _best_checkpoint(results_dir: Path | None, cache: Path) -> Path:
    """The results store's best model for the cache's dataset, else its only one (trained on other
    data); a damaged or ambiguous best is a clear error, never a traceback."""
    from fusioncli.data.cache import read_manifest
    from fusioncli.results.store import ResultsStore

    store = ResultsStore(results_dir if results_dir is not None else default_results_dir())
    bests = store.bests()  # one per dataset (and the best/model.safetensors of an older store)
    fingerprint = (read_manifest(cache) or {}).get("fingerprint")
    if not isinstance(fingerprint, str):
        fingerprint = None  # no readable cache: loading it says why, after this
    own = store.best_for(fingerprint) if fingerprint is not None else None
    if own is not None:
        return own.path
    usable = [b for b in bests if b.usable]
    # The cache's own best being damaged is the news, even when another dataset's best is fine.
    damaged = [b for b in bests if not b.usable and ((fingerprint and b.fingerprint == fingerprint) or not usable)]
    if damaged:
        raise BadInputError(
            [f"the best model {b.path.parent} in the results store is damaged: {b.problem}" for b in damaged],
            hint="run `fusioncli sweep` again (its next finished run replaces a damaged best) or pass checkpoint files",
        )
    if len(usable) == 1:
        return usable[0].path
    if usable:
        raise BadInputError(
            f"the results store {store.root} holds the best models of {len(usable)} datasets, none of them "
            f"trained on the cache {cache}",
            hint="pass the one to evaluate: " + ", ".join(str(b.path) for b in usable),
        )
    raise BadInputError(
        f"no checkpoint given and no best model in the results store {store.root}",
        hint="pass checkpoint files (fusioncli train --checkpoint PATH writes one) or run `fusioncli sweep`",
    )


def _checkpoints(paths: list[Path] | None, results_dir: Path | None, cache: Path) -> list[Path]:
    """The checkpoints asked for, or the results store's best model; every one must exist."""
    from fusioncli.eval.saved import checkpoint_file

    if not paths:
        return [_best_checkpoint(results_dir, cache)]
    found = [checkpoint_file(p) for p in paths]
    missing = [f"checkpoint {p} does not exist" for p in found if not p.is_file()]
    if missing:
        raise BadInputError(missing, hint="write one with `fusioncli train --checkpoint PATH`")
    return found


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _summary_table(evaluations: list[dict[str, Any]], cache: Path) -> Table:
    table = Table(
        title=f"evaluation on {cache}",
        caption="own acc: the run's validation accuracy when it was trained; Δ: accuracy here minus own acc",
        title_justify="left",
    )
    table.add_column("checkpoint", overflow="fold", min_width=14)
    table.add_column("strategy", overflow="fold", min_width=10)
    for col in ("split", "n", "acc", "F1", "loss", "own acc", "Δ"):
        # Figures never wrap: narrow terminals fold the names instead.
        table.add_column(col, justify="left" if col == "split" else "right", no_wrap=True)
    for e in evaluations:
        m, trained = e["metrics"], e["trained"]["val_accuracy"]
        delta = None if trained is None else m["accuracy"] - trained
        table.add_row(
            e["checkpoint"],
            e["model"]["strategy"]
            if e["model"]["backbone"] == "seed"
            else f"{e['model']['strategy']}/{e['model']['backbone']}",
            e["dataset"]["split"],
            str(e["dataset"]["n"]),
            _fmt(m["accuracy"]),
            _fmt(m["f1_macro"]),
            _fmt(m["loss"]),
            _fmt(trained),
            "-" if delta is None else f"{delta:+.4f}",
        )
    return table


def _per_class_table(evaluation: dict[str, Any]) -> Table:
    names = evaluation["dataset"]["class_names"]
    table = Table(
        title=f"{evaluation['checkpoint']}: per class (rows: true class; predicted counts)", title_justify="left"
    )
    for col in ("class", "precision", "recall", "F1", "support", *[f"→ {n}" for n in names]):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, row in zip(names, evaluation["metrics"]["confusion"]):
        c = evaluation["metrics"]["per_class"][name]
        table.add_row(name, _fmt(c["precision"]), _fmt(c["recall"]), _fmt(c["f1"]), str(c["support"]), *map(str, row))
    return table


def _evaluate_runs(
    results_dir: Path | None,
    into: Path | None,
    filters: list[str],
    force: bool,
    cache: Path,
    resolved: Any,
    batch_size: int | None,
    split: Split,
    robustness: bool,
    format: OutputFormat,
) -> None:
    """``evaluate --runs``: every kept-weights run of the store, reported over seeds."""
    from fusioncli.data.cache import load_cache
    from fusioncli.eval.saved import evaluate_runs
    from fusioncli.results.aggregate import build_report, filter_runs, parse_filters
    from fusioncli.results.render import render
    from fusioncli.results.store import ResultsStore, open_store, runs_frame

    store = open_store(results_dir if results_dir is not None else default_results_dir(), must_exist=True)
    frame = store.load_runs()
    run_ids = list(filter_runs(frame, parse_filters(filters))["run_id"]) if filters else None
    data = load_cache(cache, resolved.device)

    def on_run(index: int, total: int, record: "RunRecord", reused: bool) -> None:
        how = "already in --into" if reused else (record.evaluation or {})["split_note"]
        err.print(
            f"[{index}/{total}] {(record.run_id or '')[:12]} {record.config['strategy']}: "
            f"accuracy {record.val_accuracy:.4f} ({how})",
            highlight=False,
            soft_wrap=True,
        )

    records, missing = evaluate_runs(
        store, data, run_ids=run_ids, into=None if into is None else ResultsStore(into), force=force,
        split=split.value, device=resolved.device, precision=resolved.precision, batch_size=batch_size,
        robustness=robustness, cache_hint=str(cache), on_run=on_run,
    )  # fmt: skip
    if missing:
        err.print(
            f"note: {len(missing)} finished run(s) kept no weights and were left out "
            "(re-run the sweep with --keep-weights: it retrains exactly those)",
            highlight=False,
            soft_wrap=True,
        )
    if not records:
        raise BadInputError(
            f"no run in {store.root} has kept weights to evaluate",
            hint="run the sweep with --keep-weights (finished runs without weights are retrained)",
        )
    report = build_report(runs_frame(records))
    rendered = render(report, "json" if format is OutputFormat.json else "table")
    if isinstance(rendered, str):
        typer.echo(rendered, nl=False)
    else:
        splits = sorted({(r.evaluation or {})["split"] for r in records})
        rendered.title = f"{rendered.title}, evaluated on {cache} ({'/'.join(splits)} split)"
        print_table(rendered)
    if into is not None:
        err.print(
            f"evaluated runs stored in {into}: fusioncli report --results-dir {into}", highlight=False, soft_wrap=True
        )


@report_errors
def evaluate(
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Checkpoint files (.safetensors with their .json) or folders holding model.safetensors; "
            "default: the results store's best model of the cache's dataset (or its only one).",
            show_default=False,
        ),
    ] = None,
    cache_dir: CacheDirOption = None,
    results_dir: ResultsDirOption = None,
    split: Annotated[
        Split,
        typer.Option(
            "--split",
            help="auto: the validation split if the cache is the one the model was trained on, else all samples.",
        ),
    ] = Split.auto,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    precision: PrecisionOption = Precision["auto"],
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", help="Inference batch size (default: 64 on the CPU, 256 on a GPU).", show_default=False
        ),
    ] = None,
    robustness: Annotated[
        bool,
        typer.Option(
            "--robustness",
            help="Also score corrupted copies of the evaluated samples (missing modality, Gaussian noise at "
            "severities 0-1, LiDAR dropout).",
        ),
    ] = False,
    runs: Annotated[
        bool,
        typer.Option(
            "--runs",
            help="Evaluate every run of the results store that kept its weights (sweep --keep-weights) and "
            "report them like `fusioncli report`: mean and 95% CI over seeds.",
        ),
    ] = False,
    into: Annotated[
        Path | None,
        typer.Option(
            "--into",
            help="With --runs: store the evaluated runs in this (new) results store, for `fusioncli report "
            "--results-dir` (--compare, --robustness, ...); runs already evaluated there are reused.",
            show_default=False,
        ),
    ] = None,
    filter: Annotated[
        list[str] | None,
        typer.Option(
            "--filter", help="With --runs: KEY=VALUE on a config field, as in `fusioncli report`.", show_default=False
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="With --into: evaluate runs stored there again.")] = False,
    format: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            "-f",
            help="table: summary tables; json: one evaluation record per checkpoint (--runs: the report).",
        ),
    ] = OutputFormat.table,
) -> None:
    """Score saved models on a prepared dataset: the one they were trained on, or another.

    Train on one dataset, test on another (synthetic -> real, easy -> hard): prepare the other
    data into its own cache and point --cache-dir at it. Writes nothing, except with --into.

    Example:  fusioncli evaluate model.safetensors --cache-dir .fusioncli/cache-hard --robustness

    A whole sweep:  fusioncli sweep --keep-weights ... && fusioncli evaluate --runs --cache-dir
    .fusioncli/cache-hard --into .fusioncli/results-hard && fusioncli report --results-dir .fusioncli/results-hard
    """
    from fusioncli.config import RunConfig
    from fusioncli.data.cache import load_cache

    if runs and checkpoints:
        raise BadInputError("give checkpoint files or --runs, not both")
    for flag, value in (("--into", into), ("--filter", filter), ("--force", force or None)):
        if value is not None and not runs:
            raise BadInputError(f"{flag} goes with --runs")
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    paths = [] if runs else _checkpoints(checkpoints, results_dir, cache)
    if batch_size is not None and batch_size < 1:
        raise BadInputError(f"--batch-size must be at least 1 (got {batch_size})")
    resolved = RunConfig(device=device, precision=precision.value).resolve()
    if runs:
        _evaluate_runs(results_dir, into, filter or [], force, cache, resolved, batch_size, split, robustness, format)
        return
    from fusioncli.eval.saved import evaluate_checkpoint

    data = load_cache(cache, resolved.device)
    evaluations = []
    for i, path in enumerate(paths, 1):
        err.print(f"[{i}/{len(paths)}] evaluating {path} on {cache}", highlight=False, soft_wrap=True)
        evaluation = evaluate_checkpoint(
            path, data, split=split.value, device=resolved.device, precision=resolved.precision,
            batch_size=batch_size, robustness=robustness, cache_hint=str(cache),
        )  # fmt: skip
        err.print(
            f"    {evaluation['dataset']['split_note']}: accuracy {evaluation['metrics']['accuracy']:.4f}",
            highlight=False,
            soft_wrap=True,
        )
        evaluations.append(evaluation)
    if format is OutputFormat.json:
        out.print(json.dumps(evaluations), markup=False, highlight=False, emoji=False, soft_wrap=True)
        return
    print_table(_summary_table(evaluations, cache))
    for evaluation in evaluations:
        print_table(_per_class_table(evaluation))
        if evaluation["robustness"] is not None:
            print_table(robustness_table(evaluation["robustness"], where=f"{evaluation['dataset']['split']} split"))
