"""``GET /workers``: the live workers, what each runs now, and how many jobs wait in the queue.

Answered from what the workers already publish in Redis, never by asking them (a broadcast waits on the
slowest): their heartbeats (:data:`workers.jobstore.WORKERS_INDEX`) and the leases they hold on jobs and
chunks (:meth:`workers.jobstore.JobStore.running`). Any gateway on any host reads the same.
"""

from flask import Blueprint, current_app

from app.auth import current_owner
from app.errors import BACKEND_ERRORS
from workers.jobstore import iso_time, key_for

bp = Blueprint("workers", __name__)


@bp.get("/workers")
def index():
    """List the live workers with what each runs now, and the queue depth."""
    store = current_app.extensions["jobstore"]
    seconds = current_app.extensions["live_workers"].within  # alive as GET /health counts them
    running = store.running()
    mine = _owned_by_caller({entry["job_id"] for entry in running})
    workers = {name: {"name": name, "last_seen": iso_time(beat), "running": 0, "jobs": []}
               for name, beat in store.live_worker_beats(seconds)}
    for entry in running:
        # A worker whose beats stopped while its lease lives on (it just died) shows until the lease runs out.
        worker = workers.setdefault(entry["worker"], {"name": entry["worker"], "last_seen": None, "running": 0,
                                                      "jobs": []})
        worker["running"] += 1
        if entry["job_id"] in mine and entry["job_id"] not in worker["jobs"]:
            worker["jobs"].append(entry["job_id"])
    return {
        "workers": sorted(workers.values(), key=lambda worker: worker["name"]),
        "queue_depth": queue_depth(),
        "jobs_running": len({entry["job_id"] for entry in running}),
    }


def running_jobs():
    """The ids of the jobs some worker runs now (a job's task or one of its chunks), whoever owns them."""
    return {entry["job_id"] for entry in current_app.extensions["jobstore"].running()}


def queue_depth():
    """How many messages wait in the jobs' queue (jobs, chunks, joins), as the broker counts them."""
    celery = current_app.extensions["celery"]
    queue = celery.conf.task_default_queue
    with celery.connection_for_read() as connection:
        try:
            return connection.default_channel.queue_declare(queue, passive=True).message_count
        except BACKEND_ERRORS:
            raise
        except Exception:  # noqa: BLE001 - the queue has not been declared yet: no worker ever started
            return 0


def _owned_by_caller(job_ids):
    """Which of ``job_ids`` this request's token may see."""
    job_ids = sorted(job_ids)
    redis = current_app.extensions["jobstore"].redis
    with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(key_for(job_id), "owner")
        owners = pipe.execute()
    owner = current_owner().encode()
    return {job_id for job_id, found in zip(job_ids, owners) if found is not None and found == owner}

