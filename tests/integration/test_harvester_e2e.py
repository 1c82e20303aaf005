"""The harvester command against the real gateway, worker and Redis."""

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

pytestmark = pytest.mark.integration

HARVESTER = str(Path(sys.executable).parent / "harvester")
SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "harvest.csv"
ROWS = 3000


def harvester(gateway, command, *args):
    line = [HARVESTER, command, *map(str, args), "--gateway", gateway, "--poll-interval", "0.2", "--timeout", "120"]
    return subprocess.run(line, capture_output=True, text=True, timeout=180)


def harvest(gateway, *args):
    return harvester(gateway, "run", *args)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory):
    """A CSV of a few thousand rows: ints, floats with blanks, text (some like formulas), booleans."""
    path = tmp_path_factory.mktemp("big") / "people.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["id", "name", "score", "city", "active"])
        for i in range(ROWS):
            name = f"=cmd{i}" if i % 500 == 0 else f"Person, {i}"
            out.writerow([i, name, "" if i % 7 == 0 else f"{i / 4}", ["Oslo", "Lima", "Zoë-ville"][i % 3], i % 2 == 0])
    return path


OPS = ["--op", 'filter_rows:{"column": "id", "operator": "ge", "value": 100}', "--op", "drop_nulls"]


def expected_ids():
    return [i for i in range(100, ROWS) if i % 7]


def test_a_csv_of_thousands_of_rows_into_parquet(gateway, big_csv, tmp_path):
    output = tmp_path / "people.parquet"

    result = harvest(gateway, big_csv, *OPS, "--output", output, "--json")

    assert result.returncode == 0, result.stderr
    table = pq.read_table(output)
    assert table.column("id").to_pylist() == expected_ids()
    assert table.column("score").to_pylist()[:3] == [25.0, 25.25, 25.5]
    assert table.column("active").to_pylist()[:2] == [True, False]
    assert table.column("name").to_pylist()[expected_ids().index(500)] == "=cmd500"  # Parquet: as received
    summary = json.loads(result.stdout)
    assert (summary["rows_in"], summary["rows_out"]) == (ROWS, len(expected_ids()))
    manifest = json.loads(Path(f"{output}.manifest.json").read_text())
    assert manifest["dataset"]["dataset_id"] == summary["dataset_id"]
    assert (manifest["dataset"]["rows"], manifest["dataset"]["parts"]) == (ROWS, 1)
    assert manifest["source_sha256"] == hashlib.sha256(big_csv.read_bytes()).hexdigest()
    assert manifest["output"]["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()


def test_a_csv_of_thousands_of_rows_into_csv_as_the_gateway_writes_it(gateway, big_csv, tmp_path):
    output = tmp_path / "people.csv"

    result = harvest(gateway, big_csv, *OPS, "--output", output, "--json")

    assert result.returncode == 0, result.stderr
    rows = read_csv(output)
    assert [int(row["id"]) for row in rows] == expected_ids()
    assert rows[0] == {"id": "100", "name": "Person, 100", "score": "25", "city": "Lima", "active": "true"}
    assert rows[expected_ids().index(500)]["name"] == "'=cmd500"  # no formula runs in a spreadsheet
    # The harvester's CSV and the gateway's own CSV download are the same bytes.
    job_id = json.loads(result.stdout)["job_id"]
    download = requests.get(f"{gateway}/jobs/{job_id}/result", params={"format": "csv"}, timeout=30)
    assert download.status_code == 200
    assert output.read_bytes() == download.content
    manifest = json.loads(Path(f"{output}.manifest.json").read_text())
    assert manifest["output"]["cells_neutralised"] == sum(1 for i in expected_ids() if i % 500 == 0)


def test_fetch_writes_the_result_again_and_refuses_to_overwrite_without_force(gateway, big_csv, tmp_path):
    first = tmp_path / "first.jsonl"
    result = harvest(gateway, big_csv, *OPS, "--output", first, "--json")
    assert result.returncode == 0, result.stderr
    job_id = json.loads(result.stdout)["job_id"]

    refused = harvester(gateway, "fetch", job_id, "--output", first)
    fetched = harvester(gateway, "fetch", job_id, "--output", tmp_path / "again.jsonl")

    assert refused.returncode == 2 and "Pass --force" in refused.stderr
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "again.jsonl").read_text() == first.read_text()
    records = [json.loads(line) for line in first.read_text().splitlines()]
    assert records[0] == {"id": 100, "name": "Person, 100", "score": 25.0, "city": "Lima", "active": True}
    assert harvester(gateway, "fetch", "0" * 32, "--output", tmp_path / "none.jsonl").returncode == 2


def test_nested_and_mixed_values_come_back_as_they_went(gateway, tmp_path):
    records = [
        {"id": 1, "tags": ["a", "b"], "v": 1, "meta": {"k": "李"}},
        {"id": 2, "tags": [], "v": "one", "meta": None},
        {"id": 3, "tags": None, "v": 2.5, "meta": {"k": None, "n": [1, 2]}},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    output = tmp_path / "out.json"

    result = harvest(gateway, source, "--op", 'sort:{"by": "id", "ascending": false}', "--output", output)

    assert result.returncode == 0, result.stderr
    assert json.loads(output.read_text(encoding="utf-8")) == records[::-1]


def test_harvest_of_the_sample_csv_writes_output_and_manifest(gateway, tmp_path):
    output = tmp_path / "clean.csv"
    ops = [
        "--op", 'normalize_text:{"columns": ["title"], "strip_html": true}',
        "--op", 'drop_nulls:{"columns": ["title", "body"]}',
        "--op", 'deduplicate:{"columns": ["url"]}',
        "--op", 'select_columns:{"columns": ["id", "url", "title"]}',
    ]  # fmt: skip
    result = harvest(gateway, SAMPLE, *ops, "--output", output, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)

    source = read_csv(SAMPLE)
    kept, urls = [], set()
    for row in source:
        if row["title"].strip() and row["body"] and row["url"] not in urls:
            urls.add(row["url"])
            kept.append(row)
    written = read_csv(output)
    assert list(written[0]) == ["id", "url", "title"]
    assert [row["id"] for row in written] == [row["id"] for row in kept]
    assert not any("  " in row["title"] for row in written)  # whitespace collapsed

    manifest = json.loads(Path(f"{output}.manifest.json").read_text())
    assert manifest["job_id"] == summary["job_id"]
    assert manifest["rows_in"] == len(source) and manifest["rows_out"] == len(kept)
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


#: Modules whose import would mean the command-line client loaded the server side or the data stack.
HEAVY = ("celery", "kombu", "pandas", "workers", "app")


def imported_by(args):
    """Run ``python -X importtime -m harvester ARGS``; return (the run, the top-level modules it imported)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "harvester", *args],
                          capture_output=True, text=True, timeout=60)
    modules = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in done.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    return done, modules


def test_the_harvester_stands_alone_loading_neither_celery_nor_pandas(gateway):
    job_id = requests.post(f"{gateway}/jobs?wait=30", json={"dataset": [{"id": 1}], "operations": []},
                           timeout=40).json()["job_id"]
    for args in (["--help"], ["status", job_id, "--gateway", gateway]):
        done, modules = imported_by(args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "click" in modules  # the import log was read
        assert not modules & set(HEAVY), (args, sorted(modules & set(HEAVY)))
    assert "completed" in done.stdout
