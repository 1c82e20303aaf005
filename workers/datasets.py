"""Dataset records: what was uploaded, by whom, in which parts, stored as which chunks.

A dataset is created ``ready`` by one upload, or ``uploading`` and then filled
part by part (``PUT /datasets/<id>/parts/<n>``) until it is committed. Its
record (``datajobs:dataset:<id>``, a hash built by :func:`~workers.jobstore.dataset_key`)
holds the description and, while uploading, one field per part; its chunks are
in the data store. Records and chunks expire after the job TTL, committed or not.

Part and commit updates are compare-and-set on the record (WATCH/MULTI): a part
that lands after the commit is refused, and a part sent again replaces the
first one, whose chunks are then deleted.
"""

import json
from datetime import datetime, timedelta, timezone

from workers import frames
from workers.chunks import schema_of
from workers.errors import InvalidRequest
from workers.jobstore import dataset_key, new_job_id, utcnow

UPLOADING, READY = "uploading", "ready"
#: Part numbers a dataset may have.
PARTS = range(1, 10_001)


class DatasetStore:
    """Dataset records for the gateway, over the job store's Redis and data store."""

    def __init__(self, redis_client, data, ttl):
        self.redis, self.data, self.ttl = redis_client, data, int(ttl)

    new_id = staticmethod(new_job_id)

    def create(self, dataset_id, owner, ref=None):
        """Record a dataset: ``ready`` with ``ref`` (its chunks, already stored), or ``uploading`` without."""
        now = datetime.now(timezone.utc)
        record = {
            "dataset_id": dataset_id,
            "owner": owner,
            "status": READY if ref is not None else UPLOADING,
            "created_at": utcnow(),
            "expires_at": (now + timedelta(seconds=self.ttl)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        if ref is not None:
            record.update(ref=json.dumps(ref), parts="1")
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(dataset_key(dataset_id), mapping=record)
            pipe.expire(dataset_key(dataset_id), self.ttl)
            pipe.execute()
        return self.get(dataset_id)

    def get(self, dataset_id):
        """The record as a dict (``ref`` decoded, ``parts`` as ``{n: part}``), or None."""
        raw = self.redis.hgetall(dataset_key(dataset_id))
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        record = {k: v for k, v in fields.items() if not k.startswith("part:")}
        record["ref"] = json.loads(record["ref"]) if "ref" in record else None
        record["uploaded"] = {int(k[5:]): json.loads(v) for k, v in fields.items() if k.startswith("part:")}
        return record

    def add_part(self, dataset_id, number, ref):
        """Store part ``number`` (its chunks already written) of an uploading dataset.

        Returns the record; a part sent again replaces the earlier one (whose
        chunks are deleted). Raises :class:`InvalidRequest` (409) when the
        dataset is no longer uploading; the caller deletes the new chunks.
        """
        key = dataset_key(dataset_id)
        replaced = []

        def put(pipe):
            status = pipe.hget(key, "status")
            if status != UPLOADING.encode():
                raise _committed(dataset_id) if status else _not_found(dataset_id)
            old = pipe.hget(key, f"part:{number}")
            replaced[:] = [c["name"] for c in json.loads(old)["chunks"]] if old else []
            pipe.multi()
            pipe.hset(key, f"part:{number}", json.dumps(ref))

        self.redis.transaction(put, key)
        if replaced:
            self.data.delete(replaced)
        return self.get(dataset_id)

    def commit(self, dataset_id, max_rows, max_bytes):
        """Join the parts, in order, into one dataset and mark it ``ready``; return the record.

        Raises :class:`InvalidRequest`: no parts or a gap (``missing_part``),
        parts whose columns disagree (``schema_mismatch``, naming the part and
        the column), limits (``limit_exceeded``), or 409 when it was committed already.
        """
        key = dataset_key(dataset_id)

        def join(pipe):
            record = pipe.hgetall(key)  # read under WATCH: a part added meanwhile aborts the commit
            if not record:
                raise _not_found(dataset_id)
            if record[b"status"] != UPLOADING.encode():
                raise _committed(dataset_id)
            parts = {int(k[5:]): json.loads(v) for k, v in record.items() if k.startswith(b"part:")}
            ref = join_parts(dataset_id, parts, max_rows, max_bytes)
            pipe.multi()
            pipe.hdel(key, *(f"part:{n}" for n in parts))
            pipe.hset(key, mapping={"status": READY, "ref": json.dumps(ref), "parts": str(len(parts))})

        self.redis.transaction(join, key)
        return self.get(dataset_id)

    def delete(self, dataset_id):
        """Remove the dataset and all its chunks. Jobs already using it fail when they find them gone."""
        record = self.get(dataset_id)
        if record is None:
            return False
        self.redis.delete(dataset_key(dataset_id))
        self.data.delete(chunk_names(record))
        return True


def chunk_names(record):
    """Every chunk a dataset record names: its committed chunks and any uploaded parts'."""
    names = [c["name"] for c in (record.get("ref") or {}).get("chunks", ())]
    for part in record.get("uploaded", {}).values():
        names += [c["name"] for c in part["chunks"]]
    return names


def join_parts(dataset_id, parts, max_rows, max_bytes):
    """The reference of a dataset made of ``parts`` (``{n: part ref}``), checked; see :meth:`DatasetStore.commit`."""
    if not parts:
        raise InvalidRequest(
            "missing_part", f"Dataset {dataset_id} has no parts: PUT /datasets/{dataset_id}/parts/1 first.", status=400
        )
    numbers = sorted(parts)
    expected = list(range(1, numbers[-1] + 1))
    if numbers != expected:
        missing = next(n for n in expected if n not in parts)
        raise InvalidRequest(
            "missing_part",
            f"Part {missing} of dataset {dataset_id} was never uploaded: parts are numbered from 1 without gaps "
            f"(received {len(numbers)} parts, up to part {numbers[-1]}).",
            part=missing,
        )
    schemas, chunks = [], []
    for number in numbers:
        schemas.append(schema_of(parts[number]))
        chunks += parts[number]["chunks"]
    try:
        schema = frames.unify(schemas)
    except frames.SchemaMismatch as exc:
        part = numbers[exc.index]
        raise InvalidRequest(
            "schema_mismatch",
            f"Part {part} does not fit the parts before it: its column {exc.column!r} holds {exc.types[1]} values "
            f"where the earlier parts hold {exc.types[0]} values.",
            part=part,
            column=exc.column,
        ) from None
    rows = sum(p["rows"] for p in parts.values())
    size = sum(p["bytes"] for p in parts.values())
    check_size(rows, size, max_rows, max_bytes)
    return {"chunks": chunks, "schema": frames.encode_schema(schema), "rows": rows, "bytes": size}


def check_size(rows, size, max_rows, max_bytes):
    """Raise ``limit_exceeded`` when a dataset of ``rows`` rows and ``size`` bytes is over the limits."""
    if rows > max_rows:
        raise InvalidRequest(
            "limit_exceeded",
            f"The dataset has more than {max_rows} rows (MAX_DATASET_ROWS).",
            limit="MAX_DATASET_ROWS",
            maximum=max_rows,
        )
    if size > max_bytes:
        raise InvalidRequest(
            "limit_exceeded",
            f"The dataset is larger than {max_bytes} bytes (MAX_DATASET_BYTES).",
            limit="MAX_DATASET_BYTES",
            maximum=max_bytes,
        )


def describe(record):
    """The body of ``GET /datasets/<id>``."""
    ref = record.get("ref")
    uploaded = record.get("uploaded", {})
    if ref is not None:
        columns, rows, size, parts = frames.describe_columns(schema_of(ref)), ref["rows"], ref["bytes"], int(record["parts"])
    else:
        columns, parts = [], len(uploaded)
        rows, size = sum(p["rows"] for p in uploaded.values()), sum(p["bytes"] for p in uploaded.values())
    return {
        "dataset_id": record["dataset_id"],
        "status": record["status"],
        "rows": rows,
        "columns": columns,
        "bytes": size,
        "parts": parts,
        "created_at": record["created_at"],
        "expires_at": record["expires_at"],
    }


def _not_found(dataset_id):
    return InvalidRequest("dataset_not_found", f"No dataset with id {dataset_id!r}: unknown, or expired.", status=404)


def _committed(dataset_id):
    return InvalidRequest(
        "dataset_committed",
        f"Dataset {dataset_id} has been committed: its parts can no longer change. Upload a new dataset instead.",
        status=409,
    )
