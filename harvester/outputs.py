"""Outputs: a job's result written to a file batch by batch, atomically.

:class:`Output` writes to a temporary file beside the output path and moves it
there only once complete, so a failed or interrupted run leaves no partial file.
Formats come from the extension (:data:`~harvester.io.WRITE_FORMATS`):

- ``.parquet`` (``pq.ParquetWriter``) and ``.arrow`` / ``.arrows`` (Arrow IPC file /
  stream) keep the result's types; columns the gateway sent as JSON text stay text.
- ``.jsonl`` and ``.json`` (an array) hold one object per row: NaN and infinities
  are null, datetimes ISO 8601, integers stay integers, JSON-text columns are
  decoded back into their values.
- ``.csv`` is written as the gateway's CSV download writes it (pyarrow's CSV
  writer: text cells in double quotes, ``true``/``false``, nulls empty), and is
  meant for spreadsheets: a text cell or column name a spreadsheet would run as a
  formula gets a leading ``'`` (:mod:`harvester.formulas`, the gateway's rule
  too) unless ``neutralise_formulas`` is false. JSON-text columns keep their text.
"""

import base64
import contextlib
import datetime
import decimal
import json
import math

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from harvester.errors import InputError
from harvester.formulas import neutralise_array, neutralise_formula
from harvester.io import atomic_path, output_format, sha256_file
from harvester.sources import JSON_ENCODING

#: Rows turned into Python values at a time for JSON and JSON Lines (bounds their memory).
TEXT_SLICE_ROWS = 10_000
#: How CSV is written: the options of the gateway's CSV download (``app/results.py``), so the two agree.
CSV_OPTIONS = pcsv.WriteOptions(include_header=True, quoting_style="needed")


def is_json_text(field):
    """Whether a result column holds JSON text (the gateway's mark for a column of mixed or nested values)."""
    return bool(field.metadata) and all(field.metadata.get(key) == value for key, value in JSON_ENCODING.items())


class Output:
    """A file being written from record batches: ``with Output(path) as out: out.write(batch)``.

    Args:
        path: where the file goes once complete.
        fmt: one of :data:`~harvester.io.WRITE_FORMATS`; from the extension when None.
        neutralise_formulas: CSV only (see the module's docstring).

    The first :meth:`write` (or :meth:`begin`) fixes the schema. On leaving the
    ``with`` block without an error the file is synced and moved onto ``path``;
    with one, the temporary file is removed and nothing is left at ``path``.
    Afterwards ``rows``, ``bytes``, ``sha256`` and ``cells_neutralised`` describe it.

    Raises:
        InputError: the file cannot be written (disk full, permissions).
    """

    def __init__(self, path, fmt=None, *, neutralise_formulas=True):
        self.path = str(path)
        self.format = fmt or output_format(self.path)
        self.neutralise_formulas = neutralise_formulas and self.format == "csv"
        self.schema = None
        self.rows = self.cells_neutralised = 0
        self.bytes = self.sha256 = None
        self._atomic = self._temp = self._writer = None

    def __enter__(self):
        self._atomic = atomic_path(self.path)
        try:
            self._temp = self._atomic.__enter__()
        except OSError as exc:
            raise InputError(f"Cannot write {self.path}: {exc.strerror or exc}.") from None
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            try:
                if self._writer is None:
                    raise RuntimeError("Output closed before its schema was known: call begin(schema).")
                self._writer.close()
                self.sha256, self.bytes = sha256_file(self._temp)
            except BaseException as exc:
                self._atomic.__exit__(type(exc), exc, exc.__traceback__)  # removes the temporary file
                if isinstance(exc, OSError):
                    raise InputError(f"Cannot write {self.path}: {exc.strerror or exc}.") from None
                raise
        elif self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.abort()
        try:
            return self._atomic.__exit__(kind, error, traceback)
        except OSError as exc:
            raise InputError(f"Cannot write {self.path}: {exc.strerror or exc}.") from None

    def begin(self, schema):
        """Fix the schema (the result's, as downloaded); a later call must give the same one."""
        if self.schema is not None:
            if not schema.equals(self.schema):
                raise ValueError(f"The result's columns changed while writing {self.path}.")
            return
        self.schema = schema
        try:
            self._writer = _WRITERS[self.format](self._temp, schema, self)
        except OSError as exc:
            raise InputError(f"Cannot write {self.path}: {exc.strerror or exc}.") from None

    def write(self, batch):
        """Append a record batch."""
        self.begin(batch.schema)
        try:
            self._writer.write(batch)
        except OSError as exc:
            raise InputError(f"Cannot write {self.path}: {exc.strerror or exc}.") from None
        self.rows += batch.num_rows


# Binary formats


class _ParquetWriter:
    def __init__(self, path, schema, output):
        self._writer = pq.ParquetWriter(path, schema)

    def write(self, batch):
        self._writer.write_batch(batch)

    def close(self):
        self._writer.close()

    def abort(self):
        self._writer.close()


class _ArrowWriter:
    def __init__(self, path, schema, output, stream=False):
        self._sink = pa.OSFile(path, "wb")
        self._writer = (ipc.new_stream if stream else ipc.new_file)(self._sink, schema)

    def write(self, batch):
        self._writer.write_batch(batch)

    def close(self):
        self._writer.close()
        self._sink.close()

    def abort(self):
        self._sink.close()


# JSON and JSON Lines


class _JsonTextWriter:
    def __init__(self, path, schema, output):
        self.output, self.schema = output, schema
        self._file = open(path, "x", encoding="utf-8", newline="")
        self._json_text = [is_json_text(field) for field in schema]
        self.start()

    def start(self):
        pass

    def write(self, batch):
        for start in range(0, batch.num_rows, TEXT_SLICE_ROWS):
            self.write_rows(batch.slice(start, TEXT_SLICE_ROWS))

    def close(self):
        self.end()
        self._file.close()

    def end(self):
        pass

    def abort(self):
        self._file.close()

    def columns(self, batch):
        """The batch's columns as lists of Python values: non-finite floats as None, JSON text decoded."""
        columns = []
        for column, json_text in zip(batch.columns, self._json_text):
            if pa.types.is_floating(column.type):
                column = pc.if_else(pc.is_finite(column), column, pa.scalar(None, column.type))
            values = column.to_pylist()
            if json_text:
                values = [None if value is None else json.loads(value) for value in values]
            columns.append(values)
        return columns


class _JsonLinesWriter(_JsonTextWriter):
    def write_rows(self, batch):
        names = self.schema.names
        lines = [_dumps(dict(zip(names, row))) for row in zip(*self.columns(batch))]
        if lines:
            self._file.write("\n".join(lines) + "\n")


class _JsonWriter(_JsonTextWriter):
    def start(self):
        self._first = True

    def write_rows(self, batch):
        names = self.schema.names
        for row in zip(*self.columns(batch)):
            self._file.write("[\n" if self._first else ",\n")
            self._file.write(_dumps(dict(zip(names, row))))
            self._first = False

    def end(self):
        self._file.write("[]\n" if self._first else "\n]\n")


class _CsvWriter:
    """CSV as the gateway's ``?format=csv`` download writes it: pyarrow's writer, the same options, the same guard."""

    def __init__(self, path, schema, output):
        self.output = output
        names = schema.names
        if output.neutralise_formulas:
            # Header cells too: a column named "=cmd" would run as well.
            names = [neutralise_formula(name) for name in names]
        self._schema = pa.schema([field.with_name(name) for field, name in zip(schema, names)])
        self._sink = pa.OSFile(path, "wb")
        self._writer = pcsv.CSVWriter(self._sink, self._schema, write_options=CSV_OPTIONS)

    def write(self, batch):
        arrays = list(batch.columns)
        if self.output.neutralise_formulas:
            for i, column in enumerate(arrays):
                if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                    arrays[i], changed = neutralise_array(column)
                    self.output.cells_neutralised += changed
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self._schema))

    def close(self):
        self._writer.close()
        self._sink.close()

    def abort(self):
        self._sink.close()


_WRITERS = {
    "parquet": _ParquetWriter,
    "arrow": _ArrowWriter,
    "arrows": lambda path, schema, output: _ArrowWriter(path, schema, output, stream=True),
    "jsonl": _JsonLinesWriter,
    "json": _JsonWriter,
    "csv": _CsvWriter,
}


# JSON values


def _json_default(value):
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _finite(value):
    """``value`` with NaN and infinities, at any depth, as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _dumps(record):
    try:
        return json.dumps(record, ensure_ascii=False, default=_json_default, allow_nan=False)
    except ValueError:  # a NaN inside a nested value: rare, so only then walk the record
        return json.dumps(_finite(record), ensure_ascii=False, default=_json_default)


def write_table(table, path, fmt=None, *, neutralise_formulas=True):
    """Write a whole :class:`pyarrow.Table` to ``path`` atomically; return the :class:`Output`. For tests and small data."""
    with Output(path, fmt, neutralise_formulas=neutralise_formulas) as out:
        out.begin(table.schema)
        for batch in table.to_batches():
            out.write(batch)
    return out
