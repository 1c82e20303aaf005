"""Read and validate a job submission, before anything is stored or enqueued.

Limits (settings ``MAX_RECORDS``, ``MAX_OPERATIONS``, ``MAX_STRING_LENGTH``,
``MAX_JSON_DEPTH``; ``MAX_CONTENT_LENGTH`` is Flask's, a 413) are checked here
too, so an oversized job is refused with a 400 naming the limit and where it
was exceeded, and never quotes the offending value.
"""

import json
import math
from typing import NamedTuple

from flask import request
from jsonschema import Draft202012Validator

from workers import pipeline
from workers.errors import InvalidRequest

#: The request body of ``POST /jobs``. Records are checked by :func:`read_job`
#: itself: a per-record schema pass over a million records would dominate submit time.
JOB_SCHEMA = {
    "type": "object",
    "properties": {
        "dataset": {"type": "array", "description": "The records to process: a list of JSON objects."},
        "dataset_id": {
            "type": "string",
            "description": "Or the id of a dataset uploaded with POST /datasets (ready, and this token's).",
        },
        "operations": {
            "type": "array",
            "description": "Steps, in order: an operation name, or {\"name\": ..., \"params\": {...}}.",
        },
    },
    "required": ["operations"],
    "oneOf": [{"required": ["dataset"]}, {"required": ["dataset_id"]}],
    "additionalProperties": False,
}
_validator = Draft202012Validator(JOB_SCHEMA)


class JobRequest(NamedTuple):
    """A submission that passed :func:`read_job`: inline ``dataset`` records or a ``dataset_id``, and its steps."""

    dataset: list | None
    dataset_id: str | None
    steps: list


def read_job(request, limits):
    """Return a :class:`JobRequest` from a Flask request, or raise an ``InvalidRequest``/``ParameterError``.

    Checks, in order: content type, JSON syntax, the body's shape, the limits in
    ``limits`` (the app config), every record, every operation and its
    parameters. The columns each step names (and their types) are checked by
    the caller with :func:`~workers.pipeline.check_columns`, once it knows the
    dataset's schema.
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
    except RecursionError:  # nested far deeper than any limit: the parser gave up
        raise too_deep(limits["MAX_JSON_DEPTH"], None) from None

    error = next(iter(_validator.iter_errors(body)), None)
    if error is not None:
        field = _field(error)
        code = {"dataset": "invalid_dataset", "operations": "invalid_operations"}.get(field, "invalid_body")
        raise InvalidRequest(code, _describe(error), field=field)

    dataset, operations = body.get("dataset"), body["operations"]
    if dataset is None:
        _check_nesting(operations, 2, limits["MAX_STRING_LENGTH"], limits["MAX_JSON_DEPTH"], "'operations'",
                       field="operations")
        _check_count("operations", "operations", len(operations), limits["MAX_OPERATIONS"], "MAX_OPERATIONS")
        return JobRequest(None, body["dataset_id"], pipeline.parse_steps(operations))
    _check_count("dataset", "records", len(dataset), limits["MAX_RECORDS"], "MAX_RECORDS")
    _check_count("operations", "operations", len(operations), limits["MAX_OPERATIONS"], "MAX_OPERATIONS")
    max_length, max_depth = limits["MAX_STRING_LENGTH"], limits["MAX_JSON_DEPTH"]
    for index, record in enumerate(dataset):
        if not isinstance(record, dict):
            raise InvalidRequest(
                "invalid_dataset",
                f"'dataset' must be a list of objects; item {index} is a {type(record).__name__}.",
                field="dataset",
                index=index,
            )
        # Inlined for flat records, the common case: a million of them take one pass.
        for key, value in record.items():
            if len(key) > max_length or (type(value) is str and len(value) > max_length):
                raise too_long(max_length, f"dataset item {index}", field="dataset", index=index)
            if type(value) is dict or type(value) is list:
                _check_nesting(value, 4, max_length, max_depth, f"dataset item {index}", field="dataset", index=index)
    _check_nesting(operations, 2, max_length, max_depth, "'operations'", field="operations")
    return JobRequest(dataset, None, pipeline.parse_steps(operations))


def _check_count(field, what, count, limit, setting):
    if count > limit:
        raise InvalidRequest(
            "limit_exceeded",
            f"'{field}' has {count} {what}; the limit is {limit} ({setting}).",
            field=field,
            limit=setting,
            maximum=limit,
        )


def _check_nesting(value, depth, max_length, max_depth, where, **details):
    """Walk ``value`` (at nesting ``depth``; the body itself is 1) for too-long strings and too-deep nesting."""
    stack = [(value, depth)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise too_deep(max_depth, where, **details)
        for key, item in node.items() if type(node) is dict else enumerate(node):
            if (type(key) is str and len(key) > max_length) or (type(item) is str and len(item) > max_length):
                raise too_long(max_length, where, **details)
            if type(item) is dict or type(item) is list:
                stack.append((item, depth + 1))


def too_long(limit, where, **details):
    return InvalidRequest(
        "limit_exceeded",
        f"A string in {where} is longer than the limit of {limit} characters (MAX_STRING_LENGTH).",
        limit="MAX_STRING_LENGTH",
        maximum=limit,
        **details,
    )


def too_deep(limit, where, **details):
    return InvalidRequest(
        "limit_exceeded",
        f"The request body nests arrays and objects{f' in {where}' if where else ''} deeper than the limit of "
        f"{limit} levels (MAX_JSON_DEPTH).",
        limit="MAX_JSON_DEPTH",
        maximum=limit,
        **details,
    )


def _field(error):
    if error.validator == "required":
        return error.message.split("'")[1]
    if error.validator == "additionalProperties":
        return None
    return ".".join(str(p) for p in error.absolute_path) or None


def _describe(error):
    if error.validator == "type" and not error.absolute_path:
        return "The request body must be a JSON object with 'dataset' (or 'dataset_id') and 'operations'."
    if error.validator == "type":
        wanted = "a string" if error.absolute_path[0] == "dataset_id" else "a list"
        return f"'{error.absolute_path[0]}' must be {wanted}."
    if error.validator == "required":
        return f"The request body is missing '{_field(error)}'."
    if error.validator == "additionalProperties":
        return "The request body has unexpected keys; a job has only 'dataset' (or 'dataset_id') and 'operations'."
    if error.validator == "oneOf":
        return "The request body must have exactly one of 'dataset' (inline records) and 'dataset_id'."
    return error.message


# --- query parameters: each refused with 400 invalid_parameter naming it ----------------


def query_count(name, default):
    """Query parameter ``name`` as a whole number >= 0, or ``default`` when it is absent."""
    text = request.args.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()):  # isdigit() alone passes '²', which int() refuses
        raise InvalidRequest(
            "invalid_parameter", f"The '{name}' query parameter must be a whole number >= 0.", parameter=name
        )
    return int(text)


def query_flag(name):
    """Query parameter ``name`` as true or false (``1``/``0`` too); false when it is absent."""
    text = request.args.get(name, "false").lower()
    if text not in ("true", "false", "1", "0"):
        raise InvalidRequest("invalid_parameter", f"The '{name}' query parameter must be true or false.",
                             parameter=name)
    return text in ("true", "1")


def query_seconds(name, limit, setting):
    """Query parameter ``name`` as seconds above 0 and at most ``limit`` (the ``setting``), or None when absent."""
    text = request.args.get(name)
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= limit:  # also refuses nan
        raise InvalidRequest(
            "invalid_parameter",
            f"The '{name}' query parameter must be a number of seconds above 0 and at most {limit:g} ({setting}).",
            parameter=name,
        )
    return seconds
