"""A real worker and gateway with ``LOG_FORMAT=json``: user strings with CR/LF reach their logs and forge no line.

The stack loads this module through ``OPERATION_MODULES``, which gives it one
test-only operation that logs a user string and then fails with it, as a
careless operation would. Only processes told to load the module know it.
"""

import json
import logging
import shutil
import time

import pytest
import requests

import localstack
from workers import settings
from workers.operations import operation

pytestmark = pytest.mark.integration

THIS = "tests.integration.test_logs_e2e"
ENV = {"LOG_FORMAT": "json", "OPERATION_MODULES": THIS}
FIELDS = {"time", "level", "logger", "job_id", "message"}

if THIS in settings.get("OPERATION_MODULES"):

    @operation({"text": {"type": "string", "description": "What to log, then fail with."}})
    def log_and_fail(df, text):
        """Log ``text``, then raise it (test-only)."""
        logging.getLogger(THIS).warning("user text: %s", text)
        raise RuntimeError(text)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """``(gateway URL, log folder)`` of a json-logging stack with a Redis of its own (the session's worker
    would otherwise take its jobs)."""
    log_dir = tmp_path_factory.mktemp("json-logs")
    redis = localstack.redis_server() if shutil.which("redis-server") else localstack.embedded_redis()
    with redis as redis_url, localstack.stack(redis_url, concurrency=1, log_dir=log_dir, extra_env=ENV) as url:
        yield url, log_dir


def wait_for_end(url, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{url}/jobs/{job_id}", timeout=10).json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return body
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not end within {timeout} s")


def test_json_logs_carry_the_job_id_and_keep_user_strings_on_their_line(stack):
    url, log_dir = stack
    operations = [
        {"name": "add_column", "params": {"name": "x", "value": "a\r\nFORGED line"}},
        {"name": "log_and_fail", "params": {"text": "b\r\nFORGED line"}},
    ]
    response = requests.post(f"{url}/jobs", json={"dataset": [{"a": 1}], "operations": operations}, timeout=10)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    body = wait_for_end(url, job_id)

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
    assert any(record.get("exc_info", "").endswith("RuntimeError: b\r\nFORGED line") for record in ours)
