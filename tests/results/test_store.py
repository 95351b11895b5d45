"""The results store: atomic per-run files, a fixed table schema, crash repair."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
from sweep_fakes import FINGERPRINT, fake_record, stored_as  # noqa: E402

from fusioncli.errors import BadInputError  # noqa: E402
from fusioncli.config import CONFIG_FIELDS, RunConfig  # noqa: E402
from fusioncli.record import RUN_SCHEMA, RunRecord  # noqa: E402
from fusioncli.results.store import ResultsStore, open_store  # noqa: E402


def _config(**kw) -> RunConfig:
    return RunConfig(**{"epochs": 2, "device": "cpu", "precision": "fp32", **kw})


def test_write_then_read_back(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    record = fake_record(_config(), accuracy=0.9)
    store.write(record)
    assert store.get(record.run_id) == record
    assert store.is_finished(record.run_id)
    assert store.records() == [record]
    assert sorted(p.name for p in store.records_dir.iterdir()) == [f"{record.run_id}.json"]
    assert sorted(p.name for p in store.runs_dir.iterdir()) == [f"{record.run_id}.parquet"]


def test_plain_pandas_reads_the_runs_folder(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    finished = fake_record(_config(strategy="late", limit_per_class=100), accuracy=0.75, gpu_bytes=2**30)
    failed = fake_record(_config(strategy="intermediate-add"), status="failed", error="RuntimeError: x")
    store.write(finished)
    store.write(failed)
    runs = pd.read_parquet(tmp_path / "runs").sort_values("strategy").reset_index(drop=True)
    assert list(runs.columns) == RUN_SCHEMA.names
    assert list(runs["status"]) == ["failed", "finished"]
    row = runs.iloc[1]
    assert row["val_accuracy"] == 0.75
    assert row["lr"] == 1e-4 and row["epochs"] == 2 and row["limit_per_class"] == 100
    assert row["peak_gpu_allocated_bytes"] == 2**30
    assert row["dataset_fingerprint"] == FINGERPRINT
    assert row["class_names"] == "cubes,spheres"
    assert json.loads(row["history_json"]) == list(finished.history)
    assert json.loads(row["config_json"]) == finished.config
    assert math.isnan(runs.iloc[0]["val_accuracy"])
    assert runs.iloc[0]["error"] == "RuntimeError: x"


def test_every_row_file_has_the_same_schema(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write(fake_record(_config(), gpu_bytes=None))
    store.write(fake_record(_config(seed=1), status="failed", error="e"))
    for path in store.runs_dir.glob("*.parquet"):
        assert pq.read_schema(path).remove_metadata() == RUN_SCHEMA


def test_load_runs_has_nullable_ints_and_all_columns(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write(fake_record(_config()))
    runs = store.load_runs()
    assert set(CONFIG_FIELDS) <= set(runs.columns)
    assert str(runs["limit_per_class"].dtype) == "Int64" and runs["limit_per_class"].isna().all()
    assert str(runs["epochs"].dtype) == "Int64"


def test_empty_store_reads_as_an_empty_table(tmp_path: Path) -> None:
    runs = ResultsStore(tmp_path / "nothing").load_runs()
    assert runs.empty and list(runs.columns) == RUN_SCHEMA.names


def test_open_store_must_exist(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as info:
        open_store(tmp_path / "missing", must_exist=True)
    assert "fusioncli sweep" in info.value.hint


def test_rewriting_a_run_replaces_it_whole(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    failed = fake_record(_config(), status="failed", error="boom")
    store.write(failed)
    assert not store.is_finished(failed.run_id)
    store.write(fake_record(_config(), accuracy=0.8))
    runs = store.load_runs()
    assert len(runs) == 1 and runs.loc[0, "status"] == "finished" and runs.loc[0, "val_accuracy"] == 0.8


def test_killed_between_json_and_row_is_repaired(tmp_path: Path) -> None:
    """The JSON is renamed in first; a run without its row still counts and gets its row back."""
    store = ResultsStore(tmp_path)
    record = fake_record(_config())
    store.write(record)
    store.row_path(record.run_id).unlink()  # as if killed right after the JSON rename
    assert store.is_finished(record.run_id)
    assert list(store.load_runs()["run_id"]) == [record.run_id]
    assert store.repair() == 1
    assert list(pd.read_parquet(store.runs_dir)["run_id"]) == [record.run_id]
    assert store.repair() == 0


def test_repair_removes_only_stale_temp_files(tmp_path: Path) -> None:
    import os
    import time

    store = ResultsStore(tmp_path)
    store.write(fake_record(_config()))
    stale = store.runs_dir / ".x.parquet.old.tmp"
    fresh = store.runs_dir / ".y.parquet.new.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    store.repair()
    assert not stale.exists() and fresh.exists()


def test_repair_restores_a_best_folder_lost_mid_swap(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    old_best = tmp_path / ".best.old-12345"
    old_best.mkdir(parents=True)
    (old_best / "model.json").write_text("{}")
    store.repair()
    assert (store.best_dir / "model.json").exists() and not old_best.exists()


def test_nan_metrics_are_stored_as_null(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    record = fake_record(_config(), val_loss=float("nan"))
    store.write(record)
    text = store.record_path(record.run_id).read_text()
    assert "NaN" not in text
    assert json.loads(text)["metrics"]["val_loss"] is None


@pytest.mark.parametrize("bad", [None, "", "../x", ".hidden"])
def test_write_rejects_unusable_run_ids(tmp_path: Path, bad) -> None:
    record = fake_record(_config())
    record = record.with_run_id(bad)
    with pytest.raises(ValueError):
        ResultsStore(tmp_path).write(record)


def test_write_rejects_unknown_status(tmp_path: Path) -> None:
    record = dataclasses.replace(fake_record(_config()), status="running")  # no constructor makes one
    with pytest.raises(ValueError, match="status"):
        ResultsStore(tmp_path).write(record)


# -- modality_dropout and robustness columns (session 2; the row itself: tests/test_record_row.py)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_fakes import record as _record  # noqa: E402
from results_fakes import NEW_COLUMNS  # noqa: E402
from results_fakes import robustness as _robustness  # noqa: E402



def test_rows_written_by_the_old_schema_still_load(tmp_path: Path) -> None:
    """A row file from before modality_dropout / robustness existed reads with defaults and nulls."""
    import pyarrow as pa

    store = ResultsStore(tmp_path)
    new = _record(seed=0, accuracy=0.8)
    old_rec = stored_as(new, config={k: v for k, v in new.config.items() if k != "modality_dropout"})
    store.write(old_rec)
    old_schema = pa.schema([f for f in RUN_SCHEMA if f.name not in NEW_COLUMNS])
    old_row = {k: v for k, v in old_rec.to_row().items() if k in old_schema.names}
    pq.write_table(pa.Table.from_pylist([old_row], schema=old_schema), store.row_path(old_rec.run_id))
    assert "modality_dropout" not in pq.read_schema(store.row_path(old_rec.run_id)).names
    new_rec = _record(seed=1, accuracy=0.9, modality_dropout=0.25, robust=_robustness(0.9))
    store.write(new_rec)
    runs = store.load_runs().set_index("run_id")
    assert list(runs.columns) == RUN_SCHEMA.names[1:]
    assert runs.loc[old_rec.run_id, "modality_dropout"] == 0.0
    assert math.isnan(runs.loc[old_rec.run_id, "robust_mean_auc"])
    assert pd.isna(runs.loc[old_rec.run_id, "robustness_json"])
    assert runs.loc[old_rec.run_id, "val_accuracy"] == 0.8
    assert runs.loc[new_rec.run_id, "modality_dropout"] == 0.25
    assert runs.loc[new_rec.run_id, "acc_lidar_missing"] == pytest.approx(0.63)


def test_modality_dropout_is_a_config_field() -> None:
    assert "modality_dropout" in CONFIG_FIELDS
    assert RUN_SCHEMA.field("modality_dropout").type == "double"


# -- a store that survives damage (issue 12 part 6) ---------------------------------------------

import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import pyarrow as pa  # noqa: E402

from fusioncli.results import store as store_module  # noqa: E402
from fusioncli.results.store import CLAIM_STALE_SECONDS, BestCheckpoint, safetensors_problem  # noqa: E402


def _three_runs(root: Path) -> tuple[ResultsStore, list[dict]]:
    store = ResultsStore(root)
    records = [fake_record(_config(seed=seed), accuracy=0.7 + 0.1 * seed) for seed in range(3)]
    for record in records:
        store.write(record)
    return store, records


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _garbage_rows(store: ResultsStore, record: RunRecord, other: RunRecord) -> dict[str, bytes]:
    """What a damaged row file can hold, each as bytes."""
    import io

    def parquet(rows: list[dict]) -> bytes:
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=RUN_SCHEMA), sink)
        return sink.getvalue()

    good = store.row_path(record.run_id).read_bytes()
    return {
        "empty": b"",
        "garbage": b"this is not parquet at all",
        "truncated": good[: len(good) // 2],
        "two rows": parquet([record.to_row(), record.to_row()]),
        "another run": parquet([other.to_row()]),
        "bad status": parquet([{**record.to_row(), "status": "running"}]),
    }


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated", "two rows", "another run", "bad status"])
def test_a_damaged_row_is_read_from_its_record_and_repair_rewrites_it(tmp_path: Path, kind: str) -> None:
    store, records = _three_runs(tmp_path)
    damaged = records[1]
    path = store.row_path(damaged.run_id)
    path.write_bytes(_garbage_rows(store, damaged, records[0])[kind])
    table = store.read_runs()
    assert list(table.frame["run_id"]) == sorted(r.run_id for r in records)
    assert table.frame.set_index("run_id").loc[damaged.run_id, "val_accuracy"] == pytest.approx(0.8)
    assert table.damaged == ()
    [note] = table.rebuilt
    assert note.run_id == damaged.run_id and note.path == path and note.rebuilt and note.problem
    assert str(path) in str(note)
    assert store.is_finished(damaged.run_id)
    assert list(store.load_runs()["run_id"]) == list(table.frame["run_id"])
    assert store.repair() == 1
    assert sorted(pd.read_parquet(store.runs_dir)["run_id"]) == sorted(r.run_id for r in records)
    assert store.read_runs().rebuilt == () and store.repair() == 0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"run_id": "cut', "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[1, 2, 3]", "not a run record"),
        (b'{"run_id": "someone-else", "status": "finished", "config": {}}', "holds run 'someone-else'"),
        (None, "status 'running'"),
    ],
)
def test_a_broken_record_is_a_damaged_run_that_is_not_finished(tmp_path: Path, content, problem: str) -> None:
    store, records = _three_runs(tmp_path)
    broken = records[0]
    path = store.record_path(broken.run_id)
    if content is None:
        content = json.dumps({**broken.to_json(), "status": "running"}).encode()
    path.write_bytes(content)
    assert store.get(broken.run_id) is None and not store.is_finished(broken.run_id)
    assert [r.run_id for r in store.records()] == [r.run_id for r in records[1:]]
    table = store.read_runs()
    # The row is fine, but the record decides: the run is left out (and a sweep trains it again).
    assert list(table.frame["run_id"]) == sorted(r.run_id for r in records[1:])
    [damage] = table.damaged
    assert damage.run_id == broken.run_id and damage.path == path and problem in damage.problem
    assert store.repair() == 0 and path.read_bytes() == content  # left for the sweep to replace
    store.write(broken)  # what the sweep does when it has trained the run again
    assert store.is_finished(broken.run_id) and store.read_runs().damaged == ()


def test_a_bad_row_without_a_record_is_a_damaged_run(tmp_path: Path) -> None:
    store, records = _three_runs(tmp_path)
    lost = records[2]
    store.record_path(lost.run_id).unlink()
    _truncate(store.row_path(lost.run_id))
    table = store.read_runs()
    assert len(table.frame) == 2
    [damage] = table.damaged
    assert damage.path == store.row_path(lost.run_id) and "no record" in damage.problem
    assert not store.is_finished(lost.run_id)


def test_a_record_and_row_both_broken_are_one_damaged_run(tmp_path: Path) -> None:
    store, records = _three_runs(tmp_path)
    rid = records[1].run_id
    _truncate(store.record_path(rid))
    _truncate(store.row_path(rid))
    table = store.read_runs()
    assert len(table.frame) == 2 and table.rebuilt == ()
    assert [(d.run_id, d.path) for d in table.damaged] == [(rid, store.record_path(rid))]


def test_every_row_is_read_in_one_pass_when_all_are_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultsStore(tmp_path)
    for seed in range(20):
        store.write(fake_record(_config(seed=seed)))
    calls = []
    real = store_module.pads.dataset
    monkeypatch.setattr(store_module.pads, "dataset", lambda files, **kw: calls.append(len(files)) or real(files, **kw))
    assert len(store.load_runs()) == 20
    assert calls == [20]
    calls.clear()
    _truncate(sorted(store.runs_dir.glob("*.parquet"))[7])
    table = store.read_runs()
    assert len(table.frame) == 20 and len(table.rebuilt) == 1
    assert calls == [20] + [1] * 20  # the fast read failed: then file by file


def _save_best(store: ResultsStore, record: RunRecord, *, better=None) -> bool:
    import torch

    from fusioncli.train.checkpoint import save_checkpoint

    model = torch.nn.Linear(3, 2)
    return store.update_best(record, lambda path: save_checkpoint(path, model, record), better=better)


def _higher_accuracy(record: RunRecord, best: RunRecord | None) -> bool:
    return best is None or record.val_accuracy > best.val_accuracy


def test_the_best_is_kept_per_dataset(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    easy = fake_record(_config(), "easy-dataset", accuracy=0.99)
    hard = fake_record(_config(), "hard-dataset", accuracy=0.61)
    assert _save_best(store, easy, better=_higher_accuracy)
    assert _save_best(store, hard, better=_higher_accuracy)  # not hidden by the easy dataset's 0.99
    assert store.best_record("easy-dataset").run_id == easy.run_id
    assert store.best_record("hard-dataset").run_id == hard.run_id
    assert store.best_checkpoint_for("hard-dataset") == store.best_dir / "hard-dataset" / "model.safetensors"
    assert store.best_checkpoint_for("hard-dataset").is_file()
    assert {b.fingerprint for b in store.bests()} == {"easy-dataset", "hard-dataset"}
    worse = fake_record(_config(seed=9), "hard-dataset", accuracy=0.5)
    assert not _save_best(store, worse, better=_higher_accuracy)
    assert store.best_record("hard-dataset").run_id == hard.run_id
    assert store.best_record("never-seen") is None
    # Without a dataset: the best written last (here the hard dataset's).
    assert store.best_record().run_id == hard.run_id
    assert store.best_checkpoint_path == store.best_checkpoint_for("hard-dataset")
    assert not list(store.best_dir.glob(".*"))  # no lock or staging folder left behind


def test_unusual_fingerprints_make_plain_folder_names(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    for fingerprint in ("abc:limit100", "../escape", ".hidden"):
        folder = store.best_folder(fingerprint)
        assert folder.parent == store.best_dir and not folder.name.startswith(".")
    assert store.best_folder("abc:limit100") != store.best_folder("abc")


def _legacy_best(store: ResultsStore, record: RunRecord) -> None:
    """best/ as the previous version wrote it: one model.safetensors + model.json for the store."""
    import torch

    from fusioncli.train.checkpoint import save_checkpoint

    save_checkpoint(store.best_dir / "model.safetensors", torch.nn.Linear(3, 2), record)


def test_an_old_stores_best_belongs_to_the_dataset_its_info_names(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    old = fake_record(_config(), FINGERPRINT, accuracy=0.9)
    _legacy_best(store, old)
    [best] = store.bests()
    assert best.legacy and best.usable and best.fingerprint == FINGERPRINT and best.path == store.legacy_best_path
    assert store.best_record(FINGERPRINT).run_id == old.run_id
    assert store.best_record().run_id == old.run_id
    assert store.best_checkpoint_path == store.legacy_best_path
    assert store.best_record("another-dataset") is None
    # Another dataset gets its own best; the old one stays for its dataset.
    assert _save_best(store, fake_record(_config(), "another-dataset", accuracy=0.5), better=_higher_accuracy)
    assert store.best_record(FINGERPRINT).run_id == old.run_id and store.legacy_best_path.is_file()
    # A worse run on its dataset leaves it; a better one replaces it, and the old pair goes.
    assert not _save_best(store, fake_record(_config(seed=1), accuracy=0.8), better=_higher_accuracy)
    assert store.legacy_best_path.is_file()
    better = fake_record(_config(seed=2), accuracy=0.95)
    assert _save_best(store, better, better=_higher_accuracy)
    assert store.best_record(FINGERPRINT).run_id == better.run_id
    assert not store.legacy_best_path.exists() and not store.legacy_best_path.with_suffix(".json").exists()
    assert {b.fingerprint for b in store.bests()} == {FINGERPRINT, "another-dataset"}


@pytest.mark.parametrize("damage", ["weights truncated", "weights missing", "info missing", "info broken", "info no model"])
def test_a_damaged_best_counts_as_none_and_the_next_run_replaces_it(tmp_path: Path, damage: str) -> None:
    store = ResultsStore(tmp_path)
    first = fake_record(_config(), accuracy=0.9)
    _save_best(store, first, better=_higher_accuracy)
    weights = store.best_checkpoint_for(FINGERPRINT)
    info = weights.with_suffix(".json")
    if damage == "weights truncated":
        _truncate(weights, 0.9)
    elif damage == "weights missing":
        weights.unlink()
    elif damage == "info missing":
        info.unlink()
    elif damage == "info broken":
        _truncate(info)
    else:
        meta = json.loads(info.read_text())
        del meta["model"]
        info.write_text(json.dumps(meta))
    assert store.best_record(FINGERPRINT) is None and store.best_for(FINGERPRINT) is None
    assert store.best_record() is None
    [found] = store.bests()
    assert isinstance(found, BestCheckpoint) and not found.usable and found.problem
    assert found.path == weights and found.fingerprint == FINGERPRINT
    worse = fake_record(_config(seed=1), accuracy=0.6)  # worse than the damaged one claimed
    assert _save_best(store, worse, better=_higher_accuracy)
    assert store.best_record(FINGERPRINT).run_id == worse.run_id
    assert all(b.usable for b in store.bests())


def test_safetensors_check_needs_no_torch_and_finds_short_files(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    _save_best(store, fake_record(_config()))
    weights = store.best_checkpoint_for(FINGERPRINT)
    assert safetensors_problem(weights) is None
    data = weights.read_bytes()
    for cut, problem in ((len(data) - 1, "cut short"), (40, "cut short"), (7, "no header"), (0, "no header")):
        weights.write_bytes(data[:cut])
        assert problem in safetensors_problem(weights), cut
    weights.write_bytes(data + b"extra")
    assert "5 bytes more than its header describes" in safetensors_problem(weights)
    assert safetensors_problem(tmp_path / "nothing.safetensors") == "missing"


def test_repair_restores_a_dataset_best_lost_mid_swap(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    _save_best(store, fake_record(_config()))
    folder = store.best_folder(FINGERPRINT)
    os.replace(folder, store.best_dir / f".{folder.name}.old-4242")  # killed between the two renames
    assert store.best_record(FINGERPRINT) is None
    store.repair()
    assert store.best_record(FINGERPRINT) is not None


# claims


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _write_claim(store: ResultsStore, run_id: str, *, pid: int, host: str | None = None, age: float = 0.0) -> Path:
    path = store.claim_path(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = time.time() - age
    host = socket.gethostname() if host is None else host
    path.write_text(json.dumps({"run_id": run_id, "pid": pid, "host": host, "created": created, "token": "theirs"}))
    return path


def test_a_claim_is_exclusive_until_released(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    claim = store.claim_run("run-a")
    assert claim.held_by_us and claim.pid == os.getpid() and claim.host == socket.gethostname()
    assert store.claim_path("run-a").is_file() and store.claim_path("run-a").name == ".run-a.claim"
    assert store.records() == [] and store.load_runs().empty  # a claim is never a record
    # This process asking again gets its own claim back, not a second one.
    again = store.claim_run("run-a")
    assert again.held_by_us and again.token == claim.token
    store.release_claim(claim)
    assert not store.claim_path("run-a").exists() and store.read_claim("run-a") is None
    other = store.claim_run("run-a")
    assert other.held_by_us and other.token != claim.token
    store.release_claim(other)


def test_a_live_claim_of_another_process_is_respected(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as sleeper:
        try:
            _write_claim(store, "run-b", pid=sleeper.pid)
            held = store.claim_run("run-b")
            assert not held.held_by_us and held.pid == sleeper.pid
            assert f"pid {sleeper.pid} on {socket.gethostname()}" in held.describe()
            store.release_claim(held)  # not ours: a no-op
            assert store.claim_path("run-b").exists()
            assert store.release_stale_claims() == 0
        finally:
            sleeper.kill()
    sleeper.wait()
    # Its process is gone: the claim is stale and taken over.
    taken = store.claim_run("run-b")
    assert taken.held_by_us
    store.release_claim(taken)


def test_the_claim_of_a_dead_process_is_stale(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    path = _write_claim(store, "run-c", pid=_dead_pid())
    claim = store.claim_run("run-c")
    assert claim.held_by_us and json.loads(path.read_text())["token"] == claim.token
    store.release_claim(claim)
    _write_claim(store, "run-c", pid=_dead_pid())
    assert store.repair() == 0 and not path.exists()  # repair clears stale claims too


def test_another_hosts_claim_is_stale_only_when_old(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    _write_claim(store, "run-d", pid=1, host="some-other-host", age=60.0)
    assert not store.claim_run("run-d").held_by_us  # its pid cannot be checked from here
    _write_claim(store, "run-d", pid=1, host="some-other-host", age=CLAIM_STALE_SECONDS + 60)
    claim = store.claim_run("run-d")
    assert claim.held_by_us
    store.release_claim(claim)
    _write_claim(store, "run-d", pid=1, host="some-other-host", age=7200.0)
    assert store.claim_run("run-d", stale_seconds=3600.0).held_by_us


def test_a_leftover_claim_of_this_very_process_is_stale(tmp_path: Path) -> None:
    """E.g. a notebook whose earlier sweep raised: same pid, but no claim it still holds."""
    store = ResultsStore(tmp_path)
    _write_claim(store, "run-e", pid=os.getpid())
    claim = store.claim_run("run-e")
    assert claim.held_by_us
    store.release_claim(claim)


def test_an_unreadable_claim_gets_a_grace_period(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    path = store.claim_path("run-f")
    path.parent.mkdir(parents=True)
    path.write_text("")  # created, not yet written: another process between open and write
    assert not store.claim_run("run-f").held_by_us
    old = time.time() - 3600
    os.utime(path, (old, old))
    claim = store.claim_run("run-f")
    assert claim.held_by_us
    store.release_claim(claim)


def test_releasing_never_removes_a_claim_taken_over_since(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    claim = store.claim_run("run-g")
    _write_claim(store, "run-g", pid=1, host="some-other-host")  # someone took it over meanwhile
    store.release_claim(claim)
    assert json.loads(store.claim_path("run-g").read_text())["token"] == "theirs"


def test_repair_leaves_a_run_claimed_by_a_live_sweep_alone(tmp_path: Path) -> None:
    store, records = _three_runs(tmp_path)
    rid = records[0].run_id
    store.row_path(rid).unlink()  # that sweep is between its JSON and its row
    claim = store.claim_run(rid)
    assert store.repair() == 0 and not store.row_path(rid).exists()
    store.release_claim(claim)
    assert store.repair() == 1


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [("env", ["not", "an", "object"], "its env is not a JSON object"), ("flops_per_sample", 2**70, "cannot be tabled")],
)
def test_a_record_the_table_cannot_hold_is_a_damaged_run(tmp_path: Path, field: str, value, problem: str) -> None:
    store, records = _three_runs(tmp_path)
    odd = records[0]
    store.row_path(odd.run_id).unlink()  # so the run has to be tabled from its record
    text = json.loads(store.record_path(odd.run_id).read_text())
    text[field] = value
    store.record_path(odd.run_id).write_text(json.dumps(text))
    table = store.read_runs()
    assert len(table.frame) == 2
    [damage] = table.damaged
    assert damage.path == store.record_path(odd.run_id) and problem in damage.problem
    assert store.repair() == 0
