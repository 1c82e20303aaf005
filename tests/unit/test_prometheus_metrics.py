"""``GET /metrics`` through the test client, with fakeredis: what an operator's Prometheus would scrape."""

import fakeredis
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from workers import metrics
from workers.jobstore import METRICS_KEY
from workers.operations import REGISTRY

JOB = {"dataset": [{"name": "Ada", "age": 36}], "operations": ["drop_nulls"]}
SUMMARY = {"processed_items": 1, "output_items": 1, "operations_applied": 1,
           "operations": [{"name": "drop_nulls", "rows_in": 1, "rows_out": 1, "seconds": 0.003}]}


def scrape(client, **headers):
    """``{(sample name, frozenset of labels): value}`` of one scrape, parsed as Prometheus parses it."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def value(figures, name, **labels):
    return figures.get((name, frozenset(labels.items())), 0.0)


def submit(client, body=JOB):
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job_id"]


def test_a_submission_counts_once_and_a_refused_or_dry_run_one_does_not(client):
    before = scrape(client)
    submit(client)
    assert client.post("/jobs", json={"dataset": [{"a": 1}], "operations": ["no_such_op"]}).status_code == 400
    assert client.post("/jobs?dry_run=true", json=JOB).status_code == 200
    after = scrape(client)
    assert value(after, "datajobs_jobs_submitted_total") == value(before, "datajobs_jobs_submitted_total") + 1


def test_a_job_ended_twice_counts_once_with_the_first_outcome(app, client, complete_job):
    store = app.extensions["jobstore"]
    job_id = submit(client)
    assert complete_job(job_id, [{"name": "Ada", "age": 36}], SUMMARY)
    assert client.delete(f"/jobs/{job_id}").status_code == 409  # too late: it had ended
    assert not store.fail(job_id, {"type": "worker_lost", "message": "x", "operation_index": None})
    assert not complete_job(job_id, [{"name": "Ada", "age": 36}], SUMMARY)  # a redelivery finishing again
    figures = scrape(client)
    assert value(figures, "datajobs_jobs_finished_total", status="completed") == 1
    assert value(figures, "datajobs_jobs_finished_total", status="failed") == 0
    assert value(figures, "datajobs_jobs_finished_total", status="cancelled") == 0
    assert value(figures, "datajobs_job_duration_seconds_count") == 1
    assert value(figures, "datajobs_operation_seconds_count", operation="drop_nulls") == 1
    assert value(figures, "datajobs_operation_seconds_sum", operation="drop_nulls") == pytest.approx(0.003)


def test_a_cancel_counts_as_cancelled_with_its_time_since_creation(app, client):
    job_id = submit(client)
    created = app.extensions["jobstore"].get(job_id)["created_at"]
    assert client.delete(f"/jobs/{job_id}").status_code == 200
    finished = client.get(f"/jobs/{job_id}").get_json()["finished_at"]
    figures = scrape(client)
    assert value(figures, "datajobs_jobs_finished_total", status="cancelled") == 1
    assert value(figures, "datajobs_jobs_finished_total", status="completed") == 0
    assert value(figures, "datajobs_operation_seconds_count", operation="drop_nulls") == 0  # it never ran
    assert value(figures, "datajobs_job_duration_seconds_sum") == pytest.approx(
        metrics.seconds_between(created, finished), abs=1e-6
    )


def test_histogram_buckets_are_cumulative_with_le_bounds_inclusive():
    redis = fakeredis.FakeRedis()
    ops = {"operations": [{"name": "sort", "seconds": 0.5}, {"name": "sort", "seconds": 0.7},
                          {"name": "drop_nulls", "seconds": 10_000.0}]}
    for seconds, summary in [(0.05, ops), (0.06, None), (7200.0, None)]:
        with redis.pipeline() as pipe:
            metrics.count_end(pipe, METRICS_KEY, "completed", seconds, summary)
            pipe.execute()
    families = {family.name: family for family in metrics.JobFigures(redis, METRICS_KEY).collect()}

    duration = {s.labels["le"]: s.value for s in families["datajobs_job_duration_seconds"].samples
                if s.name.endswith("_bucket")}
    assert list(duration) == [metrics.floatToGoString(b) for b in metrics.JOB_SECONDS.bounds]
    assert duration["0.05"] == 1  # 0.05 is at most 0.05: counted in that bucket
    assert duration["0.1"] == 2 and duration["3600.0"] == 2
    assert duration["+Inf"] == 3  # 7200 s: above every finite bound
    samples = {s.name: s.value for s in families["datajobs_job_duration_seconds"].samples if "le" not in s.labels}
    assert samples["datajobs_job_duration_seconds_count"] == 3
    assert samples["datajobs_job_duration_seconds_sum"] == pytest.approx(7200.11)

    steps = families["datajobs_operation_seconds"].samples
    sort = {s.labels["le"]: s.value for s in steps if s.labels.get("operation") == "sort" and "le" in s.labels}
    assert (sort["0.25"], sort["0.5"], sort["1.0"], sort["+Inf"]) == (0, 1, 2, 2)
    late = {s.labels["le"]: s.value for s in steps if s.labels.get("operation") == "drop_nulls" and "le" in s.labels}
    assert late["1800.0"] == 0 and late["+Inf"] == 1


def test_a_bucket_whose_bound_was_dropped_counts_in_the_next_bound_up():
    redis = fakeredis.FakeRedis()
    redis.hset(METRICS_KEY, mapping={"job_seconds:le:0.07": 4, "job_seconds:le:0.05": 1, "job_seconds:sum": 0.3})
    (buckets, total), = metrics.JOB_SECONDS.read(
        {k.decode(): v.decode() for k, v in redis.hgetall(METRICS_KEY).items()}
    ).values()
    assert buckets[:3] == [("0.05", 1), ("0.1", 5), ("0.25", 5)]
    assert buckets[-1] == ("+Inf", 5) and total == pytest.approx(0.3)


def test_no_label_carries_a_job_id_a_token_a_column_a_path_or_a_made_up_method(redis, celery):
    token, column = "tok-3f9a77c1", "col_secret_5521"
    app = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "API_TOKENS": (token,)})
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    job_id = client.post("/jobs", json={"dataset": [{column: "v"}], "operations": ["drop_nulls"]},
                         headers=auth).get_json()["job_id"]
    client.get(f"/jobs/{job_id}", headers=auth)
    client.get(f"/jobs/{job_id}/nothing-here-{column}", headers=auth)
    client.open("/jobs", method="BREW", headers=auth)
    summary = {"operations": [{"name": "drop_nulls", "seconds": 0.1}, {"name": column, "seconds": 0.1}]}
    with redis.pipeline() as pipe:  # a step name not in the registry is not counted
        metrics.count_end(pipe, METRICS_KEY, "completed", 1.0, summary)
        pipe.execute()

    text = client.get("/metrics").get_data(as_text=True)
    for secret in (job_id, token, column, "nothing-here", "BREW"):
        assert secret not in text
    routes = {rule.rule for rule in app.url_map.iter_rules()} | {"unmatched"}
    seen = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for label, label_value in sample.labels.items():
                seen.setdefault(label, set()).add(label_value)
    assert seen["route"] <= routes and {"/jobs", "/jobs/<job_id>", "unmatched"} <= seen["route"]
    assert seen["method"] <= metrics_methods() and "other" in seen["method"]
    assert seen["operation"] <= set(REGISTRY) and seen["operation"] == {"drop_nulls"}
    assert seen["status"] <= {"completed", "failed", "cancelled"} | {str(code) for code in range(100, 600)}


def metrics_methods():
    from app.metrics import METHODS

    return METHODS | {"other"}


def test_requests_are_counted_by_method_route_template_and_status(client):
    job_id = submit(client)
    client.get(f"/jobs/{job_id}")
    client.get("/jobs/6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b")
    client.get("/no/such/path")
    figures = scrape(client)
    name = "datajobs_http_requests_total"
    assert value(figures, name, method="POST", route="/jobs", status="202") == 1
    assert value(figures, name, method="GET", route="/jobs/<job_id>", status="200") == 1
    assert value(figures, name, method="GET", route="/jobs/<job_id>", status="404") == 1
    assert value(figures, name, method="GET", route="unmatched", status="404") == 1
    assert value(scrape(client), name, method="GET", route="/metrics", status="200") == 1  # the first scrape


def test_gauges_are_the_jobs_running_and_the_messages_waiting(app, client):
    job_id = submit(client)
    submit(client)
    assert app.extensions["jobstore"].take_lease(job_id, "w1@host:1:abc", 30)
    figures = scrape(client)
    assert value(figures, "datajobs_jobs_running") == 1
    assert value(figures, "datajobs_queue_depth") == 2


def test_metrics_are_open_even_with_api_tokens_unless_metrics_token_is_set(redis, celery):
    config = {"TESTING": True, "REDIS": redis, "CELERY": celery, "API_TOKENS": ("api-token",)}
    assert create_app(config).test_client().get("/metrics").status_code == 200

    client = create_app({**config, "METRICS_TOKEN": "scrape-token"}).test_client()
    for headers in [{}, {"Authorization": "Bearer api-token"}, {"Authorization": "Bearer scrape-token2"},
                    {"Authorization": "Basic scrape-token"}]:
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "scrape-token" not in response.get_data(as_text=True)
    assert scrape(client, Authorization="Bearer scrape-token")[("datajobs_jobs_submitted_total", frozenset())] == 0
    assert client.get("/jobs/6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b",
                      headers={"Authorization": "Bearer scrape-token"}).status_code == 401  # not an API token


def test_a_scrape_while_redis_is_down_is_503_json(celery):
    from localstack import free_port
    from workers.jobstore import connect

    app = create_app({"TESTING": True, "REDIS": connect(f"redis://127.0.0.1:{free_port()}/0"), "CELERY": celery})
    response = app.test_client().get("/metrics")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "backend_unavailable"


def test_the_end_is_not_failed_when_its_figures_cannot_be_written(app, client, monkeypatch):
    store = app.extensions["jobstore"]
    job_id = submit(client)

    def gone(*args, **kwargs):
        raise redis.ConnectionError("gone")

    # The counting's round trip, after the end (the end's own script is not a pipeline).
    monkeypatch.setattr(type(store.redis.pipeline()), "execute", gone)
    assert store.cancel(job_id)  # the end happened; only its figures are lost (logged)
    monkeypatch.undo()
    assert store.get(job_id)["outcome"] == "cancelled"
    assert value(scrape(client), "datajobs_jobs_finished_total", status="cancelled") == 0
