"""Promise 1: a dying worker loses nothing, and a job that kills its worker every time ends failed."""

import os
import signal

import psutil
import pytest
import redis
import requests

import localstack

from tests.faults.conftest import pids, sleep_step, submit, submit_started, wait_for
from workers.jobstore import key_for

#: The first column that makes tests/faults/ops.py's load hook kill the worker process loading it. Not imported
#: from there: importing that module here would add its test-only operations to this process's catalogue.
POISON = "__poison__"


@pytest.fixture(scope="module")
def stack(shared_stack):
    return shared_stack("serial")


def test_a_job_whose_worker_process_is_killed_runs_again_and_completes_once(stack, tmp_path):
    pid_file = tmp_path / "pids"
    dataset = [{"id": i, "name": f" item {i} "} for i in range(50)]
    operations = [
        sleep_step(1.5, pid_file),
        {"name": "normalize_text", "params": {"columns": ["name"]}},
        {"name": "filter_rows", "params": {"column": "id", "operator": "lt", "value": 10}},
    ]
    job_id = submit_started(stack.url, operations, pid_file, dataset)
    os.kill(int(pids(pid_file)[0]), signal.SIGKILL)  # as the OOM killer would, mid-step

    body = wait_for(stack.url, job_id)
    assert body["status"] == "completed"
    assert body["data"]["data"] == [{"id": i, "name": f"item {i}"} for i in range(10)]
    assert body["attempts"] == 2
    first, second = pids(pid_file)
    assert first != second  # the second attempt ran in a fresh process

    # One more job through the same single process: once it is done, the killed
    # job's message has been dealt with, and it ran exactly twice.
    assert wait_for(stack.url, submit(stack.url, []).json()["job_id"])["status"] == "completed"
    assert len(pids(pid_file)) == 2
    client = redis.Redis.from_url(stack.redis_url)
    assert client.hget(key_for(job_id), "outcome") == b"completed"
    assert wait_for(stack.url, job_id) == body  # nothing overwrote the result


def test_a_job_that_kills_its_worker_every_time_fails_worker_lost_while_others_flow(stack, tmp_path):
    # One kills its process in a step; the other while loading its input, before any step runs (a poison
    # input: one too large for the process, say). Both at once: their deaths interleave, in half the time.
    pid_file = tmp_path / "poisoned"
    crasher = submit(stack.url, ["crash"]).json()["job_id"]
    poisoned = submit(stack.url, ["drop_nulls"], [{POISON: str(pid_file), "id": 1}]).json()["job_id"]
    others = [submit(stack.url, [{"name": "add_column", "params": {"name": "n", "value": i}}]) for i in range(5)]

    for job_id in (crasher, poisoned):
        body = wait_for(stack.url, job_id, timeout=90)
        assert body["status"] == "failed", body
        assert body["error"]["type"] == "worker_lost"
        assert body["attempts"] == 3  # JOB_MAX_ATTEMPTS' default
    # Every death while loading was counted: three processes died, each in its first load, no fourth.
    assert len(set(pids(pid_file))) == len(pids(pid_file)) == 3
    assert body["progress"]["operations_done"] == 0
    for i, response in enumerate(others):
        other = wait_for(stack.url, response.json()["job_id"])
        assert other["status"] == "completed"
        assert other["data"]["data"] == [{"id": 1, "n": i}]
    # And the worker is still there to take new jobs.
    assert wait_for(stack.url, submit(stack.url, []).json()["job_id"])["status"] == "completed"


def test_a_job_killed_as_soon_as_it_reads_processing_has_both_deliveries_counted(stack, tmp_path):
    # Every time: "processing" comes from the job's first progress report, written after the delivery
    # is counted, so no kill, however early, leaves a delivery uncounted.
    for round in range(3):
        job_id = submit(stack.url, [sleep_step(1)], [{"id": round}]).json()["job_id"]
        seen = []
        localstack.wait_until(
            lambda: seen.append(requests.get(f"{stack.url}/jobs/{job_id}", timeout=10).json())
            or seen[-1]["status"] == "processing",
            30, f"job {job_id} processing", interval=0.005,
        )
        assert seen[-1]["attempts"] == 1, seen[-1]  # the very body that first reads processing counts it
        for process in psutil.Process(stack.workers[0].pid).children():  # the pool: Celery starts new ones
            process.kill()
        body = wait_for(stack.url, job_id)
        assert body["status"] == "completed" and body["attempts"] == 2, body
