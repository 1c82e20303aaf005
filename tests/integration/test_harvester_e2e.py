"""The harvester command against the real gateway, worker and Redis."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration

HARVESTER = str(Path(sys.executable).parent / "harvester")
SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "harvest.csv"


def harvest(gateway, *args):
    command = [HARVESTER, "run", *map(str, args), "--gateway", gateway, "--poll-interval", "0.2", "--timeout", "120"]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def test_harvest_of_the_sample_csv_writes_output_and_manifest(gateway, tmp_path):
    output = tmp_path / "clean.csv"
    ops = [
        "--op", 'normalize_text:{"columns": ["title"], "strip_html": true}',
        "--op", 'drop_nulls:{"columns": ["title", "body"]}',
        "--op", 'deduplicate:{"columns": ["url"]}',
        "--op", 'select_columns:{"columns": ["id", "url", "title"]}',
    ]
    result = harvest(gateway, SAMPLE, *ops, "--output", output, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)

    source = pd.read_csv(SAMPLE, keep_default_na=False)
    expected = source[(source["title"].str.strip() != "") & (source["body"] != "")].drop_duplicates("url")
    written = pd.read_csv(output)
    assert list(written.columns) == ["id", "url", "title"]
    assert written["id"].tolist() == expected["id"].tolist()
    assert not written["title"].str.contains("  ").any()  # whitespace collapsed

    manifest = json.loads(Path(f"{output}.manifest.json").read_text())
    assert manifest["job_id"] == summary["job_id"]
    assert manifest["rows_in"] == len(source) and manifest["rows_out"] == len(expected)
    assert [op["name"] for op in manifest["operations"]] == ["normalize_text", "drop_nulls", "deduplicate", "select_columns"]
    assert manifest["gateway"] == gateway
    assert "Submitted job" in result.stderr and "completed" in result.stderr


def test_a_failing_job_exits_1(gateway, tmp_path):
    output = tmp_path / "out.jsonl"
    result = harvest(gateway, SAMPLE, "--op", 'cast_types:{"types": {"published": "datetime"}}', "--output", output)
    assert result.returncode == 1, result.stderr
    assert "cast_types" in result.stderr
    assert not output.exists()


def test_a_job_the_gateway_refuses_exits_2_and_writes_nothing(gateway, tmp_path):
    output = tmp_path / "out.jsonl"
    result = harvest(gateway, SAMPLE, "--op", 'sort:{"by": "no_such_column"}', "--output", output)
    assert result.returncode == 2, result.stderr
    assert "unknown_column" in result.stderr and "no_such_column" in result.stderr
    assert not output.exists()
