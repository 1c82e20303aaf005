"""Promise 2: time limits hold, and the worker refuses limits that would run a job twice."""

import subprocess

import pytest

import localstack
from tests.faults.conftest import TEST_OPS, sleep_step, submit, wait_for

SOFT, HARD = 2, 5


@pytest.fixture(scope="module")
def stack(start_stack):
    return start_stack(concurrency=1, JOB_SOFT_TIME_LIMIT=str(SOFT), JOB_HARD_TIME_LIMIT=str(HARD))


def assert_next_job_runs(stack):
    job = wait_for(
        stack.url, submit(stack.url, [{"name": "add_column", "params": {"name": "ok", "value": 1}}]).json()["job_id"]
    )
    assert job["status"] == "completed" and job["data"]["data"] == [{"id": 1, "ok": 1}]


def test_a_job_past_the_soft_limit_fails_time_limit_and_the_worker_goes_on(stack):
    job_id = submit(stack.url, [sleep_step(60), "drop_nulls"]).json()["job_id"]
    body = wait_for(stack.url, job_id)
    assert body["status"] == "failed"
    assert body["error"]["type"] == "time_limit"
    assert f"{SOFT} s" in body["error"]["message"]
    assert body["attempts"] == 1
    assert_next_job_runs(stack)


def test_a_pattern_that_backtracks_for_ever_in_re_completes_on_re2(stack):
    # Exponential backtracking under Python's re (a million years for 40 characters); RE2 matches in one pass,
    # so the job completes, well inside the soft limit, instead of being stopped by it.
    dataset = [{"id": 1, "text": "a" * 40 + "!"}, {"id": 2, "text": "a" * 40}]
    redos = {"name": "filter_rows", "params": {"column": "text", "operator": "regex", "value": "^(a+)+$"}}
    body = wait_for(stack.url, submit(stack.url, [redos], dataset).json()["job_id"])
    assert body["status"] == "completed", body
    assert body["data"]["data"] == [{"id": 2, "text": "a" * 40}]
    assert_next_job_runs(stack)


def test_a_step_the_soft_limit_cannot_interrupt_is_killed_at_the_hard_limit(stack):
    body = wait_for(stack.url, submit(stack.url, [{"name": "hang", "params": {"seconds": 60}}]).json()["job_id"])
    assert body["status"] == "failed"
    assert body["error"]["type"] == "time_limit"
    assert f"hard time limit of {HARD} s" in body["error"]["message"]
    assert body["attempts"] == 1  # killed by the limit, not redelivered as a lost worker
    assert_next_job_runs(stack)


@pytest.mark.parametrize(
    "soft, hard, visibility, named",
    [
        ("10", "5", "60", "JOB_SOFT_TIME_LIMIT"),
        ("10", "120", "60", "BROKER_VISIBILITY_TIMEOUT"),
        ("10", "60", "60", "BROKER_VISIBILITY_TIMEOUT"),
    ],
)
def test_the_worker_refuses_limits_that_could_run_a_job_twice(fault_redis, tmp_path, soft, hard, visibility, named):
    log = tmp_path / "worker.log"
    env = {
        **TEST_OPS,
        "JOB_SOFT_TIME_LIMIT": soft,
        "JOB_HARD_TIME_LIMIT": hard,
        "BROKER_VISIBILITY_TIMEOUT": visibility,
    }
    proc = localstack.start_worker(fault_redis, log, concurrency=1, extra_env=env)
    try:
        returncode = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        localstack.stop(proc)
        pytest.fail("the worker started with unsafe time limits")
    output = log.read_text()
    assert returncode != 0
    assert "datajobs worker refused to start" in output and named in output
    assert "Traceback" not in output
