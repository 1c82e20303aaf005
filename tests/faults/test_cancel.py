"""Promise 5: DELETE /jobs/<id> cancels a queued job before it runs and a running one between steps."""

import os

import pytest
import requests

import localstack
from tests.faults.conftest import CANCEL_GRACE, pids, sleep_step, submit, submit_started, wait_for


@pytest.fixture(scope="module")
def stack(shared_stack):
    return shared_stack("serial")  # one process; CANCEL_GRACE_SECONDS = CANCEL_GRACE


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cancel(stack, job_id):
    response = requests.delete(f"{stack.url}/jobs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    return response.json()


def test_a_queued_job_that_is_cancelled_never_runs(stack, tmp_path):
    busy = submit_started(stack.url, [sleep_step(2, tmp_path / "busy")], tmp_path / "busy")
    queued = submit(stack.url, [sleep_step(0, tmp_path / "queued")]).json()["job_id"]
    assert requests.get(f"{stack.url}/jobs/{queued}", timeout=10).json()["status"] == "started"
    cancel(stack, queued)
    after = submit(stack.url, ["drop_nulls"]).json()["job_id"]

    assert wait_for(stack.url, busy)["status"] == "completed"
    assert wait_for(stack.url, after)["status"] == "completed"  # the worker took the queue in order
    assert not (tmp_path / "queued").exists()  # not one operation of it ran
    body = wait_for(stack.url, queued)
    assert body["status"] == "cancelled" and body["attempts"] == 0 and body["data"] is None


def test_a_running_job_stops_between_operations(stack, tmp_path):
    pid_file = tmp_path / "pids"
    steps = [sleep_step(1, pid_file), sleep_step(1, pid_file), sleep_step(1, pid_file), "drop_nulls"]
    job_id = submit_started(stack.url, steps, pid_file)
    cancel(stack, job_id)
    next_job = submit(stack.url, [sleep_step(0, pid_file)]).json()["job_id"]
    assert wait_for(stack.url, next_job)["status"] == "completed"

    first, following = pids(pid_file)
    assert first == following  # the step in flight finished and the same process went on to the next job
    body = wait_for(stack.url, job_id)
    assert body["status"] == "cancelled" and body["data"] is None
    assert body["error"]["type"] == "cancelled"


def test_a_step_that_overruns_the_grace_period_is_terminated(stack, tmp_path):
    pid_file = tmp_path / "pids"
    job_id = submit_started(stack.url, [sleep_step(120, pid_file), "drop_nulls"], pid_file)
    pid = int(pids(pid_file)[0])
    cancel(stack, job_id)
    localstack.wait_until(lambda: not alive(pid), 30, "the stuck process being killed")

    next_job = submit(stack.url, [sleep_step(0, pid_file)]).json()["job_id"]
    assert wait_for(stack.url, next_job)["status"] == "completed"  # long before the 120 s step would end
    assert pids(pid_file)[-1] != str(pid)
    assert wait_for(stack.url, job_id)["status"] == "cancelled"
    assert f"job {job_id}: cancelled, and a step ran on for {CANCEL_GRACE:g} s; killing its worker process" in stack.logs()


def test_cancelling_a_finished_job_is_409_and_changes_nothing(stack):
    job_id = submit(stack.url, ["drop_nulls"]).json()["job_id"]
    done = wait_for(stack.url, job_id)
    response = requests.delete(f"{stack.url}/jobs/{job_id}", timeout=10)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "job_finished"
    assert wait_for(stack.url, job_id) == done
