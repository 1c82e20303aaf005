"""Datasets between their three shapes: JSON records, Arrow tables, pandas frames.

Arrow is how data is stored and moved (chunks of compressed Arrow IPC, see
``datastore.py``); frames are what operations take; records are what the inline
API speaks. The conversions keep what a user would expect:

- a column's pandas dtype comes from its Arrow type alone, never from the rows a
  chunk happens to hold, so every chunk of a dataset runs through the operations
  alike: integers are nullable ``Int64``, booleans ``boolean``, text ``str``;
- a column whose values mix kinds (numbers and text, or nested objects), which
  Arrow cannot type, is stored as JSON text with the field metadata
  :data:`JSON_ENCODING` and comes back to pandas as the original values;
- NaN and infinities become null, datetimes are written as ISO 8601 text, and
  row order is kept.
"""

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api import types as pdt

#: Field metadata of a column stored as JSON text (its values mix kinds).
JSON_ENCODING = {b"datajobs.encoding": b"json"}
#: Compression of stored chunks: lz4 decodes at memory speed and shrinks text 2-4x.
IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")
#: Chunks smaller than this (the table's buffers, in bytes) are stored uncompressed: lz4 costs about 80 us to
#: write and as much to read whatever the size, 20 times what a one-record chunk costs without it, and saves
#: nothing worth it on a few kilobytes. Readers take either form as it comes.
COMPRESS_FROM_BYTES = 64 * 1024
_PLAIN_IPC = pa.ipc.IpcWriteOptions()

#: The column types a dataset description names (``GET /datasets/<id>``).
COLUMN_TYPES = ("integer", "number", "string", "boolean", "datetime", "null", "json")


class UnsupportedColumn(ValueError):
    """A column of an uploaded file has a type datajobs cannot process (binary, say)."""

    def __init__(self, column, arrow_type):
        self.column, self.arrow_type = column, str(arrow_type)
        super().__init__(f"column {column!r} has type {arrow_type}, which datajobs cannot process")


def columns_of(records):
    """Return the union of the records' keys, in order of first appearance."""
    seen = {}
    for record in records:
        seen.update(dict.fromkeys(record))
    return list(seen)


# --- describing ----------------------------------------------------------------


def is_json(field):
    return bool(field.metadata) and field.metadata.get(b"datajobs.encoding") == b"json"


def column_type(field):
    """The API's name for the type of an Arrow ``field``: one of :data:`COLUMN_TYPES`."""
    t = field.type
    if is_json(field):
        return "json"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "datetime"
    if pa.types.is_null(t):
        return "null"
    return "string"


def describe_columns(schema):
    """``[{"name", "type"}]`` of an Arrow schema, in order."""
    return [{"name": field.name, "type": column_type(field)} for field in schema]


# --- normalising: every table we store has only these types ---------------------


def normalise(table):
    """Return ``table`` with only the types datajobs stores: int64, float64, bool, large_string, timestamp, null.

    Dictionaries are decoded, dates become timestamps, decimals floats, text
    large text, and nested values (lists, structs, maps) JSON text. Raises
    :class:`UnsupportedColumn` for what has no faithful form (binary data).
    """
    fields, columns = [], []
    for field, column in zip(table.schema, table.columns):
        field, column = _normalise_column(field, column)
        fields.append(field)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _normalise_column(field, column):
    t = field.type
    if pa.types.is_dictionary(t):
        column = column.cast(t.value_type)
        return _normalise_column(pa.field(field.name, t.value_type, metadata=field.metadata), column)
    if is_json(field):
        return pa.field(field.name, pa.large_string(), metadata=JSON_ENCODING), column.cast(pa.large_string())
    if pa.types.is_integer(t):
        target = pa.int64()
        if pa.types.is_uint64(t):  # values past int64 would overflow: keep them as numbers
            target = pa.float64()
        return pa.field(field.name, target), column.cast(target)
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return pa.field(field.name, pa.float64()), column.cast(pa.float64())
    if pa.types.is_boolean(t) or pa.types.is_null(t) or pa.types.is_timestamp(t):
        return pa.field(field.name, t), column
    if pa.types.is_date(t):
        return pa.field(field.name, pa.timestamp("ms")), column.cast(pa.timestamp("ms"))
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.field(field.name, pa.large_string()), column.cast(pa.large_string())
    if pa.types.is_nested(t):
        values = [None if v is None else _dumps(v) for v in column.to_pylist()]
        return pa.field(field.name, pa.large_string(), metadata=JSON_ENCODING), pa.array(values, pa.large_string())
    raise UnsupportedColumn(field.name, t)


# --- records -> Arrow ------------------------------------------------------------


def records_to_table(records, columns=None):
    """Build an Arrow table from JSON objects (missing keys become nulls), typed column by column."""
    columns = columns_of(records) if columns is None else columns
    fields, arrays = [], []
    for name in columns:
        field, array = _values_to_array(name, [record.get(name) for record in records])
        fields.append(field)
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _values_to_array(name, values):
    """One column of Python values as ``(field, array)``: typed when Arrow can, else JSON text."""
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        array = None
    if array is not None and not pa.types.is_nested(array.type):
        if pa.types.is_string(array.type):
            array = array.cast(pa.large_string())
        elif pa.types.is_floating(array.type):
            # JSON has no NaN or infinity: a non-finite float from pandas is a missing value.
            finite = np.isfinite(np.asarray(array.fill_null(0.0), dtype="float64"))
            if not finite.all():
                array = pa.array(np.where(finite, np.asarray(array.fill_null(np.nan), dtype="float64"), np.nan),
                                 from_pandas=True)
        return pa.field(name, array.type), array
    encoded = [None if _is_missing(v) else _dumps(v) for v in values]
    return pa.field(name, pa.large_string(), metadata=JSON_ENCODING), pa.array(encoded, pa.large_string())


def _is_missing(value):
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _jsonable(value):
    """``json.dumps`` fallback for the values pandas cells hold."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        return pd.Timestamp(value).isoformat()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def _dumps(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "null"
    return json.dumps(value, ensure_ascii=False, default=_jsonable, allow_nan=False)


# --- Arrow <-> pandas -------------------------------------------------------------

_PANDAS_TYPES = {
    pa.int64(): pd.Int64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}


def table_to_frame(table):
    """A frame for the operations: dtypes from the Arrow types alone, JSON columns decoded."""
    df = table.to_pandas(types_mapper=_PANDAS_TYPES.get, ignore_metadata=True)
    for field in table.schema:
        if is_json(field):
            df[field.name] = pd.Series(
                [None if v is None else json.loads(v) for v in table.column(field.name).to_pylist()],
                index=df.index,
                dtype=object,
            )
        elif pa.types.is_null(field.type):
            df[field.name] = pd.Series([None] * len(df), index=df.index, dtype=object)
    return df


def empty_frame(schema):
    """A zero-row frame with the columns and dtypes of ``schema``: what the gateway dry-runs a pipeline on.

    ``schema`` is an Arrow schema, or a list of column names (untyped: object columns).
    """
    if isinstance(schema, pa.Schema):
        return table_to_frame(schema.empty_table())
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in schema})


def frame_to_table(df):
    """The Arrow table of an operation's output frame, typed as :func:`table_to_frame` reads it back."""
    fields, arrays = [], []
    for name in df.columns:
        field, array = _series_to_array(str(name), df[name])
        fields.append(field)
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _series_to_array(name, series):
    dtype = series.dtype
    if pdt.is_bool_dtype(dtype):
        return pa.field(name, pa.bool_()), pa.array(series, type=pa.bool_(), from_pandas=True)
    if pdt.is_integer_dtype(dtype):
        return pa.field(name, pa.int64()), pa.array(series, type=pa.int64(), from_pandas=True)
    if pdt.is_float_dtype(dtype):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        values = np.where(np.isfinite(values), values, np.nan)
        return pa.field(name, pa.float64()), pa.array(values, type=pa.float64(), from_pandas=True)
    if isinstance(dtype, pd.StringDtype):
        return pa.field(name, pa.large_string()), pa.array(series, type=pa.large_string(), from_pandas=True)
    if pdt.is_datetime64_any_dtype(dtype):
        array = pa.array(series, from_pandas=True)
        return pa.field(name, array.type), array
    return _values_to_array(name, series.tolist())


# --- chunks ------------------------------------------------------------------------


class SchemaMismatch(ValueError):
    """Two chunks hold a column in types that cannot meet (text in one, numbers in another)."""

    def __init__(self, column, index, types):
        self.column, self.index, self.types = column, index, types
        super().__init__(f"column {column!r} is {types[0]} before chunk {index} and {types[1]} in it")


def unify(schemas, mixed_as_json=False):
    """The one schema a set of chunks is read with; columns in order of first appearance.

    Nulls widen to any type and integers to floats (pyarrow's permissive
    promotion); a column that is JSON in any chunk is JSON in all of them.
    Columns whose types cannot meet raise :class:`SchemaMismatch` (naming the
    column and the first chunk that disagrees), or with ``mixed_as_json`` become
    JSON columns: an operation's output may mix kinds where its input did not.
    """
    merged = {}  # name -> field so far
    for index, schema in enumerate(schemas):
        for field in schema:
            seen = merged.get(field.name)
            if seen is None or is_json(seen):
                merged.setdefault(field.name, field)
                continue
            if is_json(field):
                merged[field.name] = field
                continue
            try:
                together = pa.unify_schemas(
                    [pa.schema([seen]), pa.schema([field.remove_metadata()])], promote_options="permissive"
                )
                merged[field.name] = together.field(0)
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                if not mixed_as_json:
                    raise SchemaMismatch(field.name, index, (column_type(seen), column_type(field))) from None
                merged[field.name] = pa.field(field.name, pa.large_string(), metadata=JSON_ENCODING)
    fields = []
    for field in merged.values():
        if pa.types.is_string(field.type):
            field = pa.field(field.name, pa.large_string())
        fields.append(field)
    return pa.schema(fields)


def conform(table, schema):
    """``table`` cast to ``schema`` (from :func:`unify`): same column order, JSON-encoding what must be."""
    arrays = []
    for field in schema:
        if field.name not in table.column_names:
            arrays.append(pa.nulls(len(table), field.type))
            continue
        column = table.column(field.name)
        source = table.schema.field(field.name)
        if is_json(field) and not is_json(source):
            values = column.to_pylist()
            if pa.types.is_timestamp(source.type):
                values = [None if v is None else pd.Timestamp(v).isoformat() for v in values]
            column = pa.array([None if v is None else _dumps(v) for v in values], pa.large_string())
        elif column.type != field.type:
            column = column.cast(field.type)
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=schema)


def encode(table):
    """A table as the bytes of one stored chunk: an Arrow IPC stream, lz4-compressed unless it is small."""
    sink = pa.BufferOutputStream()
    options = IPC_OPTIONS if table.nbytes >= COMPRESS_FROM_BYTES else _PLAIN_IPC
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue()


def decode(data):
    """The table of one stored chunk (the inverse of :func:`encode`)."""
    return pa.ipc.open_stream(pa.py_buffer(data) if isinstance(data, bytes) else data).read_all()


def encode_schema(schema):
    """An Arrow schema as text for a Redis hash field (base64 of its IPC form)."""
    import base64

    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def decode_schema(text):
    import base64

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def split(table, rows):
    """``table`` as tables of at most ``rows`` rows each (at least one, so an empty table keeps its schema)."""
    if table.num_rows <= rows:
        return [table]
    return [table.slice(start, rows) for start in range(0, table.num_rows, rows)]


# --- frames -> records ---------------------------------------------------------------


def frame_to_json(df, lines=False):
    """Serialise a frame as a JSON array of records (text), nulls for NaN/NA, ISO 8601 datetimes.

    ``lines=True`` writes JSON Lines instead (one record a line, each ending in a newline).
    """
    if lines and len(df) == 0:
        return ""
    text = df.to_json(orient="records", date_format="iso", date_unit="ms", force_ascii=False, lines=lines)
    return text + "\n" if lines and not text.endswith("\n") else text


def table_to_json(table, lines=False):
    """:func:`frame_to_json` of an Arrow table (JSON columns decoded back to their values)."""
    return frame_to_json(table_to_frame(table), lines=lines)


def records_to_frame(records):
    """A frame from JSON objects, as the worker sees it: through Arrow, typed per column."""
    return table_to_frame(records_to_table(records))
