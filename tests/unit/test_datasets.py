"""``/datasets`` through Flask's test client, with fakeredis: every format, parts, limits, and jobs on a dataset."""

import io
import json

import pyarrow as pa
import pyarrow.ipc as paipc
import pyarrow.parquet as pq
import pytest

from app import create_app

CSV = b"id,name,score,when,ok\n1,Ada,91.5,2024-01-03T10:00:00,true\n2,,78,2023-12-01T09:30:00,false\n"
TYPES = {"id": "integer", "name": "string", "score": "number", "when": "datetime", "ok": "boolean"}
ROWS = [
    {"id": 1, "name": "Ada", "score": 91.5, "ok": True},
    {"id": 2, "name": None, "score": 78.0, "ok": False},
]


def arrow_bytes(table, file=False):
    sink = io.BytesIO()
    with (paipc.new_file if file else paipc.new_stream)(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def parquet_bytes(table):
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


TABLE = pa.table({"id": [1, 2], "name": ["Ada", None], "score": [91.5, 78.0], "ok": [True, False]})
BODIES = {
    "text/csv": b"id,name,score,ok\n1,Ada,91.5,true\n2,,78,false\n",
    "text/tab-separated-values": b"id\tname\tscore\tok\n1\tAda\t91.5\ttrue\n2\t\t78\tfalse\n",
    "application/x-ndjson": b'{"id": 1, "name": "Ada", "score": 91.5, "ok": true}\n'
    b'{"id": 2, "name": null, "score": 78.0, "ok": false}\n',
    "application/json": json.dumps(ROWS).encode(),
    "application/vnd.apache.parquet": parquet_bytes(TABLE),
    "application/vnd.apache.arrow.stream": arrow_bytes(TABLE),
    "application/vnd.apache.arrow.file": arrow_bytes(TABLE, file=True),
}


def upload(client, body, content_type="text/csv", **kwargs):
    return client.post("/datasets", data=body, content_type=content_type, **kwargs)


def blobs(redis):
    return redis.keys("datajobs:blob:*")


def rows_of(app, dataset_id):
    from workers import chunks

    record = app.extensions["datasets"].get(dataset_id)
    return chunks.read_all(app.extensions["jobstore"].data, record["ref"]).to_pylist()


@pytest.mark.parametrize("content_type", list(BODIES))
def test_every_format_uploads_as_a_typed_dataset(client, app, content_type):
    response = upload(client, BODIES[content_type], content_type)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert response.headers["Location"] == f"/datasets/{body['dataset_id']}"
    assert body["status"] == "ready" and body["rows"] == 2 and body["parts"] == 1
    assert body["columns"] == [{"name": n, "type": TYPES[n]} for n in ("id", "name", "score", "ok")]
    assert body["bytes"] == len(BODIES[content_type])
    assert body["created_at"] < body["expires_at"]
    assert rows_of(app, body["dataset_id"]) == ROWS
    assert client.get(f"/datasets/{body['dataset_id']}").get_json() == body


def test_csv_types_include_datetimes_and_only_blank_or_nan_cells_are_null(client):
    body = upload(client, CSV + b"3,NA,nan,,true\n").get_json()
    assert {c["name"]: c["type"] for c in body["columns"]} == TYPES
    assert body["rows"] == 3


def test_a_large_upload_is_stored_in_chunks_of_chunk_rows(redis, celery):
    app = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "CHUNK_ROWS": 1000})
    data = b"n\n" + b"".join(b"%d\n" % i for i in range(4500))
    body = upload(app.test_client(), data).get_json()
    ref = app.extensions["datasets"].get(body["dataset_id"])["ref"]
    assert [c["rows"] for c in ref["chunks"]] == [1000, 1000, 1000, 1000, 500]
    assert [r["n"] for r in rows_of(app, body["dataset_id"])] == list(range(4500))


def test_mixed_json_values_become_a_json_column(client, app):
    body = upload(client, b'[{"v": 1}, {"v": "two"}, {"v": {"k": [3]}}]', "application/json").get_json()
    assert body["columns"] == [{"name": "v", "type": "json"}]


@pytest.mark.parametrize(
    "body,content_type,code,status",
    [
        (b"", "text/csv", "invalid_dataset", 400),
        (b"a,b\n1,2,3\n", "text/csv", "invalid_dataset", 400),
        (b"not parquet", "application/vnd.apache.parquet", "invalid_dataset", 400),
        (b"not arrow", "application/vnd.apache.arrow.stream", "invalid_dataset", 400),
        (b'{"a": 1}\n{"a": ', "application/x-ndjson", "invalid_dataset", 400),
        (b'[{"a": 1}, 2]', "application/json", "invalid_dataset", 400),
        (b'[{"a": 1}] x', "application/json", "invalid_dataset", 400),
        (b'[{"a": NaN}]', "application/json", "invalid_dataset", 400),
        (b"a\n1\n", "text/plain", "unsupported_media_type", 415),
        (b"a\n1\n", None, "unsupported_media_type", 415),
    ],
)
def test_a_bad_upload_is_refused_and_stores_nothing(client, redis, body, content_type, code, status):
    response = upload(client, body, content_type)
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"].endswith(".")
    assert redis.keys("*") == []


def test_error_messages_do_not_quote_the_data(client):
    response = upload(client, b"a,b\n1,2\nsecret-cell,4,5\n")
    assert response.status_code == 400 and b"secret-cell" not in response.data


def test_a_binary_column_is_refused_by_name(client, redis):
    table = pa.table({"blob": pa.array([b"\x00\x01"], pa.binary())})
    response = upload(client, arrow_bytes(table), "application/vnd.apache.arrow.stream")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "unsupported_column_type"
    assert response.get_json()["error"]["details"]["column"] == "blob"
    assert redis.keys("*") == []


@pytest.mark.parametrize("setting,value", [("MAX_DATASET_ROWS", 1), ("MAX_DATASET_BYTES", 10)])
def test_a_dataset_over_a_limit_is_400_naming_it_and_stores_nothing(redis, celery, setting, value):
    app = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, setting: value})
    response = upload(app.test_client(), CSV)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "limit_exceeded" and error["details"]["limit"] == setting
    assert redis.keys("*") == []


def test_a_text_cell_over_max_string_length_is_400(redis, celery):
    app = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "MAX_STRING_LENGTH": 5})
    response = upload(app.test_client(), b"t\nabcdefgh\n")
    assert response.get_json()["error"]["details"] == {"limit": "MAX_STRING_LENGTH", "maximum": 5, "column": "t"}
    assert redis.keys("*") == []


def test_max_string_length_counts_characters_not_bytes(redis, celery):
    app = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "MAX_STRING_LENGTH": 5})
    # Five characters in ten bytes are within the limit; six (one of them two bytes) are not.
    assert upload(app.test_client(), "t\nééééé\n".encode()).status_code == 201
    response = upload(app.test_client(), "t\nabcdeé\n".encode())
    assert response.get_json()["error"]["details"] == {"limit": "MAX_STRING_LENGTH", "maximum": 5, "column": "t"}


def test_a_full_store_is_507_and_keeps_nothing(client, app, redis, monkeypatch):
    monkeypatch.setattr(app.extensions["datasets"].data, "has_room", lambda nbytes: False)
    response = upload(client, CSV)
    assert response.status_code == 507
    assert response.get_json()["error"]["code"] == "storage_full"
    assert redis.keys("*") == []


# --- parts ------------------------------------------------------------------------------------


def open_upload(client):
    response = client.post("/datasets?upload=parts")
    assert response.status_code == 201
    body = response.get_json()
    assert body["status"] == "uploading" and body["rows"] == 0 and body["parts"] == 0
    return body["dataset_id"]


def put(client, dataset_id, number, body, content_type="text/csv"):
    return client.put(f"/datasets/{dataset_id}/parts/{number}", data=body, content_type=content_type)


def test_parts_in_any_format_join_in_order_on_commit(client, app):
    dataset_id = open_upload(client)
    assert put(client, dataset_id, 2, b'{"id": 3, "name": "Grace"}\n', "application/x-ndjson").get_json() == {
        "part": 2, "rows": 1, "bytes": 27,
    }
    assert put(client, dataset_id, 1, b"id,name\n1,Ada\n2,Linus\n").status_code == 200
    assert client.get(f"/datasets/{dataset_id}").get_json()["parts"] == 2
    response = client.post(f"/datasets/{dataset_id}/commit")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready" and body["rows"] == 3 and body["parts"] == 2
    assert [r["name"] for r in rows_of(app, dataset_id)] == ["Ada", "Linus", "Grace"]


def test_a_part_sent_again_replaces_the_first_one(client, app, redis):
    dataset_id = open_upload(client)
    put(client, dataset_id, 1, b"n\n1\n2\n3\n")
    before = set(blobs(redis))
    put(client, dataset_id, 1, b"n\n7\n")
    assert not before & set(blobs(redis))  # the first upload's chunks are gone
    client.post(f"/datasets/{dataset_id}/commit")
    assert rows_of(app, dataset_id) == [{"n": 7}]


def test_numbers_widen_to_floats_and_nulls_to_any_type_across_parts(client):
    dataset_id = open_upload(client)
    put(client, dataset_id, 1, b"n,t\n1,\n")
    put(client, dataset_id, 2, b"n,t\n2.5,x\n")
    body = client.post(f"/datasets/{dataset_id}/commit").get_json()
    assert body["columns"] == [{"name": "n", "type": "number"}, {"name": "t", "type": "string"}]


def test_parts_whose_columns_disagree_are_a_schema_mismatch_naming_part_and_column(client):
    dataset_id = open_upload(client)
    put(client, dataset_id, 1, b"id,name\n1,Ada\n")
    put(client, dataset_id, 2, b"id,name\nx,Linus\n")
    response = client.post(f"/datasets/{dataset_id}/commit")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "schema_mismatch" and error["details"] == {"part": 2, "column": "id"}
    assert "Part 2" in error["message"] and "'id'" in error["message"]
    assert client.get(f"/datasets/{dataset_id}").get_json()["status"] == "uploading"  # fix the part, commit again


def test_a_gap_in_the_parts_is_refused_at_commit(client):
    dataset_id = open_upload(client)
    put(client, dataset_id, 1, b"n\n1\n")
    put(client, dataset_id, 3, b"n\n3\n")
    error = client.post(f"/datasets/{dataset_id}/commit").get_json()["error"]
    assert error["code"] == "missing_part" and error["details"]["part"] == 2


def test_commit_without_parts_is_refused(client):
    dataset_id = open_upload(client)
    assert client.post(f"/datasets/{dataset_id}/commit").get_json()["error"]["code"] == "missing_part"


@pytest.mark.parametrize("number", ["0", "10001", "x", "-1", "1.5"])
def test_a_part_number_outside_1_to_10000_is_400(client, number):
    dataset_id = open_upload(client)
    response = put(client, dataset_id, number, b"n\n1\n")
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_part"


def test_a_committed_dataset_takes_no_more_parts(client):
    dataset_id = open_upload(client)
    put(client, dataset_id, 1, b"n\n1\n")
    client.post(f"/datasets/{dataset_id}/commit")
    assert put(client, dataset_id, 2, b"n\n2\n").status_code == 409
    assert client.post(f"/datasets/{dataset_id}/commit").status_code == 409


def test_an_upload_in_parts_takes_no_body_at_opening(client, redis):
    response = client.post("/datasets?upload=parts", data=b"n\n1\n", content_type="text/csv")
    assert response.status_code == 400 and redis.keys("*") == []


def test_parts_count_against_the_dataset_limits(redis, celery):
    app = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "MAX_DATASET_ROWS": 3})
    client = app.test_client()
    dataset_id = open_upload(client)
    assert put(client, dataset_id, 1, b"n\n1\n2\n").status_code == 200
    response = put(client, dataset_id, 2, b"n\n3\n4\n")
    assert response.status_code == 400 and response.get_json()["error"]["details"]["limit"] == "MAX_DATASET_ROWS"
    assert put(client, dataset_id, 1, b"n\n1\n").status_code == 200  # replacing part 1 makes room
    assert put(client, dataset_id, 2, b"n\n3\n4\n").status_code == 200


def test_delete_removes_the_dataset_and_its_data(client, redis):
    dataset_id = upload(client, CSV).get_json()["dataset_id"]
    assert client.delete(f"/datasets/{dataset_id}").status_code == 204
    assert client.get(f"/datasets/{dataset_id}").status_code == 404
    assert redis.keys("*") == []
    assert client.delete(f"/datasets/{dataset_id}").status_code == 404


def test_an_uncommitted_upload_expires_with_its_parts(client, app, redis):
    dataset_id = open_upload(client)
    put(client, dataset_id, 1, b"n\n1\n")
    ttl = app.config["JOB_TTL_SECONDS"]
    assert all(0 < redis.ttl(key) <= ttl for key in redis.keys("*"))


@pytest.mark.parametrize("dataset_id", ["6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b", "nope"])
def test_an_unknown_dataset_is_404(client, dataset_id):
    for response in (
        client.get(f"/datasets/{dataset_id}"),
        client.post(f"/datasets/{dataset_id}/commit"),
        put(client, dataset_id, 1, b"n\n1\n"),
    ):
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "dataset_not_found"


def test_another_tokens_dataset_does_not_exist(redis, celery):
    app = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "API_TOKENS": ("alice", "bob")})
    client = app.test_client()
    alice, bob = ({"Authorization": f"Bearer {t}"} for t in ("alice", "bob"))
    dataset_id = upload(client, CSV, headers=alice).get_json()["dataset_id"]
    assert client.get(f"/datasets/{dataset_id}", headers=bob).status_code == 404
    assert client.delete(f"/datasets/{dataset_id}", headers=bob).status_code == 404
    job = {"dataset_id": dataset_id, "operations": []}
    assert client.post("/jobs", json=job, headers=bob).get_json()["error"]["code"] == "dataset_not_found"
    assert client.post("/jobs", json=job, headers=alice).status_code == 202
    assert upload(client, CSV).status_code == 401


# --- jobs on a dataset --------------------------------------------------------------------------


def test_a_job_on_a_dataset_is_queued_with_the_datasets_chunks(client, app, queued):
    dataset_id = upload(client, CSV).get_json()["dataset_id"]
    response = client.post("/jobs", json={"dataset_id": dataset_id, "operations": ["drop_nulls"]})
    assert response.status_code == 202 and "2 items" in response.get_json()["message"]
    assert queued() == 1
    record = app.extensions["jobstore"].get(response.get_json()["job_id"])
    assert record["dataset_id"] == dataset_id and record["input"]["chunks"] == app.extensions["datasets"].get(
        dataset_id
    )["ref"]["chunks"]
    # Several jobs may use one dataset.
    assert client.post("/process", json={"dataset_id": dataset_id, "operations": []}).status_code == 202


@pytest.mark.parametrize(
    "step,parameter",
    [
        ({"name": "filter_rows", "params": {"column": "score", "operator": "gt", "value": "50"}}, "value"),
        ({"name": "text_length", "params": {"column": "score", "into": "n"}}, "column"),
        ({"name": "filter_rows", "params": {"column": "ok", "operator": "contains", "value": "t"}}, "column"),
        ({"name": "filter_rows", "params": {"column": "when", "operator": "gt", "value": "soon"}}, "value"),
    ],
)
def test_the_preflight_check_uses_the_datasets_types(client, queued, step, parameter):
    dataset_id = upload(client, CSV).get_json()["dataset_id"]
    response = client.post("/jobs", json={"dataset_id": dataset_id, "operations": [step]})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_parameter" and error["details"] == {
        "step": 0, "operation": step["name"], "parameter": parameter,
    }
    assert queued() == 0


def test_a_job_on_an_unknown_or_uploading_dataset_is_refused(client, queued):
    unknown = client.post("/jobs", json={"dataset_id": "6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b", "operations": []})
    assert unknown.status_code == 404 and unknown.get_json()["error"]["code"] == "dataset_not_found"
    dataset_id = open_upload(client)
    uploading = client.post("/jobs", json={"dataset_id": dataset_id, "operations": []})
    assert uploading.status_code == 409 and uploading.get_json()["error"]["code"] == "dataset_not_ready"
    assert queued() == 0


def test_a_failed_job_leaves_its_dataset_for_other_jobs(client, app):
    dataset_id = upload(client, CSV).get_json()["dataset_id"]
    job_id = client.post("/jobs", json={"dataset_id": dataset_id, "operations": []}).get_json()["job_id"]
    assert client.delete(f"/jobs/{job_id}").status_code == 200
    assert len(rows_of(app, dataset_id)) == 2


@pytest.mark.parametrize(
    "body,content_type",
    [(b"a,a\n1,2\n", "text/csv"), (arrow_bytes(pa.table([[1], [2]], names=["x", "x"])),
                                   "application/vnd.apache.arrow.stream")],
)
def test_a_column_name_used_twice_is_refused_rather_than_losing_one(client, redis, body, content_type):
    response = upload(client, body, content_type)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_dataset" and redis.keys("*") == []
