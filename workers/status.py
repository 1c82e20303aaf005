"""Job status: the one mapping from Celery task states to what users see."""

import enum

from celery import states

#: Custom Celery state the task reports after every operation.
PROGRESS = "PROGRESS"


class Phase(str, enum.Enum):
    """What a processing job is doing (``progress.phase``): reading its input, running steps, storing its result."""

    LOADING = "loading"
    RUNNING = "running"
    SAVING = "saving"


class JobStatus(str, enum.Enum):
    """What ``GET /jobs/<id>`` reports. Ordered: a job never moves to a lower rank."""

    STARTED = "started"  # accepted and queued, no worker has it yet
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # by DELETE /jobs/<id>

    @property
    def is_terminal(self):
        return self in TERMINAL

    @property
    def rank(self):
        return _RANK[self]


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
_RANK = {
    JobStatus.STARTED: 0,
    JobStatus.PROCESSING: 1,
    JobStatus.COMPLETED: 2,
    JobStatus.FAILED: 2,
    JobStatus.CANCELLED: 2,
}

_FROM_CELERY = {
    states.PENDING: JobStatus.STARTED,
    states.RECEIVED: JobStatus.STARTED,
    states.STARTED: JobStatus.PROCESSING,
    states.RETRY: JobStatus.PROCESSING,
    PROGRESS: JobStatus.PROCESSING,
    states.SUCCESS: JobStatus.COMPLETED,
    states.FAILURE: JobStatus.FAILED,
    states.REVOKED: JobStatus.CANCELLED,
    states.REJECTED: JobStatus.FAILED,
    states.IGNORED: JobStatus.FAILED,
}


def from_celery_state(state):
    """Map a Celery task state to a :class:`JobStatus`.

    Unknown states (a custom state we do not know) count as processing: the task
    has been picked up by something, and nothing says it ended.
    """
    return _FROM_CELERY.get(state, JobStatus.PROCESSING)


def job_status(record, celery_state):
    """The status of a job, from its record and its Celery task state.

    Once a job has ended its record holds the outcome, written once by whoever
    ended it (the worker, or a cancel), and that outcome is final: a late
    Celery state (a redelivered message, a revoke) cannot change it. Before
    that, Celery's state says whether a worker has the job yet.
    """
    if record.get("outcome"):
        return JobStatus(record["outcome"])
    return from_celery_state(celery_state)
