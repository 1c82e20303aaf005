"""``GET``/``DELETE /jobs/<id>/result``: every format, paging, the formula guard, and the states around it."""

import csv
import io
import json

import pyarrow as pa
import pyarrow.ipc as paipc
import pyarrow.parquet as pq
import pytest

from app import create_app

RECORDS = [
    {"id": i, "name": name, "score": score, "tags": tags}
    for i, (name, score, tags) in enumerate(
        [("Ada", 91.5, [1]), ("=SUM(A1)", None, "x"), (None, 78.0, None), ("-12.5", 1.0, {"k": 2}), ("Linus", 3.0, 4)]
    )
]
SUMMARY = {"processed_items": 5, "output_items": 5, "operations_applied": 0, "operations": []}


@pytest.fixture
def app(redis, celery):
    # Two rows a chunk, so every download crosses chunk boundaries.
    return create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "CHUNK_ROWS": 2})


@pytest.fixture
def job_id(client, complete_job):
    job_id = client.post("/jobs", json={"dataset": [{"a": 1}], "operations": []}).get_json()["job_id"]
    complete_job(job_id, RECORDS, SUMMARY, inline=False)
    return job_id


def get(client, job_id, **params):
    return client.get(f"/jobs/{job_id}/result", query_string=params)


def test_the_default_is_json_lines_of_every_row_in_order(client, job_id):
    response = get(client, job_id)
    assert response.status_code == 200 and response.mimetype == "application/x-ndjson"
    assert [json.loads(line) for line in response.data.decode().splitlines()] == RECORDS
    assert response.headers["X-Result-Rows"] == "5"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{job_id}.jsonl"'


def test_json_is_one_array(client, job_id):
    assert json.loads(get(client, job_id, format="json").data) == RECORDS


def test_arrow_and_parquet_hold_the_rows_with_their_types(client, job_id):
    table = paipc.open_stream(get(client, job_id, format="arrow").data).read_all()
    assert table.column("id").to_pylist() == [0, 1, 2, 3, 4] and table.schema.field("score").type == pa.float64()
    assert pq.read_table(io.BytesIO(get(client, job_id, format="parquet").data)).equals(table)
    # The column mixing kinds is JSON text, marked as such.
    assert table.schema.field("tags").metadata == {b"datajobs.encoding": b"json"}
    assert [None if v is None else json.loads(v) for v in table.column("tags").to_pylist()] == [
        r["tags"] for r in RECORDS
    ]


@pytest.mark.parametrize("accept,mimetype", [("text/csv", "text/csv"), ("application/vnd.apache.parquet",
                                             "application/vnd.apache.parquet"), ("*/*", "application/x-ndjson")])
def test_the_accept_header_chooses_the_format(client, job_id, accept, mimetype):
    assert client.get(f"/jobs/{job_id}/result", headers={"Accept": accept}).mimetype == mimetype


def test_csv_neutralises_formulas_unless_raw(client, job_id):
    rows = list(csv.DictReader(io.StringIO(get(client, job_id, format="csv").data.decode())))
    assert [r["name"] for r in rows] == ["Ada", "'=SUM(A1)", "", "-12.5", "Linus"]
    raw = list(csv.DictReader(io.StringIO(get(client, job_id, format="csv", raw="true").data.decode())))
    assert raw[1]["name"] == "=SUM(A1)"


def test_csv_headers_get_the_formula_guard_too(client, complete_job):
    job_id = client.post("/jobs", json={"dataset": [{"a": 1}], "operations": []}).get_json()["job_id"]
    complete_job(job_id, [{"=cmd": 1}], SUMMARY)
    assert get(client, job_id, format="csv").data.decode().splitlines()[0] == '"\'=cmd"'


@pytest.mark.parametrize("offset,limit,ids", [(0, 2, [0, 1]), (1, 3, [1, 2, 3]), (3, None, [3, 4]), (9, 1, []),
                                              (4, 0, [])])
def test_offset_and_limit_page_through_the_rows(client, job_id, offset, limit, ids):
    params = {"offset": offset, **({"limit": limit} if limit is not None else {})}
    response = get(client, job_id, **params)
    assert [json.loads(line)["id"] for line in response.data.decode().splitlines()] == ids
    assert response.headers["X-Result-Rows"] == str(len(ids))
    assert json.loads(get(client, job_id, format="json", **params).data) == [RECORDS[i] for i in ids]


@pytest.mark.parametrize("params,parameter", [({"format": "xml"}, "format"), ({"offset": "-1"}, "offset"),
                                              ({"limit": "x"}, "limit"), ({"raw": "maybe"}, "raw")])
def test_bad_query_parameters_are_400_naming_them(client, job_id, params, parameter):
    response = get(client, job_id, **params)
    assert response.status_code == 400 and response.get_json()["error"]["details"]["parameter"] == parameter


def test_a_job_that_has_not_completed_has_no_result(client):
    job_id = client.post("/jobs", json={"dataset": [{"a": 1}], "operations": []}).get_json()["job_id"]
    response = get(client, job_id)
    assert response.status_code == 409
    assert response.get_json()["error"] == {
        "code": "job_not_finished",
        "message": f"Job {job_id} has no result: it is started. A result exists once the job has completed.",
        "details": {"job_status": "started"},
    }
    client.delete(f"/jobs/{job_id}")
    assert get(client, job_id).get_json()["error"]["details"]["job_status"] == "cancelled"


def test_delete_frees_the_result_then_it_is_gone(client, job_id, redis):
    assert client.delete(f"/jobs/{job_id}/result").status_code == 204
    assert redis.keys("datajobs:blob:*") == []
    response = get(client, job_id)
    assert response.status_code == 410 and response.get_json()["error"]["code"] == "result_deleted"
    assert client.delete(f"/jobs/{job_id}/result").status_code == 410
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "completed"  # the job's record stays


def test_an_unknown_job_has_no_result(client):
    assert get(client, "6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b").status_code == 404
    assert client.delete("/jobs/nope/result").status_code == 404


def test_a_large_result_is_not_inline(client, job_id):
    data = client.get(f"/jobs/{job_id}").get_json()["data"]
    assert data["data"] is None and data["truncated"] is True
    assert data["result_url"] == f"/jobs/{job_id}/result"
    assert data["columns"] == [
        {"name": "id", "type": "integer"}, {"name": "name", "type": "string"},
        {"name": "score", "type": "number"}, {"name": "tags", "type": "json"},
    ]
