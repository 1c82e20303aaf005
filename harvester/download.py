"""Downloads: a completed job's result streamed as Arrow into an :class:`~harvester.outputs.Output`.

``GET /jobs/<id>/result?format=arrow`` answers an Arrow IPC stream of record
batches (at most 250,000 rows each); pyarrow reads it straight off the socket
and each batch is written out before the next is read, so memory holds one
batch whatever the result's size.

When the connection breaks mid-stream, the download goes on from the rows
already written (``offset=N``), every ``interval`` seconds until the deadline,
rather than starting over.
"""

import contextlib
import logging

import pyarrow as pa
import pyarrow.ipc as ipc
import requests
import urllib3

from harvester.errors import GatewayUnreachable, ServerError
from harvester.transport import remaining, retry_until, sleep_until

log = logging.getLogger(__name__)

#: What a connection that broke while the body was being read raises, through pyarrow or not.
BROKEN = (urllib3.exceptions.HTTPError, requests.RequestException, OSError, pa.ArrowInvalid)
#: Tries in a row that bring no new row before the download gives up (the deadline may stop it first).
MAX_FRUITLESS_TRIES = 5


def download(client, job_id, output, *, rows=None, deadline=None, interval=2.0, progress=None):
    """Write job ``job_id``'s result into ``output`` (an open :class:`~harvester.outputs.Output`); return the rows written.

    Args:
        rows: the rows the job says it output (``data.output_items``), or None:
            a stream that ends short of them is resumed like a broken one.
        progress: a :class:`~harvester.progress.Task` told the rows written.

    Raises:
        JobNotFound: the gateway has no such job.
        GatewayError: 409 ``job_not_finished``, 410 ``result_deleted``.
        GatewayUnreachable: the result could not be read whole by the deadline.
        ServerError: the stream kept breaking without progress, or held more rows than the job said.
    """
    fruitless = 0
    while True:
        before = output.rows
        try:
            _read(client, job_id, output, deadline, interval, progress)
            if rows is None or output.rows >= rows:
                break
            reason = f"the stream ended after {output.rows} of {rows} rows"
        except BROKEN as exc:
            reason = f"{type(exc).__name__}: {exc}"
        fruitless = 0 if output.rows > before else fruitless + 1
        if remaining(deadline) <= 0:
            raise GatewayUnreachable(f"The result of job {job_id} could not be read whole by the deadline: {reason}.")
        if fruitless >= MAX_FRUITLESS_TRIES:
            raise ServerError(200, "invalid_response", f"The result of job {job_id} could not be read: {reason}.")
        log.warning("Download of job %s broke at row %d (%s); resuming there.", job_id, output.rows, reason)
        sleep_until(interval if fruitless else 0, deadline)
    if rows is not None and output.rows > rows:
        raise ServerError(200, "invalid_response", f"Job {job_id} output {rows} rows but its result held {output.rows}.")
    return output.rows


def _read(client, job_id, output, deadline, interval, progress):
    """One GET of the result from ``output.rows`` on, written into ``output`` until the stream ends or breaks."""
    response = retry_until(
        lambda: client.result(job_id, fmt="arrow", offset=output.rows, deadline=deadline),
        deadline=deadline,
        interval=interval,
        what=f"downloading the result of job {job_id}",
    )
    with contextlib.closing(response):
        reader = ipc.open_stream(response.raw)
        try:
            output.begin(reader.schema)
        except ValueError as exc:  # a resumed download whose columns are not those of its start
            raise ServerError(200, "invalid_response", f"Job {job_id}'s result: {exc}") from None
        for batch in reader:
            output.write(batch)
            del batch
            # pyarrow's allocator keeps the pages of freed batches for reuse; hand them back, or they add up.
            pa.default_memory_pool().release_unused()
            if progress is not None:
                progress.update(output.rows)
