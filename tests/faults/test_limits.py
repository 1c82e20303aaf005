"""Promise 7: limits on what a job may be, checked before anything is written."""

import pytest
import redis
import requests

from tests.faults.conftest import submit, wait_for

LIMITS = {
    "MAX_CONTENT_LENGTH": "100000",
    "MAX_RECORDS": "100",
    "MAX_OPERATIONS": "5",
    "MAX_STRING_LENGTH": "1000",
    "MAX_JSON_DEPTH": "8",
}


@pytest.fixture(scope="module")
def stack(shared_stack):
    return shared_stack("serial", **LIMITS)  # limits only the gateway checks: a gateway of its own


def deep(levels):
    value = "x"
    for _ in range(levels):
        value = {"v": value}
    return value


OVER = [
    ("MAX_RECORDS", {"dataset": [{"id": i} for i in range(101)], "operations": []}),
    ("MAX_OPERATIONS", {"dataset": [{"id": 1}], "operations": ["drop_nulls"] * 6}),
    ("MAX_STRING_LENGTH", {"dataset": [{"id": 1, "text": "s" * 1001}], "operations": []}),
    (
        "MAX_STRING_LENGTH",
        {"dataset": [{"id": 1}], "operations": [{"name": "add_column", "params": {"name": "t", "value": "s" * 1001}}]},
    ),
    ("MAX_JSON_DEPTH", {"dataset": [{"id": 1, "nested": deep(6)}], "operations": []}),
]


@pytest.mark.parametrize("limit, body", OVER, ids=[f"{limit}-{i}" for i, (limit, _) in enumerate(OVER)])
def test_a_job_over_a_limit_is_400_and_nothing_is_written_or_queued(stack, limit, body):
    client = redis.Redis.from_url(stack.redis_url)
    before = client.dbsize()
    response = requests.post(f"{stack.url}/jobs", json=body, timeout=10)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "limit_exceeded" and error["details"]["limit"] == limit
    assert "sss" not in error["message"]
    assert client.dbsize() == before
    assert client.llen("datajobs") == 0


def test_a_body_over_the_size_limit_is_413(stack):
    client = redis.Redis.from_url(stack.redis_url)
    before = client.dbsize()
    response = requests.post(
        f"{stack.url}/jobs", json={"dataset": [{"t": "s" * 999}] * 100, "operations": []}, timeout=10
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert client.dbsize() == before


def test_a_job_at_the_limits_runs(stack):
    dataset = [{"id": i, "text": "s" * 1000, "nested": deep(5)} for i in range(50)]
    body = wait_for(stack.url, submit(stack.url, ["drop_nulls"] * 5, dataset).json()["job_id"])
    assert body["status"] == "completed" and body["data"]["output_items"] == 50
