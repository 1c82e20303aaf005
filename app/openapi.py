"""``GET /openapi.json``: the OpenAPI 3.1 description of the gateway, built from the code.

Nothing here is a hand-kept list that could drift: each operation's parameters
come from the registry the workers use, the job statuses from
:class:`~workers.status.JobStatus`, the request body from
:data:`~app.validation.JOB_SCHEMA`, the upload and download media types from
:data:`app.uploads.FORMATS` and :data:`app.results.FORMATS`, the column types
from :data:`workers.frames.COLUMN_TYPES`, and the limits from the app's config.
``tests/unit/test_openapi.py`` checks the document against the url map and
runs schemathesis against the app with it.
"""

import copy
import importlib.metadata

from flask import Blueprint, current_app

from app import dashboard, docs, results, uploads
from app.jobs import DEFAULT_PAGE, IDEMPOTENCY_KEY, MAX_PAGE
from app.validation import JOB_SCHEMA
from workers import datasets
from workers.errors import ColumnNotFound, MissingParameter, ParameterError, UnexpectedParameter, UnknownOperation
from workers.frames import COLUMN_TYPES
from workers.operations import REGISTRY
from workers.status import TERMINAL, JobStatus, Phase

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
        "A job: its records inline (`dataset`) or the id of an uploaded dataset (`dataset_id`), exactly one of them "
        "(400 invalid_body); a `dataset_id` that is unknown, expired or another token's is 404 dataset_not_found, "
        "one still uploading 409 dataset_not_ready. "
        f"Limits: at most {config['MAX_RECORDS']} records and {config['MAX_OPERATIONS']} operations (400 "
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
_PART = {"type": "integer", "minimum": datasets.PARTS.start, "maximum": datasets.PARTS.stop - 1}
#: ``progress.phase`` of a processing job (:class:`~workers.status.Phase`).
PHASES = tuple(phase.value for phase in Phase)


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
                "phase": {
                    "enum": [*PHASES, None],
                    "description": "What a running job is doing: loading its data, running operations, or saving "
                    "its result; null unless the job is processing.",
                },
                "chunks_done": _INT,
                "chunks_total": {
                    **_INT,
                    "description": f"Chunks (of at most {config['CHUNK_ROWS']} rows, CHUNK_ROWS) the current "
                    "operations run over, chunk by chunk; 1 for an operation that needs every row at once.",
                },
            },
            "required": [
                "operations_done", "operations_total", "current_operation", "phase", "chunks_done", "chunks_total",
            ],
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
            "description": "A completed job's statistics and, when it has at most "
            f"{config['INLINE_RESULT_ROWS']} rows (INLINE_RESULT_ROWS), its records; every result is downloaded "
            "from `result_url` (GET /jobs/{job_id}/result).",
            "properties": {
                "processed_items": _INT,
                "output_items": _INT,
                "operations_applied": _INT,
                "operations": {"type": "array", "items": _ref("OperationStats")},
                "columns": {"type": "array", "items": _ref("Column"), "description": "The result's columns."},
                "workers": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "The worker hosts that ran the job.",
                },
                "result_url": {"type": "string", "description": "Where to download the whole result."},
                "truncated": {
                    "type": "boolean",
                    "description": "True when `data` is null: the result is larger than INLINE_RESULT_ROWS rows, "
                    "or was deleted.",
                },
                "data": {
                    "type": ["array", "null"],
                    "items": {"type": "object"},
                    "maxItems": config["INLINE_RESULT_ROWS"],
                    "description": f"The result's records when there are at most {config['INLINE_RESULT_ROWS']} "
                    "(and the result was not deleted); else null.",
                },
            },
            "required": [
                "processed_items", "output_items", "operations_applied", "operations",
                "columns", "workers", "result_url", "truncated", "data",
            ],
            "x-inline-result-rows": config["INLINE_RESULT_ROWS"],
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
                "rows_in": {**_INT, "description": "Rows in the job's dataset."},
                "operations": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "The names of the job's operations, in order.",
                },
            },
            "required": [
                "job_id", "status", "message", "progress", "data", "error",
                "created_at", "started_at", "finished_at", "attempts", "rows_in", "operations",
            ],
        },
        "OperationInfo": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "description": {"type": "string"},
                "parameters": {"type": "object", "description": "JSON Schema (2020-12) of the operation's params."},
                "row_local": {
                    "type": "boolean",
                    "description": "True when the operation runs on each chunk of rows apart (a filter, a column "
                    "change); false when it needs every row at once (sort, deduplicate).",
                },
            },
            "required": ["name", "description", "parameters", "row_local"],
        },
        "Catalogue": {
            "type": "object",
            "properties": {"operations": {"type": "array", "items": _ref("OperationInfo")}},
            "required": ["operations"],
        },
        "Column": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "type": {"enum": list(COLUMN_TYPES)}},
            "required": ["name", "type"],
        },
        "Dataset": {
            "type": "object",
            "description": "An uploaded dataset. While `uploading`, `rows`, `bytes` and `parts` count the parts "
            "received so far and `columns` is empty; once `ready`, jobs may name it by `dataset_id`. It expires at "
            "`expires_at` (JOB_TTL_SECONDS after it was created).",
            "properties": {
                "dataset_id": {"type": "string", "format": "uuid"},
                "status": {"enum": [datasets.UPLOADING, datasets.READY]},
                "rows": _INT,
                "columns": {"type": "array", "items": _ref("Column")},
                "bytes": {**_INT, "description": "The size of the bodies uploaded, all parts together."},
                "parts": _INT,
                "created_at": _TIME,
                "expires_at": _TIME,
            },
            "required": ["dataset_id", "status", "rows", "columns", "bytes", "parts", "created_at", "expires_at"],
        },
        "DatasetPart": {
            "type": "object",
            "properties": {"part": _PART, "rows": _INT, "bytes": _INT},
            "required": ["part", "rows", "bytes"],
        },
        "Health": {
            "type": "object",
            "properties": {
                "status": {"const": "ok"},
                "redis": {"const": "reachable"},
                "workers": {**_INT, "description": "Workers whose heartbeat is recent (3 × HEARTBEAT_SECONDS)."},
                "workers_answering": {**_INT, "description": "With deep=true: workers that answered a ping."},
            },
            "required": ["status", "redis", "workers"],
        },
        "JobList": {
            "type": "object",
            "description": "A page of the caller's jobs, newest first.",
            "properties": {
                "jobs": {
                    "type": "array",
                    "items": _ref("Job"),
                    "description": "Each job's body as GET /jobs/{job_id} gives it, without `data.data` (null).",
                },
                "next": {"type": ["string", "null"], "description": "The cursor of the next page; null at the end."},
            },
            "required": ["jobs", "next"],
        },
        "Workers": {
            "type": "object",
            "properties": {
                "workers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "description": "The worker's Celery hostname."},
                            "last_seen": {**_nullable(_TIME), "description": "Its last heartbeat (null: it holds "
                                          "a job whose lease has yet to run out, but beats no more)."},
                            "running": {**_INT, "description": "Tasks (jobs, chunks, joins) it runs now."},
                            "jobs": {"type": "array", "items": {"type": "string", "format": "uuid"},
                                     "description": "Which of the caller's jobs it runs now."},
                        },
                        "required": ["name", "last_seen", "running", "jobs"],
                    },
                },
                "queue_depth": {**_INT, "description": "Messages waiting in the queue (jobs, chunks, joins)."},
                "jobs_running": {**_INT, "description": "Jobs some worker runs now, everyone's."},
            },
            "required": ["workers", "queue_depth", "jobs_running"],
        },
        "DryRun": {
            "type": "object",
            "description": "What POST /jobs?dry_run=true found: the job is valid; nothing was stored or queued.",
            "properties": {
                "dry_run": {"const": True},
                "rows": _INT,
                "columns": {"type": "array", "items": _ref("Column"), "description": "The input's columns."},
                "steps": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "index": _INT,
                            "name": {"type": "string"},
                            "columns": {
                                "anyOf": [{"type": "null"}, {"type": "array", "items": _ref("Column")}],
                                "description": "The columns after this step; null from the first step whose "
                                "outcome depends on the data.",
                            },
                        },
                        "required": ["index", "name", "columns"],
                    },
                },
                "message": {"type": "string"},
            },
            "required": ["dry_run", "rows", "columns", "steps", "message"],
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
        "DatasetNotFound": _error(
            "No such dataset: unknown, malformed or expired id, or another token's dataset.",
            ["dataset_not_found", "not_found"],
        ),
        "StorageFull": _error(
            "The store (Redis at maxmemory, or a full directory) has no room for what this request writes: an "
            "upload, a job, a cancel; nothing of it was kept.", ["storage_full"]
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
_ETAG = {
    "ETag": {
        "required": True,
        "description": "Changes whenever anything in the job's body does (status, progress, phase...): send it "
        "back in If-None-Match.",
        "schema": {"type": "string"},
    }
}
_RETRY_AFTER = {
    "Retry-After": {
        "required": False,
        "description": "On the body of a job that has not ended: seconds after which a client that does not wait "
        "should ask again.",
        "schema": _INT,
    }
}


def _wait_parameter(config, what):
    return {
        "name": "wait",
        "in": "query",
        "required": False,
        "description": f"Seconds to wait, {what}. Above 0 and at most {config['MAX_WAIT_SECONDS']:g} "
        "(MAX_WAIT_SECONDS), else 400 invalid_parameter. The wait is woken by Redis pub/sub, not by polling.",
        "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": config["MAX_WAIT_SECONDS"]},
    }


def _submit(config, operation_id, summary, deprecated=False):
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
            },
            _wait_parameter(config, "after enqueueing, for the job to end: if it does, the answer is 200 with its "
                            "final body, else 202 as without `wait`"),
            {
                "name": "dry_run",
                "in": "query",
                "required": False,
                "description": "Run every check of the submission and answer 200 with the columns after each "
                "step (DryRun), storing and queueing nothing.",
                "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
            },
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
                "links": _links("$response.body#/job_id", "job_id", JOB_LINKS),
            },
            "200": {
                "description": "With `wait`, the job ended within it: its final body. Or a retry with an "
                "Idempotency-Key already used with this body: the job it created. Or, with `dry_run`, the plan (without these headers).",
                "headers": {name: {**header, "required": False} for name, header in {**_LOCATION, **_ETAG}.items()},
                "content": _json({"oneOf": [_ref("Job"), _ref("DryRun")]}),
                "links": _links("$response.body#/job_id", "job_id", JOB_LINKS),
            },
            "400": _error(
                "The job is invalid, or `wait` is (invalid_parameter). Codes: " + ", ".join(_VALIDATION_CODES) + "."
            ),
            "401": _ref("Unauthorized", "responses"),
            "404": _error(
                "`dataset_id` names no dataset this token may use (dataset_not_found), or a retry with an "
                "Idempotency-Key whose job has expired (job_not_found).",
                ["dataset_not_found", "job_not_found"],
            ),
            "409": _error(
                "The dataset named by `dataset_id` is still uploading (dataset_not_ready), or the Idempotency-Key "
                "was used with another body (idempotency_key_reused).",
                ["dataset_not_ready", "idempotency_key_reused"],
            ),
            "413": _error("The body is larger than MAX_CONTENT_LENGTH.", ["payload_too_large"]),
            "415": _error("The body is not `application/json`.", ["unsupported_media_type"]),
            "429": _error(
                "The token has MAX_ACTIVE_JOBS_PER_TOKEN jobs queued or running; submit again after Retry-After.",
                ["too_many_jobs"],
                headers={"Retry-After": {"required": True, "schema": _INT}},
            ),
            "503": _ref("BackendUnavailable", "responses"),
            "507": _ref("StorageFull", "responses"),
        },
    }
    if deprecated:
        op["deprecated"] = True
    return op


#: Links from a new job and from a new dataset: ``{link name: operationId}``, each taking the new id.
JOB_LINKS = {
    "GetJob": "getJob",
    "CancelJob": "cancelJob",
    "GetJobResult": "getJobResult",
    "DeleteJobResult": "deleteJobResult",
}
DATASET_LINKS = {
    "GetDataset": "getDataset",
    "PutDatasetPart": "putDatasetPart",
    "CommitDataset": "commitDataset",
    "DeleteDataset": "deleteDataset",
}


def _links(expression, parameter, targets):
    return {name: {"operationId": target, "parameters": {parameter: expression}} for name, target in targets.items()}


def _dataset_links(expression):
    links = _links(expression, "dataset_id", DATASET_LINKS)
    links["SubmitJob"] = {"operationId": "submitJob", "requestBody": {"dataset_id": expression, "operations": []}}
    return links


def upload_content():
    """The request body of an upload: one entry per media type of ``app.uploads.FORMATS``.

    A JSON array of objects is described as JSON; every other format is a file,
    sent as the body's bytes in that media type.
    """
    content = {}
    for media, fmt in uploads.FORMATS.items():
        if fmt == "json":
            schema = {"type": "array", "items": {"type": "object"}, "description": "The rows: an array of objects."}
            content[media] = {"schema": schema, "examples": {"records": {"value": JOB_EXAMPLE["value"]["dataset"]}}}
        else:
            content[media] = {"schema": {"type": "string", "format": "binary", "contentMediaType": media}}
    return content


def _upload_body(config, required):
    return {
        "required": required,
        "description": (
            "The file, as the whole body, its Content-Type one of " + ", ".join(uploads.FORMATS) + " (else 415 "
            f"unsupported_media_type). A body of at most {config['MAX_CONTENT_LENGTH']} bytes (MAX_CONTENT_LENGTH, "
            f"413 payload_too_large); a dataset of at most {config['MAX_DATASET_ROWS']} rows (MAX_DATASET_ROWS) "
            f"and {config['MAX_DATASET_BYTES']} bytes (MAX_DATASET_BYTES), all its parts together, and text cells "
            f"of at most {config['MAX_STRING_LENGTH']} characters (400 limit_exceeded). Rows are stored in chunks "
            f"of at most {config['CHUNK_ROWS']} rows (CHUNK_ROWS). Column types are read from the file; a column "
            "of a type datajobs cannot process (binary data) is 400 unsupported_column_type."
        ),
        "content": upload_content(),
        "x-max-content-length": config["MAX_CONTENT_LENGTH"],
        "x-max-dataset-rows": config["MAX_DATASET_ROWS"],
        "x-max-dataset-bytes": config["MAX_DATASET_BYTES"],
        "x-chunk-rows": config["CHUNK_ROWS"],
    }


#: ``error.code`` of a 400 from reading an upload's body, whole or a part.
_UPLOAD_CODES = ["invalid_dataset", "limit_exceeded", "unsupported_column_type"]


def _upload_errors():
    return {
        "401": _ref("Unauthorized", "responses"),
        "413": _error("The body is larger than MAX_CONTENT_LENGTH.", ["payload_too_large"]),
        "415": _error(
            "The Content-Type is none of " + ", ".join(uploads.FORMATS) + ".", ["unsupported_media_type"]
        ),
        "503": _ref("BackendUnavailable", "responses"),
        "507": _ref("StorageFull", "responses"),
    }


def _id_parameter(name, issued_by):
    """The path parameter ``name``: an id that ``issued_by`` returned."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"The id {issued_by} returned (a UUID); any other text is 404.",
        "schema": {"type": "string"},
    }


def _dataset_paths(config):
    dataset_id = _id_parameter("dataset_id", "POST /datasets")
    described = {"description": "The dataset.", "content": _json(_ref("Dataset"))}
    common = {
        "401": _ref("Unauthorized", "responses"),
        "404": _ref("DatasetNotFound", "responses"),
        "503": _ref("BackendUnavailable", "responses"),
    }
    committed = _error("The dataset has been committed: its parts can no longer change.", ["dataset_committed"])
    return {
        "/datasets": {
            "post": {
                "operationId": "createDataset",
                "tags": ["datasets"],
                "summary": "Upload a file as a dataset, or with ?upload=parts open an upload in parts.",
                "description": "Without `upload`, the body is the whole file and the dataset is ready at once. "
                "With `upload=parts` the body is empty: the dataset is `uploading` until its parts (PUT "
                "/datasets/{dataset_id}/parts/{number}) are committed (POST /datasets/{dataset_id}/commit).",
                "parameters": [
                    {
                        "name": "upload",
                        "in": "query",
                        "required": False,
                        "description": "`parts`: open an upload in parts (no body); anything else is 400 "
                        "invalid_parameter.",
                        "schema": {"enum": ["parts"]},
                    }
                ],
                "requestBody": _upload_body(config, required=False),
                "responses": {
                    "201": {
                        "description": "Created: `ready` (a whole file) or `uploading` (?upload=parts).",
                        "headers": {
                            "Location": {
                                "required": True,
                                "description": "GET this to describe the dataset.",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": _json(_ref("Dataset")),
                        "links": _dataset_links("$response.body#/dataset_id"),
                    },
                    "400": _error(
                        "The body is not a dataset in its format, is over a limit, or is not empty with "
                        "?upload=parts (invalid_body); `upload` is not `parts` (invalid_parameter).",
                        ["invalid_body", "invalid_parameter", *_UPLOAD_CODES],
                    ),
                    **_upload_errors(),
                },
            }
        },
        "/datasets/{dataset_id}": {
            "parameters": [dataset_id],
            "get": {
                "operationId": "getDataset",
                "tags": ["datasets"],
                "summary": "Describe a dataset: status, rows, columns and their types, size, parts, expiry.",
                "responses": {"200": described, **common},
            },
            "delete": {
                "operationId": "deleteDataset",
                "tags": ["datasets"],
                "summary": "Delete a dataset and its data; jobs still queued on it fail (expired).",
                "responses": {"204": {"description": "Deleted."}, **common},
            },
        },
        "/datasets/{dataset_id}/parts/{number}": {
            "parameters": [
                dataset_id,
                {
                    "name": "number",
                    "in": "path",
                    "required": True,
                    "description": f"The part's number, {datasets.PARTS.start} to {datasets.PARTS.stop - 1}: parts "
                    "are joined in this order, and must be numbered from 1 without gaps. Sending a part again "
                    "replaces it.",
                    "schema": _PART,
                },
            ],
            "put": {
                "operationId": "putDatasetPart",
                "tags": ["datasets"],
                "summary": "Upload one part of a dataset opened with ?upload=parts.",
                "requestBody": _upload_body(config, required=True),
                "responses": {
                    "200": {
                        "description": "The part is stored.",
                        "content": _json(_ref("DatasetPart")),
                        "links": {
                            "CommitDataset": {
                                "operationId": "commitDataset",
                                "parameters": {"dataset_id": "$request.path.dataset_id"},
                            },
                            "GetDataset": {
                                "operationId": "getDataset",
                                "parameters": {"dataset_id": "$request.path.dataset_id"},
                            },
                        },
                    },
                    "400": _error(
                        "The part number is not a whole number in range (invalid_part), or the body is not a "
                        "dataset in its format or is over a limit.",
                        ["invalid_part", *_UPLOAD_CODES],
                    ),
                    "404": _ref("DatasetNotFound", "responses"),
                    "409": committed,
                    **_upload_errors(),
                },
            },
        },
        "/datasets/{dataset_id}/commit": {
            "parameters": [dataset_id],
            "post": {
                "operationId": "commitDataset",
                "tags": ["datasets"],
                "summary": "Join the uploaded parts, in order, into a ready dataset.",
                "responses": {
                    "200": {
                        **described,
                        "links": {
                            "SubmitJob": {
                                "operationId": "submitJob",
                                "requestBody": {"dataset_id": "$response.body#/dataset_id", "operations": []},
                            }
                        },
                    },
                    "400": _error(
                        "No parts, or a gap in their numbers (missing_part, naming it); parts whose columns "
                        "disagree (schema_mismatch, naming the part and the column); over a limit "
                        "(limit_exceeded).",
                        ["missing_part", "schema_mismatch", "limit_exceeded"],
                    ),
                    **common,
                    "409": committed,
                    "507": _ref("StorageFull", "responses"),
                },
            },
        },
    }


def _result_content():
    """The body of a result download: one entry per format of ``app.results.FORMATS``."""
    content = {}
    for fmt, (media, _) in results.FORMATS.items():
        media = media.split(";")[0]  # the charset of CSV is a parameter, not another media type
        if fmt == "json":
            content[media] = {"schema": {"type": "array", "items": {"type": "object"}}}
        else:
            content[media] = {"schema": {"type": "string", "format": "binary", "contentMediaType": media}}
    return content


def _result_paths(job_id):
    formats = list(results.FORMATS)
    not_finished = _error("The job has not completed (or it failed or was cancelled).", ["job_not_finished"])
    deleted = _error("The result was deleted (DELETE /jobs/{job_id}/result).", ["result_deleted"])
    common = {
        "401": _ref("Unauthorized", "responses"),
        "404": _ref("JobNotFound", "responses"),
        "409": not_finished,
        "410": deleted,
        "503": _ref("BackendUnavailable", "responses"),
    }
    count = {"type": "integer", "minimum": 0}
    return {
        "parameters": [job_id],
        "get": {
            "operationId": "getJobResult",
            "tags": ["jobs"],
            "summary": "Download a completed job's result, streamed in the format asked for.",
            "description": "The format is `?format=`, else the best match of the `Accept` header among "
            + ", ".join(media for media, _ in results.FORMATS.values())
            + f", else {formats[0]}. CSV cells (and headers) a spreadsheet would run as formulas get a leading "
            "`'` unless `raw=true`.",
            "parameters": [
                {
                    "name": "format",
                    "in": "query",
                    "required": False,
                    "schema": {"enum": formats},
                    "description": "The download format (400 invalid_parameter otherwise).",
                },
                {
                    "name": "offset",
                    "in": "query",
                    "required": False,
                    "schema": {**count, "default": 0},
                    "description": "Rows to skip.",
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": count,
                    "description": "Most rows to return (default: all).",
                },
                {
                    "name": "raw",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "boolean", "default": False},
                    "description": "CSV only: write cells as they are, without the formula guard.",
                },
            ],
            "responses": {
                "200": {
                    "description": "The rows from `offset`, at most `limit` of them.",
                    "headers": {
                        "Content-Disposition": {
                            "required": True,
                            "description": "attachment, with a file name of the job id and the format's extension.",
                            "schema": {"type": "string"},
                        },
                        "X-Result-Rows": {
                            "required": True,
                            "description": "The number of rows in this body.",
                            "schema": _INT,
                        },
                    },
                    "content": _result_content(),
                },
                "400": _error("`format`, `offset`, `limit` or `raw` is not valid.", ["invalid_parameter"]),
                **common,
            },
        },
        "delete": {
            "operationId": "deleteJobResult",
            "tags": ["jobs"],
            "summary": "Free a completed job's result now; afterwards it is 410 result_deleted.",
            "responses": {"204": {"description": "Deleted."}, **common, "507": _ref("StorageFull", "responses")},
        },
    }


def _list_jobs():
    moment = {"type": "string", "format": "date-time"}
    return {
        "operationId": "listJobs",
        "tags": ["jobs"],
        "summary": "The caller's jobs, newest first, a page at a time.",
        "description": "Each item is the job's body without its inline rows. A page filtered by status may hold "
        "fewer than `limit` jobs and still have a `next`.",
        "parameters": [
            {
                "name": "status",
                "in": "query",
                "required": False,
                "description": "Only jobs in these statuses (repeat it, or separate them with commas).",
                "schema": {"type": "array", "items": _ref("JobStatus")},
                "style": "form",
                "explode": True,
            },
            {"name": "created_after", "in": "query", "required": False, "schema": moment,
             "description": "Only jobs created after this moment (ISO 8601; UTC when it names no zone)."},
            {"name": "created_before", "in": "query", "required": False, "schema": moment,
             "description": "Only jobs created before this moment."},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}},
            {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "The `next` of the page before, as it was given."},
        ],
        "responses": {
            "200": {
                "description": "A page of jobs.",
                "headers": {"Link": {"description": 'The next page: `<url>; rel="next"` (absent on the last).',
                                     "schema": {"type": "string"}}},
                "content": _json(_ref("JobList")),
            },
            "400": _error("A query parameter is not valid.", ["invalid_parameter"]),
            "401": _ref("Unauthorized", "responses"),
            "503": _ref("BackendUnavailable", "responses"),
        },
    }


def _paths(config):
    job_id = _id_parameter("job_id", "POST /jobs")
    return {
        "/jobs": {
            "get": _list_jobs(),
            "post": _submit(config, "submitJob", "Submit a job: a dataset and the operations to run over it."),
        },
        "/process": {
            "post": _submit(config, "submitJobLegacy", "The same as POST /jobs: the earlier route, kept for its clients.", True)
        },
        "/jobs/{job_id}": {
            "parameters": [job_id],
            "get": {
                "operationId": "getJob",
                "tags": ["jobs"],
                "summary": "A job's status, progress and timestamps; its data or error once it has ended.",
                "parameters": [
                    _wait_parameter(
                        config,
                        "for the job to end or, with If-None-Match, for its body to change from the one named "
                        "there; when the wait runs out the answer is the body as it is (304 if unchanged)",
                    ),
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "required": False,
                        "description": "The ETag of the body the client has: 304 while it is still current.",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The job.",
                        "headers": {**_ETAG, **_RETRY_AFTER},
                        "content": _json(_ref("Job")),
                    },
                    "304": {
                        "description": "The body named by If-None-Match is still current (when the wait, if any, "
                        "ran out). No body.",
                        "headers": {**_ETAG, **_RETRY_AFTER},
                    },
                    "400": _error("`wait` is not a number of seconds in range.", ["invalid_parameter"]),
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
                        "headers": _ETAG,
                        "content": _json(
                            {"allOf": [_ref("Job"), {"properties": {"status": {"const": JobStatus.CANCELLED.value}}}]}
                        ),
                    },
                    "401": _ref("Unauthorized", "responses"),
                    "404": _ref("JobNotFound", "responses"),
                    "409": _error("The job had already ended.", ["job_finished"]),
                    "503": _ref("BackendUnavailable", "responses"),
                    "507": _ref("StorageFull", "responses"),  # Redis at maxmemory refuses the cancel's write
                },
            },
        },
        "/jobs/{job_id}/result": _result_paths(job_id),
        **_dataset_paths(config),
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
        "/workers": {
            "get": {
                "operationId": "listWorkers",
                "tags": ["meta"],
                "summary": "The live workers (from their heartbeats), what each runs now, and the queue depth.",
                "responses": {
                    "200": {"description": "The workers.", "content": _json(_ref("Workers"))},
                    "401": _ref("Unauthorized", "responses"),
                    "503": _ref("BackendUnavailable", "responses"),
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "tags": ["meta"],
                "summary": "Is Redis reachable, and how many workers are alive (from their heartbeats).",
                "description": "Open to anyone. Each gateway process counts the workers in Redis at most once "
                "per HEALTH_CACHE_SECONDS and answers from that count in between (at once again after a Redis "
                "error). With deep=true it counts afresh, also pings every worker (a broadcast, waiting "
                "HEALTH_PING_TIMEOUT), and then needs a token when API_TOKENS is set.",
                "security": [],
                "parameters": [
                    {
                        "name": "deep",
                        "in": "query",
                        "required": False,
                        "description": "Also ping every worker through the broker.",
                        "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
                    }
                ],
                "responses": {
                    "200": {"description": "Redis answers.", "content": _json(_ref("Health"))},
                    "400": _error("`deep` is not true or false.", ["invalid_parameter"]),
                    "401": _ref("Unauthorized", "responses"),
                    "503": _ref("BackendUnavailable", "responses"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["meta"],
                "summary": "Prometheus figures: jobs submitted, finished, their durations and steps' seconds, jobs "
                "running, queue depth, and this gateway's HTTP requests.",
                "description": "The Prometheus text format. The job figures are every gateway's (kept in Redis); "
                "the request counts this gateway's, all its processes added up. Open to anyone, also with "
                "API_TOKENS set; with METRICS_TOKEN set it needs `Authorization: Bearer <METRICS_TOKEN>` (401).",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The figures.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _error(
                        "The server has METRICS_TOKEN set and the request has no `Authorization: Bearer "
                        "<METRICS_TOKEN>`.",
                        ["unauthorized"],
                        headers={"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
                    ),
                    "503": _ref("BackendUnavailable", "responses"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["meta"],
                "summary": "This document.",
                "description": "Open to anyone, like GET /docs, which reads it: it holds no data.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document.",
                        "content": _json({"type": "object", "required": ["openapi", "info", "paths"]}),
                    },
                },
            }
        },
        **_docs_paths(),
        **_dashboard_paths(),
    }


def _docs_paths():
    """``GET /docs`` and its Swagger UI files (``app/docs.py``): open to anyone, like this document."""
    files = docs.served_files()
    return {
        "/docs": {
            "get": {
                "operationId": "docs",
                "tags": ["meta"],
                "summary": "Interactive docs of this API (Swagger UI over GET /openapi.json).",
                "description": "An HTML page; its scripts and styles come from /docs/{filename}, nothing from another "
                "host. Its Authorize button takes a token for the calls made with \"Try it out\".",
                "security": [],
                "responses": {
                    "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/docs/{filename}": _files_path("docsAsset", "A file of Swagger UI, for GET /docs.", files),
    }


def _dashboard_paths():
    """``GET /`` and its files (``app/dashboard.py``): open to anyone; the page asks for a token itself."""
    files = dashboard.served_files()
    return {
        "/": {
            "get": {
                "operationId": "dashboard",
                "tags": ["meta"],
                "summary": "The operator's dashboard: jobs, their progress and detail, the workers (an HTML page).",
                "description": "Its script and style come from /dashboard/{filename}, nothing from another host; "
                "it shows what GET /jobs, GET /jobs/{job_id} and GET /workers answer, and cancels with DELETE "
                "/jobs/{job_id}. With API_TOKENS set it asks for a token and sends it with each of those calls.",
                "security": [],
                "responses": {
                    "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/dashboard/{filename}": _files_path("dashboardAsset", "A file of the dashboard, for GET /.", files),
    }


def _files_path(operation_id, summary, files):
    """The path of a page's own files, open to anyone: ``files`` is ``{name: media type}``, all it serves."""
    return {
        "get": {
            "operationId": operation_id,
            "tags": ["meta"],
            "summary": summary,
            "security": [],
            "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"enum": list(files)}}],
            "responses": {
                "200": {
                    "description": "The file.",
                    "content": {media: {"schema": {"type": "string"}} for media in sorted(set(files.values()))},
                },
                "404": _error("No such file.", ["not_found"]),
            },
        }
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
            "description": "Upload a dataset (or send its records inline) and a list of named operations; follow "
            "the job; download the result. "
            "Every error is `{\"error\": {\"code\", \"message\", \"details\"}}`: an unknown path is 404 not_found, "
            "a method a path does not have is 405 method_not_allowed. Bearer tokens are required only when the "
            "server is configured with API_TOKENS; /health, /docs and this document never need one.",
        },
        "tags": [
            {"name": "jobs", "description": "Submit, follow and cancel jobs; download their results."},
            {"name": "datasets", "description": "Upload files (whole, or in parts) for jobs to run over."},
            {"name": "operations", "description": "What a job can do."},
            {"name": "meta", "description": "Health and this document."},
        ],
        "paths": _paths(config),
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
