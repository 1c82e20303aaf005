"""The built-in operations: the contract every registered operation keeps, then each one's behaviour."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from jsonschema import Draft202012Validator

from workers.errors import ColumnNotFound, ParameterError
from workers.operations import REGISTRY


def mixed_frame():
    """Every kind of column a job's dataset arrives with, with nulls and non-ASCII text."""
    return pd.DataFrame(
        {
            "id": np.array([1, 2, 3, 4], dtype="int64"),
            "score": pd.array([10, None, 30, 5], dtype="Int64"),
            "price": [1.5, None, 2.0, -1.0],
            "text": ["Café", None, "ｆｕｌｌ  width", "emoji 🎉 <b>x</b>"],
            "flag": [True, False, True, False],
            "when": ["2024-01-31", "2024-02-01T10:00:00", None, "2023-12-31"],
        }
    )


def empty_frame():
    """The frame the gateway dry-runs a pipeline on: the columns, no rows, object dtype."""
    return pd.DataFrame(columns=list(mixed_frame().columns))


def run(name, df, /, **params):
    """Validate ``params`` like the pipeline does, then apply the operation."""
    op = REGISTRY[name]
    op.validate(params)
    return op(df, **params)


# One valid params dict per operation, for mixed_frame().
GOOD_PARAMS = {
    "select_columns": {"columns": ["text", "id"]},
    "drop_columns": {"columns": ["price"]},
    "rename_columns": {"mapping": {"text": "body"}},
    "drop_nulls": {"columns": ["score"]},
    "fill_nulls": {"value": 0},
    "deduplicate": {"columns": ["flag"]},
    "filter_rows": {"column": "text", "operator": "contains", "value": "É", "case_sensitive": False},
    "normalize_text": {"columns": ["text"], "lowercase": True, "strip_html": True, "remove_accents": True},
    "cast_types": {"types": {"score": "float", "when": "datetime", "flag": "str", "id": "bool"}, "errors": "coerce"},
    "sort": {"by": ["flag", "score"], "ascending": [True, False]},
    "limit": {"n": 2},
    "sample": {"n": 3, "seed": 1},
    "chunk_text": {"column": "text", "size": 3, "overlap": 1},
    "add_column": {"name": "source", "value": "crawl"},
    "text_length": {"column": "text", "into": "length"},
}

# One bad params dict per operation, and the parameter its error must name.
BAD_PARAMS = {
    "select_columns": ({"columns": []}, "columns"),
    "drop_columns": ({"columns": "text"}, "columns"),
    "rename_columns": ({"mapping": {}}, "mapping"),
    "drop_nulls": ({"how": "some"}, "how"),
    "fill_nulls": ({"value": 0, "values": {"text": ""}}, "values"),
    "deduplicate": ({"keep": "none"}, "keep"),
    "filter_rows": ({"column": "text", "operator": "like", "value": "x"}, "operator"),
    "normalize_text": ({"columns": ["text"], "unicode_form": "NFX"}, "unicode_form"),
    "cast_types": ({"types": {"text": "decimal"}}, "types"),
    "sort": ({"by": ["id", "score"], "ascending": [True]}, "ascending"),
    "limit": ({"n": -1}, "n"),
    "sample": ({"n": 1, "frac": 0.5}, "frac"),
    "chunk_text": ({"column": "text", "size": 3, "overlap": 3}, "overlap"),
    "add_column": ({"name": "text", "value": 1}, "name"),
    "text_length": ({"column": "text", "into": "id"}, "into"),
}

# For each operation that takes columns: params naming the column "nope", and the parameter that names it.
MISSING_COLUMN = {
    "select_columns": ({"columns": ["id", "nope"]}, "columns"),
    "drop_columns": ({"columns": ["nope"]}, "columns"),
    "rename_columns": ({"mapping": {"nope": "other"}}, "mapping"),
    "drop_nulls": ({"columns": ["nope"]}, "columns"),
    "fill_nulls": ({"values": {"nope": 1}}, "values"),
    "deduplicate": ({"columns": ["nope"]}, "columns"),
    "filter_rows": ({"column": "nope", "operator": "is_null"}, "column"),
    "normalize_text": ({"columns": ["text", "nope"]}, "columns"),
    "cast_types": ({"types": {"nope": "int"}}, "types"),
    "sort": ({"by": "nope"}, "by"),
    "chunk_text": ({"column": "nope", "size": 5}, "column"),
    "text_length": ({"column": "nope", "into": "length"}, "column"),
}
TAKES_NO_COLUMN = {"limit", "sample", "add_column"}

ALL_OPS = sorted(REGISTRY)


# --- the contract of every operation ------------------------------------------------


@pytest.mark.parametrize("table", [GOOD_PARAMS, BAD_PARAMS, {**MISSING_COLUMN, **dict.fromkeys(TAKES_NO_COLUMN)}])
def test_tables_cover_every_registered_operation(table):
    assert sorted(table) == ALL_OPS


@pytest.mark.parametrize("name", ALL_OPS)
def test_catalogue_entry_has_description_and_valid_schema(name):
    entry = REGISTRY[name].describe()
    json.dumps(entry)  # served as is by GET /operations
    assert entry["description"].strip() and "\n" not in entry["description"]
    schema = entry["parameters"]
    Draft202012Validator.check_schema(schema)
    assert set(schema["required"]) <= set(schema["properties"])
    for param, spec in schema["properties"].items():
        assert spec.get("description", "").strip(), f"{name}.{param} has no description"
    assert Draft202012Validator(schema).is_valid(GOOD_PARAMS[name])


@pytest.mark.parametrize("name", ALL_OPS)
def test_rejects_a_bad_parameter_naming_it(name):
    params, parameter = BAD_PARAMS[name]
    with pytest.raises(ParameterError) as info:
        run(name, mixed_frame(), **params)
    assert info.value.parameter == parameter
    assert repr(parameter) in info.value.message


@pytest.mark.parametrize("name", ALL_OPS)
def test_never_mutates_its_input(name):
    df = mixed_frame()
    before = df.copy(deep=True)
    out = run(name, df, **GOOD_PARAMS[name])
    pd.testing.assert_frame_equal(df, before)
    pd.testing.assert_frame_equal(df, mixed_frame())
    assert out is not df


@pytest.mark.parametrize("name", sorted(MISSING_COLUMN))
def test_missing_column_is_named(name):
    params, parameter = MISSING_COLUMN[name]
    with pytest.raises(ColumnNotFound) as info:
        run(name, mixed_frame(), **params)
    assert info.value.parameter == parameter
    assert "'nope'" in info.value.message
    assert "'text'" in info.value.message  # lists the columns there are


@pytest.mark.parametrize("name", ALL_OPS)
def test_dry_run_on_empty_frame_predicts_the_columns(name):
    dry = run(name, empty_frame(), **GOOD_PARAMS[name])
    real = run(name, mixed_frame(), **GOOD_PARAMS[name])
    assert len(dry) == 0
    assert list(dry.columns) == list(real.columns)


@pytest.mark.parametrize("name", sorted(MISSING_COLUMN))
def test_dry_run_on_empty_frame_finds_missing_columns(name):
    params, _ = MISSING_COLUMN[name]
    with pytest.raises(ColumnNotFound):
        run(name, empty_frame(), **params)


@pytest.mark.parametrize(
    "name", ["filter_rows", "drop_nulls", "deduplicate", "sort", "limit", "sample", "chunk_text"]
)
def test_row_changing_operations_return_a_clean_range_index(name):
    df = mixed_frame()
    df.index = [40, 30, 20, 10]
    out = run(name, df, **GOOD_PARAMS[name])
    assert out.index.equals(pd.RangeIndex(len(out)))


def test_no_operation_interprets_user_text_as_code():
    source = Path(REGISTRY["filter_rows"].func.__code__.co_filename).read_text(encoding="utf-8")
    # The last one is split so that a grep of the repository for it stays empty.
    for forbidden in (".query(", "eval(", "exec(", "pick" "le"):
        assert forbidden not in source


# --- columns ---------------------------------------------------------------------------


def test_select_columns_orders_as_asked():
    out = run("select_columns", mixed_frame(), columns=["text", "id"])
    assert list(out.columns) == ["text", "id"]
    assert out["text"].iloc[0] == "Café"


def test_drop_columns_keeps_the_rest_in_order_and_types():
    out = run("drop_columns", mixed_frame(), columns=["price", "text"])
    assert list(out.columns) == ["id", "score", "flag", "when"]
    assert out["score"].dtype == "Int64"


def test_rename_columns_renames_and_keeps_position():
    out = run("rename_columns", mixed_frame(), mapping={"text": "body", "id": "Ärger"})
    assert list(out.columns) == ["Ärger", "score", "price", "body", "flag", "when"]
    assert out["body"].iloc[0] == "Café"


def test_rename_columns_can_swap_names():
    out = run("rename_columns", mixed_frame(), mapping={"id": "score", "score": "id"})
    assert out["score"].tolist() == [1, 2, 3, 4]
    assert out["id"].dtype == "Int64"


def test_rename_columns_onto_an_existing_column_is_refused():
    with pytest.raises(ParameterError, match="'score', which is already a column") as info:
        run("rename_columns", mixed_frame(), mapping={"id": "score"})
    assert info.value.parameter == "mapping"


def test_rename_columns_two_onto_one_name_is_refused():
    with pytest.raises(ParameterError, match="more than one column to 'x'"):
        run("rename_columns", mixed_frame(), mapping={"id": "x", "text": "x"})


def test_rename_columns_onto_a_name_renamed_away_is_allowed():
    out = run("rename_columns", mixed_frame(), mapping={"id": "score", "score": "old_score"})
    assert list(out.columns[:2]) == ["score", "old_score"]


@pytest.mark.parametrize(
    ("value", "dtype"), [("crawl", "str"), (7, "int64"), (0.5, "float64"), (True, "bool"), (None, "object")]
)
def test_add_column_fills_every_row(value, dtype):
    out = run("add_column", mixed_frame(), name="extra", value=value)
    assert list(out.columns)[-1] == "extra"
    assert out["extra"].tolist() == [value] * 4
    assert out["extra"].dtype == dtype


def test_add_column_refuses_to_overwrite():
    with pytest.raises(ParameterError, match="'text', which already exists"):
        run("add_column", mixed_frame(), name="text", value="x")


def test_add_column_value_is_required_but_may_be_null():
    with pytest.raises(ParameterError, match="'value' parameter is required"):
        run("add_column", mixed_frame(), name="extra")
    assert run("add_column", empty_frame(), name="extra", value=None).columns[-1] == "extra"


# --- nulls ------------------------------------------------------------------------------


def test_drop_nulls_any_over_all_columns():
    out = run("drop_nulls", mixed_frame())
    assert out["id"].tolist() == [1, 4]


def test_drop_nulls_in_named_columns_keeps_order_and_int_dtype():
    out = run("drop_nulls", mixed_frame(), columns=["score"])
    assert out["id"].tolist() == [1, 3, 4]
    assert out["score"].dtype == "Int64"


def test_drop_nulls_how_all_drops_only_rows_null_everywhere():
    df = pd.DataFrame({"id": [1, 2, 3, 4], "a": [None, 1, None, 2], "b": [None, None, "x", "y"]})
    assert run("drop_nulls", df, columns=["a", "b"], how="all")["id"].tolist() == [2, 3, 4]
    assert run("drop_nulls", df, columns=["a", "b"], how="any")["id"].tolist() == [4]


def test_drop_nulls_keeps_empty_strings():
    df = pd.DataFrame({"a": ["", None, " "]})
    assert run("drop_nulls", df)["a"].tolist() == ["", " "]


def test_fill_nulls_value_keeps_each_column_type_when_it_fits():
    out = run("fill_nulls", mixed_frame(), value=0)
    assert out["score"].dtype == "Int64"
    assert out["score"].tolist() == [10, 0, 30, 5]
    assert out["price"].tolist() == [1.5, 0.0, 2.0, -1.0]
    assert out["id"].dtype == "int64"  # had no nulls: untouched


def test_fill_nulls_text_column_with_text_stays_text():
    out = run("fill_nulls", mixed_frame(), values={"text": "–"})
    assert out["text"].dtype == "str"
    assert out["text"].tolist()[:2] == ["Café", "–"]
    assert out["score"].isna().sum() == 1  # other columns untouched


def test_fill_nulls_number_into_text_column_keeps_the_number():
    out = run("fill_nulls", mixed_frame(), values={"text": 0})
    assert out["text"].tolist()[:2] == ["Café", 0]


def test_fill_nulls_int_column_with_a_fraction_becomes_float():
    out = run("fill_nulls", mixed_frame(), values={"score": 2.5})
    assert out["score"].dtype == "float64"
    assert out["score"].tolist() == [10.0, 2.5, 30.0, 5.0]


def test_fill_nulls_leaves_columns_without_nulls_alone():
    out = run("fill_nulls", mixed_frame(), value="?")
    assert out["id"].dtype == "int64"
    assert out["flag"].dtype == "bool"
    assert out["text"].tolist()[1] == "?"
    assert out["score"].tolist()[1] == "?"


def test_fill_nulls_needs_value_or_values():
    with pytest.raises(ParameterError, match="'value' parameter is required unless 'values'"):
        run("fill_nulls", mixed_frame())


def test_deduplicate_keeps_first_by_default_in_order():
    df = pd.DataFrame({"a": ["x", "y", "x", "y", "z"], "n": [1, 2, 3, 4, 5]})
    assert run("deduplicate", df, columns=["a"])["n"].tolist() == [1, 2, 5]
    assert run("deduplicate", df, columns=["a"], keep="last")["n"].tolist() == [3, 4, 5]


def test_deduplicate_treats_nulls_as_equal_and_accents_as_different():
    df = pd.DataFrame(
        {
            "id": [1, 2, 3, 4, 5],
            "a": ["Café", "Café", None, None, "Cafe"],
            "n": pd.array([1, 1, None, None, 1], dtype="Int64"),
        }
    )
    out = run("deduplicate", df, columns=["a", "n"])
    assert out["id"].tolist() == [1, 3, 5]
    assert out["n"].dtype == "Int64"
    assert len(run("deduplicate", df)) == 5  # whole rows: the ids differ


# --- filter_rows --------------------------------------------------------------------------


def filter_ids(df, **params):
    return run("filter_rows", df, **params)["id"].tolist()


def people():
    return pd.DataFrame(
        {
            "id": [1, 2, 3, 4, 5],
            "name": ["Zoë", "zoe", None, "Émile", "Ann"],
            "age": pd.array([30, None, 41, 30, 7], dtype="Int64"),
        }
    )


@pytest.mark.parametrize(
    ("operator", "value", "ids"),
    [
        ("eq", 30, [1, 4]),
        ("ne", 30, [2, 3, 5]),  # ne keeps the null, like pandas' s != 30
        ("gt", 30, [3]),
        ("ge", 30, [1, 3, 4]),
        ("lt", 30, [5]),
        ("le", 30, [1, 4, 5]),
        ("in", [7, 41], [3, 5]),
        ("not_in", [7, 41], [1, 2, 4]),
        ("is_null", None, [2]),
        ("not_null", None, [1, 3, 4, 5]),
        ("gt", 29.5, [1, 3, 4]),
    ],
)
def test_filter_rows_numeric_operators(operator, value, ids):
    assert filter_ids(people(), column="age", operator=operator, value=value) == ids


@pytest.mark.parametrize(
    ("operator", "value", "ids"),
    [
        ("eq", "Zoë", [1]),
        ("ne", "Zoë", [2, 3, 4, 5]),
        ("gt", "Zoë", [2, 4]),  # code point order: lowercase and accents sort after "Z"
        ("lt", "B", [5]),
        ("in", ["Ann", "zoe"], [2, 5]),
        ("not_in", ["Ann", "zoe"], [1, 3, 4]),
        ("contains", "o", [1, 2]),
        ("startswith", "É", [4]),
        ("endswith", "ë", [1]),
        ("regex", r"^[A-Z]\pL+$", [1, 5]),
        ("is_null", None, [3]),
        ("not_null", None, [1, 2, 4, 5]),
    ],
)
def test_filter_rows_text_operators(operator, value, ids):
    assert filter_ids(people(), column="name", operator=operator, value=value) == ids


@pytest.mark.parametrize(
    ("operator", "value", "ids"),
    [
        ("eq", "ZOË", [1]),
        ("ne", "ZOË", [2, 3, 4, 5]),
        ("in", ["ANN", "ÉMILE"], [4, 5]),
        ("not_in", ["ANN", "ÉMILE"], [1, 2, 3]),
        ("contains", "ZO", [1, 2]),
        ("startswith", "é", [4]),
        ("endswith", "Ë", [1]),
        ("regex", "^z", [1, 2]),
    ],
)
def test_filter_rows_case_insensitive(operator, value, ids):
    assert filter_ids(people(), column="name", operator=operator, value=value, case_sensitive=False) == ids


def test_filter_rows_is_case_sensitive_by_default():
    assert filter_ids(people(), column="name", operator="eq", value="zoë") == []
    assert filter_ids(people(), column="name", operator="contains", value="ZO") == []


def test_filter_rows_keeps_order_dtypes_and_other_columns():
    out = run("filter_rows", mixed_frame(), column="price", operator="gt", value=0)
    assert out["id"].tolist() == [1, 3]
    assert out["score"].dtype == "Int64" and out["id"].dtype == "int64"
    assert out["text"].tolist() == ["Café", "ｆｕｌｌ  width"]


def test_filter_rows_text_operators_skip_non_text_cells_of_mixed_columns():
    df = pd.DataFrame({"id": [1, 2, 3], "v": pd.Series(["a1", 1, None], dtype=object)})
    assert filter_ids(df, column="v", operator="contains", value="1") == [1]
    assert filter_ids(df, column="v", operator="eq", value=1) == [2]


def test_filter_rows_on_booleans():
    assert filter_ids(mixed_frame(), column="flag", operator="eq", value=False) == [2, 4]


def test_filter_rows_on_dates_compares_dates():
    df = run("cast_types", mixed_frame(), types={"when": "datetime"})
    assert filter_ids(df, column="when", operator="ge", value="2024-01-31") == [1, 2]
    assert filter_ids(df, column="when", operator="eq", value="2023-12-31") == [4]
    with pytest.raises(ParameterError, match="must be a date"):
        run("filter_rows", df, column="when", operator="gt", value="soon")


@pytest.mark.parametrize(
    ("column", "operator", "value", "parameter", "problem"),
    [
        ("name", "gt", 3, "value", "column holds text and the value is a number"),
        ("age", "eq", "30", "value", "column holds numbers and the value is a string"),
        ("age", "in", [30, "x"], "value", "column holds numbers and the value is a string"),
        ("age", "contains", "3", "column", "holds numbers; contains needs text"),
        ("name", "eq", None, "value", "is required by operator 'eq'"),
        ("name", "in", "Ann", "value", "must be a list"),
        ("name", "eq", ["Ann"], "value", "must be a single value"),
        ("name", "contains", 1, "value", "must be a string"),
        ("name", "is_null", "x", "value", "is not used by operator 'is_null'"),
        ("name", "regex", "([a-z", "value", "is not a valid regular expression"),
    ],
)
def test_filter_rows_bad_comparisons_are_parameter_errors(column, operator, value, parameter, problem):
    with pytest.raises(ParameterError) as info:
        run("filter_rows", people(), column=column, operator=operator, value=value)
    assert info.value.parameter == parameter
    assert problem in info.value.message


def test_filter_rows_incomparable_mixed_column_does_not_echo_data():
    df = pd.DataFrame({"id": [1, 2], "v": pd.Series(["secret-4711", 5], dtype=object)})
    with pytest.raises(ParameterError, match="cannot be compared with the values of column 'v' using gt") as info:
        run("filter_rows", df, column="v", operator="gt", value=3)
    assert "4711" not in info.value.message


def test_filter_rows_text_operators_take_the_value_literally():
    df = pd.DataFrame({"id": [1, 2, 3], "v": ["a(b", "a.b", "axb"]})
    assert filter_ids(df, column="v", operator="contains", value="(") == [1]
    assert filter_ids(df, column="v", operator="startswith", value="a.") == [2]
    # Only regex reads "." as any character.
    assert filter_ids(df, column="v", operator="regex", value="a.b") == [1, 2, 3]


def test_filter_rows_regex_is_searched_not_executed():
    df = pd.DataFrame({"id": [1, 2], "v": ["__import__('os')", "a.b"]})
    assert filter_ids(df, column="v", operator="regex", value=r"a\.b") == [2]
    assert filter_ids(df, column="v", operator="eq", value="__import__('os')") == [1]


# --- sort, limit, sample -------------------------------------------------------------------


def test_sort_puts_nulls_last_and_keeps_int_dtype():
    out = run("sort", mixed_frame(), by="score")
    assert out["score"].tolist()[:3] == [5, 10, 30] and out["score"].isna().tolist()[3]
    assert out["score"].dtype == "Int64"
    out = run("sort", mixed_frame(), by="score", ascending=False)
    assert out["id"].tolist() == [3, 1, 4, 2]


def test_sort_is_stable_for_ties():
    df = pd.DataFrame({"k": [1, 0, 1, 0, 1], "id": [1, 2, 3, 4, 5]})
    assert run("sort", df, by="k")["id"].tolist() == [2, 4, 1, 3, 5]
    assert run("sort", df, by="k", ascending=False)["id"].tolist() == [1, 3, 5, 2, 4]
    # Big enough that numpy's default quicksort would reorder ties.
    big = pd.DataFrame({"k": [(i * 7) % 3 for i in range(500)], "id": range(500)})
    for ascending in (True, False):
        out = run("sort", big, by="k", ascending=ascending)
        for _, group in out.groupby("k", sort=False):
            assert group["id"].is_monotonic_increasing


def test_sort_by_several_columns_with_directions():
    df = pd.DataFrame({"a": ["x", "y", "x", "y"], "b": [1, 2, 3, 4]})
    out = run("sort", df, by=["a", "b"], ascending=[True, False])
    assert out["b"].tolist() == [3, 1, 4, 2]


def test_sort_text_with_unicode_and_nulls():
    out = run("sort", people(), by="name")
    assert out["name"].tolist()[:4] == ["Ann", "Zoë", "zoe", "Émile"]
    assert pd.isna(out["name"].iloc[4])


def test_sort_one_direction_per_column():
    with pytest.raises(ParameterError, match="has 2 item"):
        run("sort", mixed_frame(), by="id", ascending=[True, False])


def test_sort_unorderable_column_is_a_parameter_error():
    df = pd.DataFrame({"v": pd.Series(["secret", 1], dtype=object)})
    with pytest.raises(ParameterError, match="cannot be ordered") as info:
        run("sort", df, by="v")
    assert "secret" not in info.value.message


@pytest.mark.parametrize(("n", "ids"), [(0, []), (2, [1, 2]), (10, [1, 2, 3, 4])])
def test_limit_keeps_the_first_rows(n, ids):
    assert run("limit", mixed_frame(), n=n)["id"].tolist() == ids


def test_whole_floats_pass_as_integers():
    # JSON Schema counts 2.0 as an integer, so operations must accept it where they take counts.
    assert run("limit", mixed_frame(), n=2.0)["id"].tolist() == [1, 2]
    assert len(run("sample", mixed_frame(), n=2.0, seed=1.0)) == 2
    assert pieces_of("abcdef", 3.0, 1.0) == ["abc", "cde", "ef"]


def test_sample_n_is_repeatable_with_a_seed():
    df = pd.DataFrame({"id": range(100)})
    first = run("sample", df, n=10, seed=7)["id"].tolist()
    assert first == run("sample", df, n=10, seed=7)["id"].tolist()
    assert len(set(first)) == 10
    assert first != run("sample", df, n=10, seed=8)["id"].tolist()


def test_sample_more_than_there_are_returns_every_row():
    out = run("sample", mixed_frame(), n=50, seed=3)
    assert sorted(out["id"].tolist()) == [1, 2, 3, 4]
    assert out["score"].dtype == "Int64"


def test_sample_frac():
    df = pd.DataFrame({"id": range(100)})
    assert len(run("sample", df, frac=0.25, seed=1)) == 25
    assert len(run("sample", df, frac=0)) == 0
    assert sorted(run("sample", df, frac=1, seed=1)["id"]) == list(range(100))


def test_sample_needs_n_or_frac():
    with pytest.raises(ParameterError, match="'n' parameter is required unless 'frac'"):
        run("sample", mixed_frame(), seed=1)
    with pytest.raises(ParameterError, match="must be <= 1"):
        run("sample", mixed_frame(), frac=1.5)


# --- text -------------------------------------------------------------------------------


def normalize(value, **params):
    df = pd.DataFrame({"t": pd.Series([value], dtype=object if not isinstance(value, str) else "str")})
    return run("normalize_text", df, columns=["t"], **params)["t"].iloc[0]


@pytest.mark.parametrize(
    ("text", "params", "expected"),
    [
        ("  Café \t\n au   lait ", {}, "Café au lait"),
        ("ｆｕｌｌ　ｗｉｄｔｈ ①", {}, "full width 1"),
        ("ﬁne", {"unicode_form": "NFC"}, "ﬁne"),
        ("Cafe\u0301", {"unicode_form": "NFC"}, "Café"),
        ("Café", {"unicode_form": "NFD"}, "Cafe\u0301"),
        ("Café Ünïcödé", {"remove_accents": True}, "Cafe Unicode"),
        ("Ｃａｆé", {"remove_accents": True, "unicode_form": None}, "Cafe"),
        ("ÉCOLE Straße", {"lowercase": True}, "école straße"),
        (" a  b ", {"strip": False, "collapse_whitespace": False}, " a  b "),
        (" a  b ", {"strip": False}, " a b "),
        ("a  b", {"collapse_whitespace": False}, "a  b"),
        ("emoji 🎉  ok", {}, "emoji 🎉 ok"),
        ("<p>Caf<b>é</b></p><p>ok</p>", {"strip_html": True}, "Café ok"),
        ("x<br/>y &amp; z &lt;b&gt;", {"strip_html": True}, "x y & z <b>"),
        ("a < b and c > d", {"strip_html": True}, "a < b and c > d"),
        ("hi<!-- note --><script>alert('x>')</script> there", {"strip_html": True}, "hi there"),
        ("<a href='x>y'>link</a>", {"strip_html": True}, "link"),
        ("<b>x</b>", {}, "<b>x</b>"),
    ],
)
def test_normalize_text(text, params, expected):
    assert normalize(text, **params) == expected


def test_normalize_text_leaves_nulls_and_non_text_alone():
    df = pd.DataFrame({"t": pd.Series([" A ", None, 5, 1.5], dtype=object)})
    out = run("normalize_text", df, columns=["t"], lowercase=True)
    assert out["t"].tolist() == ["a", None, 5, 1.5]


def test_normalize_text_keeps_text_dtype_and_other_columns():
    out = run("normalize_text", mixed_frame(), columns=["text", "score"], lowercase=True)
    assert out["text"].dtype == "str"
    assert out["text"].tolist()[0] == "café" and pd.isna(out["text"].iloc[1])
    assert out["text"].tolist()[2] == "full width"
    assert out["score"].dtype == "Int64"
    assert out["when"].tolist() == mixed_frame()["when"].tolist()


def pieces_of(text, size, overlap=0):
    df = pd.DataFrame({"t": [text]})
    return run("chunk_text", df, column="t", size=size, overlap=overlap)["t"].tolist()


@pytest.mark.parametrize("text", ["", "a", "abcdefghij", "abcdefghijkl", "Café au lait 🎉 ｆｕｌｌ ok", "x" * 97])
@pytest.mark.parametrize(("size", "overlap"), [(1, 0), (3, 0), (4, 0), (4, 1), (4, 3), (5, 2), (6, 3), (50, 10)])
def test_chunk_text_pieces_rebuild_the_text(text, size, overlap):
    pieces = pieces_of(text, size, overlap)
    assert pieces[0] + "".join(piece[overlap:] for piece in pieces[1:]) == text
    assert all(len(piece) <= size for piece in pieces)
    step = size - overlap
    assert pieces == [text[k * step : k * step + size] for k in range(len(pieces))]
    if len(pieces) > 1:  # no trailing piece lying wholly inside the previous piece's overlap
        assert len(pieces[-1]) > overlap
        assert len(pieces[-2]) == size


def test_chunk_text_exact_multiple_has_no_empty_trailing_piece():
    assert pieces_of("abcdef", 3) == ["abc", "def"]
    assert pieces_of("abcdefg", 4, 1) == ["abcd", "defg"]
    assert pieces_of("abc", 3, 2) == ["abc"]


def test_chunk_text_rows_columns_and_chunk_index():
    out = run("chunk_text", mixed_frame(), column="text", size=5, overlap=2)
    assert list(out.columns) == [*mixed_frame().columns, "chunk_index"]
    assert out["id"].tolist() == [1, 2, 3, 3, 3, 4, 4, 4, 4, 4]
    assert out["chunk_index"].tolist() == [0, 0, 0, 1, 2, 0, 1, 2, 3, 4]
    assert out["text"].iloc[0] == "Café" and pd.isna(out["text"].iloc[1])
    assert out["text"].tolist()[2:5] == ["ｆｕｌｌ ", "ｌ  wi", "width"]
    assert out["text"].tolist()[5:] == ["emoji", "ji 🎉 ", "🎉 <b>", "b>x</", "</b>"]
    assert out["score"].dtype == "Int64" and out["chunk_index"].dtype == "int64"


def test_chunk_text_into_keeps_the_source_column():
    out = run("chunk_text", mixed_frame(), column="text", size=4, into="piece")
    assert list(out.columns) == [*mixed_frame().columns, "piece", "chunk_index"]
    assert out["text"].tolist()[2:5] == ["ｆｕｌｌ  width"] * 3
    assert out["piece"].tolist()[2:5] == ["ｆｕｌｌ", "  wi", "dth"]


def test_chunk_text_into_the_column_itself_replaces_it():
    out = run("chunk_text", pd.DataFrame({"t": ["abcde"]}), column="t", size=3, into="t")
    assert list(out.columns) == ["t", "chunk_index"]
    assert out["t"].tolist() == ["abc", "de"]


def test_chunk_text_keeps_null_and_empty_texts_as_one_row():
    df = pd.DataFrame({"t": ["", None, "abcde"]})
    out = run("chunk_text", df, column="t", size=2)
    assert out["t"].tolist()[0] == "" and pd.isna(out["t"].iloc[1])
    assert out["chunk_index"].tolist() == [0, 0, 0, 1, 2]


@pytest.mark.parametrize(
    ("params", "parameter", "problem"),
    [
        ({"column": "text", "size": 3, "into": "id"}, "into", "'id', which already exists"),
        ({"column": "text", "size": 3, "into": "chunk_index"}, "into", "cannot be 'chunk_index'"),
        ({"column": "text", "size": 3, "overlap": 4}, "overlap", "must be less than 'size' (3)"),
        ({"column": "text", "size": 0}, "size", "must be >= 1"),
    ],
)
def test_chunk_text_refuses(params, parameter, problem):
    with pytest.raises(ParameterError) as info:
        run("chunk_text", mixed_frame(), **params)
    assert info.value.parameter == parameter
    assert problem in info.value.message


def test_chunk_text_refuses_to_chunk_twice():
    once = run("chunk_text", mixed_frame(), column="text", size=3)
    with pytest.raises(ParameterError, match="already has a 'chunk_index' column"):
        run("chunk_text", once, column="text", size=2)


def test_text_length_counts_characters():
    out = run("text_length", mixed_frame(), column="text", into="length")
    assert out["length"].dtype == "Int64"
    assert out["length"].tolist()[0] == 4 and pd.isna(out["length"].iloc[1])
    assert out["length"].tolist()[2:] == [len("ｆｕｌｌ  width"), len("emoji 🎉 <b>x</b>")]
    assert out["text"].tolist()[0] == "Café"


def test_text_length_of_a_typed_non_text_column_is_a_parameter_error():
    # A number column is refused (at submit, from the dataset's types), not measured as its digits.
    with pytest.raises(ParameterError, match="'score', which holds numbers; text_length needs text"):
        run("text_length", mixed_frame(), column="score", into="digits")


def test_text_length_of_non_text_in_a_mixed_column_is_length_of_its_text():
    df = pd.DataFrame({"v": pd.Series([12, "abc", None], dtype=object)})
    out = run("text_length", df, column="v", into="n")
    assert out["n"].tolist()[:2] == [2, 3] and pd.isna(out["n"].iloc[2])


def test_text_length_refuses_to_overwrite():
    with pytest.raises(ParameterError, match="'text', which already exists"):
        run("text_length", mixed_frame(), column="text", into="text")


# --- cast_types ----------------------------------------------------------------------------


def cast(values, kind, errors="raise", dtype=object):
    df = pd.DataFrame({"v": pd.Series(values, dtype=dtype)})
    return run("cast_types", df, types={"v": kind}, errors=errors)["v"]


def as_list(series):
    return [None if v is pd.NA or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT else v for v in series]


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ([" 12 ", "-3", "+4", "1e3", "1.0", None], object, [12, -3, 4, 1000, 1, None]),
        (["9007199254740993"], "str", [9007199254740993]),  # exact, past float precision
        ([1.0, None, -2.0], "float64", [1, None, -2]),
        ([True, False], "bool", [1, 0]),
        ([5, 6], "int64", [5, 6]),
    ],
)
def test_cast_int_gives_nullable_integers(values, dtype, expected):
    out = cast(values, "int", dtype=dtype)
    assert out.dtype == "Int64"
    assert as_list(out) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [(["1.5", " -2 ", ".5", None, 3, True], [1.5, -2.0, 0.5, None, 3.0, 1.0])],
)
def test_cast_float(values, expected):
    out = cast(values, "float")
    assert out.dtype == "float64"
    assert as_list(out) == expected


def test_cast_int_column_with_nulls_to_float():
    out = run("cast_types", mixed_frame(), types={"score": "float"})["score"]
    assert out.dtype == "float64" and as_list(out) == [10.0, None, 30.0, 5.0]


def test_cast_str_keeps_nulls_null():
    out = run("cast_types", mixed_frame(), types={"score": "str", "price": "str", "flag": "str"})
    assert out["score"].dtype == "str"
    assert as_list(out["score"]) == ["10", None, "30", "5"]
    assert as_list(out["price"]) == ["1.5", None, "2.0", "-1.0"]
    assert out["flag"].tolist() == ["True", "False", "True", "False"]


def test_cast_bool_reads_common_spellings():
    out = cast(["true", "FALSE", " Yes ", "no", "1", "0", 1, 0.0, True, None], "bool")
    assert out.dtype == "boolean"
    assert as_list(out) == [True, False, True, False, True, False, True, False, True, None]


def test_cast_datetime_reads_iso_8601_naive():
    out = run("cast_types", mixed_frame(), types={"when": "datetime"})["when"]
    assert pd.api.types.is_datetime64_dtype(out) and out.dt.tz is None
    assert as_list(out) == [
        pd.Timestamp("2024-01-31"),
        pd.Timestamp("2024-02-01 10:00"),
        None,
        pd.Timestamp("2023-12-31"),
    ]


@pytest.mark.parametrize(
    "values",
    [
        ["2024-01-31T10:00:00+02:00", "2024-01-31T13:00:00+02:00", None],  # one offset
        ["2024-01-31T10:00:00+02:00", "2024-01-31T12:00:00+01:00", None],  # mixed offsets
        ["2024-01-31T08:00:00Z", "2024-01-31T11:00:00", None],  # naive values are taken as UTC
    ],
)
def test_cast_datetime_with_offsets_becomes_utc(values):
    out = cast(values, "datetime", dtype="str")
    assert str(out.dt.tz) == "UTC"
    expected = [pd.Timestamp("2024-01-31 08:00", tz="UTC"), pd.Timestamp("2024-01-31 11:00", tz="UTC"), None]
    assert as_list(out) == expected


@pytest.mark.parametrize(
    ("values", "kind", "good"),
    [
        (["1", "SECRET-4711", "2.5"], "int", [1, None, None]),
        (["-9223372036854775808", "SECRET-4711", "9223372036854775808"], "int", [-(2**63), None, None]),
        (["1.5", "SECRET-4711", "inf"], "float", [1.5, None, None]),
        (["yes", "SECRET-4711", "2"], "bool", [True, None, None]),
        (["2024-01-31", "SECRET-4711", "2024-13-01"], "datetime", [pd.Timestamp("2024-01-31"), None, None]),
    ],
)
def test_cast_bad_values_raise_without_echoing_them_or_coerce_to_null(values, kind, good):
    with pytest.raises(ParameterError) as info:
        cast(values, kind)
    message = info.value.message
    assert info.value.parameter == "types"
    assert f"column 'v' to {kind}" in message and "2 value(s)" in message and "row 1" in message
    assert "SECRET" not in message and "4711" not in message
    assert as_list(cast(values, kind, errors="coerce")) == good


@pytest.mark.parametrize("kind", ["int", "float", "bool", "datetime"])
def test_cast_blank_text_is_null_not_a_bad_value(kind):
    out = cast(["", "  ", None], kind, dtype="str")
    assert out.isna().all()
    assert cast(["", " "], "str", dtype="str").tolist() == ["", " "]


def test_cast_datetime_does_not_read_numbers_as_epochs():
    assert as_list(cast([1700000000, "2024-01-31"], "datetime", errors="coerce")) == [None, pd.Timestamp("2024-01-31")]


def test_cast_several_columns_at_once_keeps_the_others():
    out = run("cast_types", mixed_frame(), types={"id": "str", "price": "int"}, errors="coerce")
    assert out["id"].tolist() == ["1", "2", "3", "4"]
    assert as_list(out["price"]) == [None, None, 2, -1]
    assert out["score"].dtype == "Int64" and out["text"].iloc[0] == "Café"


@pytest.mark.parametrize("kind", ["int", "float", "str", "bool", "datetime"])
def test_cast_on_empty_frame_gives_the_target_type(kind):
    out = run("cast_types", empty_frame(), types={"text": kind})
    expected = {"int": "Int64", "float": "float64", "str": "str", "bool": "boolean"}.get(kind)
    if expected:
        assert out["text"].dtype == expected
    else:
        assert pd.api.types.is_datetime64_dtype(out["text"])


def test_pipeline_of_every_operation_on_an_empty_frame_runs_clean():
    df = empty_frame()
    for name in ALL_OPS:
        params = GOOD_PARAMS[name]
        if name in ("select_columns", "drop_columns", "rename_columns"):
            continue  # they change what later steps can name
        df = run(name, df, **params)
        if name == "chunk_text":
            df = run("drop_columns", df, columns=["chunk_index"])
    assert len(df) == 0
    assert {"length", "source"} <= set(df.columns)


def test_error_messages_read_as_one_sentence():
    with pytest.raises(ParameterError) as info:
        run("filter_rows", mixed_frame(), column="text", operator="regex", value="(")
    placed = info.value.at(2, "filter_rows").message
    assert re.match(r"Step 2 \(filter_rows\): The 'value' parameter of filter_rows is not a valid regular", placed)


@pytest.mark.parametrize("name", ["self", "df", "kwargs"])
def test_new_columns_may_have_any_name(name):
    frame = pd.DataFrame({"a": ["xy"]})
    assert REGISTRY["add_column"](frame, name=name, value=1)[name].tolist() == [1]
    assert REGISTRY["text_length"](frame, column="a", into=name)[name].tolist() == [2]
