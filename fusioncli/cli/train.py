"""`fusioncli train`: train one fusion strategy on the prepared cache and report what it measured."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from fusioncli.cli._common import OutputFormat, err, out, progress_bar, progress_enabled, report_errors
from fusioncli.cli._config_options import run_config_options
from fusioncli.cli._options import CacheDirOption, RobustnessOption
from fusioncli.cli._tables import robustness_table
from fusioncli.cli._tracking import (
    NO_TRACKERS,
    TrackerChoice,
    build_trackers,
    print_tracker_problems,
    tracker_options,
)
from fusioncli.paths import default_cache_dir, default_results_dir

if TYPE_CHECKING:
    from fusioncli.record import RunRecord


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  train_loss {row['train_loss']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  "
        f"lr {row['lr']:.2e}  {row['seconds']:.1f}s"
    )


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f} MiB"


def _summary_tables(record: "RunRecord") -> list[Table]:
    assert record.metrics is not None and record.dataset is not None  # a finished run's record
    cfg, m, dataset = record.config, record.metrics, record.dataset
    t, mem, env, p = record.timing or {}, record.memory or {}, record.env or {}, record.params or {}
    run = Table(title=f"run {record.run_id}", show_header=False, title_justify="left")
    run.add_column("what", style="bold")
    run.add_column("value")
    rows = [
        ("strategy / backbone", f"{cfg['strategy']} / {cfg['backbone']}"),
        ("device / precision", f"{cfg['device']} ({env['device_name']}) / {cfg['precision']}"),
        ("lr / scheduler", f"{cfg['lr']:g} / {cfg['scheduler']}"),
        ("epochs / batch / seed", f"{cfg['epochs']} / {cfg['batch_size']} / {cfg['seed']}"),
        ("modality dropout", f"{cfg.get('modality_dropout', 0.0):g}"),
        ("train / val samples", f"{dataset.n_train} / {dataset.n_val}"),
        ("val loss", f"{m.val_loss:.4f}"),
        ("val accuracy", f"{m.val_accuracy:.4f}"),
        ("F1 (macro)", f"{m.f1_macro:.4f}"),
        (
            "parameters",
            f"{p['total']:,} (encoder {p['encoder']:,}, fusion {p['fusion']:,}, head {p['head']:,}; "
            f"trainable {p['trainable']:,})",
        ),
        ("FLOPs / sample (fwd)", f"{record.flops_per_sample:,}"),
        ("wall time", f"{t['train_seconds']:.1f} s"),
        ("throughput", f"{t['samples_per_s']:.1f} samples/s ({t['samples_per_s_note']})"),
    ]
    if mem["peak_gpu_allocated_bytes"] is not None:
        rows.append(
            (
                "peak GPU memory",
                f"{_mib(mem['peak_gpu_allocated_bytes'])} allocated, {_mib(mem['peak_gpu_reserved_bytes'])} reserved",
            )
        )
    rows.append(("peak host RSS", f"{_mib(mem['peak_host_rss_bytes'])} (process lifetime)"))
    for what, value in rows:
        run.add_row(what, value)

    per_class = Table(title="validation, per class", title_justify="left")
    for col in ("class", "precision", "recall", "F1", "support"):
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for name, c in m.per_class.items():
        per_class.add_row(name, f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1']:.4f}", str(c["support"]))
    tables = [run, per_class]
    if record.robustness is not None:
        tables.append(robustness_table(record.robustness))
    return tables


@report_errors
@run_config_options()
@tracker_options
def train(
    run_options: dict[str, Any],
    robustness: RobustnessOption = False,
    cache_dir: CacheDirOption = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Save weights here (safetensors) plus <stem>.json with config and metrics."),
    ] = None,
    format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table: summary tables; json: the run record.")
    ] = OutputFormat.table,
    trackers_chosen: TrackerChoice = NO_TRACKERS,
    results_dir: Annotated[
        Path | None,
        typer.Option(
            "--results-dir",
            help="Where the default MLflow database (mlflow.db) and W&B files go (train stores no record; "
            "default .fusioncli/results or $FUSIONCLI_RESULTS_DIR).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train one fusion strategy on the prepared cache and print what it measured.

    Progress goes to stderr; the summary (or, with --format json, the run record as one JSON object) goes to stdout.

    Example:  fusioncli train --strategy late --epochs 3 --limit-per-class 500 --format json

    Robustness:  fusioncli train --strategy late --modality-dropout 0.3 --robustness

    Tracked:  fusioncli train --strategy late --mlflow --mlflow-experiment fusion  (exit code 3 when the
    run trained but a tracker missed some of it)
    """
    # Imported here so `fusioncli --help` does not pay for torch.
    from fusioncli.config import RunConfig
    from fusioncli.jobs import train_from_cache

    config = RunConfig(**run_options).resolve()
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    trackers = build_trackers(
        trackers_chosen, results_dir=results_dir if results_dir is not None else default_results_dir()
    )
    tracking = _open_tracking(trackers, config, cache) if trackers else None
    err.print(
        f"training {config.strategy}/{config.backbone} on {config.device} ({config.precision}), {config.epochs} epochs",
        highlight=False,
    )
    bar_on = progress_enabled() and format is OutputFormat.table
    with progress_bar("epochs", total=config.epochs, enabled=bar_on) as advance:

        def on_epoch(row: dict[str, Any]) -> None:
            err.print(_epoch_line(row, config.epochs), highlight=False)
            advance(1)
            if tracking is not None:
                tracking.epoch(dict(row))
            if robustness and row["epoch"] == config.epochs:
                err.print("evaluating robustness on corrupted validation sets", highlight=False)

        try:
            result = train_from_cache(config, cache, on_epoch=on_epoch, checkpoint=checkpoint, robustness=robustness)
        except KeyboardInterrupt:
            if tracking is not None:
                tracking.interrupted()
            raise
        except Exception as exc:
            if tracking is not None:
                from fusioncli.jobs import error_message

                tracking.finish({"run_id": tracking.run_id, "status": "failed", "error": error_message(exc)})
            raise
    record = result.record
    if tracking is not None:
        from fusioncli.tracking import Artifact

        tracking.finish(record.to_json(), [Artifact(checkpoint, "model")] if checkpoint is not None else [])
    if checkpoint is not None:
        err.print(f"checkpoint written: {checkpoint} (+ {checkpoint.with_suffix('.json').name})", highlight=False)
    if format is OutputFormat.json:
        out.print(json.dumps(record.to_json()), markup=False, highlight=False, emoji=False, soft_wrap=True)
    else:
        for table in _summary_tables(record):
            out.print(table)
    if tracking is not None and tracking.problems:
        from fusioncli.tracking import EXIT_TRACKER_MISSED

        print_tracker_problems(tracking.problems)
        raise typer.Exit(EXIT_TRACKER_MISSED)


def _open_tracking(trackers: list[Any], config: Any, cache: Path) -> Any:
    """The run's tracker runs, opened under the id its record will have (config + the cache's
    fingerprint); None when the cache has no manifest (training then says what is missing)."""
    from fusioncli.config import run_id
    from fusioncli.data.cache import read_manifest
    from fusioncli.tracking import RunTracking

    manifest = read_manifest(Path(cache))
    fingerprint = manifest.get("fingerprint") if manifest is not None else None
    if not isinstance(fingerprint, str):
        return None
    return RunTracking(trackers, run_id(config, fingerprint), config.to_dict(), fingerprint=fingerprint)
