"""Promise 1, a dropped connection: kombu gives a running job's message back, and it must not run twice.

When a worker's broker connection drops (a network reset, a Redis failover;
``CLIENT KILL`` here) while Redis itself stays up, kombu puts the messages
that worker holds back on the queue at once, though their jobs go on running.
The job's lease sends the second delivery to wait until the first has ended.
"""

import pytest
import redis

from tests.faults.conftest import pids, sleep_step, submit, submit_started, wait_for


@pytest.fixture(scope="module")
def stack(shared_stack):
    return shared_stack("pair")  # a free process to take the given-back message


def test_a_job_given_back_on_a_dropped_connection_runs_once(stack, tmp_path):
    pid_file = tmp_path / "runs"
    operations = [
        sleep_step(3, pid_file),
        {"name": "add_column", "params": {"name": "ok", "value": True}},
    ]
    job_id = submit_started(stack.url, operations, pid_file)
    killed = redis.Redis.from_url(stack.redis_url).client_kill_filter(_type="normal", skipme=True)
    assert killed > 0

    body = wait_for(stack.url, job_id, timeout=60)
    assert body["status"] == "completed" and body["data"]["data"] == [{"id": 1, "ok": True}]
    assert body["attempts"] == 1
    assert len(pids(pid_file)) == 1
    assert wait_for(stack.url, submit(stack.url, ["drop_nulls"]).json()["job_id"])["status"] == "completed"
    assert len(pids(pid_file)) == 1
