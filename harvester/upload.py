"""Uploads: a :class:`~harvester.sources.Source` sent to the gateway as a dataset, in parts.

A part is an Arrow IPC stream (zstd-compressed buffers) of consecutive record
batches, about :data:`PART_BYTES` long. The protocol is
``POST /datasets?upload=parts``, then ``PUT /datasets/<id>/parts/<n>`` for
n = 1, 2, ..., then ``POST /datasets/<id>/commit``. Every source goes this way,
a small one as one part.

Each part is tried until the gateway acknowledges it or the deadline passes
(the transport retries a PUT after a dropped connection or a 503; then
:func:`~harvester.transport.retry_until` tries again every interval), so a
broken upload goes on from the part that was not acknowledged. Parts are built
on a thread of their own (:class:`_Ahead`) while the one before is being sent,
and up to :data:`PUTS_IN_FLIGHT` parts are sent at once, so reading and
compressing the source overlaps with the gateway storing the parts before, in
several of its processes; memory holds the parts being sent, at most
:data:`PARTS_AHEAD` waiting, and the one being built.

Sending part n again replaces it, so when the source turns out not to fit the
types read from its start (:class:`~harvester.sources.Retyped`) the upload
starts over from part 1 with the wider types. If that second pass ends with
fewer parts than the first had sent, the extra ones cannot be taken back: the
upload then starts over in a new dataset.
"""

import collections
import logging
import queue
import threading
from concurrent import futures
from typing import NamedTuple

import pyarrow as pa
import pyarrow.ipc as ipc

from harvester.errors import GatewayError, HarvesterError, ServerError
from harvester.sources import Retyped, bounded
from harvester.transport import retry_until

log = logging.getLogger(__name__)

#: Target size of one part, in bytes of compressed Arrow IPC (the gateway takes up to 64 MiB by default).
#: Small enough that the gateway stores one part while the next is read and compressed.
PART_BYTES = 8 * 1024 * 1024
#: Parts built ahead of the ones being sent (each waits in memory, about PART_BYTES).
PARTS_AHEAD = 1
#: Parts sent at once, each on a thread and a connection of its own: the gateway's processes store them side
#: by side (one PUT at a time leaves all but one of them idle, and the harvester idle while it stores).
PUTS_IN_FLIGHT = 2
#: Smallest part size the upload falls back to when the gateway answers 413 (it halves it each time).
MIN_PART_BYTES = 256 * 1024
#: How parts are written: buffers compressed with zstd.
IPC_OPTIONS = ipc.IpcWriteOptions(compression="zstd")


class Part(NamedTuple):
    """One part of an upload: its number (from 1), rows, and Arrow IPC stream bytes (a ``memoryview``)."""

    number: int
    rows: int
    body: memoryview


class Uploaded(NamedTuple):
    """A committed dataset: what the gateway said of it, and what was sent."""

    dataset_id: str
    parts: int
    rows: int
    bytes: int  # bytes of the parts sent
    description: dict  # the gateway's answer to the commit


def split_parts(batches, schema, part_bytes=PART_BYTES, on_batch=None):
    """Yield the :class:`Part` s of ``batches`` (all of ``schema``): about ``part_bytes`` each, at least one.

    A part is cut after the batch that takes it to ``part_bytes``; batches larger
    than half of it are sliced first, so a part stays under about 1.5 times
    ``part_bytes`` whatever the batches. ``on_batch`` is called after each batch.
    Each part's body is a buffer of its own: parts may be kept while the next ones are built.
    """
    number, part = 0, None
    for batch in batches:
        for piece in bounded(batch, part_bytes // 2):
            if part is None:
                part = _PartWriter(schema, part_bytes)
            part.write(piece)
            if part.size >= part_bytes:
                number += 1
                yield part.close(number)
                part = None
        if on_batch is not None:
            on_batch()
    if part is not None or number == 0:
        # The rest; or, for a source without rows, one part that carries the columns.
        yield (part or _PartWriter(schema, part_bytes)).close(number + 1)


class _PartWriter:
    """An Arrow IPC stream written into one buffer allocated up front.

    A growing buffer would double (64 MiB held for a 33 MiB part) and copying it
    out as bytes would hold it twice; pages of the buffer that are never written
    are never touched, so they take no memory.
    """

    def __init__(self, schema, part_bytes):
        # Cut at part_bytes, after a piece of at most half that: 2x is room to spare, compressed or not.
        self.buffer = pa.allocate_buffer(2 * part_bytes + 1024 * 1024)
        self.sink = pa.FixedSizeBufferWriter(self.buffer)
        self.writer = ipc.new_stream(self.sink, schema, options=IPC_OPTIONS)
        self.rows = 0

    @property
    def size(self):
        return self.sink.tell()

    def write(self, batch):
        self.writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self, number):
        self.writer.close()
        return Part(number, self.rows, memoryview(self.buffer.slice(0, self.sink.tell())))



class _Stopped(Exception):
    """The consumer of an :class:`_Ahead` has gone: the thread building parts stops."""


class _Ahead:
    """Iterate ``make(on_batch)`` (a generator of parts) on a thread of its own, up to :data:`PARTS_AHEAD` ahead.

    What the generator raises (:class:`Retyped`, ``InputError``...) is raised by
    the iteration here, in order, after the parts before it. Leaving the ``with``
    block stops the thread (at the next batch it reads) and waits for it, before
    the source is closed.
    """

    def __init__(self, make, on_batch=None):
        self._make, self._on_batch = make, on_batch
        self._queue = queue.Queue(maxsize=PARTS_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="harvester-parts", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        while self._thread.is_alive():
            self._drain()
            self._thread.join(0.05)
        self._drain()

    def _drain(self):
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def __iter__(self):
        while True:
            kind, value = self._queue.get()
            if kind == "part":
                yield value
            elif kind == "error":
                raise value
            else:
                return

    def _batch_read(self):
        if self._stop.is_set():
            raise _Stopped()
        if self._on_batch is not None:
            self._on_batch()

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self):
        parts = self._make(self._batch_read)
        try:
            for part in parts:
                if not self._put(("part", part)):
                    return
            self._put(("end", None))
        except _Stopped:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(("error", exc))
        finally:
            parts.close()


class Upload:
    """Send one source to the gateway as a dataset in parts; :meth:`run` it.

    Args:
        client: a :class:`~harvester.client.GatewayClient`.
        source: a :class:`~harvester.sources.Source`.
        deadline: ``time.monotonic()`` value to give up at.
        interval: seconds between two tries of a part the gateway did not take.
        progress: a :class:`~harvester.progress.Task` told how much of the source was read.
        part_bytes: target size of a part.

    Attributes filled as it goes: ``dataset_id``, ``parts_sent`` (PUTs acknowledged).
    """

    def __init__(self, client, source, *, deadline, interval, progress=None, part_bytes=PART_BYTES):
        self.client, self.source, self.deadline, self.interval = client, source, deadline, interval
        self.progress, self.part_bytes = progress, part_bytes
        self.dataset_id = None
        self.parts_sent = 0
        self._highest = 0  # the highest part number sent to this dataset, on any pass

    def run(self):
        """Upload and commit; return :class:`Uploaded`.

        Raises:
            InputError: the source cannot be read.
            GatewayError: the gateway refused a part or the commit (``schema_mismatch``,
                ``limit_exceeded``, 413 below :data:`MIN_PART_BYTES`, ...).
            ServerError: the gateway failed, or counted other rows than were sent.
            GatewayUnreachable: the gateway could not be reached by the deadline.
        """
        while True:
            try:
                parts, rows, sent = self._send_all()
            except Retyped as change:
                log.warning("%s; uploading again from part 1.", change)
                continue
            except GatewayError as exc:
                if exc.status == 413 and self.part_bytes // 2 >= MIN_PART_BYTES:
                    self.part_bytes //= 2
                    log.warning("The gateway refused a part as too large; uploading again in parts of %s.",
                                _size(self.part_bytes))  # fmt: skip
                    continue
                raise
            if parts < self._highest:
                log.warning("Parts %d to %d of the first pass are left over; uploading again to a new dataset.",
                            parts + 1, self._highest)  # fmt: skip
                self._drop_dataset()
                continue
            break
        described = retry_until(
            lambda: self.client.commit_dataset(self.dataset_id, deadline=self.deadline),
            deadline=self.deadline,
            interval=self.interval,
            what=f"committing dataset {self.dataset_id}",
        )
        counted = described.get("rows")
        if isinstance(counted, int) and counted != rows:
            raise ServerError(
                200, "invalid_response", f"The gateway counted {counted} rows in dataset {self.dataset_id}; {rows} were sent."
            )
        return Uploaded(self.dataset_id, parts, rows, sent, described)

    def _drop_dataset(self):
        """Delete this upload's dataset (best effort: it expires anyway); the next part opens a new one."""
        old, self.dataset_id = self.dataset_id, None
        try:
            self.client.delete_dataset(old, deadline=self.deadline)
        except HarvesterError as exc:
            log.warning("Could not delete dataset %s (%s); it expires on its own.", old, exc)

    def _new_dataset(self):
        """Open a dataset to send parts to."""
        described = retry_until(
            lambda: self.client.create_dataset(deadline=self.deadline),
            deadline=self.deadline,
            interval=self.interval,
            what="creating the dataset",
        )
        self.dataset_id, self._highest = described["dataset_id"], 0

    def _send_all(self):
        """Send every part of one pass over the source; return (parts, rows, bytes).

        Up to :data:`PUTS_IN_FLIGHT` parts are sent at once, each with a client of its own. A part that fails
        for good (a refusal, the deadline) is raised once the others in flight have ended, so no part of this
        pass can land after the next pass has begun. A Ctrl-C does not wait for them.
        """
        parts = rows = sent = 0
        in_flight = collections.deque()  # (future, client), oldest first
        idle = []
        try:
            with self.source.batches() as batches, _Ahead(
                lambda on_batch: split_parts(batches, batches.schema, self.part_bytes, on_batch=on_batch),
                on_batch=self._report,
            ) as ahead:
                for part in ahead:
                    if self.dataset_id is None:
                        # Opened once the first part is ready, so a source that cannot be read leaves no dataset.
                        self._new_dataset()
                    if len(in_flight) == PUTS_IN_FLIGHT:
                        parts, rows, sent = self._acknowledged(in_flight, idle, rows, sent)
                    client = idle.pop() if idle else self.client.clone()
                    in_flight.append((_in_background(self._put, client, part), client))
                while in_flight:
                    parts, rows, sent = self._acknowledged(in_flight, idle, rows, sent)
        except Exception:
            futures.wait([future for future, _ in in_flight])
            idle.extend(client for _, client in in_flight)
            raise
        finally:
            for client in idle:
                client.close()
        self._report()
        return parts, rows, sent

    def _acknowledged(self, in_flight, idle, rows, sent):
        """Wait for the oldest part in flight (raising what it raised); return (parts, rows, bytes) with it."""
        future, client = in_flight.popleft()
        try:
            part = future.result()
        finally:
            idle.append(client)
        self.parts_sent += 1
        self._highest = max(self._highest, part.number)
        return part.number, rows + part.rows, sent + len(part.body)

    def _put(self, client, part):
        """Send ``part`` with ``client`` until the gateway acknowledges it; return it."""
        answer = retry_until(
            lambda: client.put_part(self.dataset_id, part.number, part.body, deadline=self.deadline),
            deadline=self.deadline,
            interval=self.interval,
            what=f"uploading part {part.number} of dataset {self.dataset_id}",
        )
        if isinstance(answer, dict) and isinstance(answer.get("rows"), int) and answer["rows"] != part.rows:
            raise ServerError(
                200,
                "invalid_response",
                f"The gateway counted {answer['rows']} rows in part {part.number}; {part.rows} were sent.",
            )
        log.debug("Part %d of dataset %s: %d rows, %s.", part.number, self.dataset_id, part.rows, _size(len(part.body)))
        return part

    def _report(self):
        # pyarrow's allocator keeps the pages of freed batches for reuse; hand them back, or they add up.
        pa.default_memory_pool().release_unused()
        if self.progress is not None:
            self.progress.update(self.source.done, total=self.source.total)


def _size(n):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def _in_background(function, *args):
    """Call ``function(*args)`` on a daemon thread (one a Ctrl-C does not wait for); return its future."""
    future = futures.Future()

    def run():
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(function(*args))
            except BaseException as exc:  # noqa: BLE001 - raised by whoever takes the result
                future.set_exception(exc)

    threading.Thread(target=run, name="harvester-put", daemon=True).start()
    return future
