"""`fusioncli sweep` through the CLI: option parsing, output, exit codes, skip/resume, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
from sweep_fakes import FakeTrainer  # noqa: E402

from fusioncli.cli import app  # noqa: E402
from fusioncli.results.store import ResultsStore  # noqa: E402

runner = CliRunner()
SMALL = ["--strategies", "late,intermediate-add", "--lrs", "1e-3", "--schedulers", "cosine", "--epochs", "1"]


def _args(cache_dir: Path, results: Path, *extra: str) -> list[str]:
    return ["sweep", *SMALL, "--cache-dir", str(cache_dir), "--results-dir", str(results), *extra]


@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch) -> FakeTrainer:
    """Replace the real training loop inside the runner with the fast fake."""
    trainer = FakeTrainer()
    monkeypatch.setattr("fusioncli.sweep.runner.train_run", trainer)
    return trainer


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--lrs", "1e-4,abc", "--lrs: 'abc' is not a positive number"),
        ("--lrs", "1e-4,,1e-5", "--lrs: empty item"),
        ("--seeds", "51,x", "--seeds: 'x' is not an integer"),
        ("--schedulers", "cosine,step", "--schedulers: unknown value 'step'; choose from: cosine, constant"),
        ("--strategies", "late,nope", "--strategies: unknown value 'nope'; choose from: late,"),
    ],
)
def test_bad_lists_exit_2_naming_the_value(option: str, value: str, message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["sweep", option, value, "--cache-dir", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_all_bad_lists_reported_at_once(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sweep", "--lrs", "abc", "--seeds", "x", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "'abc'" in result.stderr and "'x'" in result.stderr


def test_bad_train_option_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sweep", "--epochs", "0", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--epochs" in result.stderr


def test_missing_cache_exits_2_with_a_hint(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["sweep", *SMALL, "--cache-dir", str(tmp_path / "nocache"), "--results-dir", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    assert "fusioncli prepare" in result.stderr


def test_sweep_runs_then_skips(cache_dir: Path, tmp_path: Path, fake_training: FakeTrainer) -> None:
    results = tmp_path / "results"
    result = runner.invoke(app, _args(cache_dir, results, "--format", "json"))
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["strategy"], r["status"]) for r in rows] == [("late", "finished"), ("intermediate-add", "finished")]
    assert "[1/2] late lr=1e-3 cosine seed=51  acc " in result.stderr
    assert "sweep: 2 finished, 0 skipped, 0 failed of 2" in result.stderr
    assert "best: late" in result.stderr
    assert ResultsStore(results).best_checkpoint_path.is_file()
    assert len(fake_training.calls) == 2

    again = runner.invoke(app, _args(cache_dir, results, "--format", "json"))
    assert again.exit_code == 0
    assert [r["status"] for r in json.loads(again.stdout)] == ["skipped", "skipped"]
    assert "skipped (already finished: acc" in again.stderr
    assert len(fake_training.calls) == 2

    forced = runner.invoke(app, _args(cache_dir, results, "--force"))
    assert forced.exit_code == 0 and len(fake_training.calls) == 4
    assert forced.stdout == ""  # table format: everything human goes to stderr


def test_failed_run_exits_1_and_is_listed(cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = FakeTrainer(fail=lambda c: RuntimeError("CUDA out of memory") if c.strategy == "late" else None)
    monkeypatch.setattr("fusioncli.sweep.runner.train_run", trainer)
    result = runner.invoke(app, _args(cache_dir, tmp_path / "results"))
    assert result.exit_code == 1
    assert "[1/2] late lr=1e-3 cosine seed=51  FAILED: RuntimeError: CUDA out of memory" in result.stderr
    assert "1 finished, 0 skipped, 1 failed" in result.stderr
    assert "retries failed runs" in result.stderr


def test_interrupt_exits_130_and_keeps_finished_runs(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = FakeTrainer(fail=lambda c: KeyboardInterrupt() if c.strategy == "intermediate-add" else None)
    monkeypatch.setattr("fusioncli.sweep.runner.train_run", trainer)
    result = runner.invoke(app, _args(cache_dir, tmp_path / "results"))
    assert result.exit_code == 130
    assert "1 finished, 0 skipped, 0 failed, 1 not run" in result.stderr
    assert "run the same command again to resume" in result.stderr
    assert len(list((tmp_path / "results" / "runs").glob("*.parquet"))) == 1


def test_dry_run_lists_the_plan(cache_dir: Path, tmp_path: Path, fake_training: FakeTrainer) -> None:
    results = tmp_path / "results"
    runner.invoke(
        app,
        [
            "sweep",
            *SMALL[:-4],
            "--lrs",
            "1e-3",
            "--schedulers",
            "cosine",
            "--strategies",
            "late",
            "--epochs",
            "1",
            "--cache-dir",
            str(cache_dir),
            "--results-dir",
            str(results),
        ],
    )
    result = runner.invoke(app, _args(cache_dir, results, "--dry-run", "--format", "json"))
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [(r["strategy"], r["stored_status"]) for r in rows] == [("late", "finished"), ("intermediate-add", None)]
    assert [r["would_train"] for r in rows] == [False, True]
    assert "1 of 2 runs would be trained" in result.stderr
    # Options that retrain finished runs say so, as the sweep would do it.
    for option in ("--force", "--keep-weights", "--robustness"):
        result = runner.invoke(app, _args(cache_dir, results, "--dry-run", "--format", "json", option))
        assert result.exit_code == 0, result.stderr
        assert [r["would_train"] for r in json.loads(result.stdout)] == [True, True], option
        assert "2 of 2 runs would be trained" in result.stderr
    assert len(fake_training.calls) == 1  # the dry runs trained nothing


def test_wandb_without_the_package(cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    result = runner.invoke(app, _args(cache_dir, tmp_path / "results", "--wandb"))
    assert result.exit_code == 2
    # the exact hint (with [wandb]) is checked in tests/tracking/test_trackers.py; rich markup in
    # _common.report_errors currently eats "[wandb]" (reported to the lead)
    assert "install the wandb extra: pip install 'fusioncli" in result.stderr


def test_help_names_the_defaults() -> None:
    result = runner.invoke(app, ["sweep", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "late,intermediate-concat,intermediate-add,intermediate-multiply" in result.stdout
    assert "1e-4,1e-5,1e-6" in result.stdout and "cosine,constant" in result.stdout


@pytest.mark.slow
def test_real_cli_killed_with_sigkill_resumes(cache_dir: Path, tmp_path: Path) -> None:
    """`python -m fusioncli sweep` with real training, SIGKILLed after its first record, resumes."""
    results = tmp_path / "results"
    args = [
        sys.executable,
        "-m",
        "fusioncli",
        "sweep",
        "--strategies",
        "late,intermediate-add,intermediate-multiply",
        "--lrs",
        "1e-3",
        "--schedulers",
        "cosine",
        "--epochs",
        "1",
        "--limit-per-class",
        "8",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--cache-dir",
        str(cache_dir),
        "--results-dir",
        str(results),
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ, FUSIONCLI_NO_PROGRESS="1")
    )
    deadline = time.monotonic() + 120
    while not list((results / "runs").glob("*.parquet")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no run finished in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # now in the second run (or between runs)
    proc.wait(timeout=30)
    first = sorted(p.name for p in (results / "runs").glob("*.parquet"))
    assert 1 <= len(first) <= 2
    record = json.loads((results / "records" / first[0].replace(".parquet", ".json")).read_text())
    assert record["status"] == "finished"

    resumed = subprocess.run(args + ["--format", "json"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    statuses = [r["status"] for r in json.loads(resumed.stdout)]
    assert statuses.count("skipped") == len(first)
    assert statuses.count("finished") == 3 - len(first)


# -- --backend ray ----------------------------------------------------------------------------

RAY_QUICK = ("--device", "cpu", "--precision", "fp32", "--limit-per-class", "8")


def _ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def test_ray_options_need_backend_ray(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sweep", "--gpus-per-run", "0.5", "--address", "auto", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "error: --address, --gpus-per-run: only with --backend ray" in result.stderr


def test_bad_ray_resources_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sweep", "--backend", "ray", "--gpus-per-run", "2", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--gpus-per-run must be between 0 and 1" in result.stderr


def test_backend_ray_without_ray_exits_2(cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = runner.invoke(app, _args(cache_dir, tmp_path / "results", "--backend", "ray", *RAY_QUICK))
    assert result.exit_code == 2
    assert "error: --backend ray needs the 'ray' package, which is not installed" in result.stderr
    assert "hint: install the ray extra: pip install 'fusioncli[ray]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_dry_run_on_ray_has_the_local_run_ids(cache_dir: Path, tmp_path: Path) -> None:
    dry = ("--dry-run", "-f", "json", *RAY_QUICK)
    local = runner.invoke(app, _args(cache_dir, tmp_path / "r", *dry))
    on_ray = runner.invoke(app, _args(cache_dir, tmp_path / "r", *dry, "--backend", "ray"))
    assert local.exit_code == on_ray.exit_code == 0
    assert [r["run_id"] for r in json.loads(on_ray.stdout)] == [r["run_id"] for r in json.loads(local.stdout)]


@pytest.mark.slow
@pytest.mark.skipif(not _ray_installed(), reason="ray is not installed (pip install 'fusioncli[ray]')")
def test_backend_ray_end_to_end(cache_dir: Path, tmp_path: Path) -> None:
    """Real training on a Ray instance the command starts (and stops); a rerun skips without Ray."""
    import ray

    assert not ray.is_initialized()
    results = tmp_path / "results"
    args = _args(cache_dir, results, "--backend", "ray", "--cpus-per-run", "1", "--format", "json", *RAY_QUICK)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["strategy"], r["status"]) for r in rows] == [("late", "finished"), ("intermediate-add", "finished")]
    assert "sweep: 2 runs (cpu on a Ray instance started here, 1 CPU per run)" in result.stderr
    assert "sweep: 2 finished, 0 skipped, 0 failed of 2" in result.stderr
    assert ResultsStore(results).best_checkpoint_path.is_file()
    assert len(list((results / "runs").glob("*.parquet"))) == 2
    assert not ray.is_initialized()  # the command shut down the instance it started

    again = runner.invoke(app, args)
    assert again.exit_code == 0
    assert [r["status"] for r in json.loads(again.stdout)] == ["skipped", "skipped"]


def test_robustness_and_modality_dropout_reach_every_record(cache_dir: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    args = [
        "sweep", "--strategies", "late", "--lrs", "1e-3", "--schedulers", "constant", "--epochs", "1",
        "--limit-per-class", "6", "--precision", "fp32", "--device", "cpu",
        "--modality-dropout", "0.3", "--robustness",
        "--cache-dir", str(cache_dir), "--results-dir", str(results), "--format", "json",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["modality_dropout"] == 0.3
    record = json.loads((results / "records" / f"{row['run_id']}.json").read_text())
    assert record["config"]["modality_dropout"] == 0.3
    assert {"rgb_noise", "lidar_noise", "lidar_dropout", "beam_loss", "desync"} <= set(record["robustness"]["curves"])
    assert set(record["robustness"]["missing"]) == {"rgb_missing", "lidar_missing"}


def test_bad_modality_dropout_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sweep", "--modality-dropout", "1.5", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--modality-dropout" in result.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--executor", "bogus"], "--executor"),
        (["--max-group", "0"], "--max-group must be an integer >= 1"),
        (["--max-group", "0", "--backend", "ray"], "--max-group must be an integer >= 1"),
    ],
)
def test_bad_executor_options_exit_2(extra: list, message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["sweep", *extra, "--cache-dir", str(tmp_path), "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_stacked_executor_through_the_cli(cache_dir: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    args = [
        "sweep", "--strategies", "late", "--lrs", "1e-3,3e-4", "--schedulers", "constant", "--epochs", "1",
        "--limit-per-class", "4", "--precision", "fp32", "--device", "cpu", "--executor", "stacked",
        "--cache-dir", str(cache_dir), "--results-dir", str(results), "--format", "json",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "stacked groups of <= 16" in result.stderr
    rows = json.loads(result.stdout)
    assert [r["status"] for r in rows] == ["finished", "finished"]
    for row in rows:
        record = json.loads((results / "records" / f"{row['run_id']}.json").read_text())
        assert record["timing"]["executor"] == "stacked" and record["timing"]["stacked_group_size"] == 2


def test_compile_needs_the_stacked_executor(cache_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["sweep", "--executor", "loop", "--compile", "--cache-dir", str(cache_dir), "--results-dir", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--compile applies to stacked groups" in result.stderr


def test_training_set_sizes_sweep_into_a_learning_curve(cache_dir: Path, tmp_path: Path) -> None:
    """--train-per-class 6,all: real runs on fewer training samples, the same validation samples."""
    results = tmp_path / "results"
    args = ["sweep", "--strategies", "early", "--lrs", "1e-3", "--schedulers", "constant", "--epochs", "1",
            "--device", "cpu", "--precision", "fp32", "--train-per-class", "6,all", "--cache-dir", str(cache_dir),
            "--results-dir", str(results)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "early lr=1e-3 constant train=6/class seed=51" in result.stderr
    from fusioncli.results.store import ResultsStore

    records = {r.config["train_per_class"]: r for r in ResultsStore(results).records()}
    assert set(records) == {6, None}
    assert records[6].dataset.n_train == 12 and records[None].dataset.n_train == 72
    assert records[6].dataset.n_val == records[None].dataset.n_val == 24
    report = runner.invoke(app, ["report", "--results-dir", str(results), "-f", "json"])
    rows = {row["train_per_class"]: row for row in json.loads(report.stdout)}
    assert set(rows) == {6, None}  # one configuration per training-set size
    table = runner.invoke(app, ["report", "--results-dir", str(results), "--filter", "train_per_class=all"])
    assert table.exit_code == 0 and "1 configurations" in table.stdout


def test_equal_steps_gives_small_training_sets_more_epochs(cache_dir: Path, tmp_path: Path) -> None:
    # the tiny cache: 36 training samples per class
    args = ["sweep", "--strategies", "late", "--lrs", "1e-3", "--schedulers", "constant", "--epochs", "2",
            "--batch-size", "8", "--train-per-class", "4,all", "--equal-steps", "--cache-dir", str(cache_dir),
            "--results-dir", str(tmp_path), "--dry-run", "-f", "json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    epochs = {r["train_per_class"]: r["epochs"] for r in json.loads(result.stdout)}
    assert epochs == {4: 18, None: 2}  # 9 steps x 2 epochs = 18 steps; 1 step per epoch at 4/class
    assert "equal steps: 4/class -> 18 epochs, all -> 2 epochs" in result.stderr
