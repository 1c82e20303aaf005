"""Promise 1, a whole host: a worker and its pool processes vanish mid-job, and nobody gives the message back.

A module of its own, so that no other worker shares its Redis and takes the job first.
"""

import os
import signal

from tests.faults.conftest import pids, sleep_step, submit_started, wait_for


def test_a_job_whose_whole_worker_vanishes_is_handed_to_another_worker(start_stack, tmp_path):
    # A host lost mid-job: the worker and its pool processes die at once and nobody
    # gives the message back. Redis hands it out again after the visibility timeout.
    lost = start_stack(concurrency=1, BROKER_VISIBILITY_TIMEOUT="6", JOB_SOFT_TIME_LIMIT="4", JOB_HARD_TIME_LIMIT="5")
    pid_file = tmp_path / "pids"
    operations = [
        sleep_step(1, pid_file),
        {"name": "add_column", "params": {"name": "ok", "value": True}},
    ]
    job_id = submit_started(lost.url, operations, pid_file)
    host = lost.workers[0]
    os.killpg(host.pid, signal.SIGKILL)
    host.wait(timeout=10)

    lost.add_worker(concurrency=1)
    body = wait_for(lost.url, job_id, timeout=90)
    assert body["status"] == "completed"
    assert body["data"]["data"] == [{"id": 1, "ok": True}]
    assert body["attempts"] == 2 and len(pids(pid_file)) == 2
