"""Harvester pieces that need no gateway: readers, writers, --op parsing, operations files, text.

The HTTP client and the commands are tested against a real local server in
``test_harvester_http.py``.
"""

import csv
import json
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

from harvester.client import BearerAuth, GatewayClient, attempt_timeout, check_token
from harvester.errors import InputError
from harvester.io import (
    check_output,
    columns,
    neutralise_formula,
    parse_records,
    read_records,
    write_json,
    write_records,
)
from harvester.manifest import manifest_path
from harvester.operations import load_operations, parse_op
from harvester.report import format_catalogue

RECORDS = [
    {"id": 1, "name": "Zoë", "score": 3, "tags": ["a", "b"]},
    {"id": 2, "name": None, "score": 2.5, "extra": {"k": "李"}},
    {"id": 3, "name": "O'Brien, \"Jr\"", "score": None},
]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# Readers


def test_csv_blank_cells_are_null_and_numbers_keep_their_type(tmp_path):
    path = write(tmp_path, "in.csv", "id,name,count,price,code\n1,Zoë,3,1.0,NA\n2,,,2.5,\n3,李,5,,x\n")

    records = read_records(path)

    assert records == [
        {"id": 1, "name": "Zoë", "count": 3, "price": 1.0, "code": "NA"},
        {"id": 2, "name": None, "count": None, "price": 2.5, "code": None},
        {"id": 3, "name": "李", "count": 5, "price": None, "code": "x"},
    ]
    # An int column with a blank stays int: 3, not 3.0, once sent as JSON.
    assert json.dumps(records[0]["count"]) == "3"
    assert type(records[0]["price"]) is float
    assert json.loads(json.dumps(records)) == records


def test_csv_with_byte_order_mark_and_booleans(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes("\ufeffok,n\ntrue,1\nfalse,2\n".encode("utf-8"))

    assert read_records(str(path)) == [{"ok": True, "n": 1}, {"ok": False, "n": 2}]


def test_tsv(tmp_path):
    path = write(tmp_path, "in.tsv", "a\tb\n1\thello, world\n2\t\n")

    assert read_records(path) == [{"a": 1, "b": "hello, world"}, {"a": 2, "b": None}]


def test_json_array_is_passed_through(tmp_path):
    path = write(tmp_path, "in.json", json.dumps(RECORDS, ensure_ascii=False))

    assert read_records(path) == RECORDS


@pytest.mark.parametrize(
    "text, complaint",
    [
        ('{"a": 1}', "array of objects"),
        ("[1, 2]", "Item 0"),
        ('[{"a": NaN}]', "not valid JSON"),
        ("[{", "not valid JSON"),
    ],
)
def test_json_that_is_not_a_list_of_objects_is_an_input_error(tmp_path, text, complaint):
    path = write(tmp_path, "in.json", text)

    with pytest.raises(InputError, match=complaint):
        read_records(path)


def test_jsonl_skips_blank_lines(tmp_path):
    path = write(tmp_path, "in.jsonl", '{"a": 1, "s": "é"}\n\n{"a": null}\n')

    assert read_records(path) == [{"a": 1, "s": "é"}, {"a": None}]


def test_jsonl_error_names_the_line(tmp_path):
    path = write(tmp_path, "in.jsonl", '{"a": 1}\n[1]\n')

    with pytest.raises(InputError, match="line 2 must be a JSON object"):
        read_records(path)


@pytest.mark.parametrize(
    "name, content, complaint",
    [
        ("in.xlsx", "", "extension must be one of"),
        ("missing.csv", None, "Cannot read"),
        ("empty.csv", "", "empty"),
    ],
)
def test_unreadable_sources_are_input_errors(tmp_path, name, content, complaint):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)

    with pytest.raises(InputError, match=complaint):
        read_records(str(path))


def test_source_that_is_not_utf8_is_an_input_error():
    with pytest.raises(InputError, match="not UTF-8"):
        parse_records("a\n\xe9\n".encode("latin-1"), "csv", "in.csv")


# Writers


@pytest.mark.parametrize("ext", ["jsonl", "json"])
def test_json_writers_round_trip(tmp_path, ext):
    path = str(tmp_path / f"out.{ext}")

    assert write_records(RECORDS, path) == (ext, 0)

    assert read_records(path) == RECORDS
    assert "Zoë" in open(path, encoding="utf-8").read()  # written as UTF-8, not \u escapes


def test_csv_writer_keeps_first_record_column_order_then_later_keys(tmp_path):
    path = str(tmp_path / "out.csv")

    write_records(RECORDS, path)

    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "name", "score", "tags", "extra"]
    assert rows[1] == ["1", "Zoë", "3", '["a", "b"]', ""]
    assert rows[2] == ["2", "", "2.5", "", '{"k": "李"}']
    assert rows[3] == ["3", "O'Brien, \"Jr\"", "", "", ""]
    # ...and reads back as what was written, nulls included.
    assert read_records(path)[2]["name"] == "O'Brien, \"Jr\""


def test_parquet_writer_round_trip(tmp_path):
    path = str(tmp_path / "out.parquet")
    records = [{"id": 1, "name": "Zoë", "score": 1.5}, {"id": 2, "name": None, "score": None, "late": True}]

    write_records(records, path)

    table = pq.read_table(path)
    assert table.column_names == ["id", "name", "score", "late"]
    assert table.to_pylist() == [
        {"id": 1, "name": "Zoë", "score": 1.5, "late": None},
        {"id": 2, "name": None, "score": None, "late": True},
    ]
    assert pd.read_parquet(path)["id"].tolist() == [1, 2]


def test_parquet_writer_refuses_a_column_of_mixed_types(tmp_path):
    path = tmp_path / "out.parquet"

    with pytest.raises(InputError, match="'v'"):
        write_records([{"v": 1}, {"v": "one"}], str(path))
    assert not path.exists()
    assert os.listdir(tmp_path) == []  # no temporary file left behind


def test_write_replaces_an_existing_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")

    write_records([{"a": 1}], str(path))
    write_json({"b": 2}, str(tmp_path / "m.json"))

    assert path.read_text() == '{"a": 1}\n'
    assert sorted(os.listdir(tmp_path)) == ["m.json", "out.jsonl"]


def test_empty_result_writes_empty_files(tmp_path):
    for ext in ["jsonl", "json", "csv", "parquet"]:
        write_records([], str(tmp_path / f"out.{ext}"))

    assert read_records(str(tmp_path / "out.json")) == []
    assert read_records(str(tmp_path / "out.jsonl")) == []
    assert pq.read_table(str(tmp_path / "out.parquet")).num_rows == 0


def test_output_checks(tmp_path):
    assert check_output(str(tmp_path / "out.parquet")) == "parquet"
    with pytest.raises(InputError, match="extension must be one of .jsonl, .csv, .json, .parquet"):
        check_output(str(tmp_path / "out.txt"))
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        check_output(str(tmp_path / "dir.csv"))
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="is a file, not a directory"):
        check_output(str(tmp_path / "file" / "out.csv"))


def test_writers_create_missing_directories(tmp_path):
    path = tmp_path / "out" / "deeper" / "data.csv"

    assert check_output(str(path)) == "csv"
    write_records([{"a": 1}], str(path))

    assert path.read_text() == "a\n1\n"


# CSV formula neutralisation


@pytest.mark.parametrize(
    "text, written",
    [
        ("=1+2", "'=1+2"),
        ("+33 6 12 34 56", "'+33 6 12 34 56"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("-", "'-"),
        ("--1", "'--1"),
        ("-1,5", "'-1,5"),
        ("-12.5 ", "'-12.5 "),  # not entirely a number
        ("-inf", "'-inf"),
        ("-١٢", "'-١٢"),  # only ASCII digits make a plain number
        # Plain decimal numbers: spreadsheets read them as numbers, not formulas.
        ("-12.5", "-12.5"),
        ("+3", "+3"),
        ("-.5", "-.5"),
        ("-3.", "-3."),
        ("1e5", "1e5"),
        ("-1.5E-3", "-1.5E-3"),
        ("+2e+10", "+2e+10"),
        # No trigger at the start.
        ("plain", "plain"),
        ("a=b", "a=b"),
        (" =1", " =1"),
        ("'=1", "'=1"),
        ("", ""),
    ],
)
def test_neutralise_formula(text, written):
    assert neutralise_formula(text) == written


FORMULA_RECORDS = [
    {"s": "=HYPERLINK(\"http://x\")", "n": -3, "x": -1.5, "b": True, "z": None, "j": {"k": "=x"}},
    {"s": "-12.5", "n": 0, "x": 2.0, "b": False, "z": "@me", "j": ["-y"]},
    {"s": "\tTab", "n": 1, "x": -0.0, "b": None, "z": "ok", "j": None},
]


def read_csv_rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def test_csv_writer_neutralises_text_cells_only(tmp_path):
    path = str(tmp_path / "out.csv")

    written = write_records(FORMULA_RECORDS, path)

    assert written == ("csv", 3)
    assert read_csv_rows(path) == [
        ["s", "n", "x", "b", "z", "j"],
        # Numbers, booleans, nulls and the JSON text of nested values are never changed.
        ["'=HYPERLINK(\"http://x\")", "-3", "-1.5", "True", "", '{"k": "=x"}'],
        ["-12.5", "0", "2.0", "False", "'@me", '["-y"]'],
        ["'\tTab", "1", "-0.0", "", "ok", ""],
    ]


def test_raw_csv_writes_text_cells_as_received(tmp_path):
    path = str(tmp_path / "out.csv")

    written = write_records(FORMULA_RECORDS, path, neutralise_formulas=False)

    assert written == ("csv", 0)
    rows = read_csv_rows(path)
    assert [row[0] for row in rows[1:]] == ["=HYPERLINK(\"http://x\")", "-12.5", "\tTab"]
    assert rows[2][4] == "@me"


@pytest.mark.parametrize("ext", ["jsonl", "json", "parquet"])
def test_other_formats_are_never_neutralised(tmp_path, ext):
    path = str(tmp_path / f"out.{ext}")
    records = [{"s": "=1+2", "t": "@me"}, {"s": "-x", "t": "\tTab"}]

    assert write_records(records, path) == (ext, 0)

    written = pq.read_table(path).to_pylist() if ext == "parquet" else read_records(path)
    assert written == records


def test_columns_and_manifest_path():
    assert columns([{"b": 1, "a": 2}, {"c": 3, "a": 4}]) == ["b", "a", "c"]
    assert manifest_path("out/data.csv") == "out/data.csv.manifest.json"


# --op and --operations


def test_bare_op_has_empty_params():
    assert parse_op("drop_nulls") == {"name": "drop_nulls", "params": {}}


def test_op_with_json_params():
    assert parse_op('limit:{"n": 5}') == {"name": "limit", "params": {"n": 5}}


def test_op_splits_at_the_first_colon_only():
    spec = 'filter_rows:{"column": "time", "operator": "eq", "value": "12:30:00"}'

    assert parse_op(spec)["params"] == {"column": "time", "operator": "eq", "value": "12:30:00"}


@pytest.mark.parametrize(
    "spec, complaint",
    [
        ("limit:{n: 5}", "not valid JSON"),
        ("limit:", "not valid JSON"),
        ('limit:[5]', "must be a JSON object"),
        ('limit:"five"', "must be a JSON object"),
        (':{"n": 1}', "has no name"),
    ],
)
def test_bad_op_specs_say_what_is_wrong(spec, complaint):
    with pytest.raises(InputError, match=complaint):
        parse_op(spec)


def test_operations_file(tmp_path):
    operations = ["drop_nulls", {"name": "limit", "params": {"n": 2}}]
    path = write(tmp_path, "ops.json", json.dumps(operations))

    assert load_operations(path) == operations


@pytest.mark.parametrize(
    "text, complaint",
    [
        (None, "Cannot read"),
        ("{", "not valid JSON"),
        ('{"operations": []}', "JSON list"),
        ("[3]", "Item 0"),
        ('[{"name": "limit", "params": [1]}]', "must be a JSON object"),
    ],
)
def test_bad_operations_files(tmp_path, text, complaint):
    path = tmp_path / "ops.json"
    if text is not None:
        path.write_text(text)

    with pytest.raises(InputError, match=complaint):
        load_operations(str(path))


# Small client pieces


def test_client_refuses_a_gateway_that_is_not_an_http_url():
    with pytest.raises(ValueError, match="http"):
        GatewayClient("127.0.0.1:5000")


@pytest.mark.parametrize("token", ["", "secret word", "secret\nline", " secret", "sécret", None, 42])
def test_tokens_that_cannot_go_in_a_header_are_refused_without_being_shown(token):
    with pytest.raises(ValueError, match="cannot be sent in an HTTP header") as caught:
        check_token(token)
    assert "ecret" not in str(caught.value)


def test_tokens_of_visible_ascii_are_accepted():
    assert check_token("abc-123._~+/=!$") == "abc-123._~+/=!$"


def test_bearer_auth_sets_the_header_and_hides_the_token():
    auth = BearerAuth("tok/en+=")

    class Request:
        headers = {}

    assert auth(Request()).headers == {"Authorization": "Bearer tok/en+="}
    assert repr(auth) == "BearerAuth(token=***)"
    assert auth.redact('bad token "tok/en+="') == 'bad token "***"'
    assert auth.redact({"tried": ["tok/en+="], "n": 1}) == {"tried": ["***"], "n": 1}


def test_attempt_timeout_shrinks_to_the_deadline(monkeypatch):
    monkeypatch.setattr("harvester.client.time.monotonic", lambda: 100.0)

    assert attempt_timeout((3.05, 30.0), None) == (3.05, 30.0)
    assert attempt_timeout((3.05, 30.0), 110.0) == (3.05, 10.0)
    assert attempt_timeout((3.05, 30.0), 99.0) == (0.5, 0.5)  # past it: one short last try


def test_catalogue_text_marks_required_parameters_and_defaults():
    catalogue = [
        {
            "name": "drop_nulls",
            "description": "Remove rows that have nulls.",
            "parameters": {
                "type": "object",
                "properties": {
                    "columns": {"type": ["array", "null"], "items": {"type": "string"}, "default": None},
                    "how": {"enum": ["any", "all"], "default": "any"},
                },
                "required": [],
            },
        },
        {
            "name": "limit",
            "description": "Keep the first n rows.",
            "parameters": {"properties": {"n": {"type": "integer"}}, "required": ["n"]},
        },
    ]

    text = format_catalogue(catalogue)

    assert "drop_nulls\n    Remove rows that have nulls." in text
    assert "columns  default null   array of string or null" in text
    assert 'how      default "any"  one of "any", "all"' in text
    assert "n  required  integer" in text


def test_csv_cells_with_line_breaks_stay_in_their_row(tmp_path):
    path = str(tmp_path / "out.csv")
    records = [{"a": "one\rtwo", "b": 1}, {"a": "three\nfour\r\n", "b": 2}]

    write_records(records, path)

    assert read_csv_rows(path) == [["a", "b"], ["one\rtwo", "1"], ["three\nfour\r\n", "2"]]
