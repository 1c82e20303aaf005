"""The operation registry: named, pure ``op(df, **params) -> DataFrame`` functions.

An operation is registered with :func:`operation`, which takes the JSON Schema
of each parameter. At registration the schema's parameter names must match the
function's keyword parameters exactly, and parameters without a default in the
signature are the required ones, so the catalogue can never drift from the code.
"""

import inspect
import json
from dataclasses import dataclass, field

from jsonschema import Draft202012Validator

from workers.errors import ColumnNotFound, MissingParameter, ParameterError, UnexpectedParameter, UnknownOperation

_JSON_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
}


@dataclass(frozen=True)
class Operation:
    """One registered operation."""

    name: str
    func: object
    params: dict  # parameter name -> JSON Schema
    required: tuple
    defaults: dict
    description: str
    validator: Draft202012Validator = field(repr=False, compare=False)
    #: True when the operation may run on any slice of the rows alone, so a job's
    #: chunks can run it in parallel; False (global) when it needs every row at once.
    row_local: bool = False

    @property
    def schema(self):
        """JSON Schema of this operation's ``params`` object."""
        properties = {}
        for name, schema in self.params.items():
            properties[name] = dict(schema)
            if name in self.defaults:
                properties[name]["default"] = self.defaults[name]
        return {
            "type": "object",
            "properties": properties,
            "required": list(self.required),
            "additionalProperties": False,
        }

    def describe(self):
        """The catalogue entry served by ``GET /operations``."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": self.schema,
            "row_local": self.row_local,
        }

    def validate(self, params):
        """Check ``params`` against this operation's schema.

        Raises the :class:`~workers.errors.ParameterError` subclass that fits the
        first problem found, without step context (the pipeline adds it).
        """
        for name in params:
            if name not in self.params:
                raise UnexpectedParameter(name)
        for name in self.required:
            if name not in params:
                raise MissingParameter(name)
        for name, value in params.items():
            error = next(iter(self.validator.evolve(schema=self.params[name]).iter_errors(value)), None)
            if error is not None:
                raise ParameterError(name, _problem(error, value))

    def __call__(self, df, **params):
        return self.func(df, **params)


def _show(value, limit=40):
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _problem(error, value):
    """Turn a jsonschema error into the rest of "The 'p' parameter of op ..."."""
    where = "".join(f"[{p!r}]" for p in error.absolute_path)
    got = f" Got {_show(error.instance)} instead."
    kind = error.validator
    if kind == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        wanted = " or ".join(_JSON_TYPE_NAMES.get(t, t) for t in types)
        text = f"must be {wanted}."
    elif kind == "enum":
        text = "must be one of " + ", ".join(_show(v) for v in error.validator_value) + "."
    elif kind == "minimum":
        text = f"must be >= {error.validator_value}."
    elif kind == "maximum":
        text = f"must be <= {error.validator_value}."
    elif kind == "exclusiveMinimum":
        text = f"must be > {error.validator_value}."
    elif kind == "minItems":
        text = f"must have at least {error.validator_value} item(s)."
    elif kind == "minProperties":
        text = f"must have at least {error.validator_value} entr{'y' if error.validator_value == 1 else 'ies'}."
    elif kind == "minLength":
        text = "must not be empty."
    elif kind == "uniqueItems":
        text = "must not repeat an item."
    else:
        text = error.message.rstrip(".") + "."
        got = ""
    return f"at {where} {text}{got}" if where else f"{text}{got}"


def require_columns(df, columns, parameter):
    """Raise :class:`~workers.errors.ColumnNotFound` unless ``df`` has every column in ``columns``.

    ``columns`` is one name or a list of names; ``parameter`` is the parameter that named them.
    """
    names = [columns] if isinstance(columns, str) else list(columns)
    missing = [c for c in names if c not in df.columns]
    if missing:
        available = ", ".join(repr(c) for c in df.columns) or "none"
        listed = ", ".join(repr(c) for c in missing)
        raise ColumnNotFound(
            parameter,
            f"names column{'s' if len(missing) > 1 else ''} {listed}, which does not exist at this step. "
            f"Columns: {available}.",
        )


class Registry(dict):
    """Operations by name; a miss raises :class:`~workers.errors.UnknownOperation`."""

    def __missing__(self, name):
        raise UnknownOperation(name)

    def catalogue(self):
        return [op.describe() for op in sorted(self.values(), key=lambda op: op.name)]


REGISTRY = Registry()


def operation(params=None, *, name=None, row_local=False, registry=REGISTRY):
    """Register ``func(df, **params)`` as an operation.

    ``params`` maps each keyword parameter of ``func`` to its JSON Schema. The
    first line of the docstring is the catalogue description. ``row_local``
    declares that the operation gives the same rows when run on any split of
    the frame and the pieces joined in order (a filter, a column change), so a
    job runs it on every chunk in parallel; the default, global, runs it once
    over all the rows (sort, deduplicate, limit, sample): always correct, never spread.

    Raises :class:`ValueError` when the name is taken or the schema and the
    signature disagree.
    """
    params = dict(params or {})

    def decorate(func):
        op_name = name or func.__name__
        if op_name in registry:
            raise ValueError(f"operation {op_name!r} is already registered")
        signature = list(inspect.signature(func).parameters.values())
        if not signature or signature[0].kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:
            raise ValueError(f"operation {op_name!r} must take the frame as its first argument")
        keywords = {p.name: p for p in signature[1:]}
        if set(keywords) != set(params):
            raise ValueError(
                f"operation {op_name!r}: schema names {sorted(params)} but the signature takes {sorted(keywords)}"
            )
        for schema in params.values():
            Draft202012Validator.check_schema(schema)
        doc = inspect.getdoc(func)
        if not doc:
            raise ValueError(f"operation {op_name!r} needs a docstring: it is the catalogue description")
        registry[op_name] = Operation(
            name=op_name,
            func=func,
            params=params,
            required=tuple(n for n, p in keywords.items() if p.default is inspect.Parameter.empty),
            defaults={n: p.default for n, p in keywords.items() if p.default is not inspect.Parameter.empty},
            description=doc.splitlines()[0],
            validator=Draft202012Validator({}),
            row_local=bool(row_local),
        )
        return func

    return decorate
