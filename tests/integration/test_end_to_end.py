"""The whole path through HTTP: gateway -> Redis -> celery worker -> gateway."""

import json
import time

import pandas as pd
import pytest
import requests

pytestmark = pytest.mark.integration


def submit(gateway, body):
    response = requests.post(f"{gateway}/jobs", json=body, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def watch(gateway, job_id, timeout=120, interval=0.02):
    """Poll a job until it ends; return every distinct (status, (operations_done, chunks_done)) seen, and the last body."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{gateway}/jobs/{job_id}", timeout=30).json()
        progress = body["progress"]
        point = (body["status"], (progress["operations_done"], progress["chunks_done"]))
        if not seen or seen[-1] != point:
            seen.append(point)
        if body["status"] in ("completed", "failed"):
            return seen, body
        time.sleep(interval)
    raise AssertionError(f"job {job_id} did not end within {timeout} s; saw {seen}")


def text_rows(n, seed=0):
    words = ["alpha", "Béta", "  gamma ", "delta", "ÉPSILON", "zeta\t", "eta", "theta"]
    return [
        {"id": i, "text": " ".join(words[(i * 7 + k + seed) % len(words)] for k in range(12)), "group": i % 10}
        for i in range(n)
    ]


SLOW_PIPELINE = [
    {"name": "normalize_text", "params": {"columns": ["text"], "lowercase": True, "remove_accents": True}},
    {"name": "chunk_text", "params": {"column": "text", "size": 16, "overlap": 4, "into": "piece"}},
    {"name": "text_length", "params": {"column": "piece", "into": "n"}},
    {"name": "filter_rows", "params": {"column": "n", "operator": "ge", "value": 8}},
]


def test_health_sees_the_worker(gateway):
    body = requests.get(f"{gateway}/health", timeout=10).json()
    assert body["redis"] == "reachable" and body["workers"] >= 1


def test_statuses_are_seen_in_order_and_progress_moves(gateway):
    # One worker process: while `blocker` runs, `job` waits in the queue (started),
    # then runs (processing, operations or chunks done moving: 40,000 rows are two chunks), then completes.
    blocker = submit(gateway, {"dataset": text_rows(40_000), "operations": SLOW_PIPELINE})
    job = submit(gateway, {"dataset": text_rows(40_000, seed=3), "operations": SLOW_PIPELINE})
    seen, body = watch(gateway, job)
    statuses = [status for status, _ in seen]
    assert [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s] == ["started", "processing", "completed"]
    done_while_processing = [done for status, done in seen if status == "processing"]
    assert done_while_processing == sorted(done_while_processing) and len(set(done_while_processing)) >= 2
    assert body["started_at"] <= body["finished_at"] and body["created_at"] <= body["started_at"]
    assert body["attempts"] == 1
    assert watch(gateway, blocker)[1]["status"] == "completed"


def test_processed_data_equals_the_same_pipeline_in_plain_pandas(gateway):
    records = [
        {"name": " Ada ", "score": 91, "team": "red", "joined": "2024-01-03"},
        {"name": "Linus", "score": None, "team": "blue", "joined": "2023-12-01"},
        {"name": "Grace", "score": 78, "team": "red", "joined": "2022-06-30"},
        {"name": "Ada", "score": 91, "team": "red", "joined": "2024-01-03"},
        {"name": None, "score": 55, "team": "blue", "joined": "2021-02-14"},
        {"name": "Ken", "score": 64, "team": "green", "joined": "2020-09-09"},
        {"name": "Barbara", "score": 99, "team": "blue", "joined": "2019-11-11"},
    ]
    operations = [
        {"name": "normalize_text", "params": {"columns": ["name"]}},
        {"name": "drop_nulls", "params": {}},
        {"name": "deduplicate", "params": {}},
        {"name": "filter_rows", "params": {"column": "score", "operator": "ge", "value": 60}},
        {"name": "sort", "params": {"by": ["team", "score"], "ascending": [True, False]}},
        {"name": "select_columns", "params": {"columns": ["team", "name", "score"]}},
    ]
    _, body = watch(gateway, submit(gateway, {"dataset": records, "operations": operations}))
    assert body["status"] == "completed"

    df = pd.DataFrame(records)
    df["name"] = df["name"].str.strip()
    df = df.dropna().drop_duplicates()
    df = df[df["score"] >= 60].sort_values(["team", "score"], ascending=[True, False], kind="stable")
    expected = json.loads(df[["team", "name", "score"]].astype({"score": int}).to_json(orient="records"))

    assert body["data"]["data"] == expected
    assert body["data"]["processed_items"] == 7 and body["data"]["output_items"] == len(expected)
    assert [op["name"] for op in body["data"]["operations"]] == [op["name"] for op in operations]
    assert body["message"] == "Successfully processed 7 items with 6 operations"


def test_unknown_id_is_404(gateway):
    response = requests.get(f"{gateway}/jobs/6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_failing_step_fails_the_job_with_its_index_and_the_worker_keeps_serving(gateway):
    body = {
        "dataset": [{"n": "1"}, {"n": "two"}],
        "operations": ["drop_nulls", {"name": "cast_types", "params": {"types": {"n": "int"}}}],
    }
    _, failed = watch(gateway, submit(gateway, body))
    assert failed["status"] == "failed"
    assert failed["error"]["operation_index"] == 1
    assert "cast_types" in failed["error"]["message"] and "'n'" in failed["error"]["message"]
    assert "two" not in failed["error"]["message"]  # never echo the data
    assert failed["data"] is None

    _, after = watch(gateway, submit(gateway, {"dataset": [{"n": "1"}], "operations": []}))
    assert after["status"] == "completed"


def test_a_bad_job_is_refused_before_reaching_the_worker(gateway):
    response = requests.post(f"{gateway}/jobs", json={"dataset": [{"a": 1}], "operations": ["explode"]}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_operation"
