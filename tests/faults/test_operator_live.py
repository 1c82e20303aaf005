"""``GET /jobs`` and ``GET /workers`` against real workers: who runs what, and the list as it changes."""

import pytest
import requests

import localstack
from tests.faults.conftest import sleep_step, submit, wait_for


@pytest.fixture(scope="module")
def stack(shared_stack):
    return shared_stack("pair")  # one worker with two processes


def workers(url):
    return requests.get(f"{url}/workers", timeout=10).json()


def test_workers_shows_the_job_a_real_worker_runs_and_forgets_it_when_it_ends(stack):
    job_id = submit(stack.url, [sleep_step(2)]).json()["job_id"]
    localstack.wait_until(lambda: workers(stack.url)["jobs_running"] == 1, 20, "the job shown running")
    body = workers(stack.url)
    (worker,) = [worker for worker in body["workers"] if worker["jobs"]]
    assert worker["jobs"] == [job_id] and worker["running"] == 1 and worker["last_seen"]
    assert worker["name"] in wait_for(stack.url, job_id)["data"]["workers"]
    assert workers(stack.url)["jobs_running"] == 0


def test_the_list_follows_jobs_from_queued_to_completed(stack):
    # Two processes: the third job queues behind two sleeping ones.
    made = [submit(stack.url, [sleep_step(1)]).json()["job_id"] for _ in range(3)]
    listed = requests.get(f"{stack.url}/jobs", params={"limit": 3}, timeout=10).json()
    assert [job["job_id"] for job in listed["jobs"]] == made[::-1]
    # Each process holds one message (prefetch 1, acks late): the third waits in the queue. A job counts as
    # running from its lease, a moment before its first report takes its status past `started`: wait for both.
    def queued():
        listed = requests.get(f"{stack.url}/jobs", params={"status": "started"}, timeout=10).json()["jobs"]
        return [job["job_id"] for job in listed]

    localstack.wait_until(
        lambda: (lambda body: (body["jobs_running"], body["queue_depth"]))(workers(stack.url)) == (2, 1)
        and queued() == [made[2]],
        10, "two jobs running and one queued", interval=0.05,
    )
    for job_id in made:
        wait_for(stack.url, job_id)
    done = requests.get(f"{stack.url}/jobs", params={"status": "completed", "limit": 3}, timeout=10).json()
    assert [job["job_id"] for job in done["jobs"]] == made[::-1]
    assert all(job["data"]["data"] is None and job["data"]["output_items"] == 1 for job in done["jobs"])
