"""Readers and writers of datasets: lists of records (dicts of JSON values).

Readers take a local path or an http(s) URL of a ``.csv``, ``.tsv``, ``.json``
(an array of objects) or ``.jsonl`` file; the format comes from the extension.
Writers write ``.jsonl``, ``.csv``, ``.json`` or ``.parquet`` atomically: a
temporary file in the same directory, then ``os.replace``.

CSV output is meant for spreadsheets, which run a cell starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return as a formula (CSV injection). Unless told
not to, the CSV writer writes such text cells with a leading ``'`` (OWASP's advice),
except text that is a plain number such as ``-12.5``; see :func:`neutralise_formula`.
Other formats are written as received.
"""

import contextlib
import csv
import io
import json
import os
import re
import uuid
from typing import NamedTuple
from urllib.parse import urlsplit

from harvester.client import make_session, send
from harvester.errors import GatewayUnreachable, InputError

# pandas and pyarrow are imported where they are used: they take half a second to
# import, which `harvester status` and `harvester operations` need not pay.

#: Source formats by extension.
READ_FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl"}
#: Output formats by extension.
WRITE_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".json": "json", ".parquet": "parquet"}
#: CSV cells read as null. Only these: pandas' longer default list would also turn
#: real values such as "NA" (Namibia) or "None" into nulls.
CSV_NULLS = ["", "NaN", "nan"]
#: First characters that make a spreadsheet read a text cell as a formula (OWASP: CSV injection).
FORMULA_CHARS = frozenset("=+-@\t\r")
#: Text a spreadsheet reads as a plain number, not a formula ("-12.5", "+3", ".5", "1e5", "-1.5E-3").
PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def is_url(source):
    return urlsplit(str(source)).scheme in ("http", "https")


def _format(name, formats, what):
    path = urlsplit(name).path if is_url(name) else name
    ext = os.path.splitext(str(path))[1].lower()
    try:
        return formats[ext]
    except KeyError:
        known = ", ".join(formats)
        raise InputError(f"Cannot tell the format of {what} {name!r}: its extension must be one of {known}.") from None


def source_format(source):
    """Return the format of a source (``csv``, ``tsv``, ``json`` or ``jsonl``) from its extension.

    Raises:
        InputError: the extension is not a readable format.
    """
    return _format(source, READ_FORMATS, "source")


def output_format(path):
    """Return the format of an output path (``jsonl``, ``csv``, ``json`` or ``parquet``).

    Raises:
        InputError: the extension is not a writable format.
    """
    return _format(path, WRITE_FORMATS, "output")


def check_output(path):
    """Return the format of ``path`` after checking it can be written there, before any work is done.

    Missing directories are fine: the writers create them.

    Raises:
        InputError: unknown extension, ``path`` is a directory, or a file stands
            where a directory should be.
    """
    fmt = output_format(path)
    if os.path.isdir(path):
        raise InputError(f"Cannot write {path}: it is a directory.")
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise InputError(f"Cannot write {path}: {ancestor} is a file, not a directory.")
    return fmt


def read_records(source, *, session=None, deadline=None):
    """Read the records of a local file or an http(s) URL.

    Args:
        source: path or URL ending in ``.csv``, ``.tsv``, ``.json`` or ``.jsonl``.
        session: ``requests.Session`` used for URLs (the client's retrying one);
            a new retrying session when None.
        deadline: ``time.monotonic()`` value the download must end by.

    Raises:
        InputError: unknown format, unreadable or unreachable source, bad content.
    """
    fmt = source_format(source)
    data = _fetch(source, session, deadline) if is_url(source) else _read_file(source)
    return parse_records(data, fmt, name=str(source))


def _read_file(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc.strerror}.") from None


def _fetch(url, session, deadline):
    try:
        response = send(session or make_session(), "GET", url, deadline=deadline)
    except GatewayUnreachable as exc:
        raise InputError(f"Cannot fetch {url}: {exc}") from None
    if response.status_code >= 400:
        raise InputError(f"Cannot fetch {url}: it answered {response.status_code} {response.reason}.")
    return response.content


def parse_records(data, fmt, name="<data>"):
    """Parse ``data`` (bytes, UTF-8) in format ``fmt`` into a list of records.

    CSV and TSV go through pandas: empty and ``NaN`` cells become None, integer
    columns stay ints even with blanks (nullable ``Int64``), and numbers written
    with a decimal point stay floats. JSON must be an array of objects and JSON
    Lines one object per line; both are passed through as parsed.

    Raises:
        InputError: the content is not valid in that format.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    if fmt in ("csv", "tsv"):
        return _parse_table(text, "\t" if fmt == "tsv" else ",", name)
    if fmt == "json":
        return _check_records(_loads(text, name), name)
    if fmt == "jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                record = _loads(line, f"{name} line {number}")
                if not isinstance(record, dict):
                    raise InputError(f"{name} line {number} must be a JSON object. Got {_json_type(record)} instead.")
                records.append(record)
        return records
    raise ValueError(f"unknown format {fmt!r}")


def _parse_table(text, sep, name):
    import pandas as pd

    try:
        df = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            keep_default_na=False,
            na_values=CSV_NULLS,
            # Nullable dtypes keep an int column with blanks as Int64 (not float64),
            # decided from the text, so "1.0" stays a float.
            dtype_backend="numpy_nullable",
        )
    except pd.errors.EmptyDataError:
        raise InputError(f"{name} is empty: it has no header row.") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise InputError(f"{name} is not a valid {'TSV' if sep == chr(9) else 'CSV'} file: {exc}") from None
    # astype(object) yields Python ints, floats, bools and strs; missing values become None.
    return df.astype(object).where(df.notna(), None).to_dict(orient="records")


def _reject_constant(constant):
    raise ValueError(f"{constant} is not valid JSON")


def _loads(text, name):
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InputError(f"{name} is not valid JSON: {exc}.") from None


def _json_type(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _check_records(value, name):
    if not isinstance(value, list):
        raise InputError(f"{name} must hold a JSON array of objects. Got {_json_type(value)} instead.")
    for index, record in enumerate(value):
        if not isinstance(record, dict):
            raise InputError(f"Item {index} of {name} must be a JSON object. Got {_json_type(record)} instead.")
    return value


def columns(records):
    """Return the keys of ``records`` in order: the first record's keys, then any later new keys."""
    seen = {}
    for record in records:
        seen.update(dict.fromkeys(record))
    return list(seen)


class Written(NamedTuple):
    """What :func:`write_records` wrote."""

    format: str
    #: CSV text cells written with a leading ``'`` (:func:`neutralise_formula`); 0 for other formats.
    cells_neutralised: int = 0


def write_records(records, path, fmt=None, *, neutralise_formulas=True):
    """Write ``records`` to ``path`` atomically and return what was written (:class:`Written`).

    Args:
        fmt: ``jsonl``, ``csv``, ``json`` or ``parquet``; from the extension when None.
        neutralise_formulas: CSV only: write text cells a spreadsheet would run as a
            formula with a leading ``'`` (:func:`neutralise_formula`). False writes
            them exactly as received. Other formats are never changed.

    CSV cells of nested values (objects, arrays) hold their JSON text; None is an
    empty cell. Parquet columns are typed by pyarrow from the values.

    Raises:
        InputError: unknown extension, or the records cannot be written in that format.
    """
    fmt = fmt or output_format(path)
    changed = 0
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = _arrow_table(records)
            with atomic_open(path, "wb") as f:
                pq.write_table(table, f)
        elif fmt == "csv":
            with atomic_open(path, "w", encoding="utf-8", newline="") as f:
                changed = _write_csv(records, f, neutralise_formulas)
        else:
            with atomic_open(path, "w", encoding="utf-8", newline="") as f:
                _TEXT_WRITERS[fmt](records, f)
    except OSError as exc:
        raise InputError(f"Cannot write {path}: {exc.strerror or exc}.") from None
    return Written(fmt, changed)


def neutralise_formula(text):
    """Return ``text`` with a ``'`` in front if a spreadsheet would read it as a formula, else ``text``.

    A formula is text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
    return (:data:`FORMULA_CHARS`), unless the whole text is a plain decimal number
    (:data:`PLAIN_NUMBER`: ``-12.5``, ``+3``, ``1e5``), which spreadsheets read as
    that number: ``"=SUM(A1)"`` -> ``"'=SUM(A1)"``, ``"-12.5"`` -> ``"-12.5"``.
    """
    if text[:1] in FORMULA_CHARS and not PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def write_json(value, path):
    """Write one JSON document to ``path`` atomically, indented, UTF-8."""
    try:
        with atomic_open(path, "w", encoding="utf-8") as f:
            json.dump(value, f, ensure_ascii=False, indent=2)
            f.write("\n")
    except OSError as exc:
        raise InputError(f"Cannot write {path}: {exc.strerror or exc}.") from None


@contextlib.contextmanager
def atomic_open(path, mode, **kwargs):
    """Open a temporary file beside ``path``; on success move it onto ``path``, else remove it."""
    directory, base = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, f".{base}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temp, mode.replace("w", "x"), **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _write_jsonl(records, f):
    for record in records:
        f.write(json.dumps(record, ensure_ascii=False))
        f.write("\n")


def _write_json(records, f):
    json.dump(records, f, ensure_ascii=False, indent=2)
    f.write("\n")


def _write_csv(records, f, neutralise=True):
    """Write ``records`` as CSV to ``f``; return how many text cells were neutralised."""
    changed = 0

    def cell(value):
        nonlocal changed
        if isinstance(value, str):
            if neutralise:
                safe = neutralise_formula(value)
                if safe is not value:
                    changed += 1
                return safe
            return value
        if isinstance(value, (dict, list)):
            return json.dumps(value, ensure_ascii=False)
        return value

    # RFC 4180 line ends: with them the writer quotes any cell holding a CR or an LF,
    # which a bare "\n" terminator would leave unquoted for a CR, splitting the row.
    writer = csv.DictWriter(f, fieldnames=columns(records), restval="", lineterminator="\r\n")
    writer.writeheader()
    for record in records:
        writer.writerow({key: cell(value) for key, value in record.items()})
    return changed


_TEXT_WRITERS = {"jsonl": _write_jsonl, "json": _write_json}


def _arrow_table(records):
    import pyarrow as pa

    arrays = {}
    for column in columns(records):
        try:
            arrays[column] = pa.array([record.get(column) for record in records])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InputError(
                f"Cannot write column {column!r} to parquet: {exc}. Write .jsonl or .json instead."
            ) from None
    return pa.table(arrays)
