"""``GET /openapi.json``: the document matches the code, and the app matches the document.

The schemathesis run fuzzes every documented operation (schema-valid and
schema-invalid requests) against the app built by ``create_app`` with fakeredis
and the in-memory Celery of ``tests/conftest.py``, and requires no 5xx and
responses that conform to the document: documented status code, content type,
required headers and body schema.
"""

import json
import os
import re

import fakeredis
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app import create_app
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
    max_examples=int(os.environ.get("DATAJOBS_FUZZ_EXAMPLES", 30)),
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
    assert body["required"] == ["dataset", "operations"] and body["additionalProperties"] is False
    assert body["properties"]["dataset"]["maxItems"] == 7
    assert body["properties"]["operations"]["maxItems"] == 3
    assert body["properties"]["operations"]["items"] == {"$ref": "#/components/schemas/Step"}
    assert document["paths"]["/process"]["post"]["requestBody"] == document["paths"]["/jobs"]["post"]["requestBody"]


def test_status_enum_is_job_status(document):
    schemas = document["components"]["schemas"]
    assert schemas["JobStatus"]["enum"] == [status.value for status in JobStatus]
    assert schemas["Job"]["properties"]["status"] == {"$ref": "#/components/schemas/JobStatus"}


def test_bearer_auth_is_global_and_health_is_open(document):
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert document["security"] == [{"bearerAuth": []}]
    for (method, path), op in operations_of(document).items():
        if path == "/health":
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
    return create_app({"TESTING": True, "REDIS": fakeredis.FakeRedis(), "CELERY": celery})


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


# --- every documented response shape, reached on purpose ----------------------
#
# Fuzzing never gets a job past "started" (there is no worker), so these walk one
# job through every status and send each request as a schemathesis case, with the
# same checks: documented status code, content type, headers and body schema.


def send(app, method, path, status, checks=CHECKS, **case):
    response = API[path][method].Case(**case).call_and_validate(app=app, checks=checks)
    assert response.status_code == status, response.text
    return response.json()


JOB = {"body": {"dataset": [{"a": 1}], "operations": []}, "media_type": "application/json"}
SOME_ID = {"path_parameters": {"job_id": "6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b"}}
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


def test_processing_completed_and_failed_jobs_match_the_document(app, celery):
    store = app.extensions["jobstore"]
    running, done, failed = (submit(app)["job_id"] for _ in range(3))
    celery.backend.store_result(
        running, {"operations_done": 1, "operations_total": 3, "current_operation": "select_columns"}, PROGRESS
    )
    assert show(app, running)["status"] == JobStatus.PROCESSING.value

    summary = {
        "processed_items": 2,
        "output_items": 1,
        "operations_applied": 3,
        "operations": [{"name": "drop_nulls", "rows_in": 2, "rows_out": 1, "seconds": 0.01}],
    }
    store.complete(done, json.dumps([{"name": "Ada", "age": 36}]), summary)
    celery.backend.store_result(done, summary, "SUCCESS")
    assert show(app, done)["data"]["data"] == [{"name": "Ada", "age": 36}]

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


def test_backend_down_is_the_documented_503(celery):
    from localstack import free_port
    from workers.jobstore import connect

    app = create_app({"TESTING": True, "REDIS": connect(f"redis://127.0.0.1:{free_port()}/0"), "CELERY": celery})
    for method, path, case in [("GET", "/health", {}), ("GET", "/jobs/{job_id}", SOME_ID), ("POST", "/jobs", JOB)]:
        assert send(app, method, path, 503, CONFORMANCE, **case)["error"]["code"] == "backend_unavailable"


@pytest.mark.parametrize(
    "method,path,case,authorization",
    [
        ("POST", "/jobs", JOB, None),
        ("POST", "/process", JOB, None),
        ("GET", "/jobs/{job_id}", SOME_ID, None),
        ("DELETE", "/jobs/{job_id}", SOME_ID, "Bearer wrong"),
        ("GET", "/operations", {}, "Bearer"),
        ("GET", "/openapi.json", {}, f"Basic {TOKEN}"),
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
