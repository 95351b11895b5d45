"""`fusioncli strategies` through the CLI: table, json, bad options."""

from __future__ import annotations

import json

import pytest
from torch import nn
from typer.testing import CliRunner

from fusioncli.cli import app
from fusioncli.models import BackboneSpec, register_strategy, strategy_names, unregister_strategy
from fusioncli.models.blocks import UnimodalModel, conv_stem, map_head

runner = CliRunner()


def test_table_lists_every_strategy() -> None:
    result = runner.invoke(app, ["strategies"])
    assert result.exit_code == 0, result.stderr
    for name in strategy_names():
        assert name in result.stdout
    assert "13,147,202" in result.stdout  # late fusion, seed backbone
    assert "133.0 M" in result.stdout  # its FLOPs per sample
    assert " lab " not in result.stdout  # default backbone is seed only


def test_json_seed_default() -> None:
    result = runner.invoke(app, ["strategies", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == strategy_names()
    assert {r["backbone"] for r in rows} == {"seed"}
    by_name = {r["name"]: r for r in rows}
    assert by_name["late"]["params"] == 13_147_202
    assert by_name["intermediate-concat"]["params"] == 13_015_952
    assert by_name["intermediate-add"]["fusion_params"] == 0
    for row in rows:
        for key in ("description", "trainable_params", "encoder_params", "fusion_params", "head_params"):
            assert key in row
        assert isinstance(row["flops_per_sample"], int) and row["flops_per_sample"] > 0


@pytest.mark.parametrize(("backbone", "expected"), [("lab", {"lab"}), ("all", {"seed", "lab"})])
def test_json_backbone_choice(backbone: str, expected: set[str]) -> None:
    result = runner.invoke(app, ["strategies", "--backbone", backbone, "-f", "json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {r["backbone"] for r in rows} == expected
    assert len(rows) == len(expected) * len(strategy_names())


def test_bad_backbone_exits_2_with_a_message() -> None:
    result = runner.invoke(app, ["strategies", "--backbone", "resnet"])
    assert result.exit_code == 2
    assert "resnet" in result.stderr
    assert "seed" in result.stderr and "lab" in result.stderr
    assert result.stdout == ""


def test_bad_format_exits_2() -> None:
    result = runner.invoke(app, ["strategies", "--format", "xml"])
    assert result.exit_code == 2
    assert "xml" in result.stderr


def test_a_registered_strategy_shows_up() -> None:
    @register_strategy("test-cli-rgb", description="registered by a test", modalities=("rgb",))
    def build(backbone: BackboneSpec, num_classes: int) -> nn.Module:
        return UnimodalModel("rgb", conv_stem(backbone), map_head(backbone, backbone.out_channels, num_classes))

    try:
        result = runner.invoke(app, ["strategies", "-f", "json"])
    finally:
        unregister_strategy("test-cli-rgb")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows[-1]["name"] == "test-cli-rgb"
    assert rows[-1]["modalities"] == ["rgb"]
