"""Parsing, dry-running and running a pipeline of operations."""

import dataclasses

import pandas as pd
import pytest

from workers import pipeline
from workers.errors import ColumnNotFound, InvalidRequest, MissingParameter, StepFailed, UnknownOperation


def test_bare_names_and_objects_parse_to_steps():
    steps = pipeline.parse_steps(["drop_nulls", {"name": "limit", "params": {"n": 2}}, {"name": "deduplicate"}])
    assert [(s.index, s.name, s.params) for s in steps] == [(0, "drop_nulls", {}), (1, "limit", {"n": 2}), (2, "deduplicate", {})]
    assert steps[1].to_json() == {"name": "limit", "params": {"n": 2}}


def test_errors_carry_the_step_index():
    with pytest.raises(UnknownOperation) as exc:
        pipeline.parse_steps(["drop_nulls", "nope"])
    assert exc.value.details["step"] == 1
    with pytest.raises(MissingParameter) as exc:
        pipeline.parse_steps(["drop_nulls", "drop_nulls", "limit"])
    assert exc.value.details == {"step": 2, "operation": "limit", "parameter": "n"}
    assert exc.value.message == "Step 2 (limit): The 'n' parameter of limit is required."
    with pytest.raises(InvalidRequest):
        pipeline.parse_steps({"name": "limit"})


def test_check_columns_follows_columns_through_the_steps():
    steps = pipeline.parse_steps([
        {"name": "rename_columns", "params": {"mapping": {"a": "b"}}},
        {"name": "add_column", "params": {"name": "c", "value": 1}},
        {"name": "select_columns", "params": {"columns": ["b", "c"]}},
    ])
    pipeline.check_columns(steps, ["a"])  # no error: b and c exist by then
    with pytest.raises(ColumnNotFound) as exc:
        pipeline.check_columns(steps, ["x"])
    assert exc.value.details["step"] == 0 and "'a'" in exc.value.message


def test_run_reports_progress_before_and_after_every_step_and_returns_stats():
    calls = []
    steps = pipeline.parse_steps(["drop_nulls", {"name": "limit", "params": {"n": 1}}])
    out, stats = pipeline.run(pd.DataFrame({"a": [1, None, 3]}), steps, lambda d, c: calls.append((d, c)))
    assert calls == [(0, "drop_nulls"), (1, "limit"), (2, None)]
    assert out["a"].tolist() == [1]
    assert [(s["name"], s["rows_in"], s["rows_out"]) for s in stats] == [("drop_nulls", 3, 2), ("limit", 2, 1)]
    assert all(s["seconds"] >= 0 for s in stats)


def test_a_step_that_raises_on_the_data_becomes_step_failed_with_its_index():
    steps = pipeline.parse_steps(["drop_nulls", {"name": "cast_types", "params": {"types": {"a": "int"}}}])
    with pytest.raises(StepFailed) as exc:
        pipeline.run(pd.DataFrame({"a": ["1", "secret-value"]}), steps)
    error = exc.value.to_json()
    assert error["operation_index"] == 1 and error["type"] == "invalid_parameter"
    assert error["message"].startswith("Step 1 (cast_types):") and "secret-value" not in error["message"]


def test_an_unexpected_exception_is_reported_without_its_text():
    def boom(df, **params):
        raise ZeroDivisionError("internal detail")

    operation = dataclasses.replace(pipeline.parse_steps(["drop_nulls"])[0].operation, func=boom)
    step = pipeline.Step(0, operation, {})
    with pytest.raises(StepFailed) as exc:
        pipeline.run(pd.DataFrame({"a": [1]}), [step])
    assert exc.value.to_json()["type"] == "operation_failed"
    assert "ZeroDivisionError" in exc.value.message and "internal detail" not in exc.value.message
