"""``GET /jobs/<id>/result`` and ``DELETE /jobs/<id>/result``: a completed job's output, by download.

The output is streamed a chunk at a time in the format asked for, so the
gateway's memory is bounded by one chunk whatever the result's size. CSV cells
(and headers) that a spreadsheet would run as formulas get a leading ``'``, the
harvester's rule (``harvester/formulas.py``), unless ``?raw=true``.
"""

import logging

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from flask import Blueprint, Response, current_app, request

from app.errors import error_response
from app.jobs import _find, _not_found, current_status
from app.validation import query_count, query_flag
from harvester.formulas import neutralise_array, neutralise_formula
from workers import chunks, frames
from workers.errors import InvalidRequest
from workers.status import JobStatus

log = logging.getLogger(__name__)
bp = Blueprint("results", __name__)

#: Download formats: (media type, file extension), by ``?format=`` name. The first is the default.
FORMATS = {
    "jsonl": ("application/x-ndjson", "jsonl"),
    "json": ("application/json", "json"),
    "csv": ("text/csv; charset=utf-8", "csv"),
    "parquet": ("application/vnd.apache.parquet", "parquet"),
    "arrow": ("application/vnd.apache.arrow.stream", "arrow"),
}
_BY_MEDIA = {media.split(";")[0]: name for name, (media, _) in FORMATS.items()}


@bp.get("/jobs/<job_id>/result")
def download(job_id):
    """Stream a completed job's output: ``?format=`` (or ``Accept``), ``?offset=``, ``?limit=``, ``?raw=``."""
    record = _find(job_id)
    if record is None:
        return _not_found(job_id)
    fmt = _format()
    offset, limit = query_count("offset", 0), query_count("limit", None)
    raw = query_flag("raw")
    status = current_status(job_id, record)
    if status is not JobStatus.COMPLETED:
        return error_response(
            409,
            "job_not_finished",
            f"Job {job_id} has no result: it is {status.value}. A result exists once the job has completed.",
            job_status=status.value,
        )
    if record.get("result_deleted_at"):
        return error_response(410, "result_deleted", f"The result of job {job_id} was deleted at "
                              f"{record['result_deleted_at']}.")
    ref = record["output"]
    rows = max(0, min(ref["rows"] - offset, ref["rows"] if limit is None else limit))
    media, ext = FORMATS[fmt]
    body = _WRITERS[fmt](current_app.extensions["jobstore"].data, ref, offset, limit, raw)
    headers = {"Content-Disposition": f'attachment; filename="{job_id}.{ext}"', "X-Result-Rows": str(rows)}
    log.info("job %s: result download as %s, rows %d from %d", job_id, fmt, rows, offset)
    return Response(body, mimetype=media, headers=headers)


@bp.delete("/jobs/<job_id>/result")
def delete(job_id):
    """Free a completed job's output now (204); afterwards it is ``410 result_deleted``."""
    record = _find(job_id)
    if record is None:
        return _not_found(job_id)
    status = current_status(job_id, record)
    if status is not JobStatus.COMPLETED:
        return error_response(
            409, "job_not_finished", f"Job {job_id} has no result to delete: it is {status.value}.",
            job_status=status.value,
        )
    if not current_app.extensions["jobstore"].drop_output(job_id):
        return error_response(410, "result_deleted", f"The result of job {job_id} was deleted already.")
    log.info("job %s: result deleted by request", job_id)
    return "", 204


def _format():
    name = request.args.get("format")
    if name is None:
        best = request.accept_mimetypes.best_match(list(_BY_MEDIA), default="application/x-ndjson")
        return _BY_MEDIA[best]
    if name not in FORMATS:
        raise InvalidRequest(
            "invalid_parameter",
            f"The 'format' query parameter must be one of {', '.join(FORMATS)}.",
            parameter="format",
        )
    return name


# --- writers: each a generator of bytes, one chunk at a time --------------------------


def _jsonl(data, ref, offset, limit, raw):
    for table in chunks.iter_tables(data, ref, offset, limit):
        yield frames.table_to_json(table, lines=True).encode()


def _json(data, ref, offset, limit, raw):
    yield b"["
    first = True
    for table in chunks.iter_tables(data, ref, offset, limit):
        if table.num_rows == 0:
            continue
        text = frames.table_to_json(table)
        yield (b"" if first else b",") + text[1:-1].encode()
        first = False
    yield b"]\n"


def _csv(data, ref, offset, limit, raw):
    schema = chunks.schema_of(ref)
    names = schema.names if raw else [neutralise_formula(name) for name in schema.names]
    header = True
    for table in chunks.iter_tables(data, ref, offset, limit):
        columns = []
        for field, column in zip(table.schema, table.columns):
            if (pa.types.is_large_string(field.type) or pa.types.is_string(field.type)) and not raw:
                column = pa.chunked_array([neutralise_array(c)[0] for c in column.chunks], column.type)
            columns.append(column)
        sink = pa.BufferOutputStream()
        pacsv.write_csv(
            pa.Table.from_arrays(columns, names=names),
            sink,
            write_options=pacsv.WriteOptions(include_header=header, quoting_style="needed"),
        )
        header = False
        yield sink.getvalue().to_pybytes()
    if header:  # no chunk at all: still the header row
        yield (",".join(names) + "\n").encode()


class _Drain:
    """A write-only file whose bytes are taken out between writes: what a streamed writer writes into."""

    def __init__(self):
        self.parts, self.position, self.closed = [], 0, False

    def write(self, data):
        data = bytes(data)
        self.parts.append(data)
        self.position += len(data)
        return len(data)

    def tell(self):
        return self.position

    def flush(self):
        pass

    def close(self):
        self.closed = True

    def writable(self):
        return True

    def take(self):
        data, self.parts = b"".join(self.parts), []
        return data


def _arrow(data, ref, offset, limit, raw):
    sink = _Drain()
    writer = pa.ipc.new_stream(sink, chunks.schema_of(ref), options=frames.IPC_OPTIONS)
    for table in chunks.iter_tables(data, ref, offset, limit):
        writer.write_table(table)
        yield sink.take()
    writer.close()
    yield sink.take()


def _parquet(data, ref, offset, limit, raw):
    sink = _Drain()
    writer = pq.ParquetWriter(sink, chunks.schema_of(ref), compression="zstd")
    for table in chunks.iter_tables(data, ref, offset, limit):
        writer.write_table(table)
        yield sink.take()
    writer.close()
    yield sink.take()


_WRITERS = {"jsonl": _jsonl, "json": _json, "csv": _csv, "parquet": _parquet, "arrow": _arrow}
