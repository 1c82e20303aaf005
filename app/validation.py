"""Read and validate a job submission, before anything is stored or enqueued."""

import json

from jsonschema import Draft202012Validator

from workers import frames, pipeline
from workers.errors import InvalidRequest

#: The request body of ``POST /jobs``. Records are checked by :func:`read_job`
#: itself: a per-record schema pass over a million records would dominate submit time.
JOB_SCHEMA = {
    "type": "object",
    "properties": {
        "dataset": {"type": "array", "description": "The records to process: a list of JSON objects."},
        "operations": {
            "type": "array",
            "description": "Steps, in order: an operation name, or {\"name\": ..., \"params\": {...}}.",
        },
    },
    "required": ["dataset", "operations"],
    "additionalProperties": False,
}
_validator = Draft202012Validator(JOB_SCHEMA)


def read_job(request):
    """Return ``(dataset, steps)`` from a Flask request, or raise an ``InvalidRequest``/``ParameterError``.

    Checks, in order: content type, JSON syntax, the body's shape, every record,
    every operation and its parameters, and the columns each step names given
    the steps before it.
    """
    if not request.is_json:
        raise InvalidRequest(
            "unsupported_media_type", "The request body must be JSON (Content-Type: application/json).", status=415
        )
    try:
        body = json.loads(request.get_data())
    except (ValueError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise InvalidRequest("invalid_json", f"The request body is not valid JSON{where}.") from None

    error = next(iter(_validator.iter_errors(body)), None)
    if error is not None:
        field = _field(error)
        code = {"dataset": "invalid_dataset", "operations": "invalid_operations"}.get(field, "invalid_body")
        raise InvalidRequest(code, _describe(error), field=field)

    dataset = body["dataset"]
    for index, record in enumerate(dataset):
        if not isinstance(record, dict):
            raise InvalidRequest(
                "invalid_dataset",
                f"'dataset' must be a list of objects; item {index} is a {type(record).__name__}.",
                field="dataset",
                index=index,
            )
    steps = pipeline.parse_steps(body["operations"])
    pipeline.check_columns(steps, frames.columns_of(dataset))
    return dataset, steps


def _field(error):
    if error.validator == "required":
        return error.message.split("'")[1]
    if error.validator == "additionalProperties":
        return None
    return ".".join(str(p) for p in error.absolute_path) or None


def _describe(error):
    if error.validator == "type" and not error.absolute_path:
        return "The request body must be a JSON object with 'dataset' and 'operations'."
    if error.validator == "type":
        return f"'{error.absolute_path[0]}' must be a list."
    if error.validator == "required":
        return f"The request body is missing '{_field(error)}'."
    if error.validator == "additionalProperties":
        return "The request body has unexpected keys; a job has only 'dataset' and 'operations'."
    return error.message
