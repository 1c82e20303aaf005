"""Operation specs as the user writes them, and the catalogue as the user reads it.

A job's operations are a list in the gateway's format: each item is an operation
name, or ``{"name": ..., "params": {...}}``. On the command line an operation is
``NAME`` or ``NAME:{"param": value}`` (JSON object after the first colon).
"""

import json

from harvester.errors import InputError


def parse_op(spec):
    """Parse one ``--op`` value into ``{"name", "params"}``.

    ``drop_nulls`` gives ``{"name": "drop_nulls", "params": {}}``;
    ``filter_rows:{"column": "a:b", "op": ">", "value": 3}`` splits at the first
    colon only, so colons inside the JSON are kept.

    Raises:
        InputError: empty name, invalid JSON, or params that are not a JSON object.
    """
    name, colon, params_text = spec.partition(":")
    name = name.strip()
    if not name:
        raise InputError(f"Operation {spec!r} has no name. Write NAME or NAME:{{\"param\": value}}.")
    if not colon:
        return {"name": name, "params": {}}
    try:
        params = json.loads(params_text)
    except ValueError as exc:
        raise InputError(
            f"The parameters of operation {name!r} are not valid JSON ({exc}). "
            f"Write them as a JSON object, e.g. {name}:{{\"column\": \"price\"}}."
        ) from None
    if not isinstance(params, dict):
        raise InputError(
            f"The parameters of operation {name!r} must be a JSON object. Got {params_text.strip()!r} instead."
        )
    return {"name": name, "params": params}


def load_operations(path):
    """Read an operations file: a JSON list in the gateway's format. Return the list.

    Raises:
        InputError: the file cannot be read, is not JSON, or is not a list of
            names and ``{"name", "params"}`` objects.
    """
    try:
        with open(path, encoding="utf-8") as f:
            operations = json.load(f)
    except OSError as exc:
        raise InputError(f"Cannot read operations file {path}: {exc.strerror}.") from None
    except ValueError as exc:
        raise InputError(f"Operations file {path} is not valid JSON: {exc}.") from None
    if not isinstance(operations, list):
        raise InputError(f"Operations file {path} must hold a JSON list of operations.")
    for index, operation in enumerate(operations):
        _check_operation(operation, f"Item {index} of {path}")
    return operations


def _check_operation(operation, where):
    if isinstance(operation, str) and operation:
        return
    if not isinstance(operation, dict):
        raise InputError(f"{where} must be an operation name or an object with \"name\" and \"params\".")
    if not isinstance(operation.get("name"), str) or not operation["name"]:
        raise InputError(f"{where} must have a \"name\" that is a non-empty string.")
    if not isinstance(operation.get("params", {}), dict):
        raise InputError(f"The \"params\" of {where} must be a JSON object.")


def operation_name(operation):
    """Return the name of an operation given as a name or as ``{"name", "params"}``."""
    return operation if isinstance(operation, str) else operation.get("name")
