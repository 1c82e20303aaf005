"""Promise 10: output and logs are safe.

CSV the harvester writes cannot run as a spreadsheet formula; logs can be JSON
lines that carry the job id, and a user string with CR/LF forges no log line;
error messages quote neither data nor tracebacks.

The stack loads this module through ``OPERATION_MODULES``, which gives it one
test-only operation that logs a user string and then fails with it, as a
careless operation would. Only processes told to load the module know it.
"""

import csv
import json
import logging
import subprocess

import pytest

import localstack
from tests.faults.conftest import harvest_command, submit, wait_for
from workers import settings
from workers.operations import operation

THIS = "tests.faults.test_output_safety"
FIELDS = {"time", "level", "logger", "job_id", "message"}

if THIS in settings.get("OPERATION_MODULES"):

    @operation({"text": {"type": "string", "description": "What to log, then fail with."}})
    def log_and_fail(df, text):
        """Log ``text``, and a traceback quoting it, then raise it (test-only)."""
        if df.empty:
            return df
        logging.getLogger(THIS).warning("user text: %s", text)
        try:
            raise RuntimeError(text)
        except RuntimeError:
            logging.getLogger(THIS).exception("about to fail")
        raise RuntimeError(text)


@pytest.fixture(scope="module")
def stack(start_stack):
    return start_stack(concurrency=1, LOG_FORMAT="json", OPERATION_MODULES=f"tests.faults.ops,{THIS}")


def test_json_logs_carry_the_job_id_and_keep_user_strings_on_their_line(stack):
    url, log_dir = stack.url, stack.log_dir
    operations = [
        {"name": "add_column", "params": {"name": "x", "value": "a\r\nFORGED line"}},
        {"name": "log_and_fail", "params": {"text": "b\r\nFORGED line"}},
    ]
    response = submit(url, operations, [{"a": 1}])
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    body = wait_for(url, job_id)

    # The error tells what failed, not the user's text nor a traceback.
    assert body["status"] == "failed"
    assert "FORGED" not in body["error"]["message"] and "Traceback" not in body["error"]["message"]

    worker_log = log_dir / "worker0.log"
    # Celery's own line about the failure comes last.
    localstack.wait_until(lambda: "raised expected" in worker_log.read_text(), 10, "the worker logging the failure")
    text = worker_log.read_text()
    gateway_text = (log_dir / "gateway.log").read_text()
    assert not [line for line in (text + gateway_text).splitlines() if line.lstrip().startswith("FORGED")]

    records = [json.loads(line) for line in text.splitlines() if line.strip()]  # every worker line is JSON
    assert all(FIELDS <= set(record) for record in records)
    ours = [record for record in records if job_id in record["message"] or record["job_id"] == job_id]
    assert ours and all(record["job_id"] == job_id for record in ours)
    loggers = {record["logger"] for record in ours}
    assert {"celery.worker.strategy", "workers.tasks", THIS, "celery.app.trace"} <= loggers
    assert any(record["message"] == "user text: b\r\nFORGED line" for record in ours)
    # A traceback that quotes user text stays on its line too (this operation logged one)...
    assert any(record.get("exc_info", "").endswith("RuntimeError: b\r\nFORGED line") for record in ours)
    # ...but the worker's own line about the failed step carries none: only the error's type and where.
    failed = [r for r in ours if r["logger"] == "workers.tasks" and "RuntimeError at " in r["message"]]
    assert failed and not any("exc_info" in record for record in failed), failed


def test_failed_job_errors_quote_no_data_and_no_traceback(stack):
    dataset = [{"id": 1, "card": "4111-1111-SECRET"}]
    body = wait_for(
        stack.url,
        submit(stack.url, [{"name": "cast_types", "params": {"types": {"card": "int"}}}], dataset).json()["job_id"],
    )
    assert body["status"] == "failed" and body["error"]["operation_index"] == 0
    assert "SECRET" not in json.dumps(body["error"]) and "Traceback" not in json.dumps(body)
    # The worker's log says which step failed with what type of error, and where, but not the value.
    lines = [json.loads(line) for line in stack.logs().splitlines() if body["job_id"] in line]
    failed = [line for line in lines if "Step 0 (cast_types)" in line["message"]]
    assert failed and " at " in failed[0]["message"] and "exc_info" not in failed[0], failed
    assert not [line for line in lines if "SECRET" in json.dumps(line)]


def run_harvester(stack, source, output, *flags):
    args = harvest_command(stack.url, source, output, "--op", "drop_nulls", *flags)
    done = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    with output.open(newline="") as rows:
        return list(csv.DictReader(rows))


def test_csv_from_the_harvester_cannot_run_as_a_formula(stack, tmp_path):
    source = tmp_path / "in.json"
    cells = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "-12.5", "plain"]
    source.write_text(json.dumps([{"i": i, "text": text, "n": -i} for i, text in enumerate(cells)]))

    safe = run_harvester(stack, source, tmp_path / "out.csv")
    assert [row["text"] for row in safe] == ["'" + text for text in cells[:6]] + ["-12.5", "plain"]
    assert [row["n"] for row in safe] == [str(-i) for i in range(len(cells))]  # numbers are left alone

    raw = run_harvester(stack, source, tmp_path / "raw.csv", "--raw-csv")
    assert [row["text"] for row in raw] == cells
