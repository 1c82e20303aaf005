"""Datasets by reference through the real stack: upload, a job over several chunks, the result by download.

The shared stack stores chunks in a directory (``DATA_STORE_URL=file://...``) with
``CHUNK_ROWS`` = 20,000, so these datasets span several chunks.
"""

import io
import json
import random
import time

import pandas as pd
import pyarrow as pa
import pyarrow.ipc as paipc
import pyarrow.parquet as pq
import pytest
import redis
import requests

from tests.integration.conftest import CHUNK_ROWS
from tests.integration.test_end_to_end import SLOW_PIPELINE, submit, text_rows, watch

pytestmark = pytest.mark.integration

ROWS = 50_000
PIPELINE = [
    {"name": "normalize_text", "params": {"columns": ["name"], "lowercase": True}},
    {"name": "drop_nulls", "params": {"columns": ["name"]}},
    {"name": "filter_rows", "params": {"column": "score", "operator": "ge", "value": 20}},
    {"name": "deduplicate", "params": {"columns": ["name", "group"]}},
    {"name": "text_length", "params": {"column": "name", "into": "chars"}},
    {"name": "sort", "params": {"by": "score", "ascending": False}},
    {"name": "select_columns", "params": {"columns": ["id", "name", "score", "chars"]}},
]


def source_frame(rows=ROWS, seed=7):
    rng = random.Random(seed)
    names = ["  Ada ", "LINUS", "grace  hopper", "Ken", None, "Barbara", " edsger"]
    return pd.DataFrame(
        {
            "id": range(rows),
            "name": [rng.choice(names) for _ in range(rows)],
            "score": [None if rng.random() < 0.05 else round(rng.uniform(0, 100), 1) for _ in range(rows)],
            "group": [rng.randrange(200) for _ in range(rows)],
        }
    )


def plain_pandas(df):
    """PIPELINE written in plain pandas, in one process: what the chunked job must give, row for row."""
    df = df.copy()
    df["name"] = df["name"].str.lower().str.split().str.join(" ")
    df = df.dropna(subset=["name"])
    df = df[df["score"] >= 20]
    df = df.drop_duplicates(subset=["name", "group"])
    df["chars"] = df["name"].str.len()
    df = df.sort_values("score", ascending=False, kind="stable", na_position="last")
    return df[["id", "name", "score", "chars"]].reset_index(drop=True)


@pytest.fixture(scope="module")
def dataset(gateway):
    body = source_frame().to_csv(index=False).encode()
    response = requests.post(f"{gateway}/datasets", data=body, headers={"Content-Type": "text/csv"}, timeout=60)
    assert response.status_code == 201, response.text
    return response.json()


def test_an_uploaded_csv_is_described_with_its_types(dataset):
    assert dataset["rows"] == ROWS and dataset["status"] == "ready"
    assert dataset["columns"] == [
        {"name": "id", "type": "integer"},
        {"name": "name", "type": "string"},
        {"name": "score", "type": "number"},
        {"name": "group", "type": "integer"},
    ]


def test_a_job_over_several_chunks_gives_the_plain_pandas_result_row_for_row(gateway, dataset, data_dir):
    job_id = submit(gateway, {"dataset_id": dataset["dataset_id"], "operations": PIPELINE})
    _, body = watch(gateway, job_id)
    assert body["status"] == "completed", body
    data = body["data"]
    expected = plain_pandas(source_frame())
    assert data["processed_items"] == ROWS and data["output_items"] == len(expected)
    assert data["data"] is None and data["truncated"] is True  # far above INLINE_RESULT_ROWS
    assert data["columns"] == [
        {"name": "id", "type": "integer"}, {"name": "name", "type": "string"},
        {"name": "score", "type": "number"}, {"name": "chars", "type": "integer"},
    ]
    assert len(data["workers"]) == 1 and "@" in data["workers"][0]
    assert [op["rows_in"] for op in data["operations"]][:2] == [ROWS, ROWS]
    assert body["progress"]["chunks_total"] == body["progress"]["chunks_done"] == -(-ROWS // CHUNK_ROWS)

    result = requests.get(f"{gateway}{data['result_url']}", params={"format": "arrow"}, timeout=60)
    assert result.status_code == 200 and result.headers["X-Result-Rows"] == str(len(expected))
    table = paipc.open_stream(result.content).read_all()
    got = table.to_pandas()
    assert got["id"].tolist() == expected["id"].tolist()
    assert got["name"].tolist() == expected["name"].tolist()
    assert got["chars"].tolist() == expected["chars"].tolist()

    page = requests.get(f"{gateway}{data['result_url']}", params={"offset": 100, "limit": 5}, timeout=60)
    assert [json.loads(line)["id"] for line in page.text.splitlines()] == expected["id"].tolist()[100:105]
    parquet = requests.get(f"{gateway}{data['result_url']}", params={"format": "parquet"}, timeout=60)
    assert pq.read_table(io.BytesIO(parquet.content))["id"].to_pylist() == expected["id"].tolist()

    # The chunks are files in the shared directory, not Redis strings; deleting the result removes them.
    assert list((data_dir / "jobs" / job_id).glob("*.arrow"))
    assert requests.delete(f"{gateway}{data['result_url']}", timeout=10).status_code == 204
    assert not list((data_dir / "jobs" / job_id).glob("*.arrow"))
    assert requests.get(f"{gateway}{data['result_url']}", timeout=10).status_code == 410


def test_no_chunk_goes_through_redis_with_a_file_store(redis_url, dataset, data_dir):
    assert list(redis.Redis.from_url(redis_url).scan_iter("datajobs:blob:*")) == []
    chunks = sorted((data_dir / "datasets" / dataset["dataset_id"]).glob("*.arrow"))
    assert len(chunks) == -(-ROWS // CHUNK_ROWS)


def test_progress_says_which_phase_and_chunk(gateway, dataset):
    step = {"name": "normalize_text", "params": {"columns": ["name"], "remove_accents": True}}
    job_id = submit(gateway, {"dataset_id": dataset["dataset_id"], "operations": [step, "deduplicate"]})
    seen, deadline = set(), time.monotonic() + 120
    body = requests.get(f"{gateway}/jobs/{job_id}", timeout=10).json()
    while body["status"] not in ("completed", "failed") and time.monotonic() < deadline:
        progress = body["progress"]
        seen.add((progress["phase"], progress["chunks_total"]))
        body = requests.get(f"{gateway}/jobs/{job_id}", timeout=10).json()
    assert body["status"] == "completed"
    assert ("running", -(-ROWS // CHUNK_ROWS)) in seen  # normalize_text, chunk by chunk


def test_a_dataset_deleted_before_its_job_runs_fails_the_job_as_expired(gateway):
    small = requests.post(f"{gateway}/datasets", data=b"n\n1\n2\n", headers={"Content-Type": "text/csv"}, timeout=10)
    dataset_id = small.json()["dataset_id"]
    blocker = submit(gateway, {"dataset": text_rows(40_000), "operations": SLOW_PIPELINE})  # one worker process
    job_id = submit(gateway, {"dataset_id": dataset_id, "operations": []})
    assert requests.delete(f"{gateway}/datasets/{dataset_id}", timeout=10).status_code == 204
    _, body = watch(gateway, job_id)
    assert body["status"] == "failed" and body["error"]["type"] == "expired"
    assert watch(gateway, blocker)[1]["status"] == "completed"


def test_a_small_result_is_inline_as_before(gateway):
    small = requests.post(f"{gateway}/datasets", data=b"n,t\n1,a\n2,b\n", headers={"Content-Type": "text/csv"},
                          timeout=10)
    job_id = submit(gateway, {"dataset_id": small.json()["dataset_id"], "operations": ["drop_nulls"]})
    body = watch(gateway, job_id)[1]
    assert body["data"]["data"] == [{"n": 1, "t": "a"}, {"n": 2, "t": "b"}] and body["data"]["truncated"] is False


def trickle(body, pieces=8, pause=0.03):
    """``body`` sent chunked, a piece at a time with a pause before each: it arrives slower than it is parsed,
    as over any real network."""
    step = -(-len(body) // pieces)
    for start in range(0, len(body), step):
        time.sleep(pause)
        yield body[start : start + step]


def slow_bodies():
    frame = source_frame(3000)
    arrow = io.BytesIO()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with paipc.new_stream(arrow, table.schema) as writer:
        writer.write_table(table, max_chunksize=500)
    arrow_file = io.BytesIO()
    with paipc.new_file(arrow_file, table.schema) as writer:
        writer.write_table(table, max_chunksize=500)
    parquet = io.BytesIO()
    pq.write_table(table, parquet, row_group_size=500)
    return {
        "text/csv": frame.to_csv(index=False).encode(),
        "text/tab-separated-values": frame.to_csv(index=False, sep="\t").encode(),
        "application/x-ndjson": frame.to_json(orient="records", lines=True).encode(),
        "application/json": frame.to_json(orient="records").encode(),
        "application/vnd.apache.arrow.stream": arrow.getvalue(),
        "application/vnd.apache.arrow.file": arrow_file.getvalue(),
        "application/vnd.apache.parquet": parquet.getvalue(),
    }


def test_an_upload_that_arrives_slowly_is_read_whole_in_every_format(gateway):
    # Under gunicorn's gevent worker a body read from one of pyarrow's own threads failed with a 500 as soon as
    # the reader got ahead of the network ("Cannot switch to a different thread").
    for content_type, body in slow_bodies().items():
        response = requests.post(f"{gateway}/datasets", data=trickle(body), headers={"Content-Type": content_type},
                                 timeout=30)
        assert response.status_code == 201, f"{content_type}: {response.text}"
        assert response.json()["rows"] == 3000, content_type
        assert [c["name"] for c in response.json()["columns"]] == ["id", "name", "score", "group"], content_type
        upload = requests.post(f"{gateway}/datasets?upload=parts", timeout=10).json()["dataset_id"]
        part = requests.put(f"{gateway}/datasets/{upload}/parts/1", data=trickle(body),
                            headers={"Content-Type": content_type}, timeout=30)
        assert part.status_code == 200 and part.json()["rows"] == 3000, f"{content_type} as a part: {part.text}"
