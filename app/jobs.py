"""``POST /jobs`` and ``GET /jobs/<id>``: submit a job, follow it to the end."""

import json
import logging

from flask import Blueprint, current_app, request, url_for

from app.errors import BACKEND_ERRORS, error_response
from app.validation import read_job
from workers.celery import RUN_JOB
from workers.jobstore import is_job_id, new_job_id
from workers.status import JobStatus, from_celery_state

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__)


def _store():
    return current_app.extensions["jobstore"]


def _celery():
    return current_app.extensions["celery"]


@bp.post("/jobs")
@bp.post("/process")  # the earlier processor's route, kept for its clients
def submit():
    """Validate a job, record it, enqueue it; answer 202 with its location."""
    dataset, steps = read_job(request)
    job_id = new_job_id()
    operations = [step.to_json() for step in steps]
    store = _store()
    store.create(job_id, operations, json.dumps(dataset), rows=len(dataset))
    try:
        # The message carries the job id only; the data waits in the job store.
        _celery().send_task(RUN_JOB, args=[job_id], task_id=job_id)
    except BACKEND_ERRORS:
        store.delete(job_id)
        raise
    log.info("job %s accepted: %d records, %d operations", job_id, len(dataset), len(steps))
    location = url_for("jobs.show", job_id=job_id)
    body = {
        "job_id": job_id,
        "status": JobStatus.STARTED.value,
        "message": f"Job accepted: {len(dataset)} items, {len(steps)} operations. Follow it at {location}.",
    }
    return body, 202, {"Location": location}


@bp.get("/jobs/<job_id>")
def show(job_id):
    """Report a job's status, progress, timestamps, and its data or error once it has ended."""
    store = _store()
    record = store.get(job_id) if is_job_id(job_id) else None
    if record is None:
        return error_response(404, "job_not_found", f"No job with id {job_id!r}: unknown, or expired.")
    meta = _celery().backend.get_task_meta(job_id)
    status = from_celery_state(meta["status"])
    total = record["operations_total"]
    body = {
        "job_id": job_id,
        "status": status.value,
        "message": "",
        "progress": {"operations_done": 0, "operations_total": total, "current_operation": None},
        "data": None,
        "error": None,
        "created_at": record["created_at"],
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
        "attempts": record.get("attempts", 0),
    }
    progress, info = body["progress"], meta.get("result")
    if status is JobStatus.STARTED:
        body["message"] = "Queued: waiting for a worker."
    elif status is JobStatus.PROCESSING:
        if isinstance(info, dict) and "operations_done" in info:
            progress.update(operations_done=info["operations_done"], current_operation=info["current_operation"])
        done, current = progress["operations_done"], progress["current_operation"]
        body["message"] = f"Processing: {done} of {total} operations done" + (f", running {current}." if current else ".")
    elif status is JobStatus.COMPLETED:
        progress["operations_done"] = total
        records = json.loads(store.load_output(job_id) or "[]")
        body["data"] = {**info, "data": records}
        body["message"] = f"Successfully processed {info['processed_items']} items with {total} operations"
    else:
        body["error"] = record.get("error") or _celery_error(meta)
        body["message"] = body["error"]["message"]
        if body["error"]["operation_index"] is not None:
            progress["operations_done"] = body["error"]["operation_index"]
    return body


def _celery_error(meta):
    """An ``error`` for a job that ended without the worker recording why (revoked, lost...)."""
    kinds = {"REVOKED": ("revoked", "The job was revoked before it finished.")}
    kind, message = kinds.get(meta["status"], ("worker_error", "The job ended without a result; see the worker log."))
    return {"type": kind, "message": message, "operation_index": None}
