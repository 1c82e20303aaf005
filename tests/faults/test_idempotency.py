"""Promise 6: retries are safe: an Idempotency-Key makes a retried POST return the job it created."""

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from tests.faults.conftest import wait_for
from workers.jobstore import key_for

BODY = {
    "dataset": [{"id": 1, "name": " Ada "}],
    "operations": [{"name": "normalize_text", "params": {"columns": ["name"]}}],
}


@pytest.fixture(scope="module")
def stack(shared_stack):
    return shared_stack("serial")


def post(url, body=BODY, key=None):
    return requests.post(f"{url}/jobs", json=body, headers={"Idempotency-Key": key} if key else {}, timeout=10)


def job_records(redis_url):
    client = redis.Redis.from_url(redis_url)
    return {k for k in client.scan_iter(key_for("*")) if k.count(b":") == 2}


def test_a_retried_post_returns_the_same_job_which_runs_once(stack):
    key = str(uuid.uuid4())
    first = post(stack.url, key=key)
    assert first.status_code == 202
    job_id = first.json()["job_id"]
    done = wait_for(stack.url, job_id)
    assert done["status"] == "completed" and done["attempts"] == 1

    again = post(stack.url, key=key)
    assert again.status_code == 200
    assert again.headers["Location"] == first.headers["Location"]
    assert again.json() == done  # the finished job, not a new one


def test_concurrent_retries_across_gateway_processes_create_one_job(stack):
    key = str(uuid.uuid4())
    before = job_records(stack.redis_url)
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: post(stack.url, key=key), range(10)))
    assert sorted(r.status_code for r in responses) == [200] * 9 + [202]
    assert len({r.json()["job_id"] for r in responses}) == 1
    assert job_records(stack.redis_url) == before | {key_for(responses[0].json()["job_id"]).encode()}
    assert wait_for(stack.url, responses[0].json()["job_id"])["attempts"] == 1


def test_the_same_key_with_another_body_is_409(stack):
    key = str(uuid.uuid4())
    assert post(stack.url, key=key).status_code == 202
    before = job_records(stack.redis_url)
    other = post(stack.url, {**BODY, "operations": []}, key=key)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert job_records(stack.redis_url) == before
