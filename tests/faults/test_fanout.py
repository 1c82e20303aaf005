"""A job over several chunks, spread over worker processes: who takes part, a killed chunk, a cancel.

The stack stores chunks of 1,000 rows, so the 4,000-row dataset is four chunks;
``sleep_chunk`` (``tests/faults/ops.py``) is a row-local step that sleeps once per
chunk and logs the process and the chunk's first id.
"""

import os
import signal

import pytest
import redis
import requests

import localstack
from tests.faults.conftest import wait_for
from workers.jobstore import key_for

pytestmark = pytest.mark.integration

ROWS, CHUNK_ROWS = 4000, 1000


def runs(path):
    """``[(pid, first id)]`` of every chunk run ``sleep_chunk`` logged in ``path``."""
    if not path.exists():
        return []
    return [tuple(int(x) for x in line.split()) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def stack(start_stack):
    return start_stack(workers=2, concurrency=1, CHUNK_ROWS=str(CHUNK_ROWS))


@pytest.fixture(scope="module")
def dataset_id(stack):
    body = "id,text\n" + "".join(f"{i},row {i}\n" for i in range(ROWS))
    response = requests.post(f"{stack.url}/datasets", data=body, headers={"Content-Type": "text/csv"}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["dataset_id"]


def submit(stack, dataset_id, operations):
    response = requests.post(f"{stack.url}/jobs", json={"dataset_id": dataset_id, "operations": operations}, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def chunk_step(seconds, pid_file):
    return {"name": "sleep_chunk", "params": {"seconds": seconds, "pid_file": str(pid_file)}}


PIPELINE_TAIL = [
    {"name": "filter_rows", "params": {"column": "id", "operator": "ge", "value": 10}},
    {"name": "sort", "params": {"by": "id", "ascending": False}},
]
EXPECTED_IDS = list(range(ROWS - 1, 9, -1))


def result_ids(stack, job_id):
    lines = requests.get(f"{stack.url}/jobs/{job_id}/result", timeout=30).text.splitlines()
    return [int(line.split('"id":')[1].split(",")[0]) for line in lines]


def test_both_worker_processes_work_on_one_job(stack, dataset_id, tmp_path):
    pid_file = tmp_path / "pids"
    job_id = submit(stack, dataset_id, [chunk_step(1.0, pid_file), *PIPELINE_TAIL])
    body = wait_for(stack.url, job_id)
    assert body["status"] == "completed", body
    assert len(body["data"]["workers"]) == 2  # the summary names both workers
    started = runs(pid_file)
    assert sorted(first for _, first in started) == [0, 1000, 2000, 3000]  # each chunk ran once
    assert len({pid for pid, _ in started}) == 2
    assert result_ids(stack, job_id) == EXPECTED_IDS
    assert [op["rows_in"] for op in body["data"]["operations"]] == [ROWS, ROWS, ROWS - 10]


def test_a_chunk_whose_process_is_killed_runs_again_and_the_job_completes_once(stack, dataset_id, tmp_path):
    pid_file = tmp_path / "pids"
    job_id = submit(stack, dataset_id, [chunk_step(2.0, pid_file), *PIPELINE_TAIL])
    localstack.wait_until(lambda: runs(pid_file), 30, "a chunk starting")
    victim, first = runs(pid_file)[0]
    os.kill(victim, signal.SIGKILL)
    body = wait_for(stack.url, job_id, timeout=90)
    assert body["status"] == "completed", body
    started = runs(pid_file)
    assert sorted(f for _, f in started) == sorted([0, 1000, 2000, 3000, first])  # that chunk, and only it, again
    assert result_ids(stack, job_id) == EXPECTED_IDS
    client = redis.Redis.from_url(stack.redis_url)
    assert client.hget(key_for(job_id), "outcome") == b"completed"
    assert int(client.hget(key_for(job_id), f"attempts:0:{first // CHUNK_ROWS}")) == 2


def test_a_cancel_stops_every_chunk_of_the_job(stack, dataset_id, tmp_path):
    pid_file = tmp_path / "pids"
    job_id = submit(stack, dataset_id, [chunk_step(3.0, pid_file), *PIPELINE_TAIL])
    localstack.wait_until(lambda: len(runs(pid_file)) >= 2, 30, "two chunks starting")
    response = requests.delete(f"{stack.url}/jobs/{job_id}", timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    # The two running chunks stop after their step; the two queued ones never start. A chunk's message is
    # acknowledged once it has run or been dropped (acks late): with nothing left queued or unacknowledged,
    # every chunk has had its chance to start, and no chunk can start any more.
    client = redis.Redis.from_url(stack.redis_url)
    localstack.wait_until(lambda: client.llen("datajobs") == 0 and client.hlen("unacked") == 0, 30,
                          "every chunk's message being dealt with")
    assert len(runs(pid_file)) == 2
    assert wait_for(stack.url, job_id)["status"] == "cancelled"
    after = submit(stack, dataset_id, ["drop_nulls"])
    assert wait_for(stack.url, after, timeout=30)["status"] == "completed"


def test_a_second_message_for_a_job_that_has_fanned_out_does_not_start_it_over(stack, dataset_id, tmp_path):
    # As when the sweeper sends a job whose gateway died after sending it (tests/faults/test_orphans.py).
    from workers.celery import RUN_JOB
    from workers.celery import make_app

    pid_file = tmp_path / "pids"
    job_id = submit(stack, dataset_id, [chunk_step(1.0, pid_file), *PIPELINE_TAIL])
    localstack.wait_until(lambda: runs(pid_file), 20, "the job's chunks running")
    client = make_app(broker_url=stack.redis_url, result_backend=stack.redis_url)
    client.send_task(RUN_JOB, args=[job_id], task_id=job_id)
    body = wait_for(stack.url, job_id)
    assert body["status"] == "completed" and body["attempts"] == 1, body
    assert result_ids(stack, job_id) == EXPECTED_IDS
    assert sorted({first for _, first in runs(pid_file)}) == [0, 1000, 2000, 3000]
    logs = "".join(path.read_text() for path in stack.log_dir.glob("worker*.log"))
    assert f"job {job_id}: fanned out already" in logs
