"""The job store: job records, datasets and results in Redis, under one key scheme.

Celery's result backend says what state a task is in; it cannot say whether a
job id was ever issued (it reports PENDING for any id). So the gateway writes a
job record here *before* it enqueues, and ``GET /jobs/<id>`` answers 404 when
there is none. Datasets and results live here too, so a broker message carries
only the job id, whatever the size of the data.

Keys (all built by :func:`key_for`, all expiring after the job TTL):

- ``datajobs:job:<id>``         hash: the job record
- ``datajobs:job:<id>:input``   the submitted dataset (JSON array), deleted once the job ends
- ``datajobs:job:<id>:output``  the processed dataset (JSON array)
"""

import json
import uuid
from datetime import datetime, timezone

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from workers import settings

KEY_PREFIX = "datajobs"


def key_for(job_id, part=None):
    """Return the Redis key of ``job_id``'s record, or of one of its parts (``input``, ``output``)."""
    key = f"{KEY_PREFIX}:job:{job_id}"
    return f"{key}:{part}" if part else key


def new_job_id():
    return str(uuid.uuid4())


def is_job_id(text):
    """True when ``text`` is a job id this system could have issued (a canonical UUID)."""
    try:
        return str(uuid.UUID(text)) == text
    except (ValueError, TypeError, AttributeError):
        return False


def utcnow():
    """Now, as ISO 8601 UTC text with milliseconds: ``2026-11-27T20:30:00.123Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def connect(url=None):
    """A Redis client for ``url`` (default: the ``REDIS_URL`` setting) that fails fast when Redis is down."""
    # redis-py's default is 10 retries with backoff: an outage would hang every
    # request for seconds. Two quick retries ride out a blip; then callers see it.
    return redis.Redis.from_url(
        url or settings.get("REDIS_URL"),
        socket_connect_timeout=1,
        socket_timeout=10,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=2),
    )


class JobStore:
    """Job records and their data, for the gateway and the workers.

    ``redis`` is a redis-py client (or fakeredis); ``ttl`` is in seconds and
    should equal Celery's ``result_expires`` so a record and its Celery result
    live as long as each other.
    """

    _JSON_FIELDS = ("operations", "error")
    _INT_FIELDS = ("operations_total", "rows_in", "attempts")

    def __init__(self, redis_client, ttl):
        self.redis = redis_client
        self.ttl = int(ttl)

    def create(self, job_id, operations, dataset_json, rows):
        """Record a new job and store its dataset, atomically. Returns the record.

        ``operations`` is the validated list of ``{"name", "params"}``;
        ``dataset_json`` the dataset as JSON text; ``rows`` its length.
        """
        record = {
            "job_id": job_id,
            "created_at": utcnow(),
            "operations": operations,
            "operations_total": len(operations),
            "rows_in": rows,
        }
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key_for(job_id), mapping=self._encode(record))
            pipe.expire(key_for(job_id), self.ttl)
            pipe.set(key_for(job_id, "input"), dataset_json, ex=self.ttl)
            pipe.execute()
        return record

    def delete(self, job_id):
        """Remove every key of ``job_id`` (used when a job could not be enqueued)."""
        self.redis.delete(key_for(job_id), key_for(job_id, "input"), key_for(job_id, "output"))

    def get(self, job_id):
        """Return the record of ``job_id`` as a dict, or None when there is none (unknown or expired)."""
        raw = self.redis.hgetall(key_for(job_id))
        if not raw:
            return None
        record = {k.decode(): v.decode() for k, v in raw.items()}
        for name in self._JSON_FIELDS:
            if name in record:
                record[name] = json.loads(record[name])
        for name in self._INT_FIELDS:
            if name in record:
                record[name] = int(record[name])
        return record

    def load_input(self, job_id):
        """The submitted dataset as JSON bytes, or None when it has expired or the job has ended."""
        return self.redis.get(key_for(job_id, "input"))

    def load_output(self, job_id):
        """The processed dataset as JSON bytes, or None."""
        return self.redis.get(key_for(job_id, "output"))

    def mark_started(self, job_id):
        """Count an attempt at ``job_id`` and set ``started_at`` on the first one. Returns the attempt number."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key_for(job_id), "started_at", utcnow())
            pipe.hincrby(key_for(job_id), "attempts", 1)
            _, attempts = pipe.execute()
        return attempts

    def complete(self, job_id, output_json):
        """Store the processed dataset, stamp ``finished_at`` and drop the input."""
        self._finish(job_id, {"finished_at": utcnow()}, output_json)

    def fail(self, job_id, error):
        """Record ``error`` (``{"type", "message", "operation_index"}``), stamp ``finished_at``, drop the input."""
        self._finish(job_id, self._encode({"finished_at": utcnow(), "error": error}))

    def _finish(self, job_id, fields, output_json=None):
        # The TTL restarts when a job ends, so a result is kept for a full TTL
        # however long the job waited in the queue.
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key_for(job_id), mapping=fields)
            pipe.expire(key_for(job_id), self.ttl)
            if output_json is not None:
                pipe.set(key_for(job_id, "output"), output_json, ex=self.ttl)
            pipe.delete(key_for(job_id, "input"))
            pipe.execute()

    def _encode(self, record):
        return {k: json.dumps(v) if k in self._JSON_FIELDS else v for k, v in record.items()}
