"""``MAX_OUTPUT_ROWS``: a step that would make more rows fails the job, ``limit_exceeded``, before it makes them."""

import psutil
import pytest
import requests

from tests.faults.conftest import submit, wait_for
from workers import settings

TEXT_LENGTH = settings.get("MAX_STRING_LENGTH")  # the longest text a job may hold: 1,048,576 characters


@pytest.fixture(scope="module")
def stack(shared_stack):
    return shared_stack("serial")  # the default caps: MAX_OUTPUT_ROWS is 10 × MAX_RECORDS, 10,000,000


def peak_rss(pid):
    """The most memory process ``pid`` has held since it started (VmHWM), in bytes."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_step_that_would_pass_max_output_rows_fails_the_job_before_making_its_rows(stack):
    # Ten texts at the length limit, in pieces of one character: 10,485,760 rows, each a copy of its row
    # (terabytes). chunk_text counts the pieces from the lengths first and refuses.
    cap = settings.max_output_rows()
    dataset = [{"id": i, "text": "x" * TEXT_LENGTH} for i in range(10)]
    pool = {process.pid: peak_rss(process.pid) for process in psutil.Process(stack.workers[0].pid).children()}
    operations = [{"name": "chunk_text", "params": {"column": "text", "size": 1}}]
    job_id = submit(stack.url, operations, dataset).json()["job_id"]
    body = wait_for(stack.url, job_id, timeout=30)
    assert body["status"] == "failed", body
    assert body["error"]["type"] == "limit_exceeded"
    assert body["error"]["operation_index"] == 0
    message = body["error"]["message"]
    assert f"Step 0 (chunk_text) would make {10 * TEXT_LENGTH:,} rows" in message
    assert f"{cap:,} (MAX_OUTPUT_ROWS" in message
    assert "x" * 20 not in message  # names the step, never the data
    for pid, before in pool.items():  # the ten texts, loaded, and no more: far under what the rows would take
        if psutil.pid_exists(pid):
            assert peak_rss(pid) - before < 512 * 1024**2
    # Nothing of it is kept, and the worker goes on.
    assert requests.get(f"{stack.url}/jobs/{job_id}/result", timeout=10).status_code == 409
    assert wait_for(stack.url, submit(stack.url, []).json()["job_id"])["status"] == "completed"
