"""The Celery task: load a job by reference, fold its pipeline, store the result.

The task body is thin, like a view: every pandas line lives in ``operations/``,
every Redis key in ``jobstore.py``.
"""

import functools
import json
import logging

from celery.exceptions import Ignore

from workers import frames, pipeline, settings
from workers.celery import RUN_JOB, app
from workers.errors import JobFailed, StepFailed
from workers.jobstore import JobStore, connect
from workers.status import PROGRESS

log = logging.getLogger(__name__)


@functools.cache
def job_store():
    """This worker process's job store (one Redis connection pool per process)."""
    return JobStore(connect(), settings.get("JOB_TTL_SECONDS"))


@app.task(bind=True, name=RUN_JOB, throws=(JobFailed,))
def run_job(self, job_id):
    """Run job ``job_id``: its record and dataset are in the job store; return its summary."""
    store = job_store()
    record = store.get(job_id)
    if record is None or "finished_at" in record:
        # Expired, or a redelivered message for a job that has ended: leave its
        # stored result alone (Ignore stores no state and acks the message).
        log.warning("job %s: %s; nothing to do", job_id, "ended already" if record else "no record (expired)")
        raise Ignore()
    dataset = store.load_input(job_id)
    if dataset is None:
        message = "The job's dataset expired before a worker could run it."
        store.fail(job_id, {"type": "expired", "message": message, "operation_index": None})
        raise JobFailed(message)
    attempt = store.mark_started(job_id)
    log.info("job %s: attempt %d, %d operations", job_id, attempt, record["operations_total"])

    steps = pipeline.parse_steps(record["operations"])
    df = frames.records_to_frame(json.loads(dataset))

    def report(done, current):
        meta = {"operations_done": done, "operations_total": len(steps), "current_operation": current}
        self.update_state(state=PROGRESS, meta=meta)

    try:
        out, stats = pipeline.run(df, steps, on_progress=report)
    except StepFailed as exc:
        log.warning("job %s: %s", job_id, exc.message, exc_info=exc.__cause__)
        store.fail(job_id, exc.to_json())
        raise JobFailed(exc.message) from None
    store.complete(job_id, frames.frame_to_json(out))
    return {
        "processed_items": len(df),
        "output_items": len(out),
        "operations_applied": len(steps),
        "operations": stats,
    }
