"""A job's operations as a pipeline: parse, check against the columns, run.

The gateway calls :func:`parse_steps` and :func:`check_columns` before it
accepts a job; the worker calls :func:`parse_steps` and :func:`run`. Both use
the same registry, so what the gateway accepts is what the worker runs.
"""

import collections
import json
import logging
import threading
import time
from dataclasses import dataclass

import pyarrow as pa

from workers import frames, limits
from workers.errors import InvalidRequest, ParameterError, StepFailed, UnknownOperation
from workers.operations import REGISTRY, Operation

log = logging.getLogger(__name__)

#: The error type of a job stopped by ``MAX_OUTPUT_ROWS``.
LIMIT_EXCEEDED = "limit_exceeded"


@dataclass(frozen=True)
class Step:
    index: int
    operation: Operation
    params: dict

    @property
    def name(self):
        return self.operation.name

    def to_json(self):
        return {"name": self.name, "params": self.params}


def parse_steps(operations, registry=REGISTRY):
    """Turn the API's ``operations`` list into validated :class:`Step` objects.

    Each item is an operation name or ``{"name": ..., "params": {...}}``.
    Raises :class:`InvalidRequest`, :class:`UnknownOperation` or a
    :class:`ParameterError`, each naming the step index and, where it applies,
    the parameter.
    """
    if not isinstance(operations, list):
        raise InvalidRequest("invalid_operations", "'operations' must be a list of operations.", field="operations")
    steps = []
    for index, item in enumerate(operations):
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, dict):
            name, params = item.get("name"), item.get("params", {})
            extra = sorted(set(item) - {"name", "params"})
            if not isinstance(name, str):
                raise InvalidRequest(
                    "invalid_operations", f"Step {index}: 'name' must be a string.", step=index, field="name"
                )
            if extra:
                raise InvalidRequest(
                    "invalid_operations",
                    f"Step {index} ({name}): unexpected key {extra[0]!r}; a step has only 'name' and 'params'.",
                    step=index,
                    operation=name,
                    field=extra[0],
                )
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise InvalidRequest(
                    "invalid_operations",
                    f"Step {index} ({name}): 'params' must be an object.",
                    step=index,
                    operation=name,
                    field="params",
                )
        else:
            raise InvalidRequest(
                "invalid_operations",
                f"Step {index}: an operation is a name or an object with 'name' and 'params'.",
                step=index,
            )
        try:
            operation = registry[name]
            operation.validate(params)
        except UnknownOperation as exc:
            raise exc.at(index) from None
        except ParameterError as exc:
            raise exc.at(index, name) from None
        steps.append(Step(index, operation, params))
    return steps


@dataclass(frozen=True)
class Segment:
    """A run of steps that executes as one unit: row-local ones on every chunk apart, or one global step."""

    steps: tuple
    row_local: bool

    @property
    def first(self):
        return self.steps[0].index if self.steps else 0


def segments(steps):
    """Split ``steps`` into :class:`Segment` objects: each run of row-local steps, and each global step alone.

    A pipeline with no steps is one empty row-local segment (the data passes through).
    """
    out, run = [], []
    for step in steps:
        if step.operation.row_local:
            run.append(step)
            continue
        if run:
            out.append(Segment(tuple(run), True))
            run = []
        out.append(Segment((step,), False))
    if run or not out:
        out.append(Segment(tuple(run), True))
    return out


def check_columns(steps, schema):
    """Dry-run ``steps`` on an empty frame with the dataset's columns and types to find errors early.

    ``schema`` is the dataset's Arrow schema (or a list of column names, untyped).
    Every operation runs on the zero-row frame exactly as it will on the data,
    so a step that names a column that will not exist at that step (given the
    steps before it), or compares a number column with text, raises a
    :class:`ParameterError` here, before anything is stored. Only parameter
    errors count: anything else is left for the worker.

    Operations are pure functions of their frame, so a pipeline that passed on a schema passes
    on it again: the :data:`CHECKED_CACHE` most recent such pairs are remembered, and a client
    sending the same pipeline over the same columns pays the dry run once.
    """
    key = _check_key(steps, schema)
    with _checked_lock:
        if key in _checked:
            _checked.move_to_end(key)
            return
    _dry_run(steps, schema)
    with _checked_lock:
        _checked[key] = True
        if len(_checked) > CHECKED_CACHE:
            _checked.popitem(last=False)


#: How many (pipeline, schema) pairs :func:`check_columns` remembers as checked, per process.
CHECKED_CACHE = 1024
_checked = collections.OrderedDict()
_checked_lock = threading.Lock()


def _check_key(steps, schema):
    # The whole schema, metadata included (how a mixed column is encoded is field metadata).
    shape = schema.serialize().to_pybytes() if isinstance(schema, pa.Schema) else tuple(schema)
    return json.dumps([step.to_json() for step in steps], sort_keys=True), shape


def _dry_run(steps, schema):
    for _ in _frames_after(steps, schema):
        pass


def _frames_after(steps, schema):
    """Yield the zero-row frame after each step of ``steps`` run on ``schema``'s columns; stop at a step whose
    outcome depends on the data. Raises the first :class:`ParameterError`, placed at its step."""
    df = frames.empty_frame(schema)
    for step in steps:
        try:
            df = step.operation(df, **step.params)
        except ParameterError as exc:
            raise exc.at(step.index, step.name) from None
        except Exception:  # noqa: BLE001 - data-dependent; the worker will report it with the data
            log.debug("dry run stopped at step %d (%s)", step.index, step.name, exc_info=True)
            return
        yield df


def plan(steps, schema):
    """The columns (``[{"name", "type"}]``) after each of ``steps`` on a dataset of ``schema``, as
    :func:`check_columns` finds them; None from the first step whose outcome depends on the data.
    Raises what :func:`check_columns` raises."""
    after = [frames.describe_columns(frames.frame_to_table(df).schema) for df in _frames_after(steps, schema)]
    return after + [None] * (len(steps) - len(after))


def run(df, steps, on_progress=None, interrupts=(), max_rows=None):
    """Apply ``steps`` to ``df`` in order; return ``(frame, stats)``.

    ``on_progress(done, current)`` is called before the first step and after
    every step, ``current`` naming the step about to run (None at the end); it
    may raise to stop the pipeline between steps.
    ``stats`` holds ``{"name", "rows_in", "rows_out", "seconds"}`` per step.
    ``max_rows`` caps the rows any step may make (``MAX_OUTPUT_ROWS``): it is in
    force while the steps run, so an operation that can multiply rows refuses
    before it makes them (``limits.check_output_rows``), and every step's output
    is checked against it after the step.
    Raises :class:`StepFailed` (with ``__cause__`` set) when a step raises, of
    type ``limit_exceeded`` when it passes ``max_rows``, except for the
    exception types in ``interrupts`` (a time limit, say), which pass through
    unchanged.
    """
    stats = []
    with limits.output_rows(max_rows):
        for step in steps:
            if on_progress:
                on_progress(step.index, step.name)
            rows_in, started = len(df), time.perf_counter()
            try:
                df = step.operation(df, **step.params)
            except ParameterError as exc:
                placed = exc.at(step.index, step.name)
                raise StepFailed(step.index, step.name, placed.message, placed.code) from exc
            except interrupts:
                raise
            except limits.OutputLimitExceeded as exc:
                message = limits.message(step.index, step.name, exc.rows, exc.limit)
                raise StepFailed(step.index, step.name, message, LIMIT_EXCEEDED) from None
            except Exception as exc:
                message = f"Step {step.index} ({step.name}) failed with an unexpected {type(exc).__name__}."
                raise StepFailed(step.index, step.name, message) from exc
            if max_rows is not None and len(df) > max_rows:
                # The backstop, for a step that could not tell before (a global step, an extension's).
                message = limits.message(step.index, step.name, len(df), max_rows, made=True)
                raise StepFailed(step.index, step.name, message, LIMIT_EXCEEDED)
            seconds = round(time.perf_counter() - started, 6)
            stats.append({"name": step.name, "rows_in": rows_in, "rows_out": len(df), "seconds": seconds})
    if on_progress and steps:
        on_progress(steps[-1].index + 1, None)
    return df, stats
