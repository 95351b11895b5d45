"""The results store: one record per run, written atomically, readable with plain pandas.

Layout of a results folder (default ``.fusioncli/results``)::

    records/<run_id>.json     the full run record (config, metrics, history, env, ...): RunRecord.to_json()
    records/.<run_id>.claim   while a sweep trains the run: who (pid, host, time); see claims below
    runs/<run_id>.parquet     the same run as one flat row: RunRecord.to_row() (fixed schema, RUN_SCHEMA;
                              both in fusioncli.record)
    best/<fingerprint>/model.safetensors  weights of the best finished run on one dataset (+ model.json:
                              its info); one folder per dataset fingerprint, so an easy dataset's best
                              never hides a hard one's
    weights/<run_id>.safetensors  every finished run's weights (+ .json), with `sweep --keep-weights`

Stores written before per-dataset bests have one ``best/model.safetensors`` (+ ``model.json``):
it is still read, as the best of the dataset named in its info (``info.dataset.fingerprint``),
until a better run on that dataset writes ``best/<fingerprint>/`` and the old pair is removed.

``pd.read_parquet("<results>/runs")`` reads every run as a table. Each file is written to a
dot-prefixed temp file and renamed into place, and pandas/pyarrow skip dot-files, so a writer
killed mid-write never leaves a record that counts. The JSON is written first and the Parquet
row second; the Parquet row is the commit marker for the table, and :meth:`ResultsStore.repair`
recreates a row whose writer died between the two renames. Finished records are only ever
replaced whole (``--force``), never edited in place.

Damage (a truncated copy, a disk that filled up, a hand edit) costs only the runs it touches:
:meth:`ResultsStore.read_runs` reads each row on its own terms when the whole-folder read fails,
rebuilds an unreadable row from its record, and lists as damaged (and leaves out) a run whose
record is unreadable or whose row is unreadable with no record behind it. Such a run does not
count as finished, so the next sweep trains it again and replaces its files. A best checkpoint
whose weights or info are missing or cut short counts as no best: the next finished run on that
dataset replaces it.

Claims: two sweeps on one store never train the same run at once. Before training, a sweep
creates ``records/.<run_id>.claim`` exclusively (``O_CREAT | O_EXCL``) holding its pid, host and
time (:meth:`ResultsStore.claim_run`), and removes it once the run's record is written or the run
failed or was interrupted (:meth:`ResultsStore.release_claim`). A claim is stale -- taken over --
when its process is gone (same host) or it is older than :data:`CLAIM_STALE_SECONDS`. The best
checkpoint of a dataset is compared and replaced under a short lock of the same kind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from fusioncli.atomic import atomic_directory, atomic_path, atomic_write_json
from fusioncli.config import ROW_DEFAULTS
from fusioncli.errors import BadInputError, RunFailedError
from fusioncli.record import FAILED, FINISHED, RUN_SCHEMA, RunRecord


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    # Nullable integers keep "no limit" (null) apart from 0 and keep ints as ints.
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)
    # Row files written before a config field existed read it as null: give it its default, so
    # those runs group and pair with new runs that use the default.
    for name, default in ROW_DEFAULTS.items():
        frame[name] = frame[name].fillna(default)
    return frame


def runs_frame(records: list[RunRecord]) -> pd.DataFrame:
    """Records as the runs table, exactly as :meth:`ResultsStore.load_runs` would return them."""
    rows = [r.to_row() for r in records]
    return _to_pandas(pa.Table.from_pylist(rows, schema=RUN_SCHEMA))


# -- damage, best checkpoints and claims: what the store reports back -------------------------

# What reading a broken Parquet file raises (ArrowInvalid is a ValueError, ArrowTypeError a TypeError).
_ROW_ERRORS = (pa.ArrowException, OSError, ValueError, TypeError, KeyError)

BEST_WEIGHTS = "model.safetensors"  # in best/<fingerprint>/ (and best/ itself in older stores)
UNKNOWN_FINGERPRINT = "unknown"  # the best folder of a record that names no dataset
# A claim older than this is stale even when its owner cannot be checked (another host). Generous:
# one run (or a stacked group on a slow machine) may train for many hours.
CLAIM_STALE_SECONDS = 24 * 3600.0
# A claim file that cannot be read yet may be one being written right now; after this it is junk.
CLAIM_GRACE_SECONDS = 60.0
# The best checkpoint's lock covers one compare-and-save (seconds); older than this it is stale.
BEST_LOCK_STALE_SECONDS = 600.0
BEST_LOCK_WAIT_SECONDS = 120.0

# Tokens of the claims this process holds: a claim file with our own pid but a token not in here
# is a leftover (e.g. of an earlier sweep in this interpreter that raised) and may be taken over.
_HELD_TOKENS: set[str] = set()


@dataclass(frozen=True)
class Damage:
    """One damaged run of a store: the file at fault and what is wrong with it."""

    run_id: str
    path: Path
    problem: str
    rebuilt: bool = False  # True: only the row was bad, and the run was read from its record

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class RunsTable:
    """What :meth:`ResultsStore.read_runs` found: the readable runs and the damage it went around."""

    frame: pd.DataFrame  # one row per readable run, as :meth:`ResultsStore.load_runs`
    damaged: tuple[Damage, ...] = ()  # runs left out: record unreadable, or row unreadable and no record
    rebuilt: tuple[Damage, ...] = ()  # runs whose row was unreadable and came from the record instead


@dataclass(frozen=True)
class BestCheckpoint:
    """One best checkpoint of a store (usable or not) and the dataset it belongs to."""

    path: Path  # the weights file; its info is path.with_suffix(".json")
    fingerprint: str | None  # the dataset it was trained on (None: its info does not say)
    record: RunRecord | None  # the run record saved with it (None when its info is unreadable)
    problem: str | None = None  # why it cannot be used; None when it can
    legacy: bool = False  # best/model.safetensors of a store written before per-dataset bests

    @property
    def usable(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class Claim:
    """A claim file's content: who is training a run (or holds a lock)."""

    run_id: str  # the run claimed (for a lock: what it guards)
    path: Path
    pid: int | None  # None: the file could not be read
    host: str | None
    created: float  # time.time() when claimed
    token: str | None
    held_by_us: bool = False  # True: this process holds it (release it with release_claim)

    def describe(self) -> str:
        """``pid 123 on host-a since 2024-01-01T10:00:00Z`` -- for messages."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))
        who = f"pid {self.pid} on {self.host}" if self.pid is not None else "an unreadable claim"
        return f"{who} since {when}"


def record_fingerprint(record: RunRecord) -> str:
    """The dataset fingerprint a run record names (the key of its best checkpoint)."""
    fingerprint = record.fingerprint
    return fingerprint if isinstance(fingerprint, str) and fingerprint else UNKNOWN_FINGERPRINT


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (cut short, not one), or None when it is.

    Reads the header only (no torch): the data offsets it lists must end exactly at the end of
    the file, which is what a file cut short by a full disk or a killed copy fails.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"cut short ({size} bytes, no header)"
            length = int.from_bytes(head, "little")
            if length > size - 8:
                return f"cut short or not safetensors ({size} bytes; the header alone claims {length})"
            header = json.loads(fh.read(length))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return f"not a safetensors file ({type(exc).__name__}: {exc})"
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f"cut short ({size} bytes; its header describes {expected})"
    if size > expected:
        return f"not as written ({size - expected} bytes more than its header describes)"
    return None


def _safe_name(fingerprint: str) -> str:
    # Fingerprints are hex (limited views add ":limitN"); anything else becomes a plain file name.
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in fingerprint)
    return name if name and not name.startswith(".") else f"_{name}"


def _pid_alive(pid: int) -> bool:
    import psutil  # here: only claims need it, and `report` starts without it

    try:
        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # gone between the two calls, or not ours to inspect
        return psutil.pid_exists(pid)


def _row_problem(table: pa.Table, run_id: str) -> str | None:
    if table.num_rows != 1:
        return f"holds {table.num_rows} rows, not 1"
    found = table.column("run_id")[0].as_py()
    if found != run_id:
        return f"holds run {found!r}, not {run_id}"
    status = table.column("status")[0].as_py()
    if status not in (FINISHED, FAILED):
        return f"status {status!r} is neither {FINISHED!r} nor {FAILED!r}"
    return None


def _record_problem(stored: Any, run_id: str) -> tuple[RunRecord | None, str | None]:
    """``(record, None)`` for the JSON of a good record of ``run_id``, else ``(None, problem)``."""
    if isinstance(stored, dict) and stored.get("run_id") != run_id:
        return None, f"holds run {stored.get('run_id')!r}, not {run_id}"
    try:
        return RunRecord.from_json(stored), None
    except ValueError as exc:
        return None, str(exc)


def _error_text(exc: BaseException, path: Path) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    # pyarrow names the file again ("Could not open Parquet input source '<path>': ..."); the
    # damage line already does.
    return text.replace(f"Could not open Parquet input source '{path}': ", "")


class ResultsStore:
    """A results folder: write run records atomically, look them up, read them as a table."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.records_dir = self.root / "records"
        self.runs_dir = self.root / "runs"
        self.best_dir = self.root / "best"
        self.weights_dir = self.root / "weights"

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------
    def record_path(self, run_id: str) -> Path:
        return self.records_dir / f"{run_id}.json"

    def row_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.parquet"

    def claim_path(self, run_id: str) -> Path:
        """The claim file of ``run_id`` while a sweep trains it (dot-prefixed: never a record)."""
        return self.records_dir / f".{run_id}.claim"

    def weights_path(self, run_id: str) -> Path:
        """Where ``sweep --keep-weights`` keeps this run's weights (its info: same stem, .json)."""
        return self.weights_dir / f"{run_id}.safetensors"

    def has_weights(self, run_id: str) -> bool:
        """True when both the weights and their JSON info of ``run_id`` are stored."""
        path = self.weights_path(run_id)
        return path.is_file() and path.with_suffix(".json").is_file()

    def best_folder(self, fingerprint: str) -> Path:
        """``best/<fingerprint>/``: the best checkpoint of runs on that dataset."""
        return self.best_dir / _safe_name(fingerprint)

    def best_checkpoint_for(self, fingerprint: str) -> Path:
        """Where the best weights of runs on dataset ``fingerprint`` are written (info: .json)."""
        return self.best_folder(fingerprint) / BEST_WEIGHTS

    @property
    def legacy_best_path(self) -> Path:
        """``best/model.safetensors``: the one best checkpoint of stores written before per-dataset bests."""
        return self.best_dir / BEST_WEIGHTS

    @property
    def best_checkpoint_path(self) -> Path:
        """Weights of the store's default best checkpoint (:meth:`default_best`); its info is the .json.

        With no usable best this is ``best/model.safetensors``, which does not exist. For one
        dataset's best use :meth:`best_checkpoint_for`.
        """
        best = self.default_best()
        return best.path if best is not None else self.legacy_best_path

    # -- writing -------------------------------------------------------------------------
    def write(self, record: RunRecord) -> None:
        """Store ``record`` (keyed by its ``run_id``), replacing an earlier record of that run.

        Order matters for crash safety: the old row is removed first, then the JSON and the row
        are each renamed into place, so at every instant the row (if present) matches the JSON.
        Damaged files of the run are replaced the same way.
        """
        run_id = record.run_id
        if not run_id or not isinstance(run_id, str) or "/" in run_id or run_id.startswith("."):
            raise ValueError(f"a run record needs a plain run_id, got {run_id!r}")
        if record.status not in (FINISHED, FAILED):
            raise ValueError(f"run {run_id}: status must be {FINISHED!r} or {FAILED!r}, got {record.status!r}")
        try:
            self.row_path(run_id).unlink(missing_ok=True)
            atomic_write_json(self.record_path(run_id), record.to_json())
            self._write_row(run_id, record)
        except OSError as exc:  # disk full, read-only folder: nothing the sweep can go on with
            raise RunFailedError(f"cannot write run {run_id} to the results store {self.root}: {exc}") from exc

    def _write_row(self, run_id: str, record: RunRecord) -> None:
        table = pa.Table.from_pylist([record.to_row()], schema=RUN_SCHEMA)
        with atomic_path(self.row_path(run_id)) as tmp:
            pq.write_table(table, tmp)

    def repair(self, *, stale_seconds: float = 3600.0) -> int:
        """Recreate table rows that are missing or unreadable for good JSON records; tidy up.

        Also puts back a best folder lost mid-swap, and removes temp files older than
        ``stale_seconds`` and stale claims (so a sweep writing into the same store right now keeps
        its own). Runs claimed by a live sweep are left to it. Damaged records are left as they
        are: the run does not count as finished, and the next sweep that has it replaces them.
        Returns the number of rows recreated.
        """
        fixed = 0
        self.release_stale_claims()
        for run_id, record in self._scan().rewrite:
            claim = self.read_claim(run_id)
            if claim is not None and not self._claim_is_stale(claim, CLAIM_STALE_SECONDS):
                continue  # its sweep is writing it right now
            self._write_row(run_id, record)
            fixed += 1
        self._restore_swapped_best()
        now = time.time()
        for folder in (self.records_dir, self.runs_dir, self.best_dir, self.weights_dir):
            if not folder.is_dir():
                continue
            for path in folder.glob(".*.tmp"):
                try:
                    if path.is_file() and now - path.stat().st_mtime > stale_seconds:
                        path.unlink()
                except OSError:
                    pass  # another process removed it first
        stagings = [*self.root.glob(f".{self.best_dir.name}.*.staging")] if self.root.is_dir() else []
        stagings += [*self.best_dir.glob(".*.staging")] if self.best_dir.is_dir() else []
        for staging in stagings:
            try:
                if now - staging.stat().st_mtime > stale_seconds:
                    shutil.rmtree(staging, ignore_errors=True)
            except OSError:
                pass
        return fixed

    def _restore_swapped_best(self) -> None:
        # Killed between the two renames of atomic_directory: the previous best is intact under
        # its ".<name>.old-<pid>" name; put it back. (An older version swapped best/ as a whole.)
        swaps = [(self.root, self.best_dir.name)]
        if self.best_dir.is_dir():
            swaps += [(self.best_dir, p.name[1:].split(".old-")[0]) for p in self.best_dir.glob(".*.old-*")]
        for parent, name in swaps:
            target = parent / name
            if target.exists() or not parent.is_dir():
                continue
            olds = sorted(parent.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime)
            if olds:
                with contextlib.suppress(OSError):  # another process put it back first
                    os.replace(olds[-1], target)

    # -- reading -------------------------------------------------------------------------
    def _record_ids(self) -> Iterator[str]:
        if self.records_dir.is_dir():
            for path in sorted(self.records_dir.glob("*.json")):
                if not path.name.startswith("."):
                    yield path.stem

    def _row_ids(self) -> Iterator[str]:
        if self.runs_dir.is_dir():
            for path in sorted(self.runs_dir.glob("*.parquet")):
                if not path.name.startswith("."):
                    yield path.stem

    def read_record(self, run_id: str) -> tuple[RunRecord | None, str | None]:
        """``(record, problem)``: the stored record of ``run_id``, or None with why it is unusable.

        ``(None, None)`` when there is no record at all.
        """
        path = self.record_path(run_id)
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, None
        except UnicodeDecodeError:
            return None, "not UTF-8 text (damaged)"
        except ValueError as exc:  # cut short, or not JSON
            return None, f"not valid JSON ({exc})"
        except OSError as exc:
            return None, f"cannot be read ({exc})"
        return _record_problem(stored, run_id)

    def get(self, run_id: str) -> RunRecord | None:
        """The stored record of ``run_id``, or None if there is none (or it is damaged)."""
        return self.read_record(run_id)[0]

    def is_finished(self, run_id: str) -> bool:
        """True when a complete, finished record of ``run_id`` is stored (a damaged one is not)."""
        record = self.get(run_id)
        return record is not None and record.is_finished

    def records(self) -> list[RunRecord]:
        """Every stored record that is not damaged, ordered by run id."""
        found = (self.get(run_id) for run_id in self._record_ids())
        return [record for record in found if record is not None]

    def load_runs(self) -> pd.DataFrame:
        """All readable runs as a DataFrame, one row per run, columns as in :data:`RUN_SCHEMA`.

        Rows come from the Parquet files; a JSON record whose row is missing (writer killed
        between the two renames) or unreadable is flattened in memory, so no finished run is
        ever missed. Damaged runs are left out; :meth:`read_runs` says which.
        """
        return self.read_runs().frame

    def read_runs(self) -> RunsTable:
        """The runs table plus the damage found on the way (see the module doc)."""
        scan = self._scan()
        frame = _to_pandas(scan.table).sort_values("run_id", kind="stable").reset_index(drop=True)
        return RunsTable(frame, tuple(scan.damaged), tuple(scan.rebuilt))

    def _scan(self) -> _Scan:
        records: dict[str, RunRecord] = {}
        damaged: dict[str, Damage] = {}
        for run_id in self._record_ids():
            record, problem = self.read_record(run_id)
            if record is not None:
                records[run_id] = record
            else:
                damaged[run_id] = Damage(run_id, self.record_path(run_id), str(problem))
        # A good row under a damaged record is left out too: the run does not count as finished.
        rows = {run_id: self.row_path(run_id) for run_id in self._row_ids() if run_id not in damaged}
        table, bad_rows = self._read_rows(rows)
        rebuilt: list[Damage] = []
        rewrite: list[tuple[str, RunRecord]] = []
        for run_id, problem in bad_rows.items():
            if run_id in records:
                rebuilt.append(Damage(run_id, rows[run_id], problem, rebuilt=True))
            else:
                damaged[run_id] = Damage(run_id, rows[run_id], f"{problem}; no record to rebuild it from")
        tables = [table]
        for run_id, record in records.items():
            if run_id in rows and run_id not in bad_rows:
                continue
            try:  # one table per record: a value the schema cannot hold costs only its own run
                tables.append(pa.Table.from_pylist([record.to_row()], schema=RUN_SCHEMA))
            except (*_ROW_ERRORS, AttributeError, OverflowError) as exc:
                damaged[run_id] = Damage(run_id, self.record_path(run_id), f"cannot be tabled ({exc})")
                rebuilt = [d for d in rebuilt if d.run_id != run_id]
                continue
            rewrite.append((run_id, record))
        return _Scan(
            table=pa.concat_tables(tables),
            damaged=[damaged[k] for k in sorted(damaged)],
            rebuilt=rebuilt,
            rewrite=rewrite,
        )

    @staticmethod
    def _read_rows(rows: dict[str, Path]) -> tuple[pa.Table, dict[str, str]]:
        """The rows of ``rows`` (run id -> file) as one table, and the unreadable ones' problems.

        One dataset read when every file is fine (fast for many files); file by file otherwise,
        so a single bad file costs only its own run.
        """
        if not rows:
            return RUN_SCHEMA.empty_table(), {}
        try:
            table = pads.dataset([str(p) for p in rows.values()], schema=RUN_SCHEMA, format="parquet").to_table()
            statuses = set(table.column("status").to_pylist())
            if sorted(table.column("run_id").to_pylist()) == sorted(rows) and statuses <= {FINISHED, FAILED}:
                return table, {}
        except _ROW_ERRORS:
            pass
        tables, bad = [], {}
        for run_id, path in rows.items():
            try:
                one = pads.dataset([str(path)], schema=RUN_SCHEMA, format="parquet").to_table()
            except _ROW_ERRORS as exc:
                bad[run_id] = f"not a readable row file ({_error_text(exc, path)})"
                continue
            problem = _row_problem(one, run_id)
            if problem:
                bad[run_id] = problem
            else:
                tables.append(one)
        return (pa.concat_tables(tables) if tables else RUN_SCHEMA.empty_table()), bad

    # -- best checkpoints ----------------------------------------------------------------
    def _check_best(self, path: Path, *, legacy: bool) -> BestCheckpoint | None:
        """The best checkpoint at ``path`` (weights) as found, or None when neither file is there."""
        sidecar = path.with_suffix(".json")
        if not path.exists() and not sidecar.exists():
            return None
        folder_fp = None if legacy else path.parent.name
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            info = meta.get("info") if isinstance(meta, dict) else None
            if not isinstance(info, dict):
                raise ValueError("it holds no run info")
            spec = meta.get("model")
            if not isinstance(spec, dict) or any(spec.get(k) is None for k in ("strategy", "backbone", "num_classes")):
                raise ValueError("it does not say which model the weights are for")
            try:
                record = RunRecord.from_json(info)
            except ValueError as exc:
                raise ValueError(f"its run info {exc}") from None
        except FileNotFoundError:
            return BestCheckpoint(path, folder_fp, None, f"{sidecar.name} is missing (half-written best)", legacy)
        except (OSError, ValueError) as exc:
            return BestCheckpoint(path, folder_fp, None, f"{sidecar.name} is not valid ({exc})", legacy)
        fingerprint = record.fingerprint
        if not isinstance(fingerprint, str):
            fingerprint = folder_fp  # the folder's name, or for an older store's best: unknown
        problem = safetensors_problem(path)
        if problem is not None:
            problem = f"{path.name} is {problem}"
        return BestCheckpoint(path, fingerprint, record, problem, legacy)

    def bests(self) -> list[BestCheckpoint]:
        """Every best checkpoint in the store, usable or not: one per dataset folder, then the
        ``best/model.safetensors`` of an older store (if any), which belongs to the dataset its
        info names."""
        found = []
        if self.best_dir.is_dir():
            for folder in sorted(self.best_dir.iterdir()):
                if folder.is_dir() and not folder.name.startswith("."):
                    best = self._check_best(folder / BEST_WEIGHTS, legacy=False)
                    if best is not None:
                        found.append(best)
            legacy = self._check_best(self.legacy_best_path, legacy=True)
            if legacy is not None:
                found.append(legacy)
        return found

    def best_for(self, fingerprint: str) -> BestCheckpoint | None:
        """The usable best checkpoint of runs on dataset ``fingerprint``, or None.

        ``best/<fingerprint>/`` first; else an older store's ``best/model.safetensors`` when its
        info names that dataset. A damaged checkpoint counts as none.
        """
        current = self._check_best(self.best_checkpoint_for(fingerprint), legacy=False)
        if current is not None and current.usable:
            return current
        legacy = self._check_best(self.legacy_best_path, legacy=True)
        if legacy is not None and legacy.usable and legacy.fingerprint == fingerprint:
            return legacy
        return None

    def default_best(self) -> BestCheckpoint | None:
        """The best checkpoint to use when no dataset is named: the only usable one, or of several
        (one per dataset) the one written last. None when there is no usable best."""
        usable = [b for b in self.bests() if b.usable]
        if not usable:
            return None
        return max(usable, key=lambda b: b.path.with_suffix(".json").stat().st_mtime)

    def best_record(self, fingerprint: str | None = None) -> RunRecord | None:
        """The run record saved with the best checkpoint of dataset ``fingerprint``, or None.

        Without ``fingerprint``: that of :meth:`default_best`. A damaged checkpoint (weights cut
        short, info missing or broken) counts as no best.
        """
        best = self.default_best() if fingerprint is None else self.best_for(fingerprint)
        return best.record if best is not None else None

    def update_best(
        self,
        record: RunRecord,
        write: Callable[[Path], None],
        *,
        better: Callable[[RunRecord, RunRecord | None], bool] | None = None,
    ) -> bool:
        """Make ``record``'s run the best of its dataset when ``better(record, current best)`` says so.

        ``write(path)`` writes the weights to ``path`` and their info to ``path.with_suffix(".json")``
        (e.g. ``save_checkpoint``); it writes into a staging folder that replaces
        ``best/<fingerprint>/`` as a whole, so weights and info always describe the same run.
        Compare and replace happen under the dataset's best lock, so two sweeps finishing at once
        cannot put the worse run last. Without ``better`` the record always wins. An older store's
        ``best/model.safetensors`` of the same dataset is removed once replaced. Returns True when
        ``record`` became the best. Raises :class:`RunFailedError` when the lock is not free in time.
        """
        fingerprint = record_fingerprint(record)
        with self.best_lock(fingerprint):
            if better is not None and not better(record, self.best_record(fingerprint)):
                return False
            with atomic_directory(self.best_folder(fingerprint)) as staging:
                write(staging / BEST_WEIGHTS)
            legacy = self._check_best(self.legacy_best_path, legacy=True)
            if legacy is not None and legacy.fingerprint == fingerprint:
                # Weights first: info without weights reads as a damaged best, never as a usable one.
                self.legacy_best_path.unlink(missing_ok=True)
                self.legacy_best_path.with_suffix(".json").unlink(missing_ok=True)
        return True

    @contextmanager
    def best_lock(self, fingerprint: str, *, wait_seconds: float = BEST_LOCK_WAIT_SECONDS) -> Iterator[Claim]:
        """Hold the lock on dataset ``fingerprint``'s best checkpoint (``best/.<fingerprint>.lock``)."""
        path = self.best_dir / f".{_safe_name(fingerprint)}.lock"
        deadline = time.monotonic() + wait_seconds
        while True:
            claim = self._claim_file(
                path, fingerprint, BEST_LOCK_STALE_SECONDS, what=f"the best of dataset {fingerprint}"
            )
            if claim.held_by_us:
                break
            if time.monotonic() > deadline:
                raise RunFailedError(
                    f"the best checkpoint of dataset {fingerprint[:12]} stayed locked by {claim.describe()}",
                    hint=f"if no sweep is running, remove {path}",
                )
            time.sleep(0.05)
        try:
            yield claim
        finally:
            self.release_claim(claim)

    # -- claims --------------------------------------------------------------------------
    def claim_run(self, run_id: str, *, stale_seconds: float = CLAIM_STALE_SECONDS) -> Claim:
        """Claim ``run_id`` for training by this process (``records/.<run_id>.claim``).

        Returns our claim (``held_by_us``; release it with :meth:`release_claim` once the record
        is written, the run failed or was interrupted), or the live claim of another process
        (``held_by_us`` False): leave that run alone. A stale claim -- its process is gone (same
        host), or it is older than ``stale_seconds`` -- is taken over. Raises
        :class:`RunFailedError` when the store cannot be written.
        """
        return self._claim_file(self.claim_path(run_id), run_id, stale_seconds, what=f"run {run_id}")

    def read_claim(self, run_id: str) -> Claim | None:
        """The current claim on ``run_id``, or None when nobody claims it."""
        return self._read_claim(self.claim_path(run_id), run_id)[0]

    def release_claim(self, claim: Claim) -> None:
        """Give back a claim taken by this process (a no-op for someone else's)."""
        if not claim.held_by_us or claim.token is None:
            return
        _HELD_TOKENS.discard(claim.token)
        current, _ = self._read_claim(claim.path, claim.run_id)
        if current is not None and current.token == claim.token:
            with contextlib.suppress(FileNotFoundError):
                claim.path.unlink()

    def release_stale_claims(self, *, stale_seconds: float = CLAIM_STALE_SECONDS) -> int:
        """Remove the stale claims of the store's runs (see :meth:`claim_run`); returns how many."""
        removed = 0
        if self.records_dir.is_dir():
            for path in self.records_dir.glob(".*.claim"):
                claim, identity = self._read_claim(path, path.name[1 : -len(".claim")])
                if claim is not None and self._claim_is_stale(claim, stale_seconds):
                    removed += self._take_over(path, identity)
        return removed

    def _claim_file(self, path: Path, run_id: str, stale_seconds: float, *, what: str) -> Claim:
        token = uuid.uuid4().hex
        ours = Claim(run_id, path, os.getpid(), socket.gethostname(), time.time(), token, held_by_us=True)
        payload = json.dumps(
            {"run_id": run_id, "pid": ours.pid, "host": ours.host, "created": ours.created, "token": token}
        )
        holder: Claim | None = None
        for _ in range(5):  # each retry follows a claim that vanished or a stale one taken over
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder, identity = self._read_claim(path, run_id)
                if holder is None:
                    continue  # released meanwhile
                if not self._claim_is_stale(holder, stale_seconds):
                    return holder
                self._take_over(path, identity)
                continue
            except OSError as exc:
                raise RunFailedError(
                    f"cannot write {what} to the results store {self.root} (its claim): {exc}"
                ) from exc
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(payload)
            except OSError as exc:
                path.unlink(missing_ok=True)
                raise RunFailedError(
                    f"cannot write {what} to the results store {self.root} (its claim): {exc}"
                ) from exc
            _HELD_TOKENS.add(token)
            return ours
        # Claims kept changing hands under us: someone else is busy with this run.
        return holder if holder is not None else Claim(run_id, path, None, None, time.time(), None)

    @staticmethod
    def _read_claim(path: Path, run_id: str) -> tuple[Claim | None, tuple[int, int] | None]:
        """The claim at ``path`` and its file identity (inode, mtime), or (None, None) if there is none."""
        try:
            stat = path.stat()
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, None
        except (OSError, UnicodeDecodeError):
            text = ""
            try:
                stat = path.stat()
            except OSError:
                return None, None
        identity = (stat.st_ino, stat.st_mtime_ns)
        try:
            data = json.loads(text)
            claim = Claim(run_id, path, int(data["pid"]), str(data["host"]), float(data["created"]), str(data["token"]))
        except (ValueError, TypeError, KeyError):
            # Being written right now, or junk: its age decides (CLAIM_GRACE_SECONDS).
            claim = Claim(run_id, path, None, None, stat.st_mtime, None)
        if claim.token is not None and claim.token in _HELD_TOKENS and claim.pid == os.getpid():
            claim = dataclasses.replace(claim, held_by_us=True)
        return claim, identity

    @staticmethod
    def _claim_is_stale(claim: Claim, stale_seconds: float) -> bool:
        age = time.time() - claim.created
        if claim.pid is None:
            return age > CLAIM_GRACE_SECONDS
        if age > stale_seconds:
            return True
        if claim.host != socket.gethostname():
            return False  # another machine's process cannot be checked from here: only age counts
        if claim.pid == os.getpid():
            return claim.token not in _HELD_TOKENS  # a leftover of this process, not held any more
        return not _pid_alive(claim.pid)

    @staticmethod
    def _take_over(path: Path, identity: tuple[int, int] | None) -> int:
        """Remove the stale claim at ``path`` -- only if it is still the file judged stale. Returns 1 if removed."""
        # Rename it aside first: of two processes taking over at once, only one gets the file,
        # and a fresh claim made since we looked is put back, not deleted.
        aside = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.stale.tmp")
        try:
            os.rename(path, aside)
        except OSError:
            return 0
        try:
            stat = aside.stat()
            if identity is not None and (stat.st_ino, stat.st_mtime_ns) != identity:
                with contextlib.suppress(OSError):  # not the stale one: give it back (unless claimed anew)
                    os.link(aside, path)
                return 0
            return 1
        finally:
            aside.unlink(missing_ok=True)


@dataclass
class _Scan:
    table: pa.Table
    damaged: list[Damage] = field(default_factory=list)
    rebuilt: list[Damage] = field(default_factory=list)
    rewrite: list[tuple[str, RunRecord]] = field(default_factory=list)  # (run id, record) whose rows are missing or bad


def open_store(root: Path, *, must_exist: bool = False) -> ResultsStore:
    """A :class:`ResultsStore` at ``root``; with ``must_exist`` a missing folder is a BadInputError."""
    store = ResultsStore(root)
    if must_exist and not store.root.is_dir():
        raise BadInputError(
            f"no results store at {store.root}",
            hint="run `fusioncli sweep` (or `fusioncli demo`) first, or pass --results-dir",
        )
    return store
