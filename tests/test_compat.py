"""Compatibility: a results store written before the consolidation is read, reported and
resumed exactly as that version did (fixture: tests/fixtures/store_v0_1, see its README)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fusioncli.cli import app
from fusioncli.config import RunConfig, run_id

FIXTURE = Path(__file__).parent / "fixtures" / "store_v0_1"
EXPECTED = FIXTURE / "expected"
FINGERPRINT = "e2c87e5b3ef9f328cf9eea6a7ea48a61"
FIRST_GRID = [
    "--strategies", "late,intermediate-add", "--lrs", "1e-3", "--schedulers", "cosine", "--epochs", "1",
    "--batch-size", "8", "--precision", "fp32", "--device", "cpu",
]  # fmt: skip

runner = CliRunner()

# Run-config fields added after the fixture was written, with the value every old run reads as
# (its hash-neutral default). Machine-readable outputs gain them as keys/columns; apart from
# them, every key, column and value must be the old version's. Human formats leave a field out
# of their caption while every row holds its neutral value, so they stay byte for byte.
ADDED_SINCE_FIXTURE: dict[str, object] = {"lidar_norm": "seed", "rgb_norm": "seed"}


def without_added(rows: list[dict]) -> list[dict]:
    """``rows`` (JSON objects) with the added fields checked against their old value, then dropped."""
    kept = []
    for row in rows:
        for key, old_value in ADDED_SINCE_FIXTURE.items():
            if isinstance(row, dict) and key in row:
                assert row[key] == old_value, (key, row[key])
        kept.append({k: v for k, v in row.items() if k not in ADDED_SINCE_FIXTURE} if isinstance(row, dict) else row)
    return kept


def csv_without_added(text: str) -> list[list[str]]:
    """CSV rows with the added columns checked against their old value, then dropped."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return rows
    header = rows[0]
    drop = [i for i, name in enumerate(header) if name in ADDED_SINCE_FIXTURE]
    for row in rows[1:]:
        for i in drop:
            assert row[i] == str(ADDED_SINCE_FIXTURE[header[i]]), (header[i], row[i])
    return [[cell for i, cell in enumerate(row) if i not in drop] for row in rows]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A copy of the old store (tests must not write into the fixture)."""
    root = tmp_path / "store"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("expected", "README.md"))
    return root


@pytest.fixture(scope="module")
def old_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's dataset made again: same synth seed and split, hence the same fingerprint."""
    from fusioncli.data.cache import prepare
    from fusioncli.data.synth import write_dataset

    work = tmp_path_factory.mktemp("compat")
    write_dataset(work / "raw", per_class=24, seed=3)
    prepare(work / "raw", work / "cache", val_fraction=0.25)
    return work / "cache"


def records() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((FIXTURE / "records").glob("*.json"))]


def test_run_ids_of_old_records_are_unchanged() -> None:
    found = records()
    assert len(found) == 5
    for record in found:
        config = RunConfig.from_dict(record["config"])
        assert run_id(config, record["dataset"]["fingerprint"]) == record["run_id"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--format", "csv"], "report.csv"),
        (["--format", "markdown"], "report.markdown"),
        (["--format", "json"], "report.json"),
        (["--runs", "--format", "csv"], "report_runs.csv"),
        (["--robustness", "--format", "csv"], "report_robustness.csv"),
    ],
)
def test_old_store_reports_identically(store: Path, args: list[str], expected: str) -> None:
    result = runner.invoke(app, ["report", "--results-dir", str(store), *args])
    assert result.exit_code == 0, result.output
    want = (EXPECTED / expected).read_text()
    if expected.endswith(".markdown"):
        assert result.stdout == want  # rounded for people: byte for byte
    elif expected.endswith(".json"):
        assert_same(without_added(json.loads(result.stdout)), json.loads(want))
    else:
        got_rows, want_rows = csv_without_added(result.stdout), list(csv.reader(io.StringIO(want)))
        assert len(got_rows) == len(want_rows)
        for got_row, want_row in zip(got_rows, want_rows):
            assert len(got_row) == len(want_row)
            for got_cell, want_cell in zip(got_row, want_row):
                assert_same(_number_or_text(got_cell), _number_or_text(want_cell))


# The old version computed Student-t quantiles by hand (Newton to 2e-15 relative on a tail
# probability accurate to 1e-16); scipy's stdtrit (cephes) documents relative errors up to
# ~1e-13. CI bounds are products of that quantile with exact sample statistics, so machine-
# readable CI figures may differ in the last digits; everything else must be equal.
QUANTILE_REL = 1e-12


def _number_or_text(cell: str) -> object:
    try:
        return float(cell)
    except ValueError:
        return cell


def assert_same(got: object, want: object) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want)
        for key in want:
            assert_same(got[key], want[key])
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
    elif isinstance(want, float) and isinstance(got, float) and not math.isnan(want):
        assert got == pytest.approx(want, rel=QUANTILE_REL, abs=0)
    else:
        assert got == want or (isinstance(want, float) and math.isnan(want) and math.isnan(got))  # type: ignore[arg-type]


def test_the_old_dataset_keeps_its_fingerprint(old_cache: Path) -> None:
    manifest = json.loads((old_cache / "manifest.json").read_text())
    assert manifest["fingerprint"] == FINGERPRINT


def test_old_store_plans_the_same_resume(store: Path, old_cache: Path) -> None:
    result = runner.invoke(
        app,
        ["sweep", "--cache-dir", str(old_cache), "--results-dir", str(store), *FIRST_GRID,
         "--seeds", "1,2,3", "--dry-run", "--format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert without_added(json.loads(result.stdout)) == json.loads((EXPECTED / "dry_run.json").read_text())


def test_old_store_resumes_without_training_finished_runs(store: Path, old_cache: Path) -> None:
    before = {p.name: p.read_bytes() for p in (store / "records").glob("*.json")}
    result = runner.invoke(
        app,
        ["sweep", "--cache-dir", str(old_cache), "--results-dir", str(store), *FIRST_GRID,
         "--seeds", "1,2", "--format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    statuses = {row["run_id"]: row["status"] for row in json.loads(result.stdout)}
    assert len(statuses) == 4 and set(statuses.values()) == {"skipped"}, statuses
    # finished records are never rewritten by a resume
    assert {p.name: p.read_bytes() for p in (store / "records").glob("*.json")} == before
