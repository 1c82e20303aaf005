"""``POST /jobs``, ``GET /jobs/<id>`` and ``DELETE /jobs/<id>``: submit a job, follow it, cancel it."""

import base64
import contextlib
import hashlib
import logging
import os
import re
import time
from datetime import datetime, timezone

import redis
from billiard.exceptions import WorkerLostError
from celery import states
from celery.exceptions import TimeLimitExceeded
from flask import Blueprint, Response, current_app, request, url_for

from app.auth import current_owner
from app.datasets import find as find_dataset
from app.errors import BACKEND_ERRORS, error_response
from app.validation import query_count, query_flag, query_seconds, read_job
from workers import chunks, frames, logs, pipeline
from workers.celery import RUN_JOB
from workers.chunks import ChunkWriter
from workers.datasets import READY
from workers.datastore import FULL_ERRORS, StorageFull
from workers.errors import InvalidRequest, hard_time_limit_error, job_error
from workers.jobstore import index_member, is_index_member, is_job_id, new_job_id, read_index_member
from workers.status import JobStatus, Phase, job_status

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__)

#: Inline datasets up to this size are stored without first asking the store for room.
SMALL_INLINE_BYTES = 1024 * 1024
#: What an ``Idempotency-Key`` may be: 1 to 255 visible ASCII characters.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
#: ``Retry-After`` of the body of a job that has not ended: when a client that does not wait should ask again.
POLL_AFTER_SECONDS = 1
#: ``Retry-After`` of a ``429 too_many_jobs``: when a client at its quota should submit again.
QUOTA_RETRY_SECONDS = 5


def _store():
    return current_app.extensions["jobstore"]


def _celery():
    return current_app.extensions["celery"]


def _task_meta():
    return current_app.extensions["task_meta"]


@bp.post("/jobs")
@bp.post("/process")  # the earlier processor's route, kept for its clients
def submit():
    """Validate a job, record it, enqueue it; answer 202 with its location.

    With an ``Idempotency-Key``, a retry of the same request (same key, same
    body, within the job TTL) answers 200 with the job the first one created
    instead of creating another; the same key with another body is a 409.
    """
    key = _idempotency_key()
    wait = _wait_seconds()
    dry_run = query_flag("dry_run")
    job = read_job(request, current_app.config)
    owner, store, job_id = current_owner(), _store(), new_job_id()
    if job.dataset_id is not None:
        input_ref = _dataset_input(job.dataset_id)
        schema = chunks.schema_of(input_ref)
        pipeline.check_columns(job.steps, schema)
        rows = input_ref["rows"]
    else:
        table = frames.records_to_table(job.dataset)
        schema, rows = table.schema, table.num_rows
        pipeline.check_columns(job.steps, schema)
    if dry_run:
        return _plan(job.steps, schema, rows)
    digest = hashlib.sha256(request.get_data()).hexdigest() if key else None
    if key and (earlier := store.find_idempotency_key(owner, key)) is not None:
        return _replay(key, *earlier, digest)  # a retry: no new job, so no quota to spend
    # Per token: an open gateway (no API_TOKENS) has no one to tell apart, so no quota.
    limit = current_app.config["MAX_ACTIVE_JOBS_PER_TOKEN"] if owner else 0
    if limit and not store.claim_slot(owner, job_id, limit):
        return error_response(
            429,
            "too_many_jobs",
            f"This token has {limit} jobs queued or running (MAX_ACTIVE_JOBS_PER_TOKEN); submit again once "
            "some have ended.",
            headers={"Retry-After": str(QUOTA_RETRY_SECONDS)},
            limit=limit,
        )
    events = current_app.extensions["job_events"]
    # A submission that waits watches for the job's end from before its message goes out.
    with events.watch(job_id, ends_only=True) if wait is not None else contextlib.nullcontext() as ended:
        try:
            data = input_ref if job.dataset_id is not None else table
            replay = _enqueue(store, owner, job_id, job, data, key, digest)
        except BaseException as exc:
            if limit and not _unresponsive(exc):
                with contextlib.suppress(Exception):  # best effort: Redis may be the thing that is down
                    store.release_slot(owner, job_id)
            raise
        if replay is not None:  # a retry that raced its first try: that one's answer
            return replay
        steps = job.steps
        log.info("job %s accepted: %d records, %d operations", job_id, rows, len(steps))
        location = url_for("jobs.show", job_id=job_id)
        if wait is not None:
            # Subscribed all along, this process has seen any end there was: no need to read a job just queued.
            watched = ended if events.listening else None
            body = _await(job_id, wait, lambda body: JobStatus(body["status"]).is_terminal, ends_only=True,
                          watched=watched)
            if body is not None and JobStatus(body["status"]).is_terminal:
                return _job_response(body, headers={"Location": location}, conditional=False)
    body = {
        "job_id": job_id,
        "status": JobStatus.STARTED.value,
        "message": f"Job accepted: {rows} items, {len(steps)} operations. Follow it at {location}.",
    }
    return body, 202, {"Location": location}


def _enqueue(store, owner, job_id, job, data, key, digest):
    """Store the job's data and record, claim its ``Idempotency-Key``, send its message.

    ``data`` is the input reference of an uploaded dataset, or the table of an inline one. Returns None,
    or the answer to give instead when a concurrent try with the same key created the job first.
    """
    input_ref = _store_inline(job_id, data) if job.dataset_id is None else data
    logs.bind_job(job_id)
    try:
        store.create(job_id, [step.to_json() for step in job.steps], input_ref, owner=owner,
                     orphan_seconds=current_app.config["ORPHAN_SECONDS"])
    except BaseException as exc:
        if not _unresponsive(exc):
            with contextlib.suppress(Exception):
                store.data.delete(store.owned_chunks({"input": input_ref}, ("input",)))
        raise
    try:
        if key:
            # Claimed after the record exists, so whoever finds the claim finds the job.
            earlier = store.claim_idempotency_key(owner, key, digest, job_id)
            if earlier is not None:
                store.delete(job_id)
                return _replay(key, *earlier, digest)
        if current_app.config["TEST_DIE_BEFORE_SEND"]:
            log.warning("TEST_DIE_BEFORE_SEND: this gateway process exits before sending job %s", job_id)
            os._exit(1)  # not 3 or 4, on which gunicorn's arbiter would stop every process
        # The message carries the job id only; the data waits in the job store.
        _celery().send_task(RUN_JOB, args=[job_id], task_id=job_id)
    except (*BACKEND_ERRORS, *FULL_ERRORS):  # a full Redis too: the claim or the message refused (507)
        with contextlib.suppress(*BACKEND_ERRORS):  # best effort: Redis may be the thing that is down
            store.delete(job_id)
            if key:
                store.release_idempotency_key(owner, key)
        raise
    # One ZREM more per job, once the message is on the queue: a process dying before it leaves the job
    # listed, and the workers' sweeper sends it. Failing, it costs at most a duplicate message, which runs once.
    with contextlib.suppress(*BACKEND_ERRORS):
        store.sent(job_id)
    return None


def _unresponsive(exc):
    """True when ``exc`` says Redis took a command and did not answer it (frozen, or behind a partition):
    a cleanup would wait as long again for nothing, so the 503 goes at once (what was written expires)."""
    return isinstance(exc, redis.TimeoutError)


def _plan(steps, schema, rows):
    """The answer of ``POST /jobs?dry_run=true``: the columns after each step; nothing stored or queued."""
    after = pipeline.plan(steps, schema)
    known = sum(columns is not None for columns in after)
    message = f"Valid: {rows} rows, {len(steps)} operations; nothing was stored or queued."
    if known < len(steps):
        message += (f" The columns after step {known} ({steps[known].name}) depend on the data, so they are "
                    "not shown from there on.")
    return {
        "dry_run": True,
        "rows": rows,
        "columns": frames.describe_columns(schema),
        "steps": [{"index": step.index, "name": step.name, "columns": columns} for step, columns in zip(steps, after)],
        "message": message,
    }


def _dataset_input(dataset_id):
    """The input reference of a job on an uploaded dataset: 404 if unknown or another token's, 409 if uploading."""
    try:
        record = find_dataset(dataset_id)
    except InvalidRequest as exc:
        raise InvalidRequest(exc.code, exc.message, status=exc.status, field="dataset_id") from None
    if record["status"] != READY:
        raise InvalidRequest(
            "dataset_not_ready",
            f"Dataset {dataset_id} is still being uploaded: commit it (POST /datasets/{dataset_id}/commit) first.",
            status=409,
            field="dataset_id",
        )
    return {**record["ref"], "dataset_id": dataset_id}


def _store_inline(job_id, table):
    """Store an inline dataset as the job's own chunks; return their reference."""
    data = _store().data
    # A small dataset is one chunk, which Redis refuses whole when full (507 all the same): skip the INFO call.
    if table.nbytes > SMALL_INLINE_BYTES and not data.has_room(table.nbytes):
        raise StorageFull()
    with ChunkWriter(data, "job", job_id, "input", current_app.config["CHUNK_ROWS"], mixed_as_json=True) as writer:
        writer.write(table)
        return {**writer.close(), "dataset_id": None}


def _idempotency_key():
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidRequest(
            "invalid_idempotency_key",
            "The Idempotency-Key header must be 1 to 255 visible ASCII characters (a UUID is a good choice).",
            field="Idempotency-Key",
        )
    return key


def _replay(key, job_id, digest, new_digest):
    if digest != new_digest:
        return error_response(
            409,
            "idempotency_key_reused",
            "This Idempotency-Key was used for a different request body; use a new key for a new job.",
            job_id=job_id,
        )
    record = _store().get(job_id)
    if record is None:  # the job expired before its key did
        return error_response(404, "job_not_found", f"The job this Idempotency-Key created ({job_id}) has expired.")
    log.info("job %s: returned again for a retried request (Idempotency-Key)", job_id)
    return _job_response(_job_body(job_id, record), headers={"Location": url_for("jobs.show", job_id=job_id)},
                         conditional=False)


@bp.get("/jobs")
def index():
    """List the caller's jobs, newest first: filters ``status``, ``created_after``, ``created_before``; pages of
    ``limit`` with an opaque ``cursor`` (the body's ``next``, also in a ``Link: rel="next"`` header)."""
    statuses = _statuses()
    after, before = _moment("created_after"), _moment("created_before")
    limit = query_count("limit", DEFAULT_PAGE)
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest("invalid_parameter", f"The 'limit' query parameter must be from 1 to {MAX_PAGE}.",
                             parameter="limit")
    position = _cursor() or (None if before is None else index_member(before.timestamp()))
    low = None if after is None else index_member(after.timestamp()) + "~"  # "~" sorts after every sequence and id
    owner, store, jobs, scanned = current_owner(), _store(), [], 0
    more = True
    while more and len(jobs) < limit and scanned < MAX_SCANNED:
        want = min(limit - len(jobs), MAX_SCANNED - scanned)
        members = store.page(owner, before=position, after=low, count=want + 1)  # one more: is there a next?
        more = len(members) > want
        members = members[:want]
        scanned += len(members)
        found = _task_meta().read_many([read_index_member(member) for member in members])
        store.unindex(owner, [member for member, (record, _) in zip(members, found) if record is None])
        for member, (record, meta) in zip(members, found):
            if record is not None and record.get("owner", "") == owner:
                body = _job_body(read_index_member(member), record, meta)
                if not statuses or body["status"] in statuses:
                    jobs.append(_listed(body))
            position = member
    following = _page_token(position) if more else None
    headers = {}
    if following:
        link = url_for("jobs.index", **{**request.args.to_dict(flat=False), "cursor": following})
        headers["Link"] = f'<{link}>; rel="next"'
    return {"jobs": jobs, "next": following}, 200, headers


#: ``GET /jobs``: jobs per page by default and at most, and index entries one request reads at most
#: (a page filtered by status may come back short, with a ``next`` to go on from).
DEFAULT_PAGE, MAX_PAGE, MAX_SCANNED = 50, 500, 2000


def _listed(body):
    """A job's body as ``GET /jobs`` lists it: without its inline result rows."""
    if body["data"] is not None:
        body["data"] = {**body["data"], "data": None}
    return body


def _statuses():
    names = [name.strip() for value in request.args.getlist("status") for name in value.split(",") if name.strip()]
    known = {status.value for status in JobStatus}
    for name in names:
        if name not in known:
            raise InvalidRequest(
                "invalid_parameter",
                f"The 'status' query parameter must be one of {', '.join(sorted(known))}; got {name!r}.",
                parameter="status",
            )
    return set(names)


def _moment(name):
    """Query parameter ``name`` as an aware datetime (ISO 8601; UTC when it names no zone), or None."""
    text = request.args.get(name)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest("invalid_parameter", f"The '{name}' query parameter must be an ISO 8601 date and "
                             "time, such as 2026-12-03T17:00:00Z.", parameter=name) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _page_token(member):
    return base64.urlsafe_b64encode(member.encode()).decode().rstrip("=")


def _cursor():
    """The index member the ``cursor`` query parameter names (the page goes on after it), or None."""
    text = request.args.get("cursor")
    if text is None:
        return None
    try:
        member = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        if is_index_member(member):
            return member
    except (ValueError, UnicodeDecodeError):
        pass
    raise InvalidRequest("invalid_parameter", "The 'cursor' query parameter is not one this gateway gave: pass "
                         "the 'next' of the page before, unchanged.", parameter="cursor")


@bp.get("/jobs/<job_id>")
def show(job_id):
    """Report a job's status, progress, timestamps, and its data or error once it has ended.

    With ``?wait=S`` the answer waits, up to S seconds, for the job to end, or, when the
    request names the body it has with ``If-None-Match``, for the body to change.
    ``If-None-Match`` naming the body as it is (when the wait runs out) answers 304.
    """
    wait = _wait_seconds()
    record, meta = _lookup(job_id)
    if record is None:
        return _not_found(job_id)
    if wait is None:
        return _job_response(_job_body(job_id, record, meta))
    seen = request.if_none_match

    def changed(body):
        return JobStatus(body["status"]).is_terminal or (bool(seen) and not seen.contains_weak(etag(body)))

    body = _await(job_id, wait, changed, ends_only=not seen)
    if body is None:  # deleted or expired while we waited
        return _not_found(job_id)
    return _job_response(body)


@bp.delete("/jobs/<job_id>")
def cancel(job_id):
    """Cancel a queued or running job: it ends ``cancelled`` now; a 409 if it had ended already.

    A queued job will never run. A running one stops before its next operation,
    and its worker process is killed if the current step goes on past
    ``CANCEL_GRACE_SECONDS`` (``workers/tasks.py``).
    """
    store = _store()
    record = _find(job_id)
    if record is None:
        return _not_found(job_id)
    if not store.cancel(job_id):
        status = current_status(job_id, store.get(job_id) or record).value
        return error_response(
            409,
            "job_finished",
            f"Job {job_id} has already ended ({status}); only a queued or running job can be cancelled.",
            job_status=status,
        )
    log.info("job %s cancelled by request", job_id)
    return _job_response(_job_body(job_id, store.get(job_id)), conditional=False)


def _wait_seconds():
    """The ``wait`` query parameter in seconds (0 < S <= ``MAX_WAIT_SECONDS``), or None when there is none."""
    return query_seconds("wait", current_app.config["MAX_WAIT_SECONDS"], "MAX_WAIT_SECONDS")


def _await(job_id, seconds, done, ends_only=False, watched=None):
    """Read job ``job_id`` until ``done(body)`` or ``seconds`` pass; return the last body (None once it is gone).

    ``ends_only``: ``done`` looks for the job's end only, so progress need not wake the request.

    Between two reads the request sleeps until this process's subscription says the job
    may have changed (``app/waiting.py``): Redis is read on a change, never on a timer.
    ``watched`` is the event of a watch opened, while subscribed, before anything could change the
    job: the first read then waits for a change too.
    """
    deadline = time.monotonic() + seconds
    events = current_app.extensions["job_events"]
    with events.watch(job_id, ends_only) if watched is None else contextlib.nullcontext(watched) as changed:
        if watched is not None:
            changed.wait(seconds)
        while True:
            changed.clear()  # before the read: a change from here on wakes the wait below
            record, meta = _lookup(job_id)
            if record is None:
                return None
            body = _job_body(job_id, record, meta)
            left = deadline - time.monotonic()
            if done(body) or left <= 0:
                return body
            changed.wait(left)


def etag(body):
    """The entity tag of a job body: it changes whenever anything in the body does (status, progress, phase...)."""
    return _tag(current_app.json.dumps(body).encode())


def _tag(data):
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _job_response(body, status=200, headers=None, conditional=True):
    """A job body with its ``ETag`` (and ``Retry-After`` until it ends); 304 when ``If-None-Match`` names it.

    The body is encoded once, for the answer and its tag.
    """
    data = current_app.json.dumps(body).encode()
    tag = _tag(data)
    headers = {"ETag": f'"{tag}"', **(headers or {})}
    if not JobStatus(body["status"]).is_terminal:
        headers["Retry-After"] = str(POLL_AFTER_SECONDS)
    if conditional and request.if_none_match.contains_weak(tag):
        return Response(status=304, headers=headers)
    return Response(data, status=status, headers=headers, mimetype="application/json")


def current_status(job_id, record):
    """The :class:`JobStatus` of a job now: its record's outcome, else what Celery says."""
    if record.get("outcome"):
        return job_status(record, None)
    return job_status(record, _task_meta().meta(job_id)["status"])


def _find(job_id):
    """The record of ``job_id`` if it exists and this request's token may see it, else None."""
    return _lookup(job_id, meta=False)[0]


def _lookup(job_id, meta=True):
    """``(record, Celery task meta)`` of ``job_id`` if it exists and this request's token may see it, else
    ``(None, None)``; one round trip to Redis in the usual setup (``app/taskmeta.py``)."""
    if not is_job_id(job_id):
        return None, None
    record, task = _task_meta().read(job_id) if meta else (_store().get(job_id), None)
    if record is None or record.get("owner", "") != current_owner():
        return None, None
    return record, task


def _not_found(job_id):
    return error_response(404, "job_not_found", f"No job with id {job_id!r}: unknown, or expired.")


def _job_body(job_id, record, meta=None):
    """The body of ``GET /jobs/<id>``: the record says how a job ended, Celery (``meta``) how far it has got."""
    meta = meta if meta is not None else _task_meta().meta(job_id)
    if not record.get("outcome") and meta["status"] in states.READY_STATES:
        # The job ended between the two reads; the worker writes the record first.
        record = _store().get(job_id) or record
    status = job_status(record, meta["status"])
    total = record["operations_total"]
    body = {
        "job_id": job_id,
        "status": status.value,
        "message": "",
        "progress": {
            "operations_done": 0,
            "operations_total": total,
            "current_operation": None,
            "phase": None,
            "chunks_done": 0,
            "chunks_total": 0,
        },
        "data": None,
        "error": None,
        "created_at": record["created_at"],
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
        "attempts": record.get("attempts", 0),
        "rows_in": record.get("rows_in", 0),
        "operations": [step["name"] for step in record.get("operations", ())],
    }
    progress, info = body["progress"], meta.get("result")
    if isinstance(info, dict) and "operations_done" in info:
        progress.update({key: info[key] for key in progress if key in info and key != "operations_total"})
    if status is JobStatus.STARTED:
        body["message"] = "Queued: waiting for a worker."
    elif status is JobStatus.PROCESSING:
        body["message"] = _processing_message(progress)
    elif status is JobStatus.COMPLETED:
        summary = record.get("summary") or {}
        progress.update(operations_done=total, current_operation=None, phase=None)
        chunk_count = len((record.get("input") or {}).get("chunks", ()))
        progress.update(chunks_done=chunk_count, chunks_total=chunk_count)
        rows = summary.get("output_items", 0)
        inline = record.get("inline")
        body["data"] = {
            **summary,
            "columns": summary.get("columns", []),
            "workers": summary.get("workers", []),
            "result_url": url_for("results.download", job_id=job_id),
            "truncated": inline is None,
            "data": inline,
        }
        body["message"] = f"Successfully processed {summary['processed_items']} items with {total} operations"
        if inline is None and not record.get("result_deleted_at"):
            body["message"] += f"; {rows} rows: download them from {body['data']['result_url']}"
    else:
        progress["current_operation"] = None
        body["error"] = record.get("error") or _celery_error(meta)
        body["message"] = body["error"]["message"]
        if body["error"]["operation_index"] is not None:
            progress["operations_done"] = body["error"]["operation_index"]
    return body


def _processing_message(progress):
    done, total, current = progress["operations_done"], progress["operations_total"], progress["current_operation"]
    if progress["phase"] == Phase.SAVING:
        return f"Processing: all {total} operations done, saving the result."
    if progress["phase"] == Phase.LOADING:
        return f"Processing: {done} of {total} operations done, loading the data" + (
            f" for {current}." if current else "."
        )
    text = f"Processing: {done} of {total} operations done" + (f", running {current}" if current else "")
    if progress["chunks_total"] > 1:
        text += f" (chunk {progress['chunks_done']} of {progress['chunks_total']} done)"
    return text + "."


def _celery_error(meta):
    """An ``error`` for a job that ended without a record of why (revoked, a lost worker...)."""
    result = meta.get("result")  # for FAILURE, Celery hands back the exception itself
    if meta["status"] == "REVOKED":
        return job_error("cancelled", "The job was revoked before it finished.")
    if isinstance(result, TimeLimitExceeded):  # the worker is about to record the same
        return hard_time_limit_error(float(result.args[0]) if result.args else 0)
    if isinstance(result, WorkerLostError):
        return job_error("worker_lost", "The worker process running the job died.")
    return job_error("worker_error", "The job ended without a result; see the worker log.")
