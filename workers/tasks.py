"""The Celery tasks: run a job's pipeline over its chunks, by reference, on any worker.

A job's steps run as segments (``pipeline.segments``): each run of row-local
steps, and each global step alone. :func:`run_job` takes the job and runs its
segments in order. A row-local segment over a dataset of several chunks fans
out: one :func:`run_chunk` task per chunk, a Celery group that any worker
process may take, and the task finishing the last chunk sends
:func:`continue_job`, which joins the chunks' results and goes on with the next
segment (or completes the job). Every message carries ids only.

The job record, not Celery, tracks which chunks are done (``JobStore.chunk_done``):
a chord's counter in the result backend can miss a part when Redis times out
(celery/celery#3363) and leave the callback unsent. Here each chunk's result is
recorded once, whoever finishes the last one sends the continuation, and a
continuation sent twice runs once (it runs only while the record still says its
segment is the current one, under the job's lease).

Task bodies are thin, like views: every pandas line lives in ``operations/``,
every Redis key in ``jobstore.py``. What they add is the fault handling:

- every start is counted in the job record (a chunk's starts too); a job or a
  chunk started ``JOB_MAX_ATTEMPTS`` times before (each time its worker process
  died) ends the job ``failed`` (``worker_lost``) instead of taking down worker
  after worker;
- the soft time limit ends a job ``failed`` (``time_limit``); when the hard limit
  kills a process stuck in C code, :meth:`JobTask.on_failure` records the same
  from the worker's main process;
- a cancelled job stops at the next operation, in every chunk, and a process is
  killed when one step runs on past ``CANCEL_GRACE_SECONDS``;
- a job (and each chunk) runs in one place at a time: a lease in Redis, renewed
  while it runs, sends a second delivery (kombu gives a message back when a
  broker connection drops, though its task is still running) to wait and retry;
- a job ends once: whatever ended it first (worker, cancel) is what is kept;
- a step past ``MAX_OUTPUT_ROWS`` (summed over a fan-out's chunks) ends the job
  ``failed`` (``limit_exceeded``); a write the store refuses for want of room,
  wherever it comes, ends it ``failed`` (``storage_full``: :func:`_out_of_room`).
"""

import contextlib
import errno
import json
import logging
import os
import signal
import threading
import time
import traceback
import uuid

import kombu.exceptions
from celery import group, signals
from celery.exceptions import Ignore, SoftTimeLimitExceeded, TimeLimitExceeded

from workers import chunks, datastore, frames, operations, pipeline, runner, settings
from workers.celery import CONTINUE_JOB, RUN_CHUNK, RUN_JOB, app
from workers.errors import JobFailed, StepFailed, hard_time_limit_error, job_error
from workers.jobstore import (
    EVENTS_CHANNEL,
    SWEEPER_LOCK,
    JobStore,
    connect,
    dataset_key,
    job_event,
    key_for,
    server_of,
)
from workers.status import PROGRESS, Phase

log = logging.getLogger(__name__)

operations.load_modules(settings.get("OPERATION_MODULES"))

#: How often a running job looks for a cancel, in seconds.
CANCEL_POLL_SECONDS = 0.25
#: How long a running job's lease lasts unless renewed (every second), in seconds.
LEASE_SECONDS = 5


_stores = {}


def job_store():
    """This process's job store and data store: one per process, built in it.

    Never one inherited through a fork: the worker's main process uses its own from threads (the
    heartbeat, the sweeper), and a pool process forked while one of them held its connection pool's
    lock would inherit the lock held, and hang on its first Redis command.
    """
    pid = os.getpid()
    if pid not in _stores:
        client, ttl = connect(patient=True), settings.get("JOB_TTL_SECONDS")
        _stores[pid] = JobStore(client, ttl, datastore.open_store(settings.get("DATA_STORE_URL"), client, ttl))
    return _stores[pid]


class JobCancelled(Exception):
    """Raised between operations when the job has been cancelled."""


#: What stops a step without making it a failed step: the time limit, a cancel.
INTERRUPTS = (SoftTimeLimitExceeded, JobCancelled)


class JobTask(app.Task):
    """Records, in the job record, the failures the task body cannot see itself."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        # Celery calls this in the worker's main process when the hard time limit
        # has killed the process running the task: nobody else is left to say so.
        if isinstance(exc, TimeLimitExceeded) and args:
            job_store().fail(args[0], hard_time_limit_error(settings.get("JOB_HARD_TIME_LIMIT")))
        elif args and task_id == args[0]:
            # Celery has stored FAILURE for the job without its record saying so: wake its waiters.
            with contextlib.suppress(Exception):
                job_store().notify(args[0], ended=True)


# --- the tasks -------------------------------------------------------------------------


@app.task(bind=True, base=JobTask, name=RUN_JOB, throws=(JobFailed,))
def run_job(self, job_id):
    """Run job ``job_id`` from its first segment: its record and dataset are in the job store."""
    store, record = _open(job_id)
    spare = []  # chunks this task wrote that nothing needs should the job fail (_out_of_room)
    with _out_of_room(store, job_id, record, spare), _leased(self, store, job_id, "lease") as holder:
        if record.get("stage"):
            _resume_fanout(store, job_id, record["stage"])
        max_attempts = settings.get("JOB_MAX_ATTEMPTS")
        if record.get("attempts", 0) >= max_attempts:
            message = (
                f"The worker process running this job died {record['attempts']} times "
                f"(the limit is {max_attempts}); the job was stopped so it cannot take down more workers."
            )
            _fail(store, job_id, job_error("worker_lost", message))
        worker = self.request.hostname or "unknown"
        attempt = store.mark_started(job_id, worker=worker)
        log.info("job %s: attempt %d, %d operations", job_id, attempt, record["operations_total"])
        # A first attempt that ends here, without fanning out, had this worker alone (no need to ask Redis).
        workers = [worker] if attempt == 1 else None
        return _advance(self, store, job_id, record, holder, 0, record["input"], {}, spare, workers)


def _resume_fanout(store, job_id, stage):
    """A ``run_job`` delivery for a job that has fanned out already: a second message (the sweeper sent one for
    a job whose gateway died after sending it), or the same one again (its worker died during the fan-out).
    Either way the job goes on in its chunks: send those not done yet (a chunk is recorded once, whichever of
    two runs finishes first), and stop here rather than start the job over."""
    done = store.chunk_results(job_id, stage["segment"])
    missing = [i for i in range(len(stage["input"]["chunks"])) if i not in done]
    log.info("job %s: fanned out already; %d of its chunks sent again", job_id, len(missing))
    if missing:
        group(run_chunk.si(job_id, stage["segment"], i) for i in missing).apply_async()
    raise Ignore()


@app.task(bind=True, base=JobTask, name=RUN_CHUNK, throws=(JobFailed,))
def run_chunk(self, job_id, segment, index):
    """Run the steps of ``segment`` over chunk ``index`` of its input; the last chunk done sends the continuation."""
    store, record = _open(job_id)
    stage = record.get("stage") or {}
    if stage.get("segment") != segment:
        log.info("job %s: segment %d is over; chunk %d has nothing to do", job_id, segment, index)
        raise Ignore()
    spare = []
    with _out_of_room(store, job_id, record, spare), _leased(self, store, job_id, f"lease:{segment}:{index}") as holder:
        _check_attempts(store, job_id, store.count_chunk_attempt(job_id, segment, index), f"chunk {index}")
        steps = pipeline.parse_steps(record["operations"])
        plan = pipeline.segments(steps)[segment]
        ref = stage["input"]
        store.add_worker(job_id, self.request.hostname or "unknown")
        with _watch(store, job_id, holder, f"lease:{segment}:{index}") as cancelled, _job_errors(store, job_id):
            progress = Progress(self, job_id, len(steps), cancelled)
            limit = _output_limit(record)
            result = runner.run_chunk(
                store.data, job_id, plan, ref, index, settings.get("CHUNK_ROWS"),
                on_progress=_cancel_check(progress), interrupts=INTERRUPTS, max_rows=limit,
                before_write=_sum_check(store, job_id, segment, index, plan, limit),
            )
            spare[:] = [chunk["name"] for chunk in result["ref"]["chunks"]]
            recorded, done = store.chunk_done(job_id, segment, index, result)
            if not recorded:  # a rerun of a chunk whose first run was recorded: keep that one
                store.data.delete(chunk["name"] for chunk in result["ref"]["chunks"])
            total = len(ref["chunks"])
            progress.update(chunks_done=done, chunks_total=total)
        if done >= total:
            # Noted before it is sent: should the message be lost, the sweeper sends it again.
            store.mark_joinable(job_id, segment)
            if not settings.get("TEST_LOSE_JOINS"):
                continue_job.apply_async((job_id, segment), retry=True)
    return {"segment": segment, "chunk": index}


@app.task(bind=True, base=JobTask, name=CONTINUE_JOB, throws=(JobFailed,))
def continue_job(self, job_id, segment):
    """Join the chunks of a fanned-out ``segment`` and go on with the job from the next segment."""
    store, record = _open(job_id)
    spare = []
    with _out_of_room(store, job_id, record, spare), _leased(self, store, job_id, "lease") as holder:
        record = store.get(job_id) or record
        stage = record.get("stage") or {}
        if "finished_at" in record or stage.get("segment") != segment:
            log.info("job %s: segment %d was joined already", job_id, segment)
            raise Ignore()
        store.joined(job_id, segment)
        _check_attempts(store, job_id, store.count_chunk_attempt(job_id, segment, "join"), "the join")
        results = store.chunk_results(job_id, segment)
        ref = stage["input"]
        if len(results) < len(ref["chunks"]):  # a duplicate sent before every chunk was recorded
            raise Ignore()
        joined = chunks.join([results[i]["ref"] for i in range(len(ref["chunks"]))])
        stats = {int(k): v for k, v in stage["stats"].items()}
        for result in results.values():
            runner.add_stats(stats, {int(k): v for k, v in result["stats"].items()})
        spare[:] = [chunk["name"] for chunk in joined["chunks"]]
        try:  # each chunk kept under MAX_OUTPUT_ROWS alone; the sum is checked here, exactly
            steps = pipeline.segments(pipeline.parse_steps(record["operations"]))[segment].steps
            runner.check_totals(stats, steps, _output_limit(record))
        except StepFailed as exc:
            store.data.delete([*spare, *([] if ref == record["input"] else (c["name"] for c in ref["chunks"]))])
            _fail(store, job_id, exc.to_json())
        if ref != record["input"]:  # an earlier segment's output, consumed now
            store.data.delete(chunk["name"] for chunk in ref["chunks"])
        store.add_worker(job_id, self.request.hostname or "unknown")
        return _advance(self, store, job_id, record, holder, segment + 1, joined, stats, spare)


# --- the sweeper: a join whose message was lost is sent again, and a job's never sent ------

#: Seconds between two sweeps, and how long a join may be due before the sweeper sends it again.
SWEEP_SECONDS = settings.get("SWEEP_SECONDS")
JOIN_OVERDUE_SECONDS = 2 * SWEEP_SECONDS


def sweep(store, send):
    """Send again every join overdue by :data:`JOIN_OVERDUE_SECONDS`; return how many were sent.

    A join sent twice runs once (:func:`continue_job` checks the record), so a
    join that was merely slow to start costs a message, never a second run.
    """
    sent = 0
    for job_id, segment in store.overdue_joins(JOIN_OVERDUE_SECONDS):
        record = store.get(job_id)
        if record is None or "finished_at" in record or (record.get("stage") or {}).get("segment") != segment:
            store.joined(job_id, segment)  # ended, expired or joined: nothing to send
            continue
        log.warning("job %s: the join of segment %d is overdue; sending it again", job_id, segment)
        store.mark_joinable(job_id, segment)  # due again from now, should this one be lost too
        send(job_id, segment)
        sent += 1
    return sent


def sweep_orphans(store, send):
    """Send the message of every job whose gateway recorded it and never said it sent it; return how many.

    The gateway lists a job as unsent in the transaction that records it and drops it once
    ``send_task`` returns, so a job still listed ``ORPHAN_SECONDS`` after its creation lost its
    gateway process in between (``JobStore.unsent``). A listed job that a worker has started, or that
    has ended or expired, had its message after all (the gateway died just after sending): dropped,
    not sent. Should a message be sent twice all the same, the lease and ``_open`` run it once.
    """
    sent = 0
    for job_id in store.unsent():
        record = store.get(job_id)
        if record is None or "finished_at" in record or "started_at" in record or record.get("attempts"):
            store.sent(job_id)  # expired, ended or taken by a worker: its message was sent
            continue
        log.warning("job %s: its gateway recorded it and never sent it; sending it now", job_id)
        send(job_id)
        store.sent(job_id)  # after the send: should this process die in between, the next sweep sends it
        sent += 1
    return sent


#: Seconds a directory's chunks may outlive their job's or dataset's record before the sweeper removes them.
ORPHAN_CHUNK_SECONDS = 60


def sweep_chunks(store):
    """Remove the chunks of expired jobs and datasets from a store that cannot expire them (a directory).

    Returns how many jobs and datasets were swept. Only owners whose record is
    gone and whose directory is older than :data:`ORPHAN_CHUNK_SECONDS` go, so
    an upload being written (chunks first, record last) is never swept.
    """
    swept = 0
    for kind, owner_id, age in store.data.owners():
        if age < ORPHAN_CHUNK_SECONDS:
            continue
        key = key_for(owner_id) if kind == "job" else dataset_key(owner_id)
        if not store.redis.exists(key):
            store.data.drop_owner(kind, owner_id)
            swept += 1
    return swept


@signals.worker_ready.connect
def _start_sweeper(sender=None, **kwargs):
    # In the worker's main process: one thread, and one worker sweeping at a time (a Redis lock).
    def loop():
        store = job_store()
        lock = store.redis.lock(SWEEPER_LOCK, timeout=max(SWEEP_SECONDS * 3, 5), blocking=False)
        rounds = 0
        while True:
            time.sleep(SWEEP_SECONDS)
            try:
                if lock.acquire(blocking=False):
                    try:
                        sweep(store, lambda job_id, segment: continue_job.apply_async((job_id, segment)))
                        # As the gateway sends it: the task id is the job id (its Celery state is the job's).
                        sweep_orphans(store, lambda job_id: run_job.apply_async((job_id,), task_id=job_id))
                        rounds += 1
                        if rounds % max(1, int(ORPHAN_CHUNK_SECONDS // SWEEP_SECONDS)) == 0:
                            sweep_chunks(store)
                    finally:
                        lock.release()
            except Exception:  # noqa: BLE001 - Redis blips: sweep again next time
                log.debug("sweep failed", exc_info=True)

    threading.Thread(target=loop, name="datajobs-sweeper", daemon=True).start()
    _start_heartbeat(getattr(sender, "hostname", None) or "unknown")


def _start_heartbeat(hostname):
    """Beat in Redis every ``HEARTBEAT_SECONDS`` from the worker's main process (``GET /health`` counts beats)."""
    seconds = settings.get("HEARTBEAT_SECONDS")

    def loop():
        store = job_store()
        while True:
            try:
                store.beat(hostname)
            except Exception:  # noqa: BLE001 - Redis blips: beat again next time
                log.debug("heartbeat failed", exc_info=True)
            time.sleep(seconds)

    threading.Thread(target=loop, name="datajobs-heartbeat", daemon=True).start()


@signals.worker_shutdown.connect
def _stop_heartbeat(sender=None, **kwargs):
    with contextlib.suppress(Exception):
        job_store().forget_worker(getattr(sender, "hostname", None) or "unknown")


# --- the job, segment by segment ------------------------------------------------------


def _advance(task, store, job_id, record, holder, start, ref, stats, spare, workers=None):
    """Run the segments of the job from ``start`` over ``ref``; fan out, or complete the job at the end.

    ``spare`` is kept naming the chunks of ``ref`` unless it is the job's input: what a job failing for
    want of room frees (:func:`_out_of_room`). ``workers``: the job's workers when they are known without
    asking Redis.
    """
    steps = pipeline.parse_steps(record["operations"])
    plan = pipeline.segments(steps)
    stats = stats or {}
    for step in steps:
        stats.setdefault(step.index, runner.new_stats([step])[step.index])
    table = None  # the last segment's output, when this process made it (for an inline result)
    with _watch(store, job_id, holder) as cancelled, _job_errors(store, job_id):
        progress = Progress(task, job_id, len(steps), cancelled)
        for number in range(start, len(plan)):
            segment = plan[number]
            if runner.fans_out(segment, ref):
                store.begin_fanout(job_id, number, ref, stats)
                progress.update(
                    phase=Phase.RUNNING.value, operations_done=segment.first,
                    current_operation=segment.steps[0].name if segment.steps else None,  # no operations: a copy
                    chunks_done=0, chunks_total=len(ref["chunks"]),
                )
                group(run_chunk.si(job_id, number, i) for i in range(len(ref["chunks"]))).apply_async()
                log.info("job %s: segment %d fans out over %d chunks", job_id, number, len(ref["chunks"]))
                raise Ignore()  # no state stored: the job goes on in its chunks' tasks
            result, table = _run_segment(store, job_id, record, number, segment, ref, stats, progress)
            if ref != record["input"]:  # an earlier segment's output, consumed now
                store.data.delete(chunk["name"] for chunk in ref["chunks"])
            ref = result
            spare[:] = [chunk["name"] for chunk in ref["chunks"]]
        _phase(progress, ref, phase=Phase.SAVING.value, operations_done=len(steps), current_operation=None)
    return _complete(task, store, job_id, record, steps, ref, stats, table, workers)


def _run_segment(store, job_id, record, number, segment, ref, stats, progress):
    """Run one segment in this process: a global step over all the rows, or row-local steps over one chunk."""
    total = len(ref["chunks"]) if segment.row_local else 1
    name = segment.steps[0].name if segment.steps else None
    _phase(progress, ref, phase=Phase.LOADING.value, operations_done=segment.first, current_operation=name,
           chunks_done=0, chunks_total=total)
    result, table = runner.run_whole(
        store.data, job_id, segment, ref, settings.get("CHUNK_ROWS"), stats,
        on_progress=_step_reporter(progress), interrupts=INTERRUPTS, max_rows=_output_limit(record),
    )
    progress.note(chunks_done=total)  # told with the next report, which follows at once
    return result, table


def _phase(progress, ref, **changes):
    """Tell that the job starts loading or saving ``ref``'s rows, unless they are so few (at most
    ``INLINE_RESULT_ROWS``, in one chunk) that the next report follows within a millisecond or two: then it is
    told with that one, and a small job's progress costs a round trip to Redis (and a wake-up of every gateway)
    per step, not three more."""
    if len(ref["chunks"]) == 1 and ref["rows"] <= settings.get("INLINE_RESULT_ROWS"):
        progress.note(**changes)
    else:
        progress.update(**changes)


def _complete(task, store, job_id, record, steps, output, stats, table=None, workers=None):
    summary = {
        "processed_items": record["rows_in"],
        "output_items": output["rows"],
        "operations_applied": len(steps),
        "operations": [_rounded(stats[step.index]) for step in steps],
        "columns": frames.describe_columns(chunks.schema_of(output)),
        "workers": workers if workers is not None else store.workers(job_id),
    }
    inline = None
    if output["rows"] <= settings.get("INLINE_RESULT_ROWS"):
        # The stored chunks as read back, or the same table still in memory (its IPC round trip changes nothing).
        stored = table if table is not None else chunks.read_all(store.data, output)
        inline = json.loads(frames.table_to_json(stored))
    if not store.complete(job_id, output, summary, inline):
        log.info("job %s: ended (cancelled) while running; its result is dropped", job_id)
        store.data.delete(chunk["name"] for chunk in output["chunks"])
        raise Ignore()
    if task.request.id != job_id:  # finished in a continuation: the job's own Celery state says so too
        task.backend.store_result(job_id, summary, "SUCCESS")
    log.info("job %s: completed, %d rows out", job_id, output["rows"])
    return summary


# --- pieces ------------------------------------------------------------------------------


def _open(job_id):
    """The job store and the record of a job that has not ended; Ignore (ack, store nothing) otherwise."""
    store = job_store()
    record = store.get(job_id)
    if record is None or "finished_at" in record:
        # Expired, cancelled, or a redelivered message for a job that has ended:
        # leave its outcome alone (Ignore stores no state and acks the message).
        log.info("job %s: %s; nothing to do", job_id, "ended already" if record else "no record (expired)")
        raise Ignore()
    return store, record


@contextlib.contextmanager
def _leased(task, store, job_id, lease):
    """Hold ``lease`` of the job while the body runs; retry the task later while someone else holds it."""
    holder = f"{task.request.hostname}:{os.getpid()}:{uuid.uuid4()}"
    if not store.take_lease(job_id, holder, LEASE_SECONDS, lease) and not _take_from_the_dead(
        store, job_id, holder, lease, task.request.hostname
    ):
        # Running elsewhere (a message given back on a dropped connection), or its
        # process just died and the lease has yet to run out: look again after it.
        wait = store.lease_left(job_id, lease) + 1
        log.info("job %s: %s held elsewhere; looking again in %.1f s", job_id, lease, wait)
        raise task.retry(countdown=wait, max_retries=None)
    try:
        yield holder
    finally:
        store.drop_lease(job_id, holder, lease)


def _take_from_the_dead(store, job_id, holder, lease, hostname):
    """Take the lease from a holder that was a process of this same worker and has died (SIGKILLed, out of
    memory): its message came back at once, and need not wait for the lease to run out. True if taken.

    Only a process of this worker (its Celery hostname) can be known dead here, by its pid; a holder
    elsewhere, alive or not, keeps the lease until it runs out.
    """
    dead = store.lease_holder(job_id, lease)
    if dead is None or dead.count(":") < 2:  # ran out meanwhile (take it the usual way next time), or not ours
        return False
    node, pid, _ = dead.rsplit(":", 2)  # as _leased names a holder
    if node != hostname or not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
        return False
    if store.replace_lease(job_id, dead, holder, LEASE_SECONDS, lease):
        log.info("job %s: %s was held by process %s of this worker, which has died; taken over", job_id, lease, pid)
        return True
    return False


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _check_attempts(store, job_id, attempts, what):
    max_attempts = settings.get("JOB_MAX_ATTEMPTS")
    if attempts > max_attempts:
        message = (
            f"The worker process running {what} of this job died {attempts - 1} times "
            f"(the limit is {max_attempts}); the job was stopped so it cannot take down more workers."
        )
        _fail(store, job_id, job_error("worker_lost", message))


@contextlib.contextmanager
def _job_errors(store, job_id):
    """Turn what stops a task's work into the job's outcome: cancelled, expired data, time limit, a failed step."""
    try:
        yield
    except JobCancelled:
        log.info("job %s: cancelled; stopped between operations", job_id)
        raise Ignore() from None
    except chunks.ChunkMissing:
        _fail(store, job_id, job_error("expired", "The job's dataset expired or was deleted before a worker "
                                                  "could run it."))
    except SoftTimeLimitExceeded:
        limit = settings.get("JOB_SOFT_TIME_LIMIT")
        _fail(store, job_id, job_error("time_limit", f"The job ran past the time limit of {limit:g} s."))
    except StepFailed as exc:
        # What the job's error says, and where the cause was raised: not its message nor a traceback,
        # which can quote the cell values that made it fail.
        log.warning("job %s: %s (%s)", job_id, exc.message, _where(exc.__cause__))
        _fail(store, job_id, exc.to_json())


#: Seconds a worker keeps asking a full store to take the write that ends a job ``storage_full``: keys
#: expiring, a result or dataset deleted, or ``maxmemory`` raised makes room. Past them the job's end is
#: not recorded (nothing can be), and the error is left to Celery.
ROOM_WAIT_SECONDS = 30.0
#: Seconds between two of those tries.
ROOM_RETRY_SECONDS = 0.25
#: Room, in bytes, a worker waits for (as long) once it has recorded such an end, for Celery's own writes.
ROOM_MARGIN_BYTES = 64 * 1024


def _store_full(exc):
    """True when ``exc`` is the store refusing a write for want of room: Redis at ``maxmemory``, a full disk;
    also as the cause of kombu's ``OperationalError`` (a message the broker would not take)."""
    if isinstance(exc, (datastore.StorageFull, *datastore.FULL_ERRORS)):
        return True
    if isinstance(exc, kombu.exceptions.OperationalError):
        return exc.__cause__ is not None and _store_full(exc.__cause__)
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


@contextlib.contextmanager
def _out_of_room(store, job_id, record, spare=()):
    """End the job ``failed`` (``storage_full``) when the store refuses a write anywhere in the task body.

    Any write can be the one refused: a chunk of the output, a progress report, the lease, the count of
    an attempt, the job's end itself. Redis past ``maxmemory`` still takes deletes, so what the job holds
    that nothing needs once it has failed goes first, making room: ``spare`` (chunks this task wrote, named
    nowhere else yet; a chunk being written is deleted by its ``ChunkWriter``) and the job's inline input.
    The end is then written, tried again for up to :data:`ROOM_WAIT_SECONDS` while the store stays full, so
    the job is not left looking queued or running for want of one small write.
    """
    try:
        yield
    except (datastore.StorageFull, *datastore.FULL_ERRORS, kombu.exceptions.OperationalError, OSError) as exc:
        if not _store_full(exc):
            raise
        _end_for_room(store, job_id, record, spare, exc)


def _end_for_room(store, job_id, record, spare, full):
    """What :func:`_out_of_room` does once the store has refused a write (``full``): raises JobFailed, or Ignore."""
    deadline = time.monotonic() + ROOM_WAIT_SECONDS
    if store.is_finished(job_id):  # ended already (completed: only Celery's own note was refused)
        log.warning("job %s: the store is full (%s); the job had ended, nothing else to write", job_id,
                    type(full).__name__)
        _wait_for_room(store, deadline)
        raise Ignore() from None
    with contextlib.suppress(Exception):  # best effort: deletes are what a full store still takes
        store.data.delete([*spare, *store.owned_chunks(record, ("input",))])
    error = job_error("storage_full", "The data store had no room for the job's data; nothing of its output "
                                      "was kept.")
    log.warning("job %s: failed (storage_full): the store refused a write (%s)", job_id, type(full).__name__)
    while True:
        try:
            store.fail(job_id, error)  # False when it ended meanwhile (a cancel): ended all the same
            break
        except datastore.FULL_ERRORS:
            if time.monotonic() >= deadline:
                log.error("job %s: the store stayed full for %g s; the job's end could not be recorded", job_id,
                          ROOM_WAIT_SECONDS)
                raise full from None
            time.sleep(ROOM_RETRY_SECONDS)
    _wait_for_room(store, deadline)
    raise JobFailed(error["message"]) from None


def _wait_for_room(store, deadline):
    """Wait, until ``deadline`` at most, for room in Redis for Celery's own writes after the task (its state,
    the message's acknowledgement): refused, an acknowledgement stops the whole worker ("Unrecoverable error")."""
    room = datastore.RedisDataStore(store.redis, store.ttl)
    while time.monotonic() < deadline:
        with contextlib.suppress(datastore.FULL_ERRORS):
            if room.has_room(ROOM_MARGIN_BYTES):
                return
        time.sleep(ROOM_RETRY_SECONDS)


def _output_limit(record):
    """Most rows a step of this job may make: ``MAX_OUTPUT_ROWS``, or the job's input rows if more (an uploaded
    dataset may be larger than the cap: steps that keep or drop its rows still run over it)."""
    return max(settings.max_output_rows(), record.get("rows_in", 0))


def _sum_check(store, job_id, segment, index, plan, limit):
    """``before_write`` of chunk ``index``: a chunk that made more rows than it was given refuses to store them
    if, with the chunks of ``segment`` recorded so far, a step passes ``limit`` (the join checks the exact sum)."""

    def check(stats):
        if not runner.grew(stats):  # the sum of a step that grew nowhere stays under the segment's input
            return
        total = {step: dict(entry) for step, entry in stats.items()}
        for other, result in store.chunk_results(job_id, segment).items():
            if other != index:
                runner.add_stats(total, {int(k): v for k, v in result["stats"].items()})
        runner.check_totals(total, plan.steps, limit, where=" over the job's chunks so far")

    return check


def _where(exc):
    """``ValueError at pandas/core/arrays/…py:123 in _from_sequence``: an exception's type and where it was raised."""
    if exc is None:
        return "no cause"
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} at {last.filename}:{last.lineno} in {last.name}"


class Progress:
    """What the tasks tell Celery about job ``job_id`` as they go (``GET /jobs/<id>`` reads it).

    Raises :class:`JobCancelled` on a cancel, so every report is also a cancel check.
    """

    def __init__(self, task, job_id, total, cancelled):
        self.task, self.job_id, self.total, self.cancelled = task, job_id, total, cancelled
        self.meta = {
            "operations_done": 0,
            "operations_total": total,
            "current_operation": None,
            "phase": Phase.LOADING.value,
            "chunks_done": 0,
            "chunks_total": 0,
        }

    def note(self, **changes):
        """Record ``changes`` without telling anyone: the next :meth:`update` carries them."""
        self.meta.update(changes)

    def update(self, **changes):
        if self.cancelled.is_set():
            raise JobCancelled()
        self.meta.update(changes)
        # What ``task.update_state`` stores, without the read of the current state that Celery's
        # ``store_result`` makes first (to never write over a SUCCESS: a job's progress is written only
        # while it runs, and once it has ended its record decides its status), and with the job's
        # event for its waiters in the same round trip, retried as Celery retries its own writes.
        backend = self.task.backend
        meta = {"status": PROGRESS, "result": dict(self.meta), "traceback": None, "children": [],
                "date_done": None, "task_id": self.job_id}
        backend.ensure(_write_progress, (backend, job_store(), self.job_id, backend.encode(meta)))


def _write_progress(backend, store, job_id, encoded):
    client = backend.client
    same_server = server_of(client.connection_pool.connection_kwargs) == server_of(
        store.redis.connection_pool.connection_kwargs
    )
    with client.pipeline(transaction=False) as pipe:
        key = backend.get_key_for_task(job_id)
        if backend.expires:
            pipe.setex(key, backend.expires, encoded)
        else:
            pipe.set(key, encoded)
        if same_server:  # pub/sub spans a server's databases
            pipe.publish(EVENTS_CHANNEL, job_event(job_id))
        pipe.execute()
    if not same_server:
        store.notify(job_id)


def _rounded(entry):
    return {**entry, "seconds": round(entry["seconds"], 6)}


def _step_reporter(progress):
    def report(done, current):
        if current is None:  # the segment's steps are done: told with the next report, which follows at once
            progress.note(operations_done=done, current_operation=None)
        else:
            progress.update(operations_done=done, current_operation=current, phase=Phase.RUNNING.value)

    return report


def _cancel_check(progress):
    def check(done, current):
        if progress.cancelled.is_set():
            raise JobCancelled()

    return check


def _fail(store, job_id, error):
    """End the job ``failed`` with ``error`` and make Celery record FAILURE."""
    log.warning("job %s: failed (%s): %s", job_id, error["type"], error["message"])
    store.fail(job_id, error)
    raise JobFailed(error["message"])


class _Watched:
    """One job (or chunk) a process runs: its lease to renew, and the event its body checks for a cancel."""

    def __init__(self, store, job_id, holder, lease):
        self.store, self.job_id, self.holder, self.lease = store, job_id, holder, lease
        self.cancelled = threading.Event()
        self.renewed = time.monotonic()
        self.cancelled_at = None


class _Watcher:
    """One thread per worker process, started with its first job, that renews the leases of what the process
    runs and watches it for a cancel: a thread per job cost one to start and stop on every job.

    A cancelled job stops at the next operation (its body checks the event). A step that runs on for
    ``CANCEL_GRACE_SECONDS`` after the cancel is stopped the only way that works in the middle of C code: this
    process is killed, as the hard time limit would. Celery then starts a fresh process, and the message it
    gives back finds the job ended and is dropped. With nothing to watch the thread sleeps.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._watched = set()
        self._pid = None  # the process the thread runs in (Celery's pool forks its processes)

    @contextlib.contextmanager
    def watch(self, store, job_id, holder, lease):
        """While the body runs, renew its lease and watch for a cancel; yield an Event set on a cancel."""
        entry = _Watched(store, job_id, holder, lease)
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._watched = os.getpid(), set()
                threading.Thread(target=self._run, name="datajobs-watcher", daemon=True).start()
            self._watched.add(entry)
            self._work.notify()
        try:
            yield entry.cancelled
        finally:
            with self._lock:
                self._watched.discard(entry)

    def _run(self):
        while True:
            with self._lock:
                while not self._watched:
                    self._work.wait()
            time.sleep(CANCEL_POLL_SECONDS)
            with self._lock:
                entries = list(self._watched)
            for entry in entries:
                try:
                    self._tend(entry)
                except Exception:  # pragma: no cover - the thread must outlive a bug: every lease depends on it
                    log.exception("job %s: watcher error", entry.job_id)

    def _tend(self, entry):
        if entry.cancelled_at is None:
            self._look(entry)
            return
        grace = settings.get("CANCEL_GRACE_SECONDS")
        if time.monotonic() - entry.cancelled_at >= grace and self._still(entry):
            log.warning("job %s: cancelled, and a step ran on for %g s; killing its worker process",
                        entry.job_id, grace)
            os.kill(os.getpid(), signal.SIGKILL)

    def _still(self, entry):
        with self._lock:
            return entry in self._watched

    @staticmethod
    def _look(entry):
        try:
            if time.monotonic() - entry.renewed >= 1:
                entry.store.renew_lease(entry.job_id, entry.holder, LEASE_SECONDS, entry.lease)
                entry.renewed = time.monotonic()
            if entry.store.is_finished(entry.job_id):
                entry.cancelled_at = time.monotonic()
                entry.cancelled.set()
        except Exception:  # noqa: BLE001 - Redis blips: keep watching
            log.debug("job %s: lease or cancel check failed", entry.job_id, exc_info=True)


_watcher = _Watcher()


def _watch(store, job_id, holder, lease="lease"):
    """:meth:`_Watcher.watch` of this process's watcher."""
    return _watcher.watch(store, job_id, holder, lease)
