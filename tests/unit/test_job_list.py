"""``GET /jobs`` (the caller's jobs, paged), ``POST /jobs?dry_run=true`` and ``GET /workers``, on fakeredis."""

import base64
import time

import pytest

from workers.jobstore import RUNNING_INDEX, index_key

JOB = {"dataset": [{"id": 1, "name": "Ada"}, {"id": 2, "name": None}], "operations": ["drop_nulls"]}


def submit(client, headers=None, **overrides):
    response = client.post("/jobs", json={**JOB, **overrides}, headers=headers or {})
    assert response.status_code == 202, response.json
    return response.json["job_id"]


def listed(client, query="", headers=None):
    response = client.get(f"/jobs{query}", headers=headers or {})
    assert response.status_code == 200, response.json
    return response


def ids(response):
    return [job["job_id"] for job in response.json["jobs"]]


def test_jobs_are_listed_newest_first_page_by_page_with_a_cursor_and_a_link(client):
    made = [submit(client) for _ in range(7)]
    seen, query, pages = [], "?limit=3", 0
    while True:
        page = listed(client, query)
        pages += 1
        seen += ids(page)
        if page.json["next"] is None:
            assert "Link" not in page.headers
            break
        link = page.headers["Link"]
        assert link.startswith("</jobs?") and link.endswith('>; rel="next"') and "limit=3" in link
        query = link[1 : link.index(">")].removeprefix("/jobs")
    assert seen == made[::-1]
    assert pages == 3


def test_the_default_page_is_50_jobs_and_a_page_may_hold_500(client):
    made = [submit(client) for _ in range(51)]
    page = listed(client)
    assert ids(page) == made[:0:-1] and page.json["next"]
    assert ids(listed(client, f"?cursor={page.json['next']}")) == made[:1]
    page = listed(client, "?limit=500")
    assert ids(page) == made[::-1] and page.json["next"] is None


def test_jobs_created_in_one_millisecond_are_listed_newest_first_in_the_order_they_were_created(
    client, monkeypatch
):
    from workers import jobstore

    monkeypatch.setattr(jobstore, "utcnow", lambda: "2026-12-03T17:00:00.000Z")  # every job in one millisecond
    made = [submit(client) for _ in range(30)]
    assert {client.get(f"/jobs/{job_id}").json["created_at"] for job_id in made} == {"2026-12-03T17:00:00.000Z"}
    assert ids(listed(client)) == made[::-1]
    seen, query = [], "?limit=4"
    while query:  # the cursor goes on exactly after the last job of a page, inside the millisecond
        page = listed(client, query)
        seen += ids(page)
        query = page.json["next"] and f"?limit=4&cursor={page.json['next']}"
    assert seen == made[::-1]


def test_an_index_entry_written_before_the_sequence_is_still_listed_and_paged_from(client, redis):
    older, newer = submit(client), submit(client)
    (member,) = [m.decode() for m in redis.zrange(index_key(""), 0, 0)]
    millis = member.partition(":")[0]
    redis.zrem(index_key(""), member)
    redis.zadd(index_key(""), {f"{millis}:{older}": 0})  # ``<ms>:<id>``, as indexed before
    page = listed(client, "?limit=1")
    assert ids(page) == [newer]
    assert ids(listed(client, f"?cursor={page.json['next']}")) == [older]
    old_cursor = base64.urlsafe_b64encode(f"{millis}:{older}".encode()).decode().rstrip("=")
    assert listed(client, f"?cursor={old_cursor}").json == {"jobs": [], "next": None}


def test_a_job_names_its_rows_in_and_its_operations_before_it_completes(client, celery):
    from workers.status import PROGRESS

    operations = ["drop_nulls", {"name": "select_columns", "params": {"columns": ["id"]}}]
    job_id = submit(client, operations=operations)
    queued = client.get(f"/jobs/{job_id}").json
    assert queued["status"] == "started" and queued["data"] is None
    assert (queued["rows_in"], queued["operations"]) == (2, ["drop_nulls", "select_columns"])
    celery.backend.store_result(job_id, {"operations_done": 1, "operations_total": 2, "phase": "running"}, PROGRESS)
    (running,) = listed(client).json["jobs"]
    assert running["status"] == "processing"
    assert (running["rows_in"], running["operations"]) == (2, ["drop_nulls", "select_columns"])
    upload = client.post("/datasets", data=b"id\n1\n2\n3\n", content_type="text/csv")
    response = client.post("/jobs", json={"dataset_id": upload.json["dataset_id"], "operations": []})
    assert response.status_code == 202, response.json
    body = client.get(f"/jobs/{response.json['job_id']}").json
    assert (body["status"], body["rows_in"], body["operations"]) == ("started", 3, [])
    assert listed(client).json["jobs"][0]["rows_in"] == 3


def test_a_listed_job_is_its_body_without_its_inline_rows(client, complete_job):
    job_id = submit(client)
    complete_job(job_id, [{"id": 1, "name": "Ada"}], {"processed_items": 2, "output_items": 1})
    single = client.get(f"/jobs/{job_id}").json
    assert single["data"]["data"] == [{"id": 1, "name": "Ada"}]
    (item,) = listed(client).json["jobs"]
    assert item["data"]["data"] is None
    assert {**item, "data": {**item["data"], "data": single["data"]["data"]}} == single


def test_status_filters_take_several_values_repeated_or_comma_separated(client, complete_job):
    done, queued = submit(client), submit(client)
    complete_job(done, [{"id": 1}], {"processed_items": 2, "output_items": 1})
    cancelled = submit(client)
    assert client.delete(f"/jobs/{cancelled}").status_code == 200
    assert ids(listed(client, "?status=completed")) == [done]
    assert ids(listed(client, "?status=started")) == [queued]
    assert ids(listed(client, "?status=cancelled&status=completed")) == [cancelled, done]
    assert ids(listed(client, "?status=cancelled,started")) == [cancelled, queued]


def test_a_status_filter_that_matches_little_still_pages_to_the_end(client, complete_job, monkeypatch):
    from app import jobs

    monkeypatch.setattr(jobs, "MAX_SCANNED", 4)  # one request reads 4 index entries at most
    made = [submit(client) for _ in range(9)]
    complete_job(made[0], [{"id": 1}], {"processed_items": 2, "output_items": 1})
    page = listed(client, "?status=completed")
    assert ids(page) == [] and page.json["next"]
    found, query = [], f"?status=completed&cursor={page.json['next']}"
    while query:
        page = listed(client, query)
        found += ids(page)
        query = page.json["next"] and f"?status=completed&cursor={page.json['next']}"
    assert found == [made[0]]


def test_created_after_and_before_bound_the_list(client):
    first = submit(client)
    time.sleep(0.01)
    second = submit(client)
    created = client.get(f"/jobs/{second}").json["created_at"]
    assert ids(listed(client, f"?created_before={created}")) == [first]
    assert ids(listed(client, f"?created_after={created}")) == []
    assert ids(listed(client, "?created_after=2020-01-01T00:00:00")) == [second, first]  # no zone: UTC
    assert ids(listed(client, "?created_before=2020-01-01T00:00:00%2B02:00")) == []


@pytest.mark.parametrize(
    "query, parameter",
    [
        ("?status=done", "status"),
        ("?limit=0", "limit"),
        ("?limit=501", "limit"),
        ("?limit=ten", "limit"),
        ("?created_after=yesterday", "created_after"),
        ("?created_before=2026-13-01", "created_before"),
        ("?cursor=not-a-cursor", "cursor"),
        ("?cursor=MTIzOmFiYw", "cursor"),  # base64 of "123:abc": decodes, names no job
    ],
)
def test_a_bad_query_parameter_is_a_400_naming_it(client, query, parameter):
    response = client.get(f"/jobs{query}")
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_parameter"
    assert response.json["error"]["details"]["parameter"] == parameter


def test_each_token_lists_only_its_own_jobs(redis, celery):
    from app import create_app

    client = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "API_TOKENS": ("a", "b")}).test_client()
    mine = submit(client, {"Authorization": "Bearer a"})
    theirs = submit(client, {"Authorization": "Bearer b"})
    assert ids(listed(client, headers={"Authorization": "Bearer a"})) == [mine]
    assert ids(listed(client, headers={"Authorization": "Bearer b"})) == [theirs]
    assert client.get("/jobs").status_code == 401


def test_an_expired_job_leaves_the_list_and_its_index(client, redis):
    gone, kept = submit(client), submit(client)
    redis.delete(f"datajobs:job:{gone}")  # as if its TTL ran out
    assert ids(listed(client)) == [kept]
    assert redis.zcard(index_key("")) == 1


def test_the_index_expires_with_the_jobs_and_drops_entries_past_two_ttls(app, client, redis):
    submit(client)
    ttl = app.config["JOB_TTL_SECONDS"]
    assert 0 < redis.ttl(index_key("")) <= 2 * ttl
    store = app.extensions["jobstore"]
    old = [member.decode() for member in redis.zrange(index_key(""), 0, -1)]
    # An entry created more than two TTLs before a new job is dropped when that job is indexed.
    millis = int(old[0].partition(":")[0]) - 2 * ttl * 1000 - 1000
    redis.zadd(index_key(""), {f"{millis:013d}:00000000-0000-4000-8000-000000000000": 0})
    store.create("00000000-0000-4000-8000-000000000001", [], {"rows": 0, "chunks": []})
    assert sorted(m.decode() for m in redis.zrange(index_key(""), 0, -1))[0] == old[0]


def test_a_job_that_could_not_be_enqueued_is_not_listed(client, celery, monkeypatch):
    import kombu.exceptions

    def refuse(*args, **kwargs):
        raise kombu.exceptions.OperationalError("broker down")

    monkeypatch.setattr(celery, "send_task", refuse)
    assert client.post("/jobs", json=JOB).status_code == 503
    assert listed(client).json == {"jobs": [], "next": None}


# --- dry run -------------------------------------------------------------------------


def test_a_dry_run_answers_the_columns_after_each_step_and_stores_nothing(client, redis, queued):
    operations = [
        "drop_nulls",
        {"name": "text_length", "params": {"column": "name", "into": "name_length"}},
        {"name": "select_columns", "params": {"columns": ["name_length"]}},
    ]
    keys = set(redis.keys())
    response = client.post("/jobs?dry_run=true", json={**JOB, "operations": operations})
    assert response.status_code == 200, response.json
    body = response.json
    assert body["dry_run"] is True and body["rows"] == 2
    assert body["columns"] == [{"name": "id", "type": "integer"}, {"name": "name", "type": "string"}]
    assert [(step["index"], step["name"]) for step in body["steps"]] == [
        (0, "drop_nulls"), (1, "text_length"), (2, "select_columns")
    ]
    assert body["steps"][1]["columns"][-1] == {"name": "name_length", "type": "integer"}
    assert body["steps"][2]["columns"] == [{"name": "name_length", "type": "integer"}]
    assert set(redis.keys()) == keys
    assert queued() == 0
    assert listed(client).json["jobs"] == []


def test_a_dry_run_refuses_what_a_submission_refuses_naming_the_step(client, queued):
    operations = ["drop_nulls", {"name": "select_columns", "params": {"columns": ["nope"]}}]
    response = client.post("/jobs?dry_run=true", json={**JOB, "operations": operations})
    assert response.status_code == 400
    assert response.json["error"]["details"]["step"] == 1
    assert queued() == 0


def test_a_dry_run_of_an_uploaded_dataset_uses_its_stored_types(client):
    upload = client.post("/datasets", data=b"id,score\n1,2.5\n2,3.5\n", content_type="text/csv")
    assert upload.status_code == 201
    body = client.post("/jobs?dry_run=1", json={"dataset_id": upload.json["dataset_id"], "operations": []}).json
    assert body["columns"] == [{"name": "id", "type": "integer"}, {"name": "score", "type": "number"}]
    assert body["steps"] == [] and body["rows"] == 2


def test_dry_run_must_be_true_or_false(client, queued):
    response = client.post("/jobs?dry_run=maybe", json=JOB)
    assert response.status_code == 400 and response.json["error"]["details"]["parameter"] == "dry_run"
    assert queued() == 0


# --- workers ---------------------------------------------------------------------------


def test_workers_shows_live_workers_what_each_runs_and_the_queue(app, client, redis):
    store = app.extensions["jobstore"]
    job_id = submit(client)
    store.beat("celery@one")
    store.beat("celery@idle")
    assert store.take_lease(job_id, f"celery@one:12:{'a' * 8}", 5)
    assert store.take_lease(job_id, f"celery@one:13:{'b' * 8}", 5, "lease:1:0")
    body = client.get("/workers").json
    assert body["queue_depth"] == 1 and body["jobs_running"] == 1
    assert body["workers"] == [
        {"name": "celery@idle", "last_seen": body["workers"][0]["last_seen"], "running": 0, "jobs": []},
        {"name": "celery@one", "last_seen": body["workers"][1]["last_seen"], "running": 2, "jobs": [job_id]},
    ]
    store.drop_lease(job_id, f"celery@one:12:{'a' * 8}")
    store.drop_lease(job_id, f"celery@one:13:{'b' * 8}", "lease:1:0")
    assert client.get("/workers").json["jobs_running"] == 0
    assert redis.zcard(RUNNING_INDEX) == 0


def test_a_dead_holder_stops_showing_when_its_lease_would_have_run_out(app, client, redis):
    store = app.extensions["jobstore"]
    job_id = submit(client)
    assert store.take_lease(job_id, "celery@gone:1:x", 0.05)
    assert client.get("/workers").json["jobs_running"] == 1
    time.sleep(0.1)
    assert client.get("/workers").json == {"workers": [], "queue_depth": 1, "jobs_running": 0}
    assert redis.zcard(RUNNING_INDEX) == 0


def test_workers_names_only_the_callers_jobs(redis, celery):
    from app import create_app

    app = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "API_TOKENS": ("a", "b")})
    client, store = app.test_client(), app.extensions["jobstore"]
    theirs = submit(client, {"Authorization": "Bearer b"})
    store.take_lease(theirs, "celery@one:1:x", 5)
    (worker,) = client.get("/workers", headers={"Authorization": "Bearer a"}).json["workers"]
    assert (worker["running"], worker["jobs"]) == (1, [])
    (worker,) = client.get("/workers", headers={"Authorization": "Bearer b"}).json["workers"]
    assert worker["jobs"] == [theirs]


# --- quota: MAX_ACTIVE_JOBS_PER_TOKEN ------------------------------------------------------


@pytest.fixture
def quota_app(redis, celery):
    from app import create_app

    return create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "API_TOKENS": ("a", "b"),
                       "MAX_ACTIVE_JOBS_PER_TOKEN": 2})


A, B = {"Authorization": "Bearer a"}, {"Authorization": "Bearer b"}


def test_past_its_quota_a_token_gets_429_with_retry_after_and_nothing_is_stored(quota_app, redis, queued):
    client = quota_app.test_client()
    submit(client, A), submit(client, A)
    keys = set(redis.keys())
    response = client.post("/jobs", json=JOB, headers=A)
    assert response.status_code == 429
    assert response.json["error"]["code"] == "too_many_jobs"
    assert "MAX_ACTIVE_JOBS_PER_TOKEN" in response.json["error"]["message"]
    assert int(response.headers["Retry-After"]) > 0
    assert set(redis.keys()) == keys and queued() == 2
    submit(client, B)  # another token has a quota of its own


def test_a_job_that_ends_frees_its_place_in_the_quota(quota_app, complete_job):
    client = quota_app.test_client()
    done, cancelled = submit(client, A), submit(client, A)
    assert client.post("/jobs", json=JOB, headers=A).status_code == 429
    complete_job(done, [{"id": 1}], {"processed_items": 2, "output_items": 1})
    submit(client, A)
    assert client.delete(f"/jobs/{cancelled}", headers=A).status_code == 200
    submit(client, A)
    assert client.post("/jobs", json=JOB, headers=A).status_code == 429


def test_a_job_whose_end_did_not_free_its_place_is_found_at_the_limit(quota_app, redis):
    client = quota_app.test_client()
    expired, kept = submit(client, A), submit(client, A)
    redis.delete(f"datajobs:job:{expired}")  # gone without an end (expired): its place was never given back
    submit(client, A)
    assert client.post("/jobs", json=JOB, headers=A).status_code == 429
    assert client.get(f"/jobs/{kept}", headers=A).json["status"] == "started"


def test_a_retry_with_its_idempotency_key_is_answered_even_at_the_quota(quota_app):
    client = quota_app.test_client()
    first = client.post("/jobs", json=JOB, headers={**A, "Idempotency-Key": "k1"})
    submit(client, A)
    again = client.post("/jobs", json=JOB, headers={**A, "Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.json["job_id"] == first.json["job_id"]


def test_an_open_gateway_has_no_quota(redis, celery):
    from app import create_app

    client = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery,
                         "MAX_ACTIVE_JOBS_PER_TOKEN": 1}).test_client()
    submit(client), submit(client)
