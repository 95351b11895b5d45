"""`fusioncli profile`: the latency protocol's figures, their units and the CLI (no timed assertions)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fusioncli.cli import app
from fusioncli.errors import BadInputError
from fusioncli.eval.profile import checkpoint_bytes, percentile, profile_strategies
from fusioncli.models import create_model

runner = CliRunner()
KEYS = {
    "strategy", "backbone", "batch_size", "input_size", "num_classes", "device", "precision", "threads", "warmup", "iters", "p50_ms", "p95_ms",
    "mean_ms", "samples_per_s", "params", "flops_per_sample", "checkpoint_bytes", "peak_mem_bytes", "peak_mem_kind",
}  # fmt: skip


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5, rel=1e-15)
    assert percentile([5.0], 95) == 5.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_checkpoint_bytes_is_the_safetensors_size() -> None:
    model = create_model("rgb-only", "seed", 2)
    n = sum(t.numel() for t in model.state_dict().values())
    size = checkpoint_bytes(model)
    # float32 weights plus a JSON header of at most a few KiB
    assert 4 * n < size < 4 * n + 16_384


def test_profile_rows_follow_the_protocol() -> None:
    rows = profile_strategies(["rgb-only", "late"], [1, 2], warmup=1, iters=3, threads=1)
    assert [(r["strategy"], r["batch_size"]) for r in rows] == [
        ("rgb-only", 1),
        ("rgb-only", 2),
        ("late", 1),
        ("late", 2),
    ]
    for r in rows:
        assert set(r) == KEYS
        assert r["threads"] == 1 and r["warmup"] == 1 and r["iters"] == 3 and r["device"] == "cpu"
        assert r["input_size"] == [64, 64] and r["num_classes"] == 2  # the seed's, without a cache
        assert 0 < r["p50_ms"] <= r["p95_ms"]
        assert r["samples_per_s"] == pytest.approx(r["batch_size"] / (r["p50_ms"] / 1e3), rel=1e-12)
        assert r["peak_mem_bytes"] > 0 and r["peak_mem_kind"] == "host_peak_rss_lifetime"
    late = rows[2]
    assert late["params"] == 13_147_202 and late["flops_per_sample"] > rows[0]["flops_per_sample"]
    with pytest.raises(BadInputError, match="unknown strategy 'nope'"):
        profile_strategies(["nope"], [1])


def test_cli_json_and_bad_input() -> None:
    result = runner.invoke(
        app, ["profile", "-s", "lidar-only", "-b", "1", "--warmup", "0", "--iters", "2", "-f", "json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 1 and rows[0]["strategy"] == "lidar-only" and set(rows[0]) == KEYS
    md = runner.invoke(
        app, ["profile", "-s", "lidar-only", "-b", "1", "--warmup", "0", "--iters", "1", "-f", "markdown"]
    )
    assert md.exit_code == 0 and md.stdout.startswith("| strategy | batch | p50 (ms)") and "warm-up" in md.stdout
    bad = runner.invoke(app, ["profile", "-b", "0,x"])
    assert bad.exit_code == 2 and "--batch-sizes" in bad.output
