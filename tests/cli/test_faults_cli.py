"""`fusioncli faults`: the suite listed for people (table, markdown) and machines (json)."""

import json

from typer.testing import CliRunner

from fusioncli.cli import app

runner = CliRunner()


def test_json_lists_every_fault_with_its_modality_and_severity_ladder() -> None:
    from fusioncli.eval import CORRUPTIONS

    result = runner.invoke(app, ["faults", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == list(CORRUPTIONS)
    by_name = {r["name"]: r for r in rows}
    assert by_name["beam_loss"]["modality"] == "lidar" and by_name["occlusion"]["modality"] == "rgb"
    assert by_name["misalignment"]["modality"] == "both" and by_name["misalignment"]["changes"] == ["lidar"]
    assert [s["severity"] for s in by_name["fog"]["severities"]] == [0.25, 0.5, 0.75, 1.0]
    assert by_name["beam_loss"]["severities"][-1]["parameter"] == "75% of beams lost"
    assert all(r["description"] and r["physical"] for r in rows)


def test_table_and_markdown() -> None:
    table = runner.invoke(app, ["faults"])
    assert table.exit_code == 0 and "stuck_sensor" in table.stdout
    md = runner.invoke(app, ["faults", "-f", "markdown"])
    assert md.exit_code == 0
    lines = md.stdout.splitlines()
    assert lines[0].startswith("| fault | modality") and any(line.startswith("| desync | both |") for line in lines)
