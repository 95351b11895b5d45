"""One fusioncli run's tracker runs: opened, fed and closed here, each call time-limited and
each failure kept to this run.

:class:`RunTracking` is what the sweep's recorder (and ``fusioncli train``) holds per run. It
opens one tracker run per tracker, sends each epoch, and closes them with the final record and
its artifacts. A tracker call that raises or runs past the tracker's time limit becomes one
problem line (told to the tracker's ``on_problem`` as it happens, and kept in
:attr:`RunTracking.problems`); after a timeout the run's later calls to that tracker are
skipped (the hung call may still hold it). Nothing here is shared with another run.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from fusioncli.errors import FusionError
from fusioncli.tracking.base import (
    Artifact,
    Tracker,
    TrackerRun,
    TrackerTimeout,
    call_with_timeout,
    closing_tags,
    epoch_metrics,
    last_step,
    run_info,
    run_name,
)
from fusioncli.tracking.ledger import Ledger

T = TypeVar("T")
ERROR_CHARS = 500


def describe(exc: BaseException) -> str:
    """One line for a tracker's exception."""
    if isinstance(exc, FusionError):
        text = "; ".join(exc.problems)
    else:
        detail = " ".join(str(exc).split())
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return text[:ERROR_CHARS]


class _Slot:
    """One tracker's run for this fusioncli run."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.handle: TrackerRun | None = None
        self.dead = False  # never opened, or a call timed out: no more calls
        self.problems: list[str] = []


class RunTracking:
    """The tracker runs of one fusioncli run (one per tracker)::

    tracking = RunTracking(trackers, run_id, config, fingerprint=..., ledger=...)  # open
    tracking.epoch(row)                                       # each history row
    tracking.finish(record.to_json(), artifacts=[...])        # close with the record
    tracking.problems                                         # what the trackers missed
    """

    def __init__(
        self,
        trackers: Sequence[Tracker],
        run_id: str,
        config: dict[str, Any],
        *,
        fingerprint: str | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.run_id = run_id
        self.config = dict(config)
        self.fingerprint = fingerprint
        self.ledger = ledger
        self.name = run_name(config)
        self.problems: list[str] = []
        self._slots = [_Slot(t) for t in trackers]
        self._open()

    @property
    def ids(self) -> dict[str, str]:
        """Each tracker's id for this run (trackers that opened one)."""
        return {s.tracker.name: s.handle.id for s in self._slots if s.handle is not None}

    def _open(self) -> None:
        for slot in self._slots:
            tracker = slot.tracker
            replaces = None
            if self.ledger is not None:
                entry = self.ledger.entry(self.run_id, tracker.destination) or {}
                replaces = entry.get("id") if isinstance(entry.get("id"), str) else None
            info = run_info(self.run_id, self.config, self.fingerprint, replaces=replaces)
            slot.handle = self._call(slot, "start", lambda t=tracker, i=info: t.open(i))  # type: ignore[misc]
            if slot.handle is None:
                slot.dead = True

    def _problem(self, slot: _Slot, what: str, error: str) -> None:
        line = f"{slot.tracker.name}: run {self.run_id} ({self.name}): {what} failed: {error}"
        slot.problems.append(line)
        self.problems.append(line)
        if slot.tracker.on_problem is not None:
            with contextlib.suppress(Exception):  # a printing hook must not fail the run
                slot.tracker.on_problem(line)

    def _call(self, slot: _Slot, what: str, fn: Callable[[], T]) -> T | None:
        if slot.dead:
            return None
        try:
            return call_with_timeout(fn, slot.tracker.timeout, f"{slot.tracker.name} {what}")
        except TrackerTimeout as exc:
            slot.dead = True
            self._problem(slot, what, f"{exc}; this run's later {slot.tracker.name} calls are skipped")
        except Exception as exc:  # noqa: BLE001 - a tracker's failure is this run's problem line
            self._problem(slot, what, describe(exc))
        return None

    def epoch(self, row: dict[str, Any]) -> None:
        """Send one history row (its epoch is the step)."""
        step, metrics = epoch_metrics(row)
        for slot in self._slots:
            handle = slot.handle
            if handle is not None and metrics:
                what = f"epoch {step}" if step is not None else "epoch"
                self._call(slot, what, lambda h=handle: h.log_epoch(step or 0, metrics))  # type: ignore[misc]

    def finish(self, record: dict[str, Any], artifacts: Sequence[Artifact] = ()) -> None:
        """Close every tracker run with ``record`` (the record's JSON form, or a stub with
        ``status``/``error`` for a run that was stopped), attaching the record JSON and
        ``artifacts``; then note the tracker runs in the ledger."""
        live = [s for s in self._slots if s.handle is not None and not s.dead]
        if not live:
            return
        import shutil  # here: a `--help` never needs them
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="fusioncli-tracking-"))
        timed_out = False
        try:
            record_file = folder / "run_record.json"
            record_file.write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
            files = [Artifact(record_file, "record"), *(a for a in artifacts if Path(a.path).is_file())]
            step, tags = last_step(record), closing_tags(record)
            for slot in live:
                handle = slot.handle
                assert handle is not None
                self._call(
                    slot,
                    "close",
                    lambda h=handle: h.finish(record, step=step, tags=tags, artifacts=files),  # type: ignore[misc]
                )
                timed_out = timed_out or slot.dead
                if self.ledger is not None and record.get("status") in ("finished", "failed"):
                    try:
                        self.ledger.note(
                            self.run_id, slot.tracker.destination, slot.tracker.name, handle.id,
                            complete=not slot.problems and record.get("status") == "finished",
                        )  # fmt: skip
                    except OSError as exc:
                        self._problem(slot, "noting the tracker run", describe(exc))
        finally:
            if not timed_out:  # a hung call may still be reading the files
                shutil.rmtree(folder, ignore_errors=True)
            for slot in live:
                slot.dead = True  # closed: no more calls

    def interrupted(self) -> None:
        """The run was stopped (Ctrl-C): close its tracker runs as killed."""
        self.finish({"run_id": self.run_id, "status": "interrupted", "error": "interrupted"})

    def restart(self, reason: str) -> None:
        """Close the tracker runs as failed (``reason``) and open new ones: the run starts over
        (a stacked group that failed as a whole is retried one run at a time)."""
        self.finish({"run_id": self.run_id, "status": "failed", "error": reason})
        self._slots = [_Slot(s.tracker) for s in self._slots]
        self._open()
