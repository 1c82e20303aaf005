"""The gateway through Flask's test client, with fakeredis and Celery's in-memory broker."""

import json
import time

import pytest

from workers.celery import RUN_JOB
from workers.jobstore import WORKERS_INDEX, key_for
from workers.status import PROGRESS

JOB = {
    "dataset": [{"name": "Ada", "age": 36}, {"name": None, "age": 41}, {"name": "Linus", "age": None}],
    "operations": ["drop_nulls", {"name": "select_columns", "params": {"columns": ["name"]}}],
}


def submit(client, body=JOB, path="/jobs"):
    return client.post(path, json=body)


@pytest.mark.parametrize("path", ["/jobs", "/process"])
def test_submit_answers_202_with_location_and_enqueues_only_the_id(client, redis, queued, path):
    response = submit(client, path=path)
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "started"
    assert response.headers["Location"] == f"/jobs/{body['job_id']}"
    assert "3 items" in body["message"]
    assert queued() == 1
    assert redis.exists(key_for(body["job_id"]))
    assert len(redis.keys("datajobs:blob:jobs/*")) == 1  # the records, as one chunk of Arrow


def test_broker_message_carries_no_data(client, celery):
    dataset = [{"text": "x" * 1000, "i": i} for i in range(200)]
    job_id = submit(client, {"dataset": dataset, "operations": []}).get_json()["job_id"]
    with celery.connection_for_write() as conn:
        message = conn.default_channel.basic_get("datajobs")
    assert message.headers["task"] == RUN_JOB
    assert message.headers["id"] == job_id
    assert message.content_type == "application/json"
    assert len(message.body) < 1000  # 200 KB of records stayed in the job store


def test_minimal_job_is_valid(client):
    assert submit(client, {"dataset": [{"name": "test"}], "operations": []}).status_code == 202


def test_get_after_submit_reports_started_with_progress_and_timestamps(client):
    job_id = submit(client).get_json()["job_id"]
    body = client.get(f"/jobs/{job_id}").get_json()
    assert body["status"] == "started"
    assert body["progress"] == {
        "operations_done": 0, "operations_total": 2, "current_operation": None,
        "phase": None, "chunks_done": 0, "chunks_total": 0,
    }
    assert body["created_at"].endswith("Z") and body["started_at"] is None and body["finished_at"] is None
    assert body["data"] is None and body["error"] is None
    assert body["attempts"] == 0


def test_progress_state_reads_as_processing(client, celery):
    job_id = submit(client).get_json()["job_id"]
    meta = {"operations_done": 1, "operations_total": 2, "current_operation": "select_columns",
            "phase": "running", "chunks_done": 3, "chunks_total": 4}
    celery.backend.store_result(job_id, meta, PROGRESS)
    body = client.get(f"/jobs/{job_id}").get_json()
    assert body["status"] == "processing"
    assert body["progress"] == meta
    assert body["message"] == "Processing: 1 of 2 operations done, running select_columns (chunk 3 of 4 done)."
    celery.backend.store_result(job_id, {**meta, "phase": "saving", "operations_done": 2}, PROGRESS)
    assert client.get(f"/jobs/{job_id}").get_json()["message"] == "Processing: all 2 operations done, saving the result."


def test_completed_job_returns_data_and_stats(client, celery, complete_job):
    job_id = submit(client).get_json()["job_id"]
    summary = {
        "processed_items": 3,
        "output_items": 1,
        "operations_applied": 2,
        "operations": [
            {"name": "drop_nulls", "rows_in": 3, "rows_out": 1, "seconds": 0.01},
            {"name": "select_columns", "rows_in": 1, "rows_out": 1, "seconds": 0.01},
        ],
    }
    complete_job(job_id, [{"name": "Ada"}], summary)
    # The record is written before the task returns: Celery may still say PROGRESS.
    celery.backend.store_result(job_id, {"operations_done": 2, "operations_total": 2, "current_operation": None}, PROGRESS)
    body = client.get(f"/jobs/{job_id}").get_json()
    assert body["status"] == "completed"
    assert body["message"] == "Successfully processed 3 items with 2 operations"
    assert body["data"] == {
        **summary,
        "columns": [{"name": "name", "type": "string"}],
        "workers": ["w1"],
        "result_url": f"/jobs/{job_id}/result",
        "truncated": False,
        "data": [{"name": "Ada"}],
    }
    assert body["progress"]["operations_done"] == 2
    assert body["finished_at"] is not None


def test_failed_job_is_200_with_error_and_no_data(client, celery, app):
    job_id = submit(client).get_json()["job_id"]
    error = {"type": "invalid_parameter", "message": "Step 1 (cast_types): ...", "operation_index": 1}
    app.extensions["jobstore"].fail(job_id, error)
    celery.backend.mark_as_failure(job_id, RuntimeError("x"))
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "failed" and body["error"] == error and body["data"] is None


def test_revoked_job_without_record_error_still_explains(client, celery):
    job_id = submit(client).get_json()["job_id"]
    celery.backend.store_result(job_id, None, "REVOKED")
    body = client.get(f"/jobs/{job_id}").get_json()
    assert body["status"] == "cancelled"
    assert body["error"]["type"] == "cancelled"


def test_a_hard_time_limit_recorded_only_by_celery_reads_as_time_limit(client, celery):
    from celery.exceptions import TimeLimitExceeded

    job_id = submit(client).get_json()["job_id"]
    celery.backend.mark_as_failure(job_id, TimeLimitExceeded(5))
    body = client.get(f"/jobs/{job_id}").get_json()
    assert body["status"] == "failed" and body["error"]["type"] == "time_limit"


@pytest.mark.parametrize("job_id", ["6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b", "not-a-job", "1234", "a b"])
def test_unknown_or_malformed_id_is_404_json(client, job_id):
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "job_not_found"


BAD_JOBS = [
    # (body, status, code, step, parameter)
    ({"operations": []}, 400, "invalid_body", None, None),
    ({"dataset": [{"a": 1}], "dataset_id": "6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b", "operations": []}, 400,
     "invalid_body", None, None),
    ({"dataset_id": 5, "operations": []}, 400, "invalid_body", None, None),
    ({"dataset": {"a": 1}, "operations": []}, 400, "invalid_dataset", None, None),
    ({"dataset": [{"a": 1}, 5], "operations": []}, 400, "invalid_dataset", None, None),
    ({"dataset": [{"a": 1}], "operations": "drop_nulls"}, 400, "invalid_operations", None, None),
    ({"dataset": [{"a": 1}], "operations": [], "extra": 1}, 400, "invalid_body", None, None),
    ([1, 2], 400, "invalid_body", None, None),
    ({"dataset": [{"a": 1}], "operations": ["drop_nulls", 7]}, 400, "invalid_operations", 1, None),
    ({"dataset": [{"a": 1}], "operations": [{"params": {}}]}, 400, "invalid_operations", 0, None),
    ({"dataset": [{"a": 1}], "operations": [{"name": "drop_nulls", "params": []}]}, 400, "invalid_operations", 0, None),
    ({"dataset": [{"a": 1}], "operations": ["drop_nulls", "explode"]}, 400, "unknown_operation", 1, None),
    ({"dataset": [{"a": 1}], "operations": ["select_columns"]}, 400, "missing_parameter", 0, "columns"),
    (
        {"dataset": [{"a": 1}], "operations": [{"name": "limit", "params": {"n": 1, "m": 2}}]},
        400,
        "unexpected_parameter",
        0,
        "m",
    ),
    ({"dataset": [{"a": 1}], "operations": [{"name": "limit", "params": {"n": "3"}}]}, 400, "invalid_parameter", 0, "n"),
    (
        {"dataset": [{"a": 1}], "operations": [{"name": "filter_rows", "params": {"column": "b", "operator": "eq", "value": 1}}]},
        400,
        "unknown_column",
        0,
        "column",
    ),
    (
        {
            "dataset": [{"a": 1, "b": 2}],
            "operations": [
                {"name": "select_columns", "params": {"columns": ["a"]}},
                {"name": "sort", "params": {"by": "b"}},
            ],
        },
        400,
        "unknown_column",
        1,
        "by",
    ),
    (
        {
            "dataset": [{"a": 1}],
            "operations": [
                {"name": "rename_columns", "params": {"mapping": {"a": "z"}}},
                {"name": "drop_columns", "params": {"columns": ["a"]}},
            ],
        },
        400,
        "unknown_column",
        1,
        "columns",
    ),
]


@pytest.mark.parametrize("body,status,code,step,parameter", BAD_JOBS)
def test_bad_job_is_refused_naming_step_and_parameter_and_nothing_is_stored(
    client, redis, queued, body, status, code, step, parameter
):
    response = client.post("/jobs", json=body)
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["code"] == code
    assert error["message"].endswith(".")
    if step is not None:
        assert error["details"]["step"] == step
        assert f"Step {step}" in error["message"]
    if parameter is not None:
        assert error["details"]["parameter"] == parameter
        assert f"'{parameter}'" in error["message"]
    assert queued() == 0
    assert redis.keys("*") == []


def test_a_column_made_by_an_earlier_step_may_be_used(client):
    body = {
        "dataset": [{"a": "x"}],
        "operations": [
            {"name": "rename_columns", "params": {"mapping": {"a": "b"}}},
            {"name": "text_length", "params": {"column": "b", "into": "n"}},
            {"name": "filter_rows", "params": {"column": "n", "operator": "gt", "value": 0}},
        ],
    }
    assert client.post("/jobs", json=body).status_code == 202


def test_malformed_json_names_the_position(client, queued):
    response = client.post("/jobs", data='{"dataset": [', content_type="application/json")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_json" and "line 1" in error["message"]
    assert queued() == 0


def test_wrong_content_type_is_415(client, queued):
    response = client.post("/jobs", data=json.dumps(JOB), content_type="text/plain")
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"
    assert queued() == 0


def test_body_over_the_limit_is_413_json(redis, celery, queued):
    from app import create_app

    app = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "MAX_CONTENT_LENGTH": 1000})
    response = app.test_client().post("/jobs", json={"dataset": [{"t": "x" * 2000}], "operations": []})
    assert response.status_code == 413
    error = response.get_json()["error"]
    assert error["code"] == "payload_too_large" and "1000 bytes" in error["message"]
    assert queued() == 0 and redis.keys("*") == []


def test_default_body_limit_is_64_mb(app):
    assert app.config["MAX_CONTENT_LENGTH"] == 64 * 1024 * 1024


def test_operations_catalogue_lists_the_registry(client):
    from workers.operations import REGISTRY

    catalogue = client.get("/operations").get_json()["operations"]
    assert [op["name"] for op in catalogue] == sorted(REGISTRY)
    filter_rows = next(op for op in catalogue if op["name"] == "filter_rows")
    assert filter_rows["description"]
    assert filter_rows["parameters"]["required"] == ["column", "operator"]
    assert "regex" in filter_rows["parameters"]["properties"]["operator"]["enum"]


def test_health_reports_redis_and_workers(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "redis": "reachable", "workers": 0}


def test_health_counts_the_workers_whose_heartbeat_is_recent(redis, celery):
    from app import create_app

    app = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "HEALTH_CACHE_SECONDS": 0})
    client, store = app.test_client(), app.extensions["jobstore"]
    store.beat("w1@host")
    store.beat("w2@host")
    redis.zadd(WORKERS_INDEX, {"gone@host": time.time() - 3 * app.config["HEARTBEAT_SECONDS"] - 1})
    assert client.get("/health").get_json()["workers"] == 2  # the one silent for three beats is not counted
    store.forget_worker("w2@host")  # as a worker does when it shuts down
    assert client.get("/health").get_json() == {"status": "ok", "redis": "reachable", "workers": 1}


class Clock:
    """``time.monotonic`` for ``app.health``, moved on by hand."""

    def __init__(self, monkeypatch):
        import app.health

        self.now = 1000.0
        monkeypatch.setattr(app.health.time, "monotonic", lambda: self.now)


@pytest.fixture
def redis_reads(app, monkeypatch):
    """The health counts read from Redis so far, as a list that grows with each read."""
    store, reads = app.extensions["jobstore"], []

    def live_workers(seconds):
        reads.append(seconds)
        return 1

    monkeypatch.setattr(store, "live_workers", live_workers)
    return reads


def test_a_processs_health_count_holds_for_health_cache_seconds_then_is_read_again(app, client, redis_reads,
                                                                                    monkeypatch):
    clock = Clock(monkeypatch)
    bodies = [client.get("/health").get_json() for _ in range(100)]
    assert bodies == [{"status": "ok", "redis": "reachable", "workers": 1}] * 100
    assert len(redis_reads) == 1  # a hundred checks, one Redis read
    clock.now += app.config["HEALTH_CACHE_SECONDS"] - 0.01
    client.get("/health")
    assert len(redis_reads) == 1
    clock.now += 0.01
    client.get("/health")
    assert len(redis_reads) == 2
    client.get("/health?deep=true")  # the deep check always counts afresh
    assert len(redis_reads) == 3


def test_a_cached_health_answer_is_the_one_flask_gives_and_is_counted_in_the_metrics(app, client, redis_reads):
    counter = app.extensions["http_requests"].labels(method="GET", route="/health", status="200")
    first, cached = client.get("/health"), client.get("/health")
    assert len(redis_reads) == 1  # the second was answered before Flask's routing, from the count
    assert cached.data == first.data and cached.headers == first.headers and cached.status == first.status
    assert counter._value.get() == 2


def test_once_a_request_finds_redis_down_the_next_health_check_asks_redis(app, client, redis_reads, monkeypatch):
    import redis as redis_py

    Clock(monkeypatch)  # time stands still: only the error can make the count go
    assert client.get("/health").status_code == 200
    store = app.extensions["jobstore"]

    def down(*args, **kwargs):
        raise redis_py.exceptions.ConnectionError("Connection refused")

    monkeypatch.setattr(store, "live_workers", down)
    monkeypatch.setattr(store.redis, "hgetall", down)
    assert client.get("/jobs/6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b").status_code == 503
    response = client.get("/health")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "backend_unavailable"


def test_deep_health_also_pings_the_workers_and_needs_a_token_when_tokens_are_set(client, redis, celery):
    from app import create_app

    body = client.get("/health?deep=true").get_json()
    assert body["workers_answering"] == 0  # no worker on the in-memory broker answers
    assert client.get("/health?deep=maybe").get_json()["error"]["details"] == {"parameter": "deep"}
    secured = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "HEALTH_PING_TIMEOUT": 0.1,
                          "API_TOKENS": ("s3cret",)}).test_client()
    assert secured.get("/health").status_code == 200  # a load balancer's check needs no token
    assert secured.get("/health?deep=true").status_code == 401
    answer = secured.get("/health?deep=true", headers={"Authorization": "Bearer s3cret"})
    assert answer.status_code == 200 and "workers_answering" in answer.get_json()


def test_health_is_503_json_when_redis_is_down(celery):
    from app import create_app
    from localstack import free_port
    from workers.jobstore import connect

    dead = connect(f"redis://127.0.0.1:{free_port()}/0")
    client = create_app({"TESTING": True, "REDIS": dead, "CELERY": celery}).test_client()
    for path in ["/health", "/jobs/6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b"]:
        response = client.get(path)
        assert response.status_code == 503
        assert response.get_json()["error"]["code"] == "backend_unavailable"
        assert response.headers["Retry-After"]


def test_unknown_route_and_wrong_method_are_json(client):
    assert client.get("/nowhere").get_json()["error"]["code"] == "not_found"
    response = client.put("/jobs")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_unexpected_error_is_a_500_without_traceback(app, client, monkeypatch):
    def explode(job_id):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.extensions["jobstore"], "get", explode)
    response = client.get("/jobs/6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b")
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "internal_error"
    assert b"secret internals" not in response.data and b"Traceback" not in response.data
