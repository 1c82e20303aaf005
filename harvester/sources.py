"""Sources: a local file or an http(s) URL of a dataset, read as Arrow record batches.

No source is ever held whole in memory: :meth:`Source.batches` reads it a block
at a time and yields :class:`pyarrow.RecordBatch` es of at most
:data:`BATCH_BYTES`, all with one schema.

- CSV and TSV go through pyarrow's streaming CSV reader. Only ``""``, ``NaN``
  and ``nan`` are null (pandas' longer default list would also turn real values
  such as ``NA``, Namibia, into nulls); ``true``/``false`` in any of three cases
  are booleans; text stays text (dates are not parsed: ``cast_types`` does that).
  The column types come from a sample of :data:`CSV_SAMPLE_BYTES`, far larger
  than the blocks streamed, and the reader's read-ahead is held to a few blocks
  (:class:`_Gate`).
- JSON (an array of objects) and JSON Lines are decoded with the standard
  library, some thousands of records at a time, into columns whose types pyarrow
  infers. pyarrow's own JSON reader is not used: it cannot read a column whose
  values mix kinds (it stops at "changed from number to string"), it reads
  ``NaN`` and integers past 64 bits as floats, and its errors cannot name the line.
- Parquet (``ParquetFile.iter_batches``) and Arrow IPC files and streams keep
  their types. From a URL they are spooled to a temporary file first.

A column whose values have no one Arrow type (numbers and text, nested objects
or arrays) is sent as text: each cell holds its JSON, and the field's metadata
says so (:data:`JSON_ENCODING`), as the gateway marks such columns in results.

The types come from the start of the source. When a later block does not fit
them (the CSV reader's ``CSV conversion error to int64`` on ``2.5``, a JSON key
first seen on line 90,000), :meth:`Source.batches` raises :class:`Retyped`
after widening the types it keeps (int -> float -> text); the caller reads the
source again from the start with the wider types.
"""

import contextlib
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import tempfile
import threading
import time

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from harvester.errors import GatewayUnreachable, InputError
from harvester.formulas import PLAIN_NUMBER
from harvester.io import is_url, redact_urls, sha256_file, shown, source_format
from harvester.transport import make_session, send

#: Bytes of CSV the streaming reader takes at a time (pyarrow's default is 1 MiB); memory
#: holds a few blocks at a time.
CSV_BLOCK_BYTES = 4 * 1024 * 1024
#: Bytes at the start of a CSV the column types are inferred from, in one block before
#: streaming: a large sample makes a restart (:class:`Retyped`) rare.
CSV_SAMPLE_BYTES = 32 * 1024 * 1024
#: Blocks the CSV reader may read ahead of the batches taken from it. pyarrow's own
#: read-ahead is 32 blocks: :class:`_Gate` holds it to this.
CSV_BLOCKS_AHEAD = 3
#: Seconds a read held back by :class:`_Gate` waits while the batch asked for is not coming.
GATE_PATIENCE = 0.2
#: Largest record batch handed on, in bytes of Arrow data (bigger ones are sliced).
BATCH_BYTES = 16 * 1024 * 1024
#: JSON and JSON Lines: records per batch, and characters of JSON text per batch. Small: the
#: records are Python objects until their batch is built, some ten times the size of their text.
JSON_BATCH_ROWS = 10_000
JSON_BATCH_TEXT = 2 * 1024 * 1024
#: Longest JSON record (object) read from a JSON array, in characters.
MAX_JSON_RECORD = 64 * 1024 * 1024
#: Rows per batch read from a Parquet file.
PARQUET_BATCH_ROWS = 65_536
#: Bytes read from a file or a URL at a time.
READ_CHUNK = 1024 * 1024
#: Cells read as null in CSV and TSV. Only these.
CSV_NULLS = ["", "NaN", "nan"]
#: Field metadata of a text column whose cells hold JSON (the gateway's mark, in both directions).
JSON_ENCODING = {b"datajobs.encoding": b"json"}

_CONVERSION_ERROR = re.compile(r"In CSV column #(\d+): .*CSV conversion error to (\w+): invalid value '(.*)'", re.S)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_INT64 = (-(2**63), 2**63 - 1)


class Retyped(Exception):
    """The source did not fit the types inferred so far; they were widened: read it again from the start.

    Not a :class:`~harvester.errors.HarvesterError`: the upload catches it and starts over.
    """


class Source:
    """A dataset to read: a local path or an http(s) URL, in any format of :data:`~harvester.io.READ_FORMATS`.

    Args:
        location: the path or URL; the format comes from its extension.
        session: ``requests.Session`` for URLs (the client's retrying one); a new one when None.
        deadline: ``time.monotonic()`` value by which a URL must answer.

    After each pass, ``sha256`` is the SHA-256 of the bytes read and ``size`` their
    count. While reading, ``done`` and ``total`` (``unit``: ``bytes`` or ``rows``)
    say how far it got; ``total`` is None when unknown (a URL without a length).

    Raises (from :meth:`batches`):
        InputError: missing or unreachable source, bad content (with what and where).
        Retyped: see the module's docstring.
    """

    def __init__(self, location, *, session=None, deadline=None):
        self.location = str(location)
        self.shown = shown(self.location)  # what messages say: a URL without its credentials or query
        self.format = source_format(self.location)
        self.session, self.deadline = session, deadline
        self.sha256 = self.size = None
        self.done, self.total, self.unit = 0, None, "bytes"
        self.passes = 0
        # What earlier passes learnt: CSV column types; JSON columns and their kinds.
        self._csv_types = {}
        self._csv_names = None
        self._json_kinds = None

    def __repr__(self):
        return f"Source({self.shown!r})"

    def batches(self):
        """Read the source from the start; return :class:`Batches` (a schema and an iterator of record batches).

        Close it (or use it in a ``with`` block) to release the file or the connection.
        """
        self.passes += 1
        read = {"csv": self._csv, "tsv": self._csv, "json": self._json, "jsonl": self._json}.get(self.format, self._binary)
        with contextlib.ExitStack() as stack:
            self.done = 0
            schema, iterator = read(stack)
            return Batches(schema, iterator, stack.pop_all())

    # Raw bytes

    @contextlib.contextmanager
    def _open(self):
        """Yield the source's bytes as a :class:`_Reading` (counted and hashed as they are read)."""
        if is_url(self.location):
            response = self._get()
            length = response.headers.get("Content-Length")
            self.total = int(length) if length and length.isdigit() else None
            response.raw.decode_content = True
            try:
                yield _Reading(response.raw, self)
            finally:
                response.close()
            return
        try:
            f = open(self.location, "rb")
        except OSError as exc:
            raise InputError(f"Cannot read {self.shown}: {exc.strerror}.") from None
        with f:
            self.total = os.fstat(f.fileno()).st_size
            yield _Reading(f, self)

    def _get(self):
        try:
            response = send(
                self.session or make_session(), "GET", self.location, deadline=self.deadline, stream=True, target="source"
            )
        except GatewayUnreachable as exc:
            raise InputError(f"Cannot fetch {self.shown}: {redact_urls(str(exc))}") from None
        if response.status_code >= 400:
            response.close()
            raise InputError(f"Cannot fetch {self.shown}: it answered {response.status_code} {response.reason}.")
        return response

    def _finish(self, reading):
        self.sha256, self.size = reading.digest.hexdigest(), reading.count

    # CSV and TSV

    def _csv_options(self, block_size):
        """pyarrow's (read, parse, convert) options for this CSV, with what earlier reads learnt."""
        read = pcsv.ReadOptions(block_size=block_size)
        if self._csv_names is not None:
            read.column_names, read.skip_rows = self._csv_names, 1
        parse = pcsv.ParseOptions(delimiter="\t" if self.format == "tsv" else ",", newlines_in_values=True)
        convert = pcsv.ConvertOptions(
            null_values=CSV_NULLS,
            strings_can_be_null=True,
            true_values=["true", "True", "TRUE"],
            false_values=["false", "False", "FALSE"],
            column_types=self._csv_types,
        )
        return read, parse, convert

    def _csv_reader(self, stream):
        read, parse, convert = self._csv_options(CSV_BLOCK_BYTES)
        try:
            return pcsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid as exc:
            raise self._csv_error(exc, "TSV" if self.format == "tsv" else "CSV") from None

    def _sample_csv(self):
        """Take the column types from the first :data:`CSV_SAMPLE_BYTES` (up to a line end), read as one block.

        When the sample cannot be read (its cut fell inside a quoted cell, say), the
        streaming reader infers the types from its own first block instead.
        """
        with self._open() as reading:
            head = reading.read(CSV_SAMPLE_BYTES)
        self.done = 0
        # Up to the last line end (a view, not a copy); the whole file when it is shorter than the sample.
        end = head.rfind(b"\n") + 1 if len(head) == CSV_SAMPLE_BYTES else len(head)
        if not end:
            return
        read, parse, convert = self._csv_options(end + 1)
        try:
            sample = pa.py_buffer(memoryview(head)[:end])
            schema = pcsv.read_csv(sample, read_options=read, parse_options=parse, convert_options=convert).schema
        except pa.ArrowInvalid:
            return
        finally:
            sample = head = None
        self._settle_csv_schema(schema)
        names = self._csv_names or schema.names
        for name, field in zip(names, schema):
            if not pa.types.is_null(field.type):  # a column blank in all the sample is inferred later
                self._csv_types.setdefault(name, field.type)

    def _csv(self, stack):
        if self.passes == 1:
            self._sample_csv()
        while True:
            with contextlib.ExitStack() as attempt:
                reading = attempt.enter_context(self._open())
                reading.gate = _Gate(CSV_BLOCKS_AHEAD)
                # Let go of a read held back once this pass ends, whatever way, so pyarrow's thread ends too.
                attempt.callback(reading.gate.open)
                with reading.gate.pulling():
                    reader = self._csv_reader(reading)
                # Names or types to fix, seen in the first block: open again before anything is sent.
                if not self._settle_csv_schema(reader.schema):
                    stack.push(attempt.pop_all())
                    return reader.schema, self._csv_batches(reading, reader)

    def _settle_csv_schema(self, schema):
        """Fix what the first block shows (repeated names, dates, binary); return whether to read again."""
        again = False
        if self._csv_names is None and len(set(schema.names)) < len(schema.names):
            self._csv_names, again = _unique_names(schema.names), True
        for field in schema:
            if pa.types.is_binary(field.type):
                raise InputError(f"{self.shown} is not UTF-8 text (column {field.name!r}).")
            # Text stays text, as the JSON sources keep it: dates are parsed by cast_types, not on the way in.
            if pa.types.is_temporal(field.type):
                self._csv_types[field.name], again = pa.string(), True
        return again

    def _csv_batches(self, reading, reader):
        what = "TSV" if self.format == "tsv" else "CSV"
        try:
            while True:
                with reading.gate.pulling():
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        break
                reading.gate.taken()
                yield from bounded(batch)
        except pa.ArrowInvalid as exc:
            found = _CONVERSION_ERROR.search(str(exc))
            if not found:
                raise self._csv_error(exc, what) from None
            index, to, value = int(found.group(1)), found.group(2), found.group(3)
            field = reader.schema.field(index)
            wider = _wider_csv_type(field.type, value)
            self._csv_types[field.name] = wider
            raise Retyped(
                f"{what} column {field.name!r} holds {value[:40]!r}, which is not {to}: reading it as {wider}"
            ) from None
        finally:
            # Before the reader is freed, which waits for its reading thread: that thread must not be held.
            reading.gate.open()
        self._finish(reading)

    def _csv_error(self, exc, what):
        text = str(exc)
        if "Empty CSV file" in text:
            return InputError(f"{self.shown} is empty: it has no header row.")
        if "invalid UTF8" in text:
            return InputError(f"{self.shown} is not UTF-8 text ({text}).")
        return InputError(f"{self.shown} is not a valid {what} file: {text}")

    # JSON and JSON Lines

    def _json(self, stack):
        reading = stack.enter_context(self._open())
        text = io.TextIOWrapper(io.BufferedReader(reading, READ_CHUNK), encoding="utf-8-sig", newline="")
        if self.format == "jsonl":
            chunks = _json_lines(text, self.shown)
        else:
            chunks = _chunks(_json_array(text, self.shown))
        first = next(chunks, [])
        if self._json_kinds is None:
            self._json_kinds = _merge_kinds({}, first)[0]
        return _json_schema(self._json_kinds), self._json_batches(reading, [first], chunks)

    def _json_batches(self, reading, first, chunks):
        schema = _json_schema(self._json_kinds)
        # The first chunk was read to learn the columns; taken out of its list so that it is freed once sent.
        for chunk in itertools.chain([first.pop()], chunks):
            kinds, columns = _merge_kinds(dict(self._json_kinds), chunk)
            if kinds != self._json_kinds:
                # Something new (a key, a kind). Read on to the end without sending, so that one
                # more pass knows every column, rather than one pass per surprise.
                del chunk, columns
                for rest in chunks:
                    kinds = _merge_kinds(kinds, rest)[0]
                changed = [name for name in kinds if self._json_kinds.get(name) != kinds[name]]
                self._json_kinds = kinds
                names = ", ".join(map(repr, changed[:5])) + (", ..." if len(changed) > 5 else "")
                raise Retyped(f"{self.shown}: a key first seen late, or values of mixed kinds, in {names}")
            if chunk:
                batch = _json_batch(columns, len(chunk), schema, kinds)
                del chunk, columns  # before the next chunk is read: one chunk of Python objects at a time
                yield batch
        self._finish(reading)

    # Parquet and Arrow IPC

    def _binary(self, stack):
        if is_url(self.location):
            path = stack.enter_context(self._spooled())
        else:
            path = self.location
            if not os.path.isfile(path):
                raise InputError(f"Cannot read {path}: No such file.")
            self.sha256, self.size = sha256_file(path)
        try:
            schema, batches, rows = self._open_binary(path, stack)
        except (pa.ArrowInvalid, OSError) as exc:
            raise self._binary_error(exc) from None
        # Progress in rows: how far a Parquet reader is in the file's bytes says little.
        self.unit, self.total = "rows", rows
        return _normal_schema(schema), self._binary_batches(batches)

    def _open_binary(self, path, stack):
        """Return (schema, iterator of batches, row count or None) of a Parquet or Arrow file."""
        if self.format == "parquet":
            # Buffered reads, a page at a time; pre-buffering would read whole row groups (of any size) at once.
            parquet = pq.ParquetFile(path, buffer_size=READ_CHUNK, pre_buffer=False)
            stack.enter_context(contextlib.closing(parquet))
            batches = parquet.iter_batches(PARQUET_BATCH_ROWS, use_threads=False)
            return parquet.schema_arrow, batches, parquet.metadata.num_rows
        f = stack.enter_context(pa.OSFile(str(path), "rb"))
        magic = f.read(6)
        f.seek(0)
        if magic == b"ARROW1":  # the IPC file format; otherwise an IPC stream
            reader = ipc.open_file(f)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            return reader.schema, batches, reader.count_rows()
        reader = ipc.open_stream(f)
        return reader.schema, iter(reader), None

    def _binary_batches(self, batches):
        try:
            for batch in batches:
                for piece in bounded(batch):
                    self.done += piece.num_rows
                    yield _normal_batch(piece)
        except (pa.ArrowInvalid, OSError) as exc:
            raise self._binary_error(exc) from None

    def _binary_error(self, exc):
        return InputError(f"{self.shown} is not a valid {self.format.capitalize()} file: {exc}")

    @contextlib.contextmanager
    def _spooled(self):
        """Download the URL to a temporary file (hashing it on the way); yield its path."""
        fd, path = tempfile.mkstemp(prefix="harvester-", suffix=os.path.splitext(self.shown)[1])
        try:
            with os.fdopen(fd, "wb") as out, self._open() as reading:
                shutil.copyfileobj(reading, out, READ_CHUNK)
                self._finish(reading)
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


class Batches:
    """What :meth:`Source.batches` returns: ``schema``, and iterating gives record batches of that schema."""

    def __init__(self, schema, iterator, resources):
        self.schema, self._iterator, self._resources = schema, iterator, resources

    def __iter__(self):
        return self._iterator

    def close(self):
        """Stop reading; close the file or the connection."""
        # The resources first: they let go of pyarrow's reading thread (see _Gate), which the reader,
        # freed with the iterator, waits for.
        try:
            self._resources.close()
        finally:
            self._iterator.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _Reading(io.RawIOBase):
    """A binary stream that counts and hashes the bytes read through it, and reports them to its source."""

    def __init__(self, raw, source):
        self.raw, self.source = raw, source
        self.count, self.digest = 0, hashlib.sha256()
        self.gate = None

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def read(self, size=-1):
        if self.gate is not None:
            self.gate.wait()
        data = self.raw.read() if size is None or size < 0 else self.raw.read(size)
        self._seen(data)
        return data

    def _seen(self, data):
        self.count += len(data)
        self.digest.update(data)
        self.source.done = self.count


class _Gate:
    """Holds a reader's reads to ``ahead`` more than the batches taken from it.

    pyarrow's streaming CSV reader reads blocks on a thread of its own, up to 32
    ahead of the batches asked for; a read waits here instead. While the reader's
    consumer is itself waiting for a batch (``pulling``), one more read goes
    through every :data:`GATE_PATIENCE` seconds: that batch may need more blocks
    than counted (a row longer than a block), and holding them would never end.
    """

    def __init__(self, ahead):
        self.ahead = ahead
        self.reads = self.batches = 0
        self.since = None  # when the consumer started waiting for a batch, or None
        self.is_open = False
        self._changed = threading.Condition()

    def wait(self):
        with self._changed:
            while not self._may_read():
                self._changed.wait(GATE_PATIENCE)
            self.reads += 1

    def _may_read(self):
        waited = 0 if self.since is None else int((time.monotonic() - self.since) / GATE_PATIENCE)
        return self.is_open or self.reads < self.batches + self.ahead + waited

    @contextlib.contextmanager
    def pulling(self):
        """Mark the consumer as waiting for a batch (or for the reader to open)."""
        with self._changed:
            self.since = time.monotonic()
        try:
            yield
        finally:
            with self._changed:
                self.since = None

    def taken(self):
        """One more batch taken: one more block may be read."""
        with self._changed:
            self.batches += 1
            self._changed.notify_all()

    def open(self):
        """Let every read through from now on."""
        with self._changed:
            self.is_open = True
            self._changed.notify_all()


def _unique_names(names):
    """Repeated column names made unique as pandas does: ``a, a`` -> ``a, a.1``."""
    seen, unique = {}, []
    for name in names:
        candidate = name
        while candidate in seen:
            seen[name] += 1
            candidate = f"{name}.{seen[name]}"
        seen[candidate] = 0
        unique.append(candidate)
    return unique


def _wider_csv_type(current, value):
    """The type a CSV column takes after ``value`` did not convert to ``current``: int -> float -> text."""
    if pa.types.is_null(current):
        if _INTEGER.fullmatch(value) and _INT64[0] <= int(value) <= _INT64[1]:
            return pa.int64()
        if PLAIN_NUMBER.fullmatch(value):
            return pa.float64()
        if value in ("true", "True", "TRUE", "false", "False", "FALSE"):
            return pa.bool_()
        return pa.string()
    if pa.types.is_integer(current) and PLAIN_NUMBER.fullmatch(value):
        return pa.float64()
    return pa.string()


def bounded(batch, most_bytes=None):
    """Yield ``batch`` in slices of at most about ``most_bytes`` (default :data:`BATCH_BYTES`)."""
    most_bytes = most_bytes or BATCH_BYTES
    size = batch.nbytes
    if size <= most_bytes or batch.num_rows <= 1:
        yield batch
        return
    step = max(1, batch.num_rows * most_bytes // size)
    for start in range(0, batch.num_rows, step):
        yield batch.slice(start, step)


# JSON


def _reject_constant(constant):
    raise ValueError(f"{constant} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _json_type(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _json_lines(text, name):
    """Yield the records of a JSON Lines stream in lists of up to :data:`JSON_BATCH_ROWS`; blank lines are skipped.

    A list's lines are decoded in one go, as the items of one JSON array; only
    when that fails are they decoded one by one, to name the line at fault.
    """
    lines, numbers, size, number = [], [], 0, 0
    try:
        for number, line in enumerate(text, start=1):
            if line.strip():
                lines.append(line)
                numbers.append(number)
                size += len(line)
            if len(lines) >= JSON_BATCH_ROWS or size >= JSON_BATCH_TEXT:
                yield _decode_lines(lines, numbers, name)
                lines, numbers, size = [], [], 0
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not UTF-8 text ({exc.reason} near line {number + 1}).") from None
    if lines:
        yield _decode_lines(lines, numbers, name)


def _decode_lines(lines, numbers, name):
    """The records of ``lines`` (line ``numbers`` of ``name``)."""
    try:
        records = _DECODER.decode("[" + ",".join(lines) + "]")
    except ValueError:
        records = None
    # As many records as lines, all objects: else a line held no object, or two ("{...}, {...}").
    if records is not None and len(records) == len(lines) and all(type(r) is dict for r in records):
        return records
    for number, line in zip(numbers, lines):
        try:
            record = _DECODER.decode(line)
        except ValueError as exc:
            raise InputError(f"{name} line {number} is not valid JSON: {exc}.") from None
        if not isinstance(record, dict):
            raise InputError(f"{name} line {number} must be a JSON object. Got {_json_type(record)} instead.")
    raise AssertionError("unreachable: the lines decode one by one but not together")


_FIRST_CHAR_TYPE = {"{": "an object", '"': "a string", "t": "a boolean", "f": "a boolean", "n": "null"}


def _json_array(text, name):
    """Yield ``(record, text length)`` for each item of a JSON array, read a chunk at a time."""
    buffer, at, eof, index = "", 0, False, 0

    def fill():
        nonlocal buffer, at, eof
        try:
            chunk = text.read(READ_CHUNK)
        except UnicodeDecodeError as exc:
            raise InputError(f"{name} is not UTF-8 text ({exc.reason} near item {index}).") from None
        buffer, at = buffer[at:] + chunk, 0
        eof = not chunk

    def skip_space():
        nonlocal at
        while True:
            while at < len(buffer) and buffer[at] in " \t\r\n":
                at += 1
            if at < len(buffer) or eof:
                return
            fill()

    fill()
    skip_space()
    if at >= len(buffer):
        raise InputError(f"{name} is not valid JSON: it is empty.")
    if buffer[at] != "[":
        kind = _FIRST_CHAR_TYPE.get(buffer[at], "a number")
        raise InputError(f"{name} must hold a JSON array of objects. Got {kind} instead.")
    at += 1
    skip_space()
    if buffer[at : at + 1] == "]":
        return
    while True:
        while True:
            try:
                record, end = _DECODER.raw_decode(buffer, at)
                break
            except ValueError as exc:
                # Most often the item runs past the end of the buffer: read more and try again.
                if eof or len(buffer) - at > MAX_JSON_RECORD:
                    # The message only: its line and column count from the buffer, not from the file.
                    reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                    raise InputError(f"{name} is not valid JSON: {reason} (item {index}).") from None
                fill()
        if not isinstance(record, dict):
            raise InputError(f"Item {index} of {name} must be a JSON object. Got {_json_type(record)} instead.")
        yield record, end - at
        at, index = end, index + 1
        skip_space()
        separator = buffer[at : at + 1]
        at += 1
        if separator == "]":
            return
        if separator != ",":
            raise InputError(f"{name} is not valid JSON: expected ',' or ']' after item {index - 1}.")
        skip_space()


def _chunks(records):
    """Group ``(record, length)`` pairs into lists of records of at most :data:`JSON_BATCH_ROWS` rows or so much text."""
    chunk, text = [], 0
    for record, length in records:
        chunk.append(record)
        text += length
        if len(chunk) >= JSON_BATCH_ROWS or text >= JSON_BATCH_TEXT:
            yield chunk
            chunk, text = [], 0
    if chunk:
        yield chunk


# The kinds a JSON column can have, from narrowest: each gives one Arrow type.
_KIND_TYPES = {"null": pa.null(), "bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "string": pa.string()}
_TYPE_KINDS = {t: kind for kind, t in _KIND_TYPES.items()}


def _infer(values):
    """``(kind, array)`` of one column's Python values: pyarrow infers the type; ``json`` when it has none flat."""
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        return "json", None  # mixed kinds (numbers and text, say) or an integer past 64 bits
    return _TYPE_KINDS.get(array.type, "json"), array  # "json" for objects and arrays (structs, lists)


def _join(a, b):
    """The kind of a column holding values of kinds ``a`` and ``b``."""
    if a == b or b == "null":
        return a
    if a == "null":
        return b
    if {a, b} == {"int", "float"}:
        return "float"
    return "json"


def _merge_kinds(kinds, records):
    """Widen ``kinds`` (column -> kind, in order of first appearance) by ``records``.

    Returns ``(kinds, columns)``: ``columns`` maps each column to its values and
    what pyarrow made of them, ``(values, kind, array)``, to build the batch from.
    """
    names = dict.fromkeys(kinds)
    if any(record.keys() - names.keys() for record in records):
        names.update(dict.fromkeys(key for record in records for key in record))
    columns = {}
    for name in names:
        values = [record.get(name) for record in records]
        kind, array = _infer(values)
        columns[name] = (values, kind, array)
        kinds[name] = _join(kinds[name], kind) if name in kinds else kind
    return kinds, columns


def _json_schema(kinds):
    return pa.schema(
        pa.field(name, pa.string(), metadata=JSON_ENCODING) if kind == "json" else pa.field(name, _KIND_TYPES[kind])
        for name, kind in kinds.items()
    )


def _json_text(value):
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _json_batch(columns, rows, schema, kinds):
    """The record batch of one chunk's ``columns`` (from :func:`_merge_kinds`), typed as ``schema``."""
    arrays = []
    for name, kind in kinds.items():
        values, found, array = columns[name]
        if kind == "json":
            array = pa.array([_json_text(value) for value in values], pa.string())
        elif found == "null":
            array = pa.nulls(rows, _KIND_TYPES[kind])
        elif found != kind:  # ints in a column of numbers
            array = array.cast(_KIND_TYPES[kind])
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# Parquet and Arrow: the gateway takes flat columns; nested ones go as JSON text, dictionaries decoded.


def _is_nested(data_type):
    return pa.types.is_nested(data_type)


def _normal_schema(schema):
    fields = []
    for field in schema:
        if _is_nested(field.type):
            fields.append(pa.field(field.name, pa.string(), metadata=JSON_ENCODING))
        elif pa.types.is_dictionary(field.type):
            fields.append(pa.field(field.name, field.type.value_type, metadata=field.metadata))
        else:
            fields.append(field)
    return pa.schema(fields)


def _normal_batch(batch):
    if not any(_is_nested(t) or pa.types.is_dictionary(t) for t in batch.schema.types):
        return batch
    schema = _normal_schema(batch.schema)
    arrays = []
    for column, field in zip(batch.columns, schema):
        if _is_nested(column.type):
            column = pa.array([_json_text(value) for value in column.to_pylist()], pa.string())
        elif pa.types.is_dictionary(column.type):
            column = column.cast(field.type)
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
