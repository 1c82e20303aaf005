"""Tables in and out of the data store, a chunk at a time.

A dataset or a result is a list of chunks, each an Arrow table of at most
``CHUNK_ROWS`` rows stored as one compressed IPC stream (``frames.encode``). A
*reference* to it is JSON: ``{"chunks": [{"name", "rows", "bytes"}], "schema",
"rows", "bytes"}``, ``schema`` being the one Arrow schema every chunk is read
with (``frames.unify``), as base64 text. References live in Redis records; the
chunks in the data store. Memory is bounded by one chunk, whatever the size.
"""

import contextlib

import pyarrow as pa

from workers import frames
from workers.jobstore import chunk_name


class ChunkWriter:
    """Collects tables (any sizes) into stored chunks of at most ``chunk_rows`` rows.

    Use as a context manager: leaving it with an exception deletes every chunk
    it wrote, so nothing half-written stays behind. :meth:`reference` is the
    result once every table has been written.
    """

    def __init__(self, store, kind, owner_id, section, chunk_rows, mixed_as_json=False, before_put=None):
        self.store, self.kind, self.owner_id, self.section = store, kind, owner_id, section
        self.chunk_rows, self.mixed_as_json = int(chunk_rows), mixed_as_json
        self.before_put = before_put  # called with the encoded size of each chunk (limits, room checks)
        self.chunks, self.schemas, self.rows, self.bytes = [], [], 0, 0
        self._pending, self._pending_rows = [], 0
        self._schema = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()

    def write(self, table):
        """Add ``table`` (normalised to the stored types first)."""
        table = frames.normalise(table)
        self._schema = table.schema
        if self._pending and not table.schema.equals(self._pending[0].schema, check_metadata=True):
            self._flush()  # a chunk holds one schema; the reference unifies them
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.chunk_rows:
            self._flush(limit=self.chunk_rows)

    def _flush(self, limit=None):
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        head = table if limit is None else table.slice(0, limit)
        rest = None if limit is None else table.slice(limit)
        self._put(head)
        self._pending = [rest] if rest is not None and rest.num_rows else []
        self._pending_rows = sum(t.num_rows for t in self._pending)

    def _put(self, table):
        data = frames.encode(table)
        if self.before_put is not None:
            self.before_put(data.size)
        name = chunk_name(self.kind, self.owner_id, self.section, len(self.chunks))
        self.store.put(name, data)
        self.chunks.append({"name": name, "rows": table.num_rows, "bytes": data.size})
        self.schemas.append(table.schema)
        self.rows += table.num_rows
        self.bytes += data.size

    def close(self, empty_schema=None):
        """Store what is left; return the :meth:`reference`.

        A writer given no rows at all still stores one empty chunk with the
        schema it saw (or ``empty_schema``), so a dataset's columns survive.
        """
        self._flush()
        if not self.chunks:
            schema = self._schema or empty_schema or pa.schema([])
            self._put(schema.empty_table())
        return self.reference()

    def reference(self):
        schema = frames.unify(self.schemas, mixed_as_json=self.mixed_as_json)
        return {"chunks": self.chunks, "schema": frames.encode_schema(schema), "rows": self.rows, "bytes": self.bytes}

    def abort(self):
        with contextlib.suppress(Exception):  # best effort: the store may be what failed
            self.store.delete([chunk["name"] for chunk in self.chunks])
        self.chunks = []


class ChunkMissing(Exception):
    """A chunk named in a reference is gone from the store (expired, or its dataset deleted)."""


def schema_of(ref):
    return frames.decode_schema(ref["schema"])


def read_chunk(store, chunk, schema):
    """One chunk of a reference as an Arrow table conforming to ``schema``."""
    data = store.get(chunk["name"])
    if data is None:
        raise ChunkMissing(chunk["name"])
    return frames.conform(frames.decode(data), schema)


def iter_tables(store, ref, offset=0, limit=None):
    """Yield the tables of ``ref`` in order, rows ``offset`` to ``offset + limit``; whole chunks are skipped."""
    schema = schema_of(ref)
    end = None if limit is None else offset + limit
    start = 0
    for chunk in ref["chunks"]:
        first, start = start, start + chunk["rows"]
        if start <= offset and chunk["rows"]:
            continue
        if end is not None and first >= end:
            return
        table = read_chunk(store, chunk, schema)
        lo = max(offset - first, 0)
        hi = table.num_rows if end is None else min(end - first, table.num_rows)
        yield table.slice(lo, max(hi - lo, 0))


def join(refs):
    """One reference to the chunks of ``refs``, in order (the results of a segment's chunks, say)."""
    schemas = [schema_of(ref) for ref in refs]
    return {
        "chunks": [chunk for ref in refs for chunk in ref["chunks"]],
        "schema": frames.encode_schema(frames.unify(schemas, mixed_as_json=True)),
        "rows": sum(ref["rows"] for ref in refs),
        "bytes": sum(ref["bytes"] for ref in refs),
    }


def read_all(store, ref):
    """The whole of ``ref`` as one table (for a step that needs every row: sort, deduplicate...)."""
    tables = list(iter_tables(store, ref))
    return pa.concat_tables(tables) if tables else schema_of(ref).empty_table()
