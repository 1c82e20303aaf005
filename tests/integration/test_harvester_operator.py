"""The harvester's day-to-day commands against the real gateway, worker and Redis: ``jobs``, ``status``,
``wait``, ``cancel`` of an ended job, ``run --dry-run``.

Jobs that must stay running (Ctrl-C, cancelling a running job) are in ``tests/faults/test_harvester_commands.py``.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import requests

HARVESTER = str(Path(sys.executable).parent / "harvester")
SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "harvest.csv"


def harvester(gateway, command, *args):
    line = [HARVESTER, command, *map(str, args), "--gateway", gateway]
    return subprocess.run(line, capture_output=True, text=True, timeout=120)


def submitted(gateway, records, operations):
    """A job submitted and waited for (``POST /jobs?wait=``); its final body."""
    answer = requests.post(f"{gateway}/jobs?wait=30", json={"dataset": records, "operations": operations}, timeout=40)
    assert answer.status_code == 200, answer.text
    return answer.json()


def listed_ids(gateway, *args):
    done = harvester(gateway, "jobs", "--json", *args)
    assert done.returncode == 0, done.stderr
    return [job["job_id"] for job in json.loads(done.stdout)["jobs"]]


def test_jobs_lists_the_newest_first_and_filters_by_status(gateway):
    good = submitted(gateway, [{"id": 1}, {"id": 2}], ["drop_nulls"])
    bad = submitted(gateway, [{"id": 1}], [{"name": "cast_types", "params": {"types": {"id": "datetime"}}}])
    assert (good["status"], bad["status"]) == ("completed", "failed")

    table = harvester(gateway, "jobs", "--limit", "2")

    assert table.returncode == 0, table.stderr
    head, newest, older = table.stdout.splitlines()
    assert head.split()[:3] == ["JOB", "STATUS", "PROGRESS"]
    assert newest.split()[:4] == [bad["job_id"], "failed", "0/1", "ops"]
    assert newest.split()[4:6] == ["-", "-"]  # no rows out of a failed job
    assert older.split()[:8] == [good["job_id"], "completed", "1/1", "ops,", "1/1", "chunks", "2", "2"]
    assert listed_ids(gateway, "--limit", "2", "--status", "completed")[0] == good["job_id"]
    assert bad["job_id"] not in listed_ids(gateway, "--limit", "500", "--status", "completed,cancelled")


def test_status_exits_with_the_jobs_code_and_says_its_error_once(gateway):
    failed = submitted(gateway, [{"id": 1}], [{"name": "cast_types", "params": {"types": {"id": "datetime"}}}])
    completed = submitted(gateway, [{"id": 1}], [])

    shown = harvester(gateway, "status", failed["job_id"])

    assert shown.returncode == 1, shown.stderr
    assert shown.stdout.count(failed["error"]["message"]) == 1
    assert harvester(gateway, "status", completed["job_id"]).returncode == 0


def test_wait_on_a_completed_job_writes_its_output_and_cancel_of_it_exits_2(gateway, tmp_path):
    job = submitted(gateway, [{"id": 2, "name": "b"}, {"id": 1, "name": "a"}], [{"name": "sort", "params": {"by": "id"}}])
    output = tmp_path / "out.jsonl"

    waited = harvester(gateway, "wait", job["job_id"], "--output", output)
    cancelled = harvester(gateway, "cancel", job["job_id"])

    assert waited.returncode == 0, waited.stderr
    assert [json.loads(line) for line in output.read_text().splitlines()] == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    assert json.loads(Path(f"{output}.manifest.json").read_text())["job_id"] == job["job_id"]
    assert cancelled.returncode == 2
    assert f"Job {job['job_id']} had already ended: it is completed. Nothing was cancelled." in cancelled.stderr
    assert harvester(gateway, "cancel", "0" * 32).returncode == 2  # unknown


def test_a_dry_run_prints_the_plan_on_the_real_columns_and_leaves_nothing(gateway, tmp_path):
    before = listed_ids(gateway, "--limit", "1")
    output = tmp_path / "out.csv"

    done = harvester(gateway, "run", SAMPLE, "--op", 'select_columns:{"columns": ["id", "price"]}',
                     "--op", 'cast_types:{"types": {"id": "float"}}', "--op", 'sample:{"n": 3}',
                     "--dry-run", "--output", output)  # fmt: skip

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (f"Input: {SAMPLE}, 125 rows: id integer, url string, title string, body string, "
                        "language string, price string, published string")  # fmt: skip
    assert lines[1] == "Step 0 select_columns: id integer, price string"
    assert lines[2:4] == ["Step 1 cast_types: id number, price string", "Step 2 sample: id number, price string"]
    assert "nothing was stored or queued" in lines[4]
    # Nothing queued, nothing written, and the dataset uploaded for the check deleted.
    assert listed_ids(gateway, "--limit", "1") == before
    assert not output.exists()
    dataset_id = re.search(r"Deleted dataset (\w+)", done.stderr).group(1)
    assert requests.get(f"{gateway}/datasets/{dataset_id}", timeout=10).status_code == 404


def test_a_dry_run_of_a_job_the_gateway_refuses_exits_2_with_its_message(gateway):
    done = harvester(gateway, "run", SAMPLE, "--op", 'select_columns:{"columns": ["id"]}',
                     "--op", 'sort:{"by": "price"}', "--dry-run")  # fmt: skip

    assert done.returncode == 2
    assert "unknown_column" in done.stderr and "'price'" in done.stderr
    assert done.stdout == ""
