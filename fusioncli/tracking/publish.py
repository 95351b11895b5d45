"""Publish runs already in a results store to the trackers, after the fact.

What ``fusioncli sweep --log-existing`` does for the finished runs a sweep skips, and
``fusioncli report --to-mlflow / --to-wandb`` for a whole store: each finished record becomes
one tracker run, as if it had been logged while training (its epochs at their steps, the final
figures at the last step, the record JSON, and its weights when the store keeps them). A run a
destination already holds whole (see :mod:`fusioncli.tracking.ledger`) is not logged twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from fusioncli.record import RunRecord
from fusioncli.results.store import ResultsStore
from fusioncli.tracking.base import Artifact, Tracker
from fusioncli.tracking.ledger import Ledger
from fusioncli.tracking.run import RunTracking


@dataclass
class Published:
    """What publishing did: runs logged, runs every tracker already held, problems."""

    logged: list[str] = field(default_factory=list)  # run ids
    already: list[str] = field(default_factory=list)
    run_problems: dict[str, list[str]] = field(default_factory=dict)  # run id -> what the trackers missed
    tracker_runs: dict[str, dict[str, str]] = field(default_factory=dict)  # run id -> tracker -> its id

    @property
    def problems(self) -> list[str]:
        return [p for problems in self.run_problems.values() for p in problems]


def stored_artifacts(store: ResultsStore, record: RunRecord) -> list[Artifact]:
    """A stored run's weights: kept ones (``--keep-weights``), else the best checkpoint when the
    run is its dataset's best."""
    rid = record.run_id
    if rid is None:
        return []
    if store.has_weights(rid):
        return [Artifact(store.weights_path(rid), "model")]
    best = store.best_for(record.fingerprint) if record.fingerprint else None
    if best is not None and best.record is not None and best.record.run_id == rid:
        return [Artifact(best.path, "model")]
    return []


def publish_records(
    trackers: Sequence[Tracker],
    store: ResultsStore,
    records: Iterable[RunRecord],
    *,
    on_run: Callable[[RunRecord, RunTracking], None] | None = None,
) -> Published:
    """Log each finished record of ``records`` to the trackers that do not hold it whole yet."""
    ledger = Ledger(store.root)
    done = Published()
    for record in records:
        rid = record.run_id
        if not record.is_finished or rid is None:
            continue
        wanted = [t for t in trackers if not ledger.has_complete(rid, t.destination)]
        if not wanted:
            done.already.append(rid)
            continue
        tracking = RunTracking(wanted, rid, dict(record.config), fingerprint=record.fingerprint, ledger=ledger)
        for row in record.history:
            tracking.epoch(dict(row))
        tracking.finish(record.to_json(), stored_artifacts(store, record))
        done.logged.append(rid)
        if tracking.problems:
            done.run_problems[rid] = list(tracking.problems)
        done.tracker_runs[rid] = tracking.ids
        if on_run is not None:
            on_run(record, tracking)
    return done
