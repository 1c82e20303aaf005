"""Harvester pieces that need no gateway: sources, parts, outputs, --op parsing, operations files, text.

The HTTP client and the commands are tested against a real local server in
``test_harvester_http.py``.
"""

import datetime
import hashlib
import json
import os

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from harvester import sources
from harvester.errors import InputError
from harvester.formulas import neutralise_formula
from harvester.io import check_output, write_json
from harvester.manifest import manifest_path
from harvester.operations import load_operations, parse_op
from harvester.outputs import Output, write_table
from harvester.progress import RichDisplay, amount
from harvester.report import format_catalogue
from harvester.sources import JSON_ENCODING, Retyped, Source
from harvester.transport import BearerAuth, attempt_timeout, check_token
from harvester.upload import split_parts

RECORDS = [
    {"id": 1, "name": "Zoë", "score": 3, "tags": ["a", "b"]},
    {"id": 2, "name": None, "score": 2.5, "extra": {"k": "李"}},
    {"id": 3, "name": "O'Brien, \"Jr\"", "score": None},
]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def read(source):
    """Every row of a source as one table, reading again after each Retyped as the upload does."""
    while True:
        try:
            with source.batches() as batches:
                return pa.Table.from_batches(list(batches), schema=batches.schema)
        except Retyped:
            continue


def rows(path):
    return read(Source(path)).to_pylist()


# Sources: CSV and TSV


def test_csv_only_blank_and_nan_cells_are_null_and_numbers_keep_their_type(tmp_path):
    path = write(tmp_path, "in.csv", "id,name,count,price,code\n1,Zoë,3,1.0,NA\n2,,,2.5,None\n3,李,5,NaN,x\n")

    table = read(Source(path))

    assert table.to_pylist() == [
        {"id": 1, "name": "Zoë", "count": 3, "price": 1.0, "code": "NA"},
        {"id": 2, "name": None, "count": None, "price": 2.5, "code": "None"},
        {"id": 3, "name": "李", "count": 5, "price": None, "code": "x"},
    ]
    # An int column with a blank stays int: 3, not 3.0.
    assert table.schema.field("count").type == pa.int64()
    assert table.schema.field("price").type == pa.float64()


def test_csv_with_byte_order_mark_booleans_and_dates_kept_as_text(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes("\ufeffok,n,day,at\ntrue,1,2024-01-31,12:30:00\nFALSE,0,2024-02-01,\n".encode("utf-8"))

    assert rows(str(path)) == [
        {"ok": True, "n": 1, "day": "2024-01-31", "at": "12:30:00"},
        {"ok": False, "n": 0, "day": "2024-02-01", "at": None},
    ]


def test_tsv_and_quoted_cells_with_line_breaks(tmp_path):
    path = write(tmp_path, "in.tsv", 'a\tb\n1\thello, world\n2\t\n3\t"two\nlines"\n')

    assert rows(path) == [{"a": 1, "b": "hello, world"}, {"a": 2, "b": None}, {"a": 3, "b": "two\nlines"}]


def test_csv_repeated_column_names_are_told_apart(tmp_path):
    assert rows(write(tmp_path, "in.csv", "a,a,b\n1,2,3\n")) == [{"a": 1, "a.1": 2, "b": 3}]


@pytest.mark.parametrize(
    "late, kind, values",
    [
        ("2.5", pa.float64(), [0.0, 1.0, 2.5]),  # int -> float
        ("abc", pa.string(), ["0", "1", "abc"]),  # int -> text
        ("99999999999999999999", pa.float64(), [0.0, 1.0, 1e20]),  # past int64 -> float
    ],
)
def test_a_csv_column_that_stops_fitting_the_type_of_the_first_block_is_read_again_wider(
    tmp_path, monkeypatch, late, kind, values
):
    monkeypatch.setattr(sources, "CSV_BLOCK_BYTES", 64)
    monkeypatch.setattr(sources, "CSV_SAMPLE_BYTES", 64)
    filler = "".join(f"{i % 2},{'x' * 20}\n" for i in range(10))
    path = write(tmp_path, "in.csv", "n,pad\n" + filler + f"{late},end\n")
    source = Source(path)

    with source.batches() as first:
        assert first.schema.field("n").type == pa.int64()
        with pytest.raises(Retyped, match=f"CSV column 'n' holds '{late}', which is not int64"):
            list(first)
    table = read(source)

    assert table.schema.field("n").type == kind
    assert table.column("n").to_pylist() == [values[i % 2] for i in range(10)] + [values[2]]
    assert source.passes == 2


def test_the_types_come_from_a_sample_far_larger_than_a_block(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CSV_BLOCK_BYTES", 64)
    path = write(tmp_path, "in.csv", "n,pad\n" + "".join(f"{i},{'x' * 20}\n" for i in range(100)) + "2.5,end\n")
    source = Source(path)

    table = read(source)

    assert source.passes == 1  # no second pass: the sample saw the 2.5
    assert table.schema.field("n").type == pa.float64()
    assert table.num_rows == 101


def test_a_column_null_in_the_first_block_takes_the_type_of_its_first_value(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CSV_BLOCK_BYTES", 64)
    monkeypatch.setattr(sources, "CSV_SAMPLE_BYTES", 64)
    path = write(tmp_path, "in.csv", "a,b\n" + ",x\n" * 40 + "7,y\n8,z\n")

    table = read(Source(path))

    assert table.schema.field("a").type == pa.int64()
    assert table.column("a").to_pylist()[-2:] == [7, 8]


@pytest.mark.parametrize(
    "content, complaint",
    [
        (b"", "is empty: it has no header row"),
        (b"a,b\n1,2\n3\n", "not a valid CSV file: CSV parse error: Expected 2 columns, got 1"),
        ("a\n\xe9\n".encode("latin-1"), "not UTF-8"),
    ],
)
def test_bad_csv_is_an_input_error(tmp_path, content, complaint):
    path = tmp_path / "in.csv"
    path.write_bytes(content)

    with pytest.raises(InputError, match=complaint):
        rows(str(path))


def test_the_source_checksum_is_of_its_bytes(tmp_path):
    path = write(tmp_path, "in.csv", "a\n1\n2\n")
    source = Source(path)

    read(source)

    data = open(path, "rb").read()
    assert (source.sha256, source.size) == (hashlib.sha256(data).hexdigest(), len(data))


# Sources: JSON and JSON Lines


def test_json_array_with_nested_and_mixed_values(tmp_path):
    path = write(tmp_path, "in.json", json.dumps(RECORDS, ensure_ascii=False))

    table = read(Source(path))

    assert table.column_names == ["id", "name", "score", "tags", "extra"]
    assert table.schema.field("score").type == pa.float64()  # ints and floats: numbers
    # Nested values go as JSON text, marked so that the gateway reads them back as values.
    assert table.schema.field("tags").metadata == JSON_ENCODING
    assert table.column("tags").to_pylist() == ['["a", "b"]', None, None]
    assert table.column("extra").to_pylist() == [None, '{"k": "李"}', None]
    assert table.column("name").to_pylist() == ["Zoë", None, "O'Brien, \"Jr\""]


def test_json_array_is_read_a_chunk_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_CHUNK", 7)  # items straddle every read
    monkeypatch.setattr(sources, "JSON_BATCH_ROWS", 3)
    records = [{"i": i, "s": "é" * (i % 5), "big": 2**70 if i == 9 else i} for i in range(10)]
    path = write(tmp_path, "in.json", json.dumps(records, ensure_ascii=False, indent=1))

    table = read(Source(path))

    assert table.column("s").to_pylist() == [r["s"] for r in records]
    # An integer past 64 bits cannot be int64: the column goes as JSON text, the number intact.
    assert [json.loads(v) for v in table.column("big").to_pylist()] == [r["big"] for r in records]


@pytest.mark.parametrize(
    "text, complaint",
    [
        ('{"a": 1}', "must hold a JSON array of objects. Got an object instead"),
        ("[1, 2]", "Item 0 of .* must be a JSON object. Got a number instead"),
        ('[{"a": NaN}]', "not valid JSON: NaN is not valid JSON"),
        ("[{", "not valid JSON"),
        ('[{"a": 1} {"a": 2}]', "expected ',' or ']' after item 0"),
        ("", "not valid JSON: it is empty"),
    ],
)
def test_json_that_is_not_an_array_of_objects_is_an_input_error(tmp_path, text, complaint):
    with pytest.raises(InputError, match=complaint):
        rows(write(tmp_path, "in.json", text))


def test_empty_json_array_and_jsonl_blank_lines(tmp_path):
    assert rows(write(tmp_path, "in.json", " [ ] ")) == []
    assert rows(write(tmp_path, "in.jsonl", '{"a": 1, "s": "é"}\n\n{"a": null}\n')) == [
        {"a": 1, "s": "é"},
        {"a": None, "s": None},
    ]


def test_jsonl_error_names_the_line(tmp_path):
    with pytest.raises(InputError, match="line 2 must be a JSON object"):
        rows(write(tmp_path, "in.jsonl", '{"a": 1}\n[1]\n'))


def test_a_jsonl_key_first_seen_late_costs_one_more_pass_whatever_comes_after(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "JSON_BATCH_ROWS", 10)
    lines = [{"a": i} for i in range(50)] + [{"a": 1, "b": "late"}, {"a": "text now", "c": True}] + [{"a": 2}] * 20
    path = write(tmp_path, "in.ndjson", "".join(json.dumps(line) + "\n" for line in lines))
    source = Source(path)

    table = read(source)

    assert source.passes == 2
    assert table.column_names == ["a", "b", "c"]
    assert table.schema.field("a").metadata == JSON_ENCODING  # ints and text: JSON text
    assert table.column("b").to_pylist()[49:52] == [None, "late", None]
    assert table.column("c").to_pylist()[51] is True


# Sources: Parquet and Arrow


def test_parquet_and_arrow_sources_keep_their_types(tmp_path):
    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int32()),
            "city": pa.array(["Oslo", "Lima", "Oslo"]).dictionary_encode(),
            "when": pa.array([datetime.datetime(2024, 1, 1), None, datetime.datetime(2024, 1, 3)]),
            "tags": [["a"], None, []],
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    with ipc.new_file(str(tmp_path / "file.arrow"), table.schema) as writer:
        writer.write_table(table)
    with ipc.new_stream(str(tmp_path / "stream.arrows"), table.schema) as writer:
        writer.write_table(table)

    for name in ("in.parquet", "file.arrow", "stream.arrows"):
        source = Source(tmp_path / name)
        read_back = read(source)
        assert read_back.schema.field("id").type == pa.int32()
        assert read_back.column("city").to_pylist() == ["Oslo", "Lima", "Oslo"]  # dictionary decoded
        assert read_back.column("when").to_pylist()[0] == datetime.datetime(2024, 1, 1)
        assert read_back.column("tags").to_pylist() == ['["a"]', None, "[]"]
        assert source.sha256 == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()


def test_a_file_that_is_not_parquet_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not a valid Parquet file"):
        rows(write(tmp_path, "in.parquet", "a,b\n1,2\n"))


@pytest.mark.parametrize("name, complaint", [("in.xlsx", "extension must be one of"), ("missing.csv", "Cannot read")])
def test_unknown_or_missing_sources_are_input_errors(tmp_path, name, complaint):
    with pytest.raises(InputError, match=complaint):
        rows(str(tmp_path / name))


# Parts


def test_parts_are_arrow_streams_of_about_the_part_size_with_every_row_once():
    text = [hashlib.sha256(str(i).encode()).hexdigest()[: i % 40] for i in range(20_000)]  # compresses 2:1 at most
    table = pa.table({"id": range(20_000), "text": text})

    parts = list(split_parts(table.to_batches(max_chunksize=1000), table.schema, part_bytes=64 * 1024))

    assert [p.number for p in parts] == list(range(1, len(parts) + 1)) and len(parts) > 3
    assert all(len(p.body) < 64 * 1024 * 1.5 for p in parts)
    read_back = [ipc.open_stream(pa.py_buffer(p.body)).read_all() for p in parts]
    assert pa.concat_tables(read_back).to_pylist() == table.to_pylist()
    assert [p.rows for p in parts] == [t.num_rows for t in read_back]
    # zstd: the streams are smaller than the data they hold.
    assert sum(len(p.body) for p in parts) < table.nbytes


def test_a_source_without_rows_is_one_part_with_its_columns():
    schema = pa.schema([("a", pa.int64()), ("b", pa.string())])

    (part,) = split_parts(iter([]), schema)

    assert (part.number, part.rows) == (1, 0)
    assert ipc.open_stream(pa.py_buffer(part.body)).schema == schema


# Outputs

VALUES = pa.table(
    {
        "id": pa.array([1, 2, None], pa.int64()),
        "x": [1.5, float("nan"), float("inf")],
        "when": pa.array([datetime.datetime(2024, 5, 1, 12, 30), None, None], pa.timestamp("ms")),
        "mixed": pa.array(['{"k": [1, 2]}', '"text"', None], pa.large_string()),
        "s": ["=1+2", "plain", None],
    },
).replace_schema_metadata()
VALUES = VALUES.cast(
    pa.schema([f if f.name != "mixed" else f.with_metadata(JSON_ENCODING) for f in VALUES.schema])
)


@pytest.mark.parametrize("ext", ["jsonl", "json"])
def test_json_outputs_keep_the_value_rules(tmp_path, ext):
    path = tmp_path / f"out.{ext}"

    write_table(VALUES, path)

    text = path.read_text(encoding="utf-8")
    records = json.loads(text) if ext == "json" else [json.loads(line) for line in text.splitlines()]
    assert records == [
        {"id": 1, "x": 1.5, "when": "2024-05-01T12:30:00", "mixed": {"k": [1, 2]}, "s": "=1+2"},
        {"id": 2, "x": None, "when": None, "mixed": "text", "s": "plain"},  # NaN is null
        {"id": None, "x": None, "when": None, "mixed": None, "s": None},  # so is infinity
    ]
    assert '"id": 1,' in text  # integers stay integers, not 1.0


def test_json_outputs_of_no_rows(tmp_path):
    write_table(VALUES.slice(0, 0), tmp_path / "out.json")
    write_table(VALUES.slice(0, 0), tmp_path / "out.jsonl")

    assert json.loads((tmp_path / "out.json").read_text()) == []
    assert (tmp_path / "out.jsonl").read_text() == ""


def test_csv_output_neutralises_formulas_in_text_cells_and_names_unless_raw(tmp_path):
    table = pa.table({"=cmd": ["=HYPERLINK(\"http://x\")", "-12.5", "\tTab", None], "n": [-3, 0, 1, 2]})

    safe = write_table(table, tmp_path / "safe.csv")
    raw = write_table(table, tmp_path / "raw.csv", neutralise_formulas=False)

    assert (tmp_path / "safe.csv").read_text(encoding="utf-8") == (
        '"\'=cmd","n"\n"\'=HYPERLINK(""http://x"")",-3\n"-12.5",0\n"\'\tTab",1\n,2\n'
    )
    assert (tmp_path / "raw.csv").read_text(encoding="utf-8").startswith('"=cmd","n"\n"=HYPERLINK(')
    assert (safe.cells_neutralised, raw.cells_neutralised) == (2, 0)
    assert (safe.neutralise_formulas, raw.neutralise_formulas) == (True, False)


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
def test_neutralise_formula_and_the_csv_writer_agree(tmp_path, text, written):
    assert neutralise_formula(text) == written

    write_table(pa.table({"s": [text]}), tmp_path / "out.csv")

    line = (tmp_path / "out.csv").read_bytes().decode("utf-8").split("\n", 1)[1]  # a bare CR stays a CR
    assert line == '"' + written.replace('"', '""') + '"\n'


@pytest.mark.parametrize("ext", ["parquet", "arrow", "arrows"])
def test_binary_outputs_keep_types_and_text_as_received(tmp_path, ext):
    path = tmp_path / f"out.{ext}"

    written = write_table(VALUES, path)

    if ext == "parquet":
        back = pq.read_table(path)
    else:
        back = (ipc.open_file if ext == "arrow" else ipc.open_stream)(pa.OSFile(str(path))).read_all()
    assert back.column_names == VALUES.column_names
    assert back.column("s").to_pylist() == ["=1+2", "plain", None]  # never neutralised
    assert back.column("mixed").to_pylist() == VALUES.column("mixed").to_pylist()
    assert back.schema.field("when").type == pa.timestamp("ms")
    assert written.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (written.rows, written.bytes) == (3, path.stat().st_size)


@pytest.mark.parametrize("ext", ["csv", "jsonl", "json", "parquet", "arrow"])
@pytest.mark.parametrize("error", [ConnectionError, KeyboardInterrupt])  # the download broke; Ctrl-C
def test_an_output_that_fails_half_way_leaves_nothing_and_keeps_what_was_there(tmp_path, ext, error):
    path = tmp_path / f"out.{ext}"
    path.write_text("the previous output")

    with pytest.raises(error):
        with Output(path) as out:
            out.write(VALUES.to_batches()[0])
            raise error()

    assert path.read_text() == "the previous output"
    assert os.listdir(tmp_path) == [f"out.{ext}"]  # no temporary file left behind


def test_an_output_is_written_beside_its_path_and_missing_directories_are_made(tmp_path):
    path = tmp_path / "out" / "deeper" / "data.csv"

    assert check_output(str(path)) == "csv"
    write_table(pa.table({"a": [1]}), path)
    write_json({"b": 2}, str(tmp_path / "m.json"))

    assert path.read_text() == '"a"\n1\n'
    assert sorted(os.listdir(tmp_path)) == ["m.json", "out"]


def test_output_checks(tmp_path):
    source = write(tmp_path, "in.csv", "a\n1\n")
    assert check_output(str(tmp_path / "out.parquet")) == "parquet"
    with pytest.raises(InputError, match="extension must be one of .jsonl, .csv, .json, .parquet, .arrow, .arrows"):
        check_output(str(tmp_path / "out.txt"))
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        check_output(str(tmp_path / "dir.csv"))
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="is a file, not a directory"):
        check_output(str(tmp_path / "file" / "out.csv"))
    with pytest.raises(InputError, match="it exists. Pass --force"):
        check_output(source)
    with pytest.raises(InputError, match="it is the source"):
        check_output(os.path.join(str(tmp_path), ".", "in.csv"), source=source, force=True)
    assert check_output(source, source="http://example.org/in.csv", force=True) == "csv"


def test_manifest_path():
    assert manifest_path("out/data.csv") == "out/data.csv.manifest.json"


# Progress


def test_progress_bars_show_each_phase_in_its_unit():
    console = Console(file=__import__("io").StringIO(), force_terminal=True, width=120)

    with RichDisplay(console) as display:
        upload = display.task("Uploading", total=2_000_000, unit="bytes")
        upload.update(1_000_000)
        job = display.task("Job 3f2c5a0e", unit="chunks")
        job.update(3, total=4, description="Job 3f2c5a0e processing: 1/2 operations, running")
        download = display.task("Downloading", total=1_000_000, unit="rows")
        download.update(250_000)
        upload.finish()

    shown = console.file.getvalue()
    assert "Uploading" in shown and "2.0 MB/2.0 MB" in shown
    assert "Job 3f2c5a0e processing: 1/2 operations, running" in shown and "3/4 chunks" in shown
    assert "250,000/1,000,000 rows" in shown
    assert amount(5, None, "rows") == "5 rows"


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
    from harvester.client import GatewayClient

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
    monkeypatch.setattr("harvester.transport.time.monotonic", lambda: 100.0)

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


def test_the_harvesters_view_of_the_api_agrees_with_the_gateway():
    # The harvester keeps its own copies so that it loads neither Celery nor the workers; they must not drift.
    from harvester import client, status
    from workers import settings
    from workers import status as gateway_status

    assert {s.value: s.is_terminal for s in status.JobStatus} == {
        s.value: s.is_terminal for s in gateway_status.JobStatus
    }
    assert client.DEFAULT_GATEWAY == settings.SETTINGS["GATEWAY_URL"].default
