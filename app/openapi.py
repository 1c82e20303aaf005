"""``GET /openapi.json``: the OpenAPI 3.1 description of the gateway, built from the code.

Nothing here is a hand-kept list that could drift: each operation's parameters
come from the registry the workers use, the job statuses from
:class:`~workers.status.JobStatus`, the request body from
:data:`~app.validation.JOB_SCHEMA`, and the limits from the app's config.
``tests/unit/test_openapi.py`` checks the document against the url map and
runs schemathesis against the app with it.
"""

import copy
import importlib.metadata

from flask import Blueprint, current_app

from app.jobs import IDEMPOTENCY_KEY
from app.validation import JOB_SCHEMA
from workers.errors import ColumnNotFound, MissingParameter, ParameterError, UnexpectedParameter, UnknownOperation
from workers.operations import REGISTRY
from workers.status import TERMINAL, JobStatus

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEME = "bearerAuth"


def _ref(name, kind="schemas"):
    return {"$ref": f"#/components/{kind}/{name}"}


def _nullable(schema):
    return {"anyOf": [{"type": "null"}, schema]}


def _json(schema):
    return {"application/json": {"schema": schema}}


# --- request -----------------------------------------------------------------


def step_schema(registry=REGISTRY):
    """One item of a job's ``operations``: a bare operation name, or ``{"name", "params"}``.

    A bare name stands for the operation with no parameters, so only operations
    without required parameters may be named that way. ``params`` is exactly the
    registry's schema of that operation's parameters.
    """
    operations = sorted(registry.values(), key=lambda op: op.name)
    bare = [op.name for op in operations if not op.required]
    branches = []
    if bare:
        branches.append({"type": "string", "enum": bare, "description": "An operation without required parameters."})
    for op in operations:
        branches.append(
            {
                "type": "object",
                "title": op.name,
                "description": op.description,
                "properties": {"name": {"const": op.name}, "params": op.schema},
                "required": ["name", "params"] if op.required else ["name"],
                "additionalProperties": False,
            }
        )
    return {
        "oneOf": branches,
        "description": "A step: an operation name, or {\"name\": ..., \"params\": {...}} with the parameters "
        "GET /operations lists for it.",
    }


def job_request_schema(config):
    """``JOB_SCHEMA`` with the records, the steps and the config's limits filled in."""
    schema = copy.deepcopy(JOB_SCHEMA)
    props = schema["properties"]
    props["dataset"].update(items={"type": "object"}, maxItems=config["MAX_RECORDS"])
    props["operations"].update(items=_ref("Step"), maxItems=config["MAX_OPERATIONS"])
    schema["description"] = (
        f"A job. Limits: at most {config['MAX_RECORDS']} records and {config['MAX_OPERATIONS']} operations (400 "
        f"limit_exceeded); strings (keys and values) of at most {config['MAX_STRING_LENGTH']} characters and nesting "
        f"at most {config['MAX_JSON_DEPTH']} deep (400 limit_exceeded); a body of at most "
        f"{config['MAX_CONTENT_LENGTH']} bytes (413 payload_too_large). A step may name only columns that exist at "
        "that step (400 " + ColumnNotFound.code + ")."
    )
    schema["x-max-string-length"] = config["MAX_STRING_LENGTH"]
    schema["x-max-json-depth"] = config["MAX_JSON_DEPTH"]
    schema["x-max-content-length"] = config["MAX_CONTENT_LENGTH"]
    return schema


# --- responses ---------------------------------------------------------------

_INT = {"type": "integer", "minimum": 0}
_TIME = {"type": "string", "format": "date-time"}


def _schemas(config):
    statuses = [s.value for s in JobStatus]
    return {
        "Error": {
            "type": "object",
            "description": "The one error shape of every endpoint.",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string", "description": "snake_case, stable: what clients branch on."},
                        "message": {"type": "string", "description": "One sentence for people."},
                        "details": {"type": "object", "description": "Where the problem is: step, parameter, field..."},
                    },
                    "required": ["code", "message", "details"],
                }
            },
            "required": ["error"],
        },
        "JobStatus": {
            "type": "string",
            "enum": statuses,
            "description": "started, then processing, then one of "
            + ", ".join(sorted(status.value for status in TERMINAL))
            + " (final); a job never moves back.",
        },
        "Step": step_schema(),
        "JobRequest": job_request_schema(config),
        "JobAccepted": {
            "type": "object",
            "properties": {
                "job_id": {"type": "string", "format": "uuid"},
                "status": {"const": JobStatus.STARTED.value},
                "message": {"type": "string"},
            },
            "required": ["job_id", "status", "message"],
        },
        "Progress": {
            "type": "object",
            "properties": {
                "operations_done": _INT,
                "operations_total": _INT,
                "current_operation": {"type": ["string", "null"]},
            },
            "required": ["operations_done", "operations_total", "current_operation"],
        },
        "OperationStats": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "rows_in": _INT,
                "rows_out": _INT,
                "seconds": {"type": "number", "minimum": 0},
            },
            "required": ["name", "rows_in", "rows_out", "seconds"],
        },
        "JobResult": {
            "type": "object",
            "description": "A completed job's statistics and processed records.",
            "properties": {
                "processed_items": _INT,
                "output_items": _INT,
                "operations_applied": _INT,
                "operations": {"type": "array", "items": _ref("OperationStats")},
                "data": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["processed_items", "output_items", "operations_applied", "operations", "data"],
        },
        "JobError": {
            "type": "object",
            "description": "Why a job failed or was cancelled.",
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "operation_index": {"type": ["integer", "null"], "minimum": 0},
            },
            "required": ["type", "message", "operation_index"],
        },
        "Job": {
            "type": "object",
            "properties": {
                "job_id": {"type": "string", "format": "uuid"},
                "status": _ref("JobStatus"),
                "message": {"type": "string"},
                "progress": _ref("Progress"),
                "data": _nullable(_ref("JobResult")),
                "error": _nullable(_ref("JobError")),
                "created_at": _TIME,
                "started_at": {**_TIME, "type": ["string", "null"]},
                "finished_at": {**_TIME, "type": ["string", "null"]},
                "attempts": _INT,
            },
            "required": [
                "job_id", "status", "message", "progress", "data", "error",
                "created_at", "started_at", "finished_at", "attempts",
            ],
        },
        "OperationInfo": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "description": {"type": "string"},
                "parameters": {"type": "object", "description": "JSON Schema (2020-12) of the operation's params."},
            },
            "required": ["name", "description", "parameters"],
        },
        "Catalogue": {
            "type": "object",
            "properties": {"operations": {"type": "array", "items": _ref("OperationInfo")}},
            "required": ["operations"],
        },
        "Health": {
            "type": "object",
            "properties": {"status": {"const": "ok"}, "redis": {"const": "reachable"}, "workers": _INT},
            "required": ["status", "redis", "workers"],
        },
    }


def _error(description, codes=None, headers=None):
    """An error response; ``codes`` pins ``error.code`` when the contract names them."""
    schema = _ref("Error")
    if codes:
        schema = {"allOf": [schema, {"properties": {"error": {"properties": {"code": {"enum": codes}}}}}]}
    response = {"description": description, "content": _json(schema)}
    if headers:
        response["headers"] = headers
    return response


def _responses():
    return {
        "Unauthorized": _error(
            "The server has API_TOKENS set and the request has no valid `Authorization: Bearer <token>`.",
            ["unauthorized"],
            headers={"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
        ),
        "JobNotFound": _error(
            "No such job: unknown, malformed or expired id, or another token's job.", ["job_not_found", "not_found"]
        ),
        "BackendUnavailable": _error(
            "Redis (job store and broker) is unreachable; retry after Retry-After seconds.",
            ["backend_unavailable"],
            headers={"Retry-After": {"required": True, "schema": _INT}},
        ),
    }


#: The request body example (``tests/unit/test_openapi.py`` submits it: it must stay a valid job).
JOB_EXAMPLE = {
    "summary": "Drop incomplete records, keep two columns, sort",
    "value": {
        "dataset": [{"name": "Ada", "age": 36, "city": "London"}, {"name": None, "age": 41, "city": "Paris"}],
        "operations": [
            "drop_nulls",
            {"name": "select_columns", "params": {"columns": ["name", "age"]}},
            {"name": "sort", "params": {"by": "age", "ascending": False}},
        ],
    },
}

#: ``error.code`` of a 400 from POST /jobs: the request-level ones, then every step-level error class's.
_VALIDATION_CODES = [
    "invalid_json",
    "invalid_body",
    "invalid_dataset",
    "invalid_operations",
    "limit_exceeded",
    "invalid_idempotency_key",
    *(cls.code for cls in (UnknownOperation, ParameterError, MissingParameter, UnexpectedParameter, ColumnNotFound)),
]

_LOCATION = {"Location": {"required": True, "description": "GET this to follow the job.", "schema": {"type": "string"}}}


def _submit(operation_id, summary, deprecated=False):
    op = {
        "operationId": operation_id,
        "tags": ["jobs"],
        "summary": summary,
        "description": "Validates the whole job (shape, limits, operations, parameters and the columns each step "
        "names) before anything is stored or enqueued.",
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Retrying with the same key and body answers 200 with the job already created; "
                "the same key with another body is 409 idempotency_key_reused; a malformed key is 400 "
                "invalid_idempotency_key.",
                "schema": {"type": "string", "pattern": f"^(?:{IDEMPOTENCY_KEY.pattern})$"},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("JobRequest"), "examples": {"job": JOB_EXAMPLE}}},
        },
        "responses": {
            "202": {
                "description": "Accepted and queued.",
                "headers": _LOCATION,
                "content": _json(_ref("JobAccepted")),
                "links": {
                    "GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/job_id"}},
                    "CancelJob": {"operationId": "cancelJob", "parameters": {"job_id": "$response.body#/job_id"}},
                },
            },
            "200": {
                "description": "A retry with an Idempotency-Key already used with this body: the job it created.",
                "headers": _LOCATION,
                "content": _json(_ref("Job")),
            },
            "400": _error("The job is invalid. Codes: " + ", ".join(_VALIDATION_CODES) + "."),
            "401": _ref("Unauthorized", "responses"),
            "404": _error("A retry with an Idempotency-Key whose job has expired.", ["job_not_found"]),
            "409": _error("The Idempotency-Key was used with another body.", ["idempotency_key_reused"]),
            "413": _error("The body is larger than MAX_CONTENT_LENGTH.", ["payload_too_large"]),
            "415": _error("The body is not `application/json`.", ["unsupported_media_type"]),
            "503": _ref("BackendUnavailable", "responses"),
        },
    }
    if deprecated:
        op["deprecated"] = True
    return op


def _paths():
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "description": "The id POST /jobs returned (a UUID); any other text is 404.",
        "schema": {"type": "string"},
    }
    return {
        "/jobs": {"post": _submit("submitJob", "Submit a job: a dataset and the operations to run over it.")},
        "/process": {
            "post": _submit("submitJobLegacy", "The same as POST /jobs: the earlier route, kept for its clients.", True)
        },
        "/jobs/{job_id}": {
            "parameters": [job_id],
            "get": {
                "operationId": "getJob",
                "tags": ["jobs"],
                "summary": "A job's status, progress and timestamps; its data or error once it has ended.",
                "responses": {
                    "200": {"description": "The job.", "content": _json(_ref("Job"))},
                    "401": _ref("Unauthorized", "responses"),
                    "404": _ref("JobNotFound", "responses"),
                    "503": _ref("BackendUnavailable", "responses"),
                },
            },
            "delete": {
                "operationId": "cancelJob",
                "tags": ["jobs"],
                "summary": "Cancel a job that has not ended.",
                "responses": {
                    "200": {
                        "description": "Cancelled: the job, with status cancelled.",
                        "content": _json(
                            {"allOf": [_ref("Job"), {"properties": {"status": {"const": JobStatus.CANCELLED.value}}}]}
                        ),
                    },
                    "401": _ref("Unauthorized", "responses"),
                    "404": _ref("JobNotFound", "responses"),
                    "409": _error("The job had already ended.", ["job_finished"]),
                    "503": _ref("BackendUnavailable", "responses"),
                },
            },
        },
        "/operations": {
            "get": {
                "operationId": "listOperations",
                "tags": ["operations"],
                "summary": "The catalogue: every operation, its description and the JSON Schema of its parameters.",
                "responses": {
                    "200": {"description": "The catalogue.", "content": _json(_ref("Catalogue"))},
                    "401": _ref("Unauthorized", "responses"),
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "tags": ["meta"],
                "summary": "Is Redis reachable, and how many workers answer a ping.",
                "security": [],
                "responses": {
                    "200": {"description": "Redis answers.", "content": _json(_ref("Health"))},
                    "503": _ref("BackendUnavailable", "responses"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["meta"],
                "summary": "This document.",
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document.",
                        "content": _json({"type": "object", "required": ["openapi", "info", "paths"]}),
                    },
                    "401": _ref("Unauthorized", "responses"),
                },
            }
        },
    }


def _version():
    try:
        return importlib.metadata.version("datajobs")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def build_document(config):
    """The OpenAPI document for an app with ``config`` (limits) and the current registry."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "datajobs",
            "version": _version(),
            "description": "Submit a dataset and a list of named operations; follow the job; fetch the result. "
            "Every error is `{\"error\": {\"code\", \"message\", \"details\"}}`: an unknown path is 404 not_found, "
            "a method a path does not have is 405 method_not_allowed. Bearer tokens are required only when the "
            "server is configured with API_TOKENS; /health never needs one.",
        },
        "tags": [
            {"name": "jobs", "description": "Submit, follow and cancel jobs."},
            {"name": "operations", "description": "What a job can do."},
            {"name": "meta", "description": "Health and this document."},
        ],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(config),
            "responses": _responses(),
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the server's API_TOKENS; jobs are visible only with the token that "
                    "created them. Not enforced when API_TOKENS is empty.",
                }
            },
        },
        "security": [{SECURITY_SCHEME: []}],
    }


@bp.get("/openapi.json")
def openapi():
    """Serve the OpenAPI document."""
    return build_document(current_app.config)
