"""The Celery task: load a job by reference, fold its pipeline, store the result.

The task body is thin, like a view: every pandas line lives in ``operations/``,
every Redis key in ``jobstore.py``. What it adds is the fault handling:

- every start is counted in the job record; a job started ``JOB_MAX_ATTEMPTS``
  times before (each time its worker process died) ends ``failed``
  (``worker_lost``) instead of taking down worker after worker;
- the soft time limit ends a job ``failed`` (``time_limit``); when the hard limit
  kills a process stuck in C code, :meth:`JobTask.on_failure` records the same
  from the worker's main process;
- a cancelled job stops at the next operation, and its process is killed when
  one step runs on past ``CANCEL_GRACE_SECONDS``;
- a job runs in one place at a time: a lease in Redis, renewed while it runs,
  sends a second delivery of a running job (kombu gives a message back when a
  broker connection drops, though its job is still running) to wait and retry;
- a job ends once: whatever ended it first (worker, cancel) is what is kept.
"""

import contextlib
import functools
import json
import logging
import os
import signal
import threading
import time
import uuid

from celery.exceptions import Ignore, SoftTimeLimitExceeded, TimeLimitExceeded

from workers import frames, operations, pipeline, settings
from workers.celery import RUN_JOB, app
from workers.errors import JobFailed, StepFailed, hard_time_limit_error, job_error
from workers.jobstore import JobStore, connect
from workers.status import PROGRESS

log = logging.getLogger(__name__)

operations.load_modules(settings.get("OPERATION_MODULES"))

#: How often a running job looks for a cancel, in seconds.
CANCEL_POLL_SECONDS = 0.25
#: How long a running job's lease lasts unless renewed (every second), in seconds.
LEASE_SECONDS = 5


@functools.cache
def job_store():
    """This worker process's job store (one Redis connection pool per process)."""
    return JobStore(connect(patient=True), settings.get("JOB_TTL_SECONDS"))


class JobCancelled(Exception):
    """Raised between operations when the job has been cancelled."""


class JobTask(app.Task):
    """Records, in the job record, the failures the task body cannot see itself."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        # Celery calls this in the worker's main process when the hard time limit
        # has killed the process running the job: nobody else is left to say so.
        if isinstance(exc, TimeLimitExceeded):
            job_store().fail(task_id, hard_time_limit_error(settings.get("JOB_HARD_TIME_LIMIT")))


@app.task(bind=True, base=JobTask, name=RUN_JOB, throws=(JobFailed,))
def run_job(self, job_id):
    """Run job ``job_id``: its record and dataset are in the job store; return its summary."""
    store = job_store()
    record = store.get(job_id)
    if record is None or "finished_at" in record:
        # Expired, cancelled, or a redelivered message for a job that has ended:
        # leave its outcome alone (Ignore stores no state and acks the message).
        log.info("job %s: %s; nothing to do", job_id, "ended already" if record else "no record (expired)")
        raise Ignore()
    holder = f"{self.request.hostname}:{os.getpid()}:{uuid.uuid4()}"
    if not store.take_lease(job_id, holder, LEASE_SECONDS):
        # Running elsewhere (a message given back on a dropped connection), or its
        # process just died and the lease has yet to run out: look again after it.
        wait = store.lease_left(job_id) + 1
        log.info("job %s: running elsewhere; looking again in %.1f s", job_id, wait)
        raise self.retry(countdown=wait, max_retries=None)
    try:
        return _run(self, store, job_id, record, holder)
    finally:
        store.drop_lease(job_id, holder)


def _run(task, store, job_id, record, holder):
    """The body of :func:`run_job`, once this delivery holds the job's lease."""
    max_attempts = settings.get("JOB_MAX_ATTEMPTS")
    if record.get("attempts", 0) >= max_attempts:
        message = (
            f"The worker process running this job died {record['attempts']} times "
            f"(the limit is {max_attempts}); the job was stopped so it cannot take down more workers."
        )
        _fail(store, job_id, job_error("worker_lost", message))
    dataset = store.load_input(job_id)
    if dataset is None:
        message = "The job's dataset expired before a worker could run it."
        _fail(store, job_id, job_error("expired", message))
    attempt = store.mark_started(job_id)
    log.info("job %s: attempt %d, %d operations", job_id, attempt, record["operations_total"])

    steps = pipeline.parse_steps(record["operations"])
    with _watch(store, job_id, holder) as cancelled:

        def report(done, current):
            if cancelled.is_set():
                raise JobCancelled()
            meta = {"operations_done": done, "operations_total": len(steps), "current_operation": current}
            task.update_state(state=PROGRESS, meta=meta)

        try:
            df = frames.records_to_frame(json.loads(dataset))
            out, stats = pipeline.run(df, steps, on_progress=report, interrupts=(SoftTimeLimitExceeded,))
            output = frames.frame_to_json(out)
        except JobCancelled:
            log.info("job %s: cancelled; stopped between operations", job_id)
            raise Ignore() from None
        except SoftTimeLimitExceeded:
            limit = settings.get("JOB_SOFT_TIME_LIMIT")
            _fail(store, job_id, job_error("time_limit", f"The job ran past the time limit of {limit:g} s."))
        except StepFailed as exc:
            log.warning("job %s: %s", job_id, exc.message, exc_info=exc.__cause__)
            _fail(store, job_id, exc.to_json())
    summary = {
        "processed_items": len(df),
        "output_items": len(out),
        "operations_applied": len(steps),
        "operations": stats,
    }
    if not store.complete(job_id, output, summary):
        log.info("job %s: ended (cancelled) while running; its result is dropped", job_id)
        raise Ignore()
    return summary


def _fail(store, job_id, error):
    """End the job ``failed`` with ``error`` and make Celery record FAILURE."""
    log.warning("job %s: failed (%s): %s", job_id, error["type"], error["message"])
    store.fail(job_id, error)
    raise JobFailed(error["message"])


@contextlib.contextmanager
def _watch(store, job_id, holder):
    """While the body runs, renew its lease and watch for a cancel; yield an Event set on a cancel.

    A cancelled job stops at the next operation (the body checks the event). A
    step that runs on for ``CANCEL_GRACE_SECONDS`` after the cancel is stopped
    the only way that works in the middle of C code: this process is killed,
    as the hard time limit would. Celery then starts a fresh process, and the
    message it gives back finds the job ended and is dropped.
    """
    cancelled, done = threading.Event(), threading.Event()
    grace = settings.get("CANCEL_GRACE_SECONDS")

    def watch():
        renewed = time.monotonic()
        while not done.wait(CANCEL_POLL_SECONDS):
            try:
                if time.monotonic() - renewed >= 1:
                    store.renew_lease(job_id, holder, LEASE_SECONDS)
                    renewed = time.monotonic()
                if store.is_finished(job_id):
                    break
            except Exception:  # noqa: BLE001 - Redis blips: keep watching
                log.debug("job %s: lease or cancel check failed", job_id, exc_info=True)
        else:
            return
        cancelled.set()
        if not done.wait(grace):
            log.warning("job %s: cancelled, and a step ran on for %g s; killing its worker process", job_id, grace)
            os.kill(os.getpid(), signal.SIGKILL)

    watcher = threading.Thread(target=watch, name=f"watch-{job_id}", daemon=True)
    watcher.start()
    try:
        yield cancelled
    finally:
        done.set()
