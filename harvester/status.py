"""The job statuses of the gateway's API, as the harvester reads them (the ``status`` of ``GET /jobs/<id>``).

The gateway's side, and its mapping from Celery's states, is ``workers/status.py``; this is the
API's contract as a client sees it, so the harvester loads neither Celery nor the workers
(``tests/unit/test_harvester.py`` checks that the two lists agree).
"""

import enum


class JobStatus(str, enum.Enum):
    """What ``GET /jobs/<id>`` says of a job."""

    STARTED = "started"  # accepted and queued
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self):
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
