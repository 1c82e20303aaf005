"""The gateway's guards, through Flask's test client: tokens, idempotency keys, cancel, limits."""

import pytest

from app import create_app
from workers.jobstore import key_for

JOB = {"dataset": [{"name": "Ada", "age": 36}], "operations": ["drop_nulls"]}


def client_of(redis, celery, **config):
    """A test client of the gateway with fakeredis, the in-memory Celery and ``config`` on top."""
    app = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "HEALTH_PING_TIMEOUT": 0.1, **config})
    return app.test_client()


def keys(redis):
    return sorted(k.decode() for k in redis.keys("*"))


# --- tokens -------------------------------------------------------------------------------


@pytest.fixture
def secured(redis, celery):
    return client_of(redis, celery, API_TOKENS=("alice-token", "bob-token"))


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": "Basic alice-token"}, bearer("")])
@pytest.mark.parametrize(
    "method, path", [("get", "/operations"), ("post", "/jobs"), ("get", "/jobs/x"), ("delete", "/jobs/x")]
)
def test_without_a_valid_token_every_endpoint_is_401(secured, redis, queued, headers, method, path):
    response = getattr(secured, method)(path, json=JOB, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    error = response.get_json()["error"]
    assert error["code"] == "unauthorized"
    assert "wrong" not in error["message"] and "alice-token" not in error["message"]
    assert queued() == 0 and keys(redis) == []


def test_health_needs_no_token(secured):
    assert secured.get("/health").status_code == 200


def test_a_job_is_visible_and_cancellable_only_with_the_token_that_created_it(secured, redis):
    job_id = secured.post("/jobs", json=JOB, headers=bearer("alice-token")).get_json()["job_id"]
    assert secured.get(f"/jobs/{job_id}", headers=bearer("alice-token")).status_code == 200
    assert secured.get(f"/jobs/{job_id}", headers=bearer("bob-token")).status_code == 404
    assert secured.delete(f"/jobs/{job_id}", headers=bearer("bob-token")).status_code == 404
    assert secured.get(f"/jobs/{job_id}", headers=bearer("alice-token")).get_json()["status"] == "started"
    # The record keeps a digest of the token, never the token.
    assert b"alice-token" not in b"".join(v for v in redis.hvals(key_for(job_id)))


# --- idempotency keys ---------------------------------------------------------------------


def test_the_same_key_and_body_return_the_same_job(client, queued):
    first = client.post("/jobs", json=JOB, headers={"Idempotency-Key": "k-1"})
    again = client.post("/jobs", json=JOB, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.headers["Location"] == first.headers["Location"]
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    assert again.get_json()["status"] == "started"
    assert queued() == 1


def test_the_same_key_with_another_body_is_409_and_writes_nothing(client, redis, queued):
    client.post("/jobs", json=JOB, headers={"Idempotency-Key": "k-1"})
    before = keys(redis)
    other = {**JOB, "operations": []}
    response = client.post("/jobs", json=other, headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "idempotency_key_reused"
    assert keys(redis) == before and queued() == 1


def test_without_a_key_every_post_is_a_new_job(client, queued):
    ids = {client.post("/jobs", json=JOB).get_json()["job_id"] for _ in range(2)}
    assert len(ids) == 2 and queued() == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "é"])
def test_a_malformed_key_is_400(client, redis, key):
    response = client.post("/jobs", json=JOB, headers={"Idempotency-Key": key})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_idempotency_key"
    assert keys(redis) == []


# --- cancel -------------------------------------------------------------------------------


def test_cancelling_a_queued_job_ends_it_cancelled(client, redis):
    job_id = client.post("/jobs", json=JOB).get_json()["job_id"]
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "cancelled" and body["error"]["type"] == "cancelled"
    assert body["finished_at"] is not None
    assert redis.keys("datajobs:blob:*") == []  # the data is dropped at once
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "cancelled"


def test_cancelling_a_finished_job_is_409(client, complete_job):
    job_id = client.post("/jobs", json=JOB).get_json()["job_id"]
    complete_job(job_id, [], {"processed_items": 1, "output_items": 0, "operations_applied": 1, "operations": []})
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "job_finished"
    assert response.get_json()["error"]["details"]["job_status"] == "completed"
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "completed"
    assert client.delete(f"/jobs/{job_id}").status_code == 409


def test_cancelling_twice_is_409_the_second_time(client):
    job_id = client.post("/jobs", json=JOB).get_json()["job_id"]
    assert client.delete(f"/jobs/{job_id}").status_code == 200
    assert client.delete(f"/jobs/{job_id}").status_code == 409


def test_cancelling_an_unknown_job_is_404(client):
    assert client.delete("/jobs/6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b").status_code == 404


# --- limits -------------------------------------------------------------------------------


@pytest.fixture
def limited(redis, celery):
    return client_of(
        redis, celery, MAX_RECORDS=3, MAX_OPERATIONS=2, MAX_STRING_LENGTH=10, MAX_JSON_DEPTH=5, MAX_CONTENT_LENGTH=2000
    )


def nested(depth):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


LIMITS = [
    # (body, limit named, field)
    ({"dataset": [{"a": 1}] * 4, "operations": []}, "MAX_RECORDS", "dataset"),
    ({"dataset": [{"a": 1}], "operations": ["drop_nulls"] * 3}, "MAX_OPERATIONS", "operations"),
    ({"dataset": [{"a": "x" * 11}], "operations": []}, "MAX_STRING_LENGTH", "dataset"),
    ({"dataset": [{"k" * 11: 1}], "operations": []}, "MAX_STRING_LENGTH", "dataset"),
    ({"dataset": [{"a": {"b": ["x" * 11]}}], "operations": []}, "MAX_STRING_LENGTH", "dataset"),
    (
        {"dataset": [{"a": 1}], "operations": [{"name": "add_column", "params": {"name": "b", "value": "y" * 11}}]},
        "MAX_STRING_LENGTH",
        "operations",
    ),
    # body (1) > dataset (2) > record (3) > [ (4) > [ (5) > [ (6)
    ({"dataset": [{"a": nested(3)}], "operations": []}, "MAX_JSON_DEPTH", "dataset"),
    (
        {"dataset": [{"a": 1}], "operations": [{"name": "add_column", "params": {"name": "b", "value": nested(3)}}]},
        "MAX_JSON_DEPTH",
        "operations",
    ),
]


@pytest.mark.parametrize("body, limit, field", LIMITS)
def test_a_job_over_a_limit_is_400_naming_the_limit_and_writes_nothing(limited, redis, queued, body, limit, field):
    response = limited.post("/jobs", json=body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "limit_exceeded"
    assert error["details"]["limit"] == limit and error["details"]["field"] == field
    assert limit in error["message"]
    assert "xxxxxxxxxxx" not in error["message"] and "yyyyyyyyyyy" not in error["message"]
    assert keys(redis) == [] and queued() == 0


def test_a_job_at_every_limit_is_accepted(limited):
    body = {"dataset": [{"a": "x" * 10, "b": nested(2)}] * 3, "operations": ["drop_nulls"] * 2}
    assert limited.post("/jobs", json=body).status_code == 202


def test_nesting_too_deep_for_the_parser_is_400_not_500(client, redis):
    body = b'{"dataset": [{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b'}], "operations": []}'
    response = client.post("/jobs", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["limit"] == "MAX_JSON_DEPTH"
    assert keys(redis) == []


def test_a_body_over_the_size_limit_is_413(limited, redis):
    response = limited.post("/jobs", json={"dataset": [{"a": "x"}] * 500, "operations": []})
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert keys(redis) == []
