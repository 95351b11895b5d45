"""Jobs: what one unit of work does from training to its result -- train, then (when asked)
score robustness, then hand the result on to be recorded.

One place for the order and the failure rules, used by every way of running:

* :func:`train_from_cache` -- ``fusioncli train``: load the cache, :func:`train_one`, write the
  checkpoint;
* :func:`train_one` / :func:`train_group` -- a sweep's run or stacked group, in this process
  (:mod:`fusioncli.sweep.runner`) or on a Ray worker (:mod:`fusioncli.sweep.ray_backend`); the
  sweep's :class:`~fusioncli.sweep.runner.OutcomeRecorder` then stores each outcome.

Failure rule: a run whose robustness evaluation fails has failed (raised as
:class:`~fusioncli.errors.RunFailedError`), so the next sweep retrains it whole; in a stacked
group only that member fails (:class:`MemberFailure`), the others stand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusioncli.config import RunConfig
from fusioncli.data.dataset import PreparedData
from fusioncli.errors import FusionError, RunFailedError
from fusioncli.machine import free_device_memory
from fusioncli.train import loop  # module access: the default trainer is looked up at call time

ERROR_CHARS = 2000

TrainFn = Callable[..., Any]  # (config, data, *, on_epoch) -> object with .record and .model
EpochCallback = Callable[[dict[str, Any]], None]


def error_message(exc: BaseException) -> str:
    """One readable line (or a few) for a run's exception, bounded in length."""
    if isinstance(exc, FusionError):
        text = "; ".join(exc.problems)
    else:
        detail = str(exc).strip()
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return text[:ERROR_CHARS]


def train_one(
    cfg: RunConfig,
    data: PreparedData,
    *,
    train_fn: TrainFn | None = None,
    robustness: bool = False,
    on_epoch: EpochCallback | None = None,
) -> Any:
    """Train one resolved config on the full ``data``; with ``robustness`` also evaluate it.

    Returns ``train_fn``'s result (``.record``, ``.model``); with ``robustness`` a
    :class:`~fusioncli.train.loop.RunResult` whose record is the one
    :func:`fusioncli.eval.robustness.add_robustness` returns (evaluated on the data as trained,
    i.e. limited). ``train_fn`` defaults to
    :func:`fusioncli.train.loop.train_run`, looked up at call time. A failing robustness
    evaluation fails the run: :class:`RunFailedError`.
    """
    if train_fn is None:
        train_fn = loop.train_run
    result = train_fn(cfg, data, on_epoch=on_epoch)
    if robustness:
        # Imported here: only jobs that ask for robustness need the module.
        from fusioncli.eval.robustness import add_robustness

        try:
            record = add_robustness(result, data)
        except Exception as exc:
            raise RunFailedError(f"robustness evaluation failed: {error_message(exc)}") from exc
        return loop.RunResult(record=record, model=result.model)
    return result


@dataclass(frozen=True)
class MemberFailure:
    """A stacked group's member that trained but then failed on its own (its robustness pass)."""

    error: tuple[str, str]  # (message, traceback text), as for the sweep's failure records
    started_at: str


def train_group(
    group: Sequence[RunConfig],
    data: PreparedData,
    *,
    robustness: bool = False,
    on_epoch: Callable[[RunConfig, dict[str, Any]], None] | None = None,
    compile: bool = False,
) -> list[Any]:
    """Train one stacked group (:func:`fusioncli.train.stacked.train_stacked`) and, with
    ``robustness``, evaluate each member; what every sweep backend does with a group.
    ``compile``: ``torch.compile`` the stacked forward (once per architecture per process).

    Returns, in ``group`` order, each member's result (``.record``, ``.model``) or a
    :class:`MemberFailure` for a member whose robustness evaluation failed (same rule as
    :func:`train_one`: the run fails). Raises whatever fails the group as a whole (a member's
    loss turned NaN, out of memory): the caller re-runs the members one at a time.
    """
    from fusioncli.train.stacked import train_stacked

    results = train_stacked(group, data, on_epoch=on_epoch, compile=compile)
    members: list[Any] = []
    for cfg, result in zip(group, results):
        if robustness:
            from fusioncli.eval.robustness import add_robustness

            try:
                record = add_robustness(result, data)
            except Exception as exc:  # noqa: BLE001 - this member fails, the others stand
                free_device_memory(cfg.device)
                message = f"robustness evaluation failed: {error_message(exc)}"
                members.append(MemberFailure((message, ""), result.record.started_at or ""))
                continue
            result = loop.RunResult(record=record, model=result.model)
        members.append(result)
    return members


def train_from_cache(
    config: RunConfig,
    cache_dir: Path,
    *,
    on_epoch: EpochCallback | None = None,
    checkpoint: Path | None = None,
    robustness: bool = False,
) -> loop.RunResult:
    """Load the prepared cache onto the run's device, train, and optionally save a checkpoint.

    What ``fusioncli train`` does; a missing cache raises the loader's error with its hint.
    ``robustness`` adds the record's ``robustness`` (see :mod:`fusioncli.eval.robustness`),
    evaluated before the checkpoint is written so its info file carries it too.
    """
    from fusioncli.data.cache import load_cache
    from fusioncli.train.checkpoint import check_checkpoint_path, save_checkpoint

    if checkpoint is not None:
        check_checkpoint_path(checkpoint)  # fail before training, not after
    resolved = config.resolve()
    data = load_cache(Path(cache_dir), resolved.device)
    result = train_one(resolved, data, robustness=robustness, on_epoch=on_epoch)
    if checkpoint is not None:
        save_checkpoint(checkpoint, result.model, result.record)
    return result


__all__ = [
    "ERROR_CHARS",
    "MemberFailure",
    "error_message",
    "train_from_cache",
    "train_group",
    "train_one",
]
