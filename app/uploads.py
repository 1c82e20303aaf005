"""Reading an uploaded file (a request body) into Arrow tables, by its ``Content-Type``.

Every format is read with pyarrow and streamed where the format allows, so no
upload is held in the gateway as Python objects:

- Arrow IPC streams are read batch by batch as they arrive;
- CSV, TSV and JSON Lines are parsed by pyarrow in one block per request body
  (at most ``MAX_CONTENT_LENGTH``), so column types are inferred from all of
  a part's rows, not from its first few; the body is read into that block
  first, here (:func:`_whole_body`), never by pyarrow's own threads;
- Parquet and Arrow IPC files need random access: they are spooled to a
  temporary file first;
- a JSON array of objects is decoded an object at a time into tables of at
  most ``CHUNK_ROWS`` rows (pyarrow reads only JSON Lines).

Errors never quote the data: pyarrow's messages are cut before any cell text.
"""

import contextlib
import io
import json
import shutil
import tempfile

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as paipc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from app.validation import too_deep, too_long
from workers import frames
from workers.errors import InvalidRequest

#: Upload formats by media type.
FORMATS = {
    "text/csv": "csv",
    "text/tab-separated-values": "tsv",
    "application/x-ndjson": "jsonl",
    "application/json": "json",
    "application/vnd.apache.parquet": "parquet",
    "application/vnd.apache.arrow.stream": "arrow",
    "application/vnd.apache.arrow.file": "arrow_file",
}
#: Names of the formats in messages.
_NAMES = {
    "csv": "CSV", "tsv": "TSV", "jsonl": "JSON Lines", "json": "a JSON array of objects", "parquet": "Parquet",
    "arrow": "an Arrow IPC stream", "arrow_file": "an Arrow IPC file",
}  # fmt: skip
#: CSV cells read as null: the harvester's list (pandas' longer default would null "NA" and "None").
CSV_NULLS = ["", "NaN", "nan"]
#: Bytes kept in memory before a Parquet or Arrow file body spills to disk.
SPOOL_BYTES = 8 * 1024 * 1024


def upload_format(content_type):
    """The format of a body from its ``Content-Type`` (parameters such as ``charset`` ignored); 415 otherwise."""
    media = (content_type or "").split(";")[0].strip().lower()
    try:
        return FORMATS[media]
    except KeyError:
        listed = ", ".join(FORMATS)
        raise InvalidRequest(
            "unsupported_media_type",
            f"A dataset body's Content-Type must be one of {listed}."
            + (f" Got {media!r}." if media else " None was given."),
            status=415,
        ) from None


def read_tables(stream, fmt, limits):
    """Yield the Arrow tables of the body ``stream`` in format ``fmt``; raise ``invalid_dataset`` if it is not one.

    ``limits`` is the app config: ``MAX_CONTENT_LENGTH`` sizes the parse block,
    ``CHUNK_ROWS`` the batches, ``MAX_STRING_LENGTH`` the longest text cell.
    """
    try:
        for table in _READERS[fmt](stream, limits):
            _check_names(table)
            _check_strings(table, limits["MAX_STRING_LENGTH"])
            yield table
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError, ValueError) as exc:
        if isinstance(exc, InvalidRequest):
            raise
        raise InvalidRequest("invalid_dataset", f"The body is not {_NAMES[fmt]}: {_reason(exc)}.") from None
    except RecursionError:  # a JSON value nested far deeper than any limit: the decoder gave up
        raise too_deep(limits["MAX_JSON_DEPTH"], None) from None


def _reason(exc):
    """pyarrow's message up to its second clause: 'CSV parse error: Expected 2 columns, got 3' and no row text."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    clauses = text.split(": ")
    return ": ".join(clauses[:2]).rstrip(".")[:200]


def _block(limits):
    # One block for the whole body: type inference sees every row of the part.
    return max(int(limits["MAX_CONTENT_LENGTH"]) + 1, 1 << 20)


def _whole_body(stream):
    """The rest of ``stream`` as one Arrow buffer, read in the request's own thread.

    pyarrow's CSV and JSON readers pull their input from threads of their own. Under gunicorn's gevent worker a
    request body is a socket of the request's thread's event loop: read from another thread, it can only wait for
    data that has not yet arrived by failing ("Cannot switch to a different thread"), a 500 whenever a body
    came in slower than it was parsed. They parse the body as one block anyway (:func:`_block`), so reading it
    first costs no more memory.
    """
    body = io.BytesIO()
    shutil.copyfileobj(stream, body, 1 << 20)
    return pa.py_buffer(body.getbuffer())


def _read_delimited(delimiter):
    def read(stream, limits):
        reader = pacsv.open_csv(
            pa.BufferReader(_whole_body(stream)),
            read_options=pacsv.ReadOptions(block_size=_block(limits), use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(null_values=CSV_NULLS, strings_can_be_null=True),
        )
        for batch in reader:
            yield pa.Table.from_batches([batch])

    return read


def _read_jsonl(stream, limits):
    body = pa.BufferReader(_whole_body(stream))
    yield pajson.read_json(body, read_options=pajson.ReadOptions(block_size=_block(limits)))


def _read_arrow_stream(stream, limits):
    # The IPC stream reader reads each message in the calling thread: batch by batch, as the body arrives.
    with paipc.open_stream(pa.PythonFile(stream, mode="r")) as reader:
        for batch in reader:
            yield pa.Table.from_batches([batch])


@contextlib.contextmanager
def _spooled(stream):
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        shutil.copyfileobj(stream, spool, 1 << 20)
        spool.seek(0)
        yield spool


def _read_parquet(stream, limits):
    with _spooled(stream) as spool:
        parquet = pq.ParquetFile(spool)
        for batch in parquet.iter_batches(batch_size=limits["CHUNK_ROWS"]):
            yield pa.Table.from_batches([batch])
        if parquet.metadata.num_rows == 0:
            yield parquet.schema_arrow.empty_table()


def _read_arrow_file(stream, limits):
    with _spooled(stream) as spool:
        reader = paipc.open_file(spool)
        for index in range(reader.num_record_batches):
            yield pa.Table.from_batches([reader.get_batch(index)])


def _read_json_array(stream, limits):
    """An array of objects, decoded one object at a time into tables of at most ``CHUNK_ROWS`` rows."""
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    text = _TextBuffer(stream)
    if text.next_char() != "[":
        raise ValueError("it must start with '['")
    text.advance(1)
    records, index, batch_rows = [], 0, max(1, min(limits["CHUNK_ROWS"], 50_000))
    if text.next_char() == "]":
        text.advance(1)
    else:
        while True:
            record = text.decode(decoder)
            if not isinstance(record, dict):
                raise InvalidRequest(
                    "invalid_dataset", f"The body must be an array of objects; item {index} is not an object.",
                    index=index,
                )
            records.append(record)
            index += 1
            if len(records) >= batch_rows:
                yield frames.records_to_table(records)
                records = []
            separator = text.next_char()
            text.advance(1)
            if separator == "]":
                break
            if separator != ",":
                raise ValueError(f"expected ',' or ']' after item {index - 1}")
    if text.next_char() != "":
        raise ValueError("it has data after the closing ']'")
    if records or index == 0:
        yield frames.records_to_table(records)


def _reject_constant(constant):
    raise ValueError(f"{constant} is not valid JSON")


class _TextBuffer:
    """UTF-8 text of a byte stream, read as needed, with what has been decoded dropped."""

    def __init__(self, stream, block=1 << 20):
        import codecs

        self.stream, self.block = stream, block
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.text, self.pos, self.eof = "", 0, False

    def _more(self, size):
        if self.eof:
            return False
        data = self.stream.read(size)
        if not data:
            self.eof = True
            self.text += self.decoder.decode(b"", final=True)
            return False
        self.text = self.text[self.pos :] + self.decoder.decode(data)
        self.pos = 0
        return True

    def next_char(self):
        """The next character that is not whitespace ("" at the end)."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.text) or not self._more(self.block):
                return self.text[self.pos : self.pos + 1]

    def advance(self, n):
        self.pos += n

    def decode(self, decoder):
        """The next JSON value; reads on (twice as much each time) while the value runs past the buffer."""
        size = self.block
        while True:
            self.next_char()
            try:
                value, end = decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                if not self._more(size):
                    raise
                size *= 2
                continue
            if end == len(self.text) and not self.eof:
                # A number at the end of the buffer may go on in the next block ("12" then "34").
                if self._more(size):
                    continue
            self.pos = end
            return value


_READERS = {
    "csv": _read_delimited(","),
    "tsv": _read_delimited("\t"),
    "jsonl": _read_jsonl,
    "json": _read_json_array,
    "parquet": _read_parquet,
    "arrow": _read_arrow_stream,
    "arrow_file": _read_arrow_file,
}


def _check_names(table):
    """``invalid_dataset`` for a column name used twice: one of the two would be lost."""
    seen = set()
    for name in table.column_names:
        if name in seen:
            raise InvalidRequest(
                "invalid_dataset", f"The body has two columns named {name!r}; rename one of them.", column=name
            )
        seen.add(name)


def _check_strings(table, limit):
    """``limit_exceeded`` for a text cell (or column name) longer than ``MAX_STRING_LENGTH`` characters."""
    import pyarrow.compute as pc

    for field, column in zip(table.schema, table.columns):
        if len(field.name) > limit:
            raise too_long(limit, "a column name")
        if (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)) and len(column):
            # A text has no more characters than bytes: counting characters (decoding UTF-8) is only needed
            # when some cell has more bytes than the limit, and byte lengths come from the offsets alone.
            if (pc.max(pc.binary_length(column)).as_py() or 0) <= limit:
                continue
            longest = pc.max(pc.utf8_length(column)).as_py()
            if longest is not None and longest > limit:
                raise too_long(limit, f"column {field.name!r}", column=field.name)
