"""``/datasets``: upload a file (whole, or in parts), describe it, delete it.

A dataset belongs to the token that created it (like a job) and expires after
``JOB_TTL_SECONDS``. Its rows are stored as chunks in the data store while the
body is read; a request that fails half way (bad data, a limit, a full store)
deletes what it wrote, so nothing half-written stays behind.
"""

import logging

from flask import Blueprint, current_app, request, url_for

from app import uploads
from app.auth import current_owner
from workers import datasets, frames
from workers.chunks import ChunkWriter
from workers.datastore import StorageFull
from workers.errors import InvalidRequest
from workers.jobstore import is_job_id

log = logging.getLogger(__name__)
bp = Blueprint("datasets", __name__)


def _datasets():
    return current_app.extensions["datasets"]


def find(dataset_id):
    """The record of ``dataset_id`` if it exists and this request's token may see it; else 404."""
    record = _datasets().get(dataset_id) if is_job_id(dataset_id) else None
    if record is None or record.get("owner", "") != current_owner():
        raise InvalidRequest("dataset_not_found", f"No dataset with id {dataset_id!r}: unknown, or expired.", status=404)
    return record


def _created(record):
    location = url_for("datasets.show", dataset_id=record["dataset_id"])
    return datasets.describe(record), 201, {"Location": location}


@bp.post("/datasets")
def create():
    """Upload a whole file as a dataset (201), or with ``?upload=parts`` open an upload in parts."""
    store = _datasets()
    upload = request.args.get("upload")
    if upload not in (None, "parts"):
        raise InvalidRequest(
            "invalid_parameter", "The 'upload' query parameter can only be 'parts'.", parameter="upload"
        )
    dataset_id = store.new_id()
    if upload == "parts":
        if request.content_length or request.stream.read(1):
            raise InvalidRequest(
                "invalid_body",
                "POST /datasets?upload=parts takes no body: send the data with PUT /datasets/<id>/parts/<n>.",
            )
        _check_room(0)
        record = store.create(dataset_id, current_owner())
        log.info("dataset %s: upload in parts opened", dataset_id)
        return _created(record)
    ref = _store_body(dataset_id, "p00001")
    try:
        record = store.create(dataset_id, current_owner(), ref)
    except BaseException:
        store.data.delete(chunk["name"] for chunk in ref["chunks"])
        raise
    log.info("dataset %s: %d rows, %d bytes", dataset_id, ref["rows"], ref["bytes"])
    return _created(record)


@bp.put("/datasets/<dataset_id>/parts/<number>")
def put_part(dataset_id, number):
    """Upload part ``number`` (1 to 10,000) of a dataset; sending a part again replaces it."""
    record = find(dataset_id)
    part = _part_number(number)
    if record["status"] != datasets.UPLOADING:
        raise InvalidRequest(
            "dataset_committed",
            f"Dataset {dataset_id} has been committed: its parts can no longer change.",
            status=409,
        )
    # Unique per attempt: a part sent again never overwrites the chunks the first one is still named by.
    section = f"p{part:05d}-{_datasets().new_id()[:8]}"
    others = [p for n, p in record["uploaded"].items() if n != part]
    ref = _store_body(dataset_id, section, already=others)
    try:
        _datasets().add_part(dataset_id, part, ref)
    except BaseException:
        _datasets().data.delete(chunk["name"] for chunk in ref["chunks"])
        raise
    log.info("dataset %s: part %d, %d rows, %d bytes", dataset_id, part, ref["rows"], ref["bytes"])
    return {"part": part, "rows": ref["rows"], "bytes": ref["bytes"]}


@bp.post("/datasets/<dataset_id>/commit")
def commit(dataset_id):
    """Join the uploaded parts, in order, into a ready dataset."""
    find(dataset_id)
    record = _datasets().commit(dataset_id, *_size_limits())
    log.info("dataset %s: committed, %d parts", dataset_id, int(record["parts"]))
    return datasets.describe(record)


@bp.get("/datasets/<dataset_id>")
def show(dataset_id):
    """Describe a dataset: status, rows, columns and their types, size, parts, expiry."""
    return datasets.describe(find(dataset_id))


@bp.delete("/datasets/<dataset_id>")
def delete(dataset_id):
    """Delete a dataset and its data; jobs still queued on it fail (``expired``)."""
    find(dataset_id)
    _datasets().delete(dataset_id)
    log.info("dataset %s: deleted", dataset_id)
    return "", 204


def _part_number(text):
    if not (text.isascii() and text.isdigit()) or int(text) not in datasets.PARTS:
        raise InvalidRequest(
            "invalid_part",
            f"A part number is a whole number from {datasets.PARTS.start} to {datasets.PARTS.stop - 1}.",
            parameter="part",
        )
    return int(text)


def _size_limits():
    config = current_app.config
    return config["MAX_DATASET_ROWS"], config["MAX_DATASET_BYTES"]


def _check_room(nbytes):
    if not _datasets().data.has_room(nbytes):
        raise StorageFull()


def _store_body(dataset_id, section, already=()):
    """Read this request's body into stored chunks; return their reference, ``bytes`` being the body's size.

    ``already`` are the other parts of the dataset, counted against the limits as the body is read.
    """
    config = current_app.config
    fmt = uploads.upload_format(request.content_type)
    if request.content_length == 0:
        raise InvalidRequest("invalid_dataset", "The body is empty: send the file as the request body.")
    _check_room(request.content_length or 0)
    max_rows, max_bytes = _size_limits()
    rows_before, bytes_before = sum(p["rows"] for p in already), sum(p["bytes"] for p in already)
    counting = _CountingStream(request.stream)
    with ChunkWriter(
        _datasets().data, "dataset", dataset_id, section, config["CHUNK_ROWS"], before_put=_check_room
    ) as writer:
        rows = rows_before
        for table in uploads.read_tables(counting, fmt, config):
            rows += table.num_rows
            datasets.check_size(rows, bytes_before + counting.count, max_rows, max_bytes)
            try:
                writer.write(table)
            except frames.UnsupportedColumn as exc:
                raise InvalidRequest(
                    "unsupported_column_type",
                    f"Column {exc.column!r} has type {exc.arrow_type}, which datajobs cannot process; "
                    "send it as text or numbers.",
                    column=exc.column,
                ) from None
        ref = writer.close()
    ref["stored_bytes"], ref["bytes"] = ref["bytes"], counting.count
    return ref


class _CountingStream:
    """A body stream that counts the bytes read from it."""

    def __init__(self, stream):
        self.stream, self.count = stream, 0

    def read(self, size=-1):
        data = self.stream.read(size)
        self.count += len(data)
        return data

    def readable(self):
        return True

    def __getattr__(self, name):
        return getattr(self.stream, name)
