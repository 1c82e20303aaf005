"""A job whose gateway process died between its record and its message is sent by the workers' sweeper.

With ``TEST_DIE_BEFORE_SEND`` a gateway process records the job (``JobStore.create``), claims its
``Idempotency-Key`` and exits (``os._exit``) just before ``send_task``: the client's connection drops and
nothing is queued. The gateway stamps each job with its ``ORPHAN_SECONDS`` (1 s on that gateway), so the
shared ``serial`` workers, sweeping every ``SWEEP_SECONDS`` (5 s, the default), find it listed as unsent
and send it; the client's retry with the same key, through a normal gateway, learns the job and follows it.
"""

import time

import pytest
import redis
import requests

import localstack
from tests.faults.conftest import submit, wait_for
from workers.celery import RUN_JOB, make_app
from workers.jobstore import UNSENT_INDEX

DATASET = [{"id": 3, "name": "c"}, {"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
OPERATIONS = [{"name": "sort", "params": {"by": "id"}}]


@pytest.fixture(scope="module")
def stacks(shared_stack):
    """``(normal, dying)``: the shared ``serial`` stack, and a gateway of its own before the same workers
    whose processes die before sending any job's message."""
    normal = shared_stack("serial")
    return normal, shared_stack("serial", TEST_DIE_BEFORE_SEND="1", ORPHAN_SECONDS="1")


def test_a_job_whose_gateway_died_before_sending_it_is_sent_by_the_sweeper_and_runs_once(stacks):
    normal, dying = stacks
    key = {"Idempotency-Key": f"orphan-{time.time_ns()}"}
    with pytest.raises(requests.ConnectionError):  # the gateway process died mid-request
        submit(dying.url, OPERATIONS, DATASET, headers=key)
    # The client retries with its key, here through a gateway that works: the job exists, queued.
    retry = submit(normal.url, OPERATIONS, DATASET, headers=key)
    assert retry.status_code == 200 and retry.json()["status"] == "started"
    job_id = retry.json()["job_id"]
    assert f"TEST_DIE_BEFORE_SEND: this gateway process exits before sending job {job_id}" in dying.logs()

    done = wait_for(normal.url, job_id, timeout=30)  # 1 s to be due, then the next sweep (every 5 s)
    assert done["status"] == "completed" and done["attempts"] == 1
    assert done["data"]["data"] == sorted(DATASET, key=lambda row: row["id"])
    result = requests.get(f"{normal.url}/jobs/{job_id}/result?format=jsonl", timeout=10)
    assert result.status_code == 200 and len(result.text.splitlines()) == len(DATASET)  # one result, whole
    assert normal.logs().count(f"job {job_id}: its gateway recorded it and never sent it; sending it now") == 1
    assert redis.Redis.from_url(normal.redis_url).zscore(UNSENT_INDEX, job_id) is None  # sent, so no longer listed


def test_a_second_message_for_a_job_that_ran_changes_nothing(stacks):
    """A gateway dying just after ``send_task`` leaves a job both queued and listed: should the sweeper send
    it too, the second message is dropped (``_open``: ended already), and the job keeps its one outcome."""
    normal, _ = stacks
    job_id = submit(normal.url, OPERATIONS, DATASET).json()["job_id"]
    first = wait_for(normal.url, job_id)
    with make_app(broker_url=normal.redis_url, result_backend=normal.redis_url) as celery:
        celery.send_task(RUN_JOB, args=[job_id], task_id=job_id)  # as the sweeper would send it
    localstack.wait_until(lambda: f"job {job_id}: ended already; nothing to do" in normal.logs(), 10,
                          "the second message dropped")
    again = requests.get(f"{normal.url}/jobs/{job_id}", timeout=10).json()
    assert again == first and again["attempts"] == 1  # not run again: the same outcome, the same one start
