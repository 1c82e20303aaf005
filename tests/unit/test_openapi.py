"""``GET /openapi.json``: the document matches the code, and the app matches the document.

The schemathesis run fuzzes every documented operation (schema-valid and
schema-invalid requests) against the app built by ``create_app`` with fakeredis
and the in-memory Celery of ``tests/conftest.py``, and requires no 5xx and
responses that conform to the document: documented status code, content type,
required headers and body schema. A stateful run follows the document's links
(a new dataset to its parts, commit and jobs; a new job to its result), so
fuzzing reaches real ids too.
"""

import io
import json
import os
import re

import fakeredis
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app import auth, create_app, results, uploads
from app.openapi import PHASES
from workers import datasets, frames
from workers.celery import make_app as make_celery
from workers.operations import REGISTRY
from workers.status import PROGRESS, JobStatus

TOKEN = "test-token"
#: The response matches the document: status code, content type, required headers, body schema.
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CHECKS = [not_a_server_error, *CONFORMANCE]
#: Examples per operation and phase; raise it for a deeper local run (``DATAJOBS_FUZZ_EXAMPLES=500``).
FUZZ = settings(
    max_examples=int(os.environ.get("DATAJOBS_FUZZ_EXAMPLES", 20)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture
def document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    return response.get_json()


def operations_of(document):
    """``{(METHOD, path): operation}`` of every operation the document describes."""
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {
        (method.upper(), path): op
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in methods
    }


def resolve(document, node):
    """Follow ``node``'s local ``$ref`` chain in ``document``."""
    while "$ref" in node:
        target = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


# --- the document --------------------------------------------------------------


def test_document_is_valid_openapi_3_1(app, document):
    assert document["openapi"] == "3.1.0"
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    schema.validate()  # against the OpenAPI 3.1 meta-schema; raises when the document is not valid
    for component in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(component)
    # schemathesis can build every operation (it leaves out the document's own location)
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert labels == {f"{method} {path}" for method, path in operations_of(document) if path != "/openapi.json"}


def test_every_url_rule_is_documented_with_its_methods(app, document):
    documented = set(operations_of(document))
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (method, path) in documented, f"{method} {path} is routed but not in /openapi.json"


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/jobs"),
        ("POST", "/process"),
        ("GET", "/jobs/{job_id}"),
        ("DELETE", "/jobs/{job_id}"),
        ("GET", "/jobs/{job_id}/result"),
        ("DELETE", "/jobs/{job_id}/result"),
        ("POST", "/datasets"),
        ("GET", "/datasets/{dataset_id}"),
        ("DELETE", "/datasets/{dataset_id}"),
        ("PUT", "/datasets/{dataset_id}/parts/{number}"),
        ("POST", "/datasets/{dataset_id}/commit"),
        ("GET", "/operations"),
        ("GET", "/health"),
        ("GET", "/openapi.json"),
    ],
)
def test_every_documented_operation_is_routed(app, document, method, path):
    assert (method, path) in operations_of(document)
    flask_path = re.sub(r"\{([^}]+)\}", r"<\1>", path)
    rules = [rule for rule in app.url_map.iter_rules() if rule.rule == flask_path]
    assert any(method in rule.methods for rule in rules), f"{method} {path} is documented but not routed"


def test_each_registered_operation_has_exactly_its_registry_parameters(document):
    step = document["components"]["schemas"]["Step"]
    by_name = {
        branch["properties"]["name"]["const"]: branch for branch in step["oneOf"] if branch.get("type") == "object"
    }
    assert sorted(by_name) == sorted(REGISTRY)
    for name, op in REGISTRY.items():
        assert by_name[name]["properties"]["params"] == op.schema
        assert by_name[name]["description"] == op.description
    bare = next(branch for branch in step["oneOf"] if branch.get("type") == "string")
    assert sorted(bare["enum"]) == sorted(name for name, op in REGISTRY.items() if not op.required)


def test_job_request_is_job_schema_with_steps_and_config_limits(redis, celery):
    app = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "MAX_RECORDS": 7, "MAX_OPERATIONS": 3})
    document = app.test_client().get("/openapi.json").get_json()
    request = document["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body = resolve(document, request)
    assert body["required"] == ["operations"] and body["additionalProperties"] is False
    assert body["oneOf"] == [{"required": ["dataset"]}, {"required": ["dataset_id"]}]
    assert body["properties"]["dataset_id"]["type"] == "string"
    assert body["properties"]["dataset"]["maxItems"] == 7
    assert body["properties"]["operations"]["maxItems"] == 3
    assert body["properties"]["operations"]["items"] == {"$ref": "#/components/schemas/Step"}
    assert document["paths"]["/process"]["post"]["requestBody"] == document["paths"]["/jobs"]["post"]["requestBody"]


def test_status_enum_is_job_status(document):
    schemas = document["components"]["schemas"]
    assert schemas["JobStatus"]["enum"] == [status.value for status in JobStatus]
    assert schemas["Job"]["properties"]["status"] == {"$ref": "#/components/schemas/JobStatus"}


def test_bearer_auth_is_global_and_health_is_open(app, document):
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert document["security"] == [{"bearerAuth": []}]
    # Open in the document exactly where app/auth.py lets a request in without a token.
    public = {
        re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint in auth.PUBLIC_ENDPOINTS
    }
    assert {"/health", "/docs", "/docs/{filename}", "/openapi.json"} <= public
    for (method, path), op in operations_of(document).items():
        if path in public:
            assert op["security"] == []
        else:
            assert "security" not in op
            assert op["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}


def test_every_error_response_is_the_error_shape(document):
    for (method, path), op in operations_of(document).items():
        for status, response in op["responses"].items():
            if int(status) >= 400:
                schema = resolve(document, response)["content"]["application/json"]["schema"]
                refs = [schema] + schema.get("allOf", [])
                assert {"$ref": "#/components/schemas/Error"} in refs, f"{method} {path} {status}"


# --- the app against the document (schemathesis) -------------------------------
#
# schemathesis.pytest.from_fixture (the lazy loader) does not run under pytest 9.2
# (it sets ``item._nodeid``, which pytest 9.2 no longer has), so the operations are
# collected from an app built here the way conftest builds one, and every case is
# sent to the test's own ``app`` fixture with ``call_and_validate(app=...)``.


def _collection_app():
    celery = make_celery(broker_url="memory://", result_backend="cache+memory://")
    # Short waits in the document, so the cases made from it (which wait on jobs no worker runs) stay quick.
    return create_app({"TESTING": True, "REDIS": fakeredis.FakeRedis(), "CELERY": celery, "MAX_WAIT_SECONDS": 0.05})


# The document describes every upload format but a JSON array as a file of its media type
# (``type: string, format: binary``), which schemathesis cannot make up: each gets a strategy
# here, a small table written in that format, cut short now and then, or bytes that are none.

_CELLS = [
    st.integers(-(2**63), 2**63 - 1),
    st.floats(width=64),
    st.text(max_size=8),
    st.booleans(),
    st.datetimes(),
]


@st.composite
def tables(draw):
    """A small Arrow table: a few columns, each of one kind of value, with nulls."""
    names = draw(st.lists(st.text("abcxyz_ ", min_size=1, max_size=4), min_size=1, max_size=4, unique=True))
    rows = draw(st.integers(0, 5))
    columns = {}
    for name in names:
        cells = st.one_of(st.none(), draw(st.sampled_from(_CELLS)))
        columns[name] = draw(st.lists(cells, min_size=rows, max_size=rows))
    return pa.table(columns)


def _csv_file(delimiter):
    def write(table):
        sink = io.BytesIO()
        pacsv.write_csv(table, sink, pacsv.WriteOptions(delimiter=delimiter))
        return sink.getvalue()

    return write


def _jsonl_file(table):
    return "".join(json.dumps(row, default=str) + "\n" for row in table.to_pylist()).encode()


def _parquet_file(table):
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _arrow_file(new_writer):
    def write(table):
        sink = pa.BufferOutputStream()
        with new_writer(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()

    return write


#: A writer for every upload format but the JSON array (``app.uploads.FORMATS`` values).
FILE_WRITERS = {
    "csv": _csv_file(","),
    "tsv": _csv_file("\t"),
    "jsonl": _jsonl_file,
    "parquet": _parquet_file,
    "arrow": _arrow_file(pa.ipc.new_stream),
    "arrow_file": _arrow_file(pa.ipc.new_file),
}


def files(fmt):
    whole = tables().map(FILE_WRITERS[fmt])
    cut = whole.flatmap(lambda data: st.integers(0, len(data)).map(lambda n: data[:n]))
    return st.one_of(whole, cut, st.binary(max_size=64))


for _media, _fmt in uploads.FORMATS.items():
    if _media != "application/json":
        schemathesis.openapi.media_type(_media, files(_fmt))


API = schemathesis.openapi.from_wsgi("/openapi.json", _collection_app())


@pytest.fixture
def token_app(redis, celery):
    return create_app(
        {"TESTING": True, "REDIS": redis, "CELERY": celery, "HEALTH_PING_TIMEOUT": 0.1, "API_TOKENS": (TOKEN,)}
    )


@API.parametrize()
@FUZZ
def test_app_conforms_to_its_document(case, app):
    case.call_and_validate(app=app, checks=CHECKS)


@API.parametrize()
@settings(FUZZ, max_examples=10)
def test_app_with_tokens_conforms_to_its_document(case, token_app):
    case.call_and_validate(app=token_app, checks=CHECKS, headers={"Authorization": f"Bearer {TOKEN}"})


class LinkedCalls(API.as_state_machine()):
    """Sequences of calls along the document's links, each scenario against a new app."""

    def setup(self):
        self.app = _collection_app()

    def before_call(self, case):
        # An upload in parts is opened without a body, as a client opens it, so that its parts
        # and commit are reached; the stateless runs send bodies with ?upload=parts too (400).
        if case.operation.label == "POST /datasets" and (case.query or {}).get("upload") == "parts":
            case.body, case.media_type = NOT_SET, None

    def get_call_kwargs(self, case):
        return {"app": self.app}

    def validate_response(self, response, case, additional_checks=None, **kwargs):
        case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)


TestLinkedCallsConformToTheDocument = LinkedCalls.TestCase
TestLinkedCallsConformToTheDocument.settings = settings(FUZZ, max_examples=FUZZ.max_examples, stateful_step_count=6)


# --- every documented response shape, reached on purpose ----------------------
#
# Fuzzing never gets a job past "started" (there is no worker), so these walk one
# job through every status and send each request as a schemathesis case, with the
# same checks: documented status code, content type, headers and body schema.


def call(app, method, path, status, checks=CHECKS, **case):
    """Send one request as a schemathesis case, with ``checks``; return the response, which must be ``status``."""
    response = API[path][method].Case(**case).call_and_validate(app=app, checks=checks)
    assert response.status_code == status, response.text
    return response


def send(app, method, path, status, checks=CHECKS, **case):
    return call(app, method, path, status, checks, **case).json()


JOB = {"body": {"dataset": [{"a": 1}], "operations": []}, "media_type": "application/json"}
SOME_ID = {"path_parameters": {"job_id": "6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b"}}
SOME_DATASET = {"path_parameters": {"dataset_id": "6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b"}}
PART_1 = {"path_parameters": {"dataset_id": "6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b", "number": 1}}
CSV = {"body": b"name,age\nAda,36\n", "media_type": "text/csv"}
#: The request body example the document gives.
EXAMPLE = API.raw_schema["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["examples"]["job"]


def submit(app, body=None, status=202, **headers):
    body = EXAMPLE["value"] if body is None else body
    return send(app, "POST", "/jobs", status, body=body, media_type="application/json", headers=headers or None)


def show(app, job_id, status=200):
    return send(app, "GET", "/jobs/{job_id}", status, path_parameters={"job_id": job_id})


def cancel(app, job_id, status=200):
    return send(app, "DELETE", "/jobs/{job_id}", status, path_parameters={"job_id": job_id})


def test_the_documented_example_is_accepted(app):
    accepted = submit(app)
    assert show(app, accepted["job_id"])["status"] == JobStatus.STARTED.value


def test_processing_completed_and_failed_jobs_match_the_document(app, celery, complete_job):
    store = app.extensions["jobstore"]
    running, done, failed = (submit(app)["job_id"] for _ in range(3))
    progress = {"operations_done": 1, "operations_total": 3, "current_operation": "select_columns"}
    for phase in PHASES:
        meta = {**progress, "phase": phase, "chunks_done": 1, "chunks_total": 2}
        celery.backend.store_result(running, meta, PROGRESS)
        assert show(app, running)["progress"]["phase"] == phase
    assert show(app, running)["status"] == JobStatus.PROCESSING.value

    summary = {
        "processed_items": 2,
        "output_items": 1,
        "operations_applied": 3,
        "operations": [{"name": "drop_nulls", "rows_in": 2, "rows_out": 1, "seconds": 0.01}],
    }
    complete_job(done, [{"name": "Ada", "age": 36}], summary)
    celery.backend.store_result(done, summary, "SUCCESS")
    data = show(app, done)["data"]
    assert data["data"] == [{"name": "Ada", "age": 36}] and data["truncated"] is False
    assert data["columns"] == [{"name": "name", "type": "string"}, {"name": "age", "type": "integer"}]
    assert data["result_url"] == f"/jobs/{done}/result"

    store.fail(failed, {"type": "invalid_parameter", "message": "Step 2 (sort): ...", "operation_index": 2})
    celery.backend.mark_as_failure(failed, RuntimeError("x"))
    assert show(app, failed)["status"] == JobStatus.FAILED.value


def test_cancel_matches_the_document(app):
    job_id = submit(app)["job_id"]
    assert cancel(app, job_id)["status"] == JobStatus.CANCELLED.value
    assert show(app, job_id)["status"] == JobStatus.CANCELLED.value
    assert send(app, "DELETE", "/jobs/{job_id}", 404, **SOME_ID)["error"]["code"] == "job_not_found"


def test_cancelling_an_ended_job_is_the_documented_409(app):
    job_id = submit(app)["job_id"]
    cancel(app, job_id)
    assert cancel(app, job_id, 409)["error"]["code"] == "job_finished"


def test_idempotent_retry_and_reuse_match_the_document(app):
    first = submit(app, **{"Idempotency-Key": "order-42"})
    again = submit(app, status=200, **{"Idempotency-Key": "order-42"})
    assert again["job_id"] == first["job_id"]
    other = JOB["body"]
    assert submit(app, other, 409, **{"Idempotency-Key": "order-42"})["error"]["code"] == "idempotency_key_reused"
    assert submit(app, other, 400, **{"Idempotency-Key": "two words"})["error"]["code"] == "invalid_idempotency_key"


def test_a_dry_run_matches_the_document(app):
    body = EXAMPLE["value"]
    plan = send(app, "POST", "/jobs", 200, body=body, media_type="application/json", query={"dry_run": "true"})
    assert plan["dry_run"] is True
    assert [step["name"] for step in plan["steps"]] == [
        step if isinstance(step, str) else step["name"] for step in body["operations"]
    ]
    assert send(app, "GET", "/jobs", 200)["jobs"] == []  # nothing stored


def test_backend_down_is_the_documented_503(celery):
    from localstack import free_port
    from workers.jobstore import connect

    app = create_app({"TESTING": True, "REDIS": connect(f"redis://127.0.0.1:{free_port()}/0"), "CELERY": celery})
    for method, path, case in [
        ("GET", "/health", {}),
        ("GET", "/jobs/{job_id}", SOME_ID),
        ("POST", "/jobs", JOB),
        ("GET", "/jobs/{job_id}/result", SOME_ID),
        ("POST", "/datasets", CSV),
        ("GET", "/datasets/{dataset_id}", SOME_DATASET),
    ]:
        assert send(app, method, path, 503, CONFORMANCE, **case)["error"]["code"] == "backend_unavailable"


@pytest.mark.parametrize(
    "method,path,case,authorization",
    [
        ("POST", "/jobs", JOB, None),
        ("POST", "/process", JOB, None),
        ("GET", "/jobs/{job_id}", SOME_ID, None),
        ("DELETE", "/jobs/{job_id}", SOME_ID, "Bearer wrong"),
        ("GET", "/operations", {}, "Bearer"),
        ("GET", "/operations", {}, f"Basic {TOKEN}"),
        ("GET", "/jobs/{job_id}/result", SOME_ID, None),
        ("DELETE", "/jobs/{job_id}/result", SOME_ID, "Bearer wrong"),
        ("POST", "/datasets", CSV, None),
        ("GET", "/datasets/{dataset_id}", SOME_DATASET, "Bearer wrong"),
        ("DELETE", "/datasets/{dataset_id}", SOME_DATASET, None),
        ("PUT", "/datasets/{dataset_id}/parts/{number}", {**CSV, **PART_1}, None),
        ("POST", "/datasets/{dataset_id}/commit", SOME_DATASET, None),
    ],
)
def test_without_a_valid_token_is_the_documented_401(token_app, method, path, case, authorization):
    headers = {"Authorization": authorization} if authorization else None
    body = send(token_app, method, path, 401, headers=headers, **case)  # the checks include WWW-Authenticate
    assert body["error"]["code"] == "unauthorized"


def test_with_the_token_is_not_401(token_app):
    assert send(token_app, "POST", "/jobs", 202, headers={"Authorization": f"Bearer {TOKEN}"}, **JOB)["job_id"]
    assert send(token_app, "GET", "/openapi.json", 200, headers={"Authorization": f"Bearer {TOKEN}"})["paths"]


def test_health_needs_no_token(token_app):
    assert send(token_app, "GET", "/health", 200)["status"] == "ok"


# --- datasets and results, reached on purpose ---------------------------------

PEOPLE = pa.table({"name": ["Ada", "Alan"], "age": [36, 41]})
PEOPLE_COLUMNS = [{"name": "name", "type": "string"}, {"name": "age", "type": "integer"}]


def upload_case(media, table=PEOPLE):
    """The request parts of ``table`` uploaded as ``media`` (one of ``app.uploads.FORMATS``)."""
    fmt = uploads.FORMATS[media]
    body = table.to_pylist() if fmt == "json" else FILE_WRITERS[fmt](table)
    return {"body": body, "media_type": media}


def upload(app, media="text/csv", table=PEOPLE, status=201):
    return send(app, "POST", "/datasets", status, **upload_case(media, table))


def open_parts(app):
    return send(app, "POST", "/datasets", 201, query={"upload": "parts"})["dataset_id"]


def put_part(app, dataset_id, number, media="text/csv", table=PEOPLE, status=200):
    ids = {"path_parameters": {"dataset_id": dataset_id, "number": number}}
    return send(app, "PUT", "/datasets/{dataset_id}/parts/{number}", status, **ids, **upload_case(media, table))


def dataset(app, method, path, dataset_id, status):
    return call(app, method, path, status, path_parameters={"dataset_id": dataset_id})


def test_dataset_and_result_descriptions_come_from_the_code_and_config(redis, celery):
    limits = {"MAX_DATASET_ROWS": 7, "MAX_DATASET_BYTES": 900, "MAX_CONTENT_LENGTH": 800, "CHUNK_ROWS": 3,
              "INLINE_RESULT_ROWS": 5}
    app = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, **limits})
    document = app.test_client().get("/openapi.json").get_json()
    schemas, paths = document["components"]["schemas"], document["paths"]
    for path, method in [("/datasets", "post"), ("/datasets/{dataset_id}/parts/{number}", "put")]:
        body = paths[path][method]["requestBody"]
        assert list(body["content"]) == list(uploads.FORMATS)
        for media, content in body["content"].items():
            if media != "application/json":
                assert content["schema"] == {"type": "string", "format": "binary", "contentMediaType": media}
        assert (body["x-max-dataset-rows"], body["x-max-dataset-bytes"]) == (7, 900)
        assert (body["x-max-content-length"], body["x-chunk-rows"]) == (800, 3)
    number = paths["/datasets/{dataset_id}/parts/{number}"]["parameters"][1]["schema"]
    assert (number["minimum"], number["maximum"]) == (datasets.PARTS.start, datasets.PARTS.stop - 1)
    assert schemas["Column"]["properties"]["type"]["enum"] == list(frames.COLUMN_TYPES)
    assert schemas["Dataset"]["properties"]["status"]["enum"] == [datasets.UPLOADING, datasets.READY]
    assert schemas["JobResult"]["properties"]["data"]["maxItems"] == 5
    assert schemas["Progress"]["properties"]["phase"]["enum"] == [*PHASES, None]
    result = paths["/jobs/{job_id}/result"]["get"]
    assert list(result["responses"]["200"]["content"]) == [media.split(";")[0] for media, _ in results.FORMATS.values()]
    assert result["parameters"][0]["schema"] == {"enum": list(results.FORMATS)}


def test_the_catalogue_says_which_operations_are_row_local(app):
    listed = send(app, "GET", "/operations", 200)["operations"]
    assert {op["name"]: op["row_local"] for op in listed} == {name: op.row_local for name, op in REGISTRY.items()}


@pytest.mark.parametrize("media", list(uploads.FORMATS))
def test_a_whole_file_in_every_format_is_the_documented_201(app, media):
    response = call(app, "POST", "/datasets", 201, **upload_case(media))  # the checks include Location
    created = response.json()
    assert (created["status"], created["rows"], created["columns"]) == ("ready", 2, PEOPLE_COLUMNS)
    assert response.headers["location"] == [f"/datasets/{created['dataset_id']}"]
    assert dataset(app, "GET", "/datasets/{dataset_id}", created["dataset_id"], 200).json() == created


def test_an_upload_in_parts_matches_the_document(app):
    dataset_id = open_parts(app)
    assert put_part(app, dataset_id, 1) == {"part": 1, "rows": 2, "bytes": len(upload_case("text/csv")["body"])}
    put_part(app, dataset_id, 2, "application/vnd.apache.parquet")
    uploading = dataset(app, "GET", "/datasets/{dataset_id}", dataset_id, 200).json()
    assert (uploading["status"], uploading["parts"], uploading["rows"], uploading["columns"]) == ("uploading", 2, 4, [])
    submitted = {"body": {"dataset_id": dataset_id, "operations": []}, "media_type": "application/json"}
    assert send(app, "POST", "/jobs", 409, **submitted)["error"]["code"] == "dataset_not_ready"

    ready = dataset(app, "POST", "/datasets/{dataset_id}/commit", dataset_id, 200).json()
    assert (ready["status"], ready["parts"], ready["rows"], ready["columns"]) == ("ready", 2, 4, PEOPLE_COLUMNS)
    assert send(app, "POST", "/jobs", 202, **submitted)["status"] == JobStatus.STARTED.value
    assert put_part(app, dataset_id, 3, status=409)["error"]["code"] == "dataset_committed"
    again = dataset(app, "POST", "/datasets/{dataset_id}/commit", dataset_id, 409)
    assert again.json()["error"]["code"] == "dataset_committed"


def test_deleting_a_dataset_is_204_then_404(app):
    dataset_id = upload(app)["dataset_id"]
    assert dataset(app, "DELETE", "/datasets/{dataset_id}", dataset_id, 204).content == b""
    for method in ("GET", "DELETE"):
        gone = dataset(app, method, "/datasets/{dataset_id}", dataset_id, 404)
        assert gone.json()["error"]["code"] == "dataset_not_found"
    submitted = {"body": {"dataset_id": dataset_id, "operations": []}, "media_type": "application/json"}
    assert send(app, "POST", "/jobs", 404, **submitted)["error"]["code"] == "dataset_not_found"


@pytest.mark.parametrize(
    "case,status,code",
    [
        ({**CSV, "query": {"upload": "parts"}}, 400, "invalid_body"),
        ({**CSV, "query": {"upload": "whole"}}, 400, "invalid_parameter"),
        ({"body": b"", "media_type": "text/csv"}, 400, "invalid_dataset"),
        ({"body": b"PAR1 not really", "media_type": "application/vnd.apache.parquet"}, 400, "invalid_dataset"),
        ({"body": [1, 2], "media_type": "application/json"}, 400, "invalid_dataset"),
        (upload_case("application/vnd.apache.arrow.stream", pa.table({"blob": [b"\x00"]})), 400,
         "unsupported_column_type"),
        ({"body": "name\nAda\n", "media_type": "text/plain"}, 415, "unsupported_media_type"),
    ],
)
def test_a_refused_upload_is_the_documented_error(app, case, status, code):
    assert send(app, "POST", "/datasets", status, **case)["error"]["code"] == code


@pytest.mark.parametrize(
    "config,status,code",
    [({"MAX_DATASET_ROWS": 1}, 400, "limit_exceeded"), ({"MAX_CONTENT_LENGTH": 8}, 413, "payload_too_large")],
)
def test_an_upload_over_a_limit_is_the_documented_error(redis, celery, config, status, code):
    app = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, **config})
    assert upload(app, status=status)["error"]["code"] == code


def test_a_full_store_is_the_documented_507(app, monkeypatch):
    dataset_id = open_parts(app)
    monkeypatch.setattr(app.extensions["datasets"].data, "has_room", lambda nbytes: False)

    def full(name, data):  # what Redis at maxmemory answers a write (a small inline job does not ask first)
        raise redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'")

    monkeypatch.setattr(app.extensions["datasets"].data, "put", full)
    part_1 = {"path_parameters": {"dataset_id": dataset_id, "number": 1}}
    for method, path, case in [
        ("POST", "/datasets", CSV),
        ("PUT", "/datasets/{dataset_id}/parts/{number}", {**CSV, **part_1}),
        ("POST", "/jobs", JOB),
    ]:
        assert send(app, method, path, 507, CONFORMANCE, **case)["error"]["code"] == "storage_full"


@pytest.mark.parametrize("number", ["0", "10001", "one", "²"])
def test_a_bad_part_number_is_the_documented_400(app, number):
    dataset_id = open_parts(app)
    assert put_part(app, dataset_id, number, status=400)["error"]["code"] == "invalid_part"


def test_a_commit_that_cannot_join_the_parts_is_the_documented_400(app):
    empty, gap, mismatch = open_parts(app), open_parts(app), open_parts(app)
    put_part(app, gap, 2)
    put_part(app, mismatch, 1)
    put_part(app, mismatch, 2, table=pa.table({"name": [1.5], "age": ["old"]}))
    for dataset_id, code in [(empty, "missing_part"), (gap, "missing_part"), (mismatch, "schema_mismatch")]:
        refused = dataset(app, "POST", "/datasets/{dataset_id}/commit", dataset_id, 400)
        assert refused.json()["error"]["code"] == code


def test_a_job_needs_exactly_one_of_dataset_and_dataset_id(app):
    dataset_id = upload(app)["dataset_id"]
    both = {"dataset": [{"a": 1}], "dataset_id": dataset_id, "operations": []}
    for body in (both, {"operations": []}):
        assert submit(app, body, 400)["error"]["code"] == "invalid_body"


def _decoded(fmt, content):
    """The records of a result body in ``fmt`` (a name of ``app.results.FORMATS``)."""
    if fmt == "jsonl":
        return [json.loads(line) for line in content.decode().splitlines()]
    if fmt == "json":
        return json.loads(content)
    if fmt == "csv":
        return pacsv.read_csv(pa.py_buffer(content)).to_pylist()
    if fmt == "parquet":
        return pq.read_table(pa.py_buffer(content)).to_pylist()
    return pa.ipc.open_stream(content).read_all().to_pylist()


SUMMARY = {"processed_items": 2, "output_items": 2, "operations_applied": 0, "operations": []}


def completed(app, celery, complete_job, inline=True):
    job_id = submit(app)["job_id"]
    complete_job(job_id, PEOPLE.to_pylist(), SUMMARY, inline=inline)
    celery.backend.store_result(job_id, SUMMARY, "SUCCESS")
    return job_id


def result(app, method, job_id, status, **query):
    return call(app, method, "/jobs/{job_id}/result", status, path_parameters={"job_id": job_id}, query=query)


@pytest.mark.parametrize("fmt", list(results.FORMATS))
def test_a_result_in_every_format_is_the_documented_200(app, celery, complete_job, fmt):
    job_id = completed(app, celery, complete_job)
    response = result(app, "GET", job_id, 200, format=fmt)  # the checks include the two headers
    assert _decoded(fmt, response.content) == PEOPLE.to_pylist()
    extension = results.FORMATS[fmt][1]
    assert response.headers["content-disposition"] == [f'attachment; filename="{job_id}.{extension}"']
    assert response.headers["x-result-rows"] == ["2"]
    page = result(app, "GET", job_id, 200, format=fmt, offset=1, limit=5)
    assert (_decoded(fmt, page.content), page.headers["x-result-rows"]) == (PEOPLE.to_pylist()[1:], ["1"])


@pytest.mark.parametrize("query", [{"format": "xlsx"}, {"offset": "-1"}, {"limit": "²"}, {"raw": "maybe"}])
def test_a_bad_result_parameter_is_the_documented_400(app, celery, complete_job, query):
    job_id = completed(app, celery, complete_job)
    assert result(app, "GET", job_id, 400, **query).json()["error"]["code"] == "invalid_parameter"


def test_deleting_a_result_is_204_then_410(app, celery, complete_job):
    job_id = completed(app, celery, complete_job)
    assert result(app, "DELETE", job_id, 204).content == b""
    for method in ("GET", "DELETE"):
        assert result(app, method, job_id, 410).json()["error"]["code"] == "result_deleted"
    data = show(app, job_id)["data"]
    assert (data["data"], data["truncated"]) == (None, True)


def test_a_large_result_is_not_inline_and_is_downloaded(app, celery, complete_job):
    job_id = completed(app, celery, complete_job, inline=False)
    data = show(app, job_id)["data"]
    assert (data["data"], data["truncated"], data["result_url"]) == (None, True, f"/jobs/{job_id}/result")
    assert _decoded("jsonl", result(app, "GET", job_id, 200).content) == PEOPLE.to_pylist()


def test_a_result_before_the_job_completes_is_the_documented_409_and_an_unknown_job_404(app):
    job_id = submit(app)["job_id"]
    for method in ("GET", "DELETE"):
        assert result(app, method, job_id, 409).json()["error"]["code"] == "job_not_finished"
        assert result(app, method, SOME_ID["path_parameters"]["job_id"], 404).json()["error"]["code"] == "job_not_found"
