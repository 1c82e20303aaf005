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
- ``datajobs:job:<id>:lease``   who is running the job, while they renew it (seconds)
- ``datajobs:idempotency:<digest>``  the job an ``Idempotency-Key`` created, for the TTL

A record ends exactly once: :meth:`JobStore.complete`, :meth:`JobStore.fail` and
:meth:`JobStore.cancel` are compare-and-set (WATCH/MULTI), so a worker that
finishes a job someone cancelled, or a redelivered job that finishes twice,
cannot overwrite the outcome that was stored first.
"""

import hashlib
import json
import uuid
from datetime import datetime, timezone

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from workers import settings
from workers.errors import job_error

KEY_PREFIX = "datajobs"


def key_for(job_id, part=None):
    """Return the Redis key of ``job_id``'s record, or of one of its parts (``input``, ``output``)."""
    key = f"{KEY_PREFIX}:job:{job_id}"
    return f"{key}:{part}" if part else key


def idempotency_key(owner, key):
    """The Redis key remembering which job ``owner`` created with ``Idempotency-Key: key``."""
    digest = hashlib.sha256(f"{owner}\0{key}".encode()).hexdigest()
    return f"{KEY_PREFIX}:idempotency:{digest}"


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


def connect(url=None, patient=False):
    """A Redis client for ``url`` (default: the ``REDIS_URL`` setting).

    The gateway's client fails fast (two quick retries ride out a blip, then the
    caller answers 503), so no request hangs during an outage. A worker's client
    is ``patient``: it retries for about half a minute, so a job finishing
    during a short outage still stores its outcome once Redis is back.
    """
    retry = (
        Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=40)
        if patient
        else Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=2)
    )
    return redis.Redis.from_url(
        url or settings.get("REDIS_URL"),
        socket_connect_timeout=1,
        socket_timeout=10,
        health_check_interval=30,
        retry=retry,
    )


class JobStore:
    """Job records and their data, for the gateway and the workers.

    ``redis`` is a redis-py client (or fakeredis); ``ttl`` is in seconds and
    should equal Celery's ``result_expires`` so a record and its Celery result
    live as long as each other.
    """

    _JSON_FIELDS = ("operations", "error", "summary")
    _INT_FIELDS = ("operations_total", "rows_in", "attempts")

    def __init__(self, redis_client, ttl):
        self.redis = redis_client
        self.ttl = int(ttl)

    def create(self, job_id, operations, dataset_json, rows, owner=""):
        """Record a new job and store its dataset, atomically. Returns the record.

        ``operations`` is the validated list of ``{"name", "params"}``;
        ``dataset_json`` the dataset as JSON text; ``rows`` its length;
        ``owner`` who may see it (a digest of its creator's token, or "").
        """
        record = {
            "job_id": job_id,
            "created_at": utcnow(),
            "owner": owner,
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
        self.redis.delete(*(key_for(job_id, part) for part in (None, "input", "output", "lease")))

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

    def is_finished(self, job_id):
        """True once ``job_id`` has ended (or its record is gone)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(key_for(job_id))
            pipe.hexists(key_for(job_id), "finished_at")
            exists, finished = pipe.execute()
        return not exists or bool(finished)

    def complete(self, job_id, output_json, summary):
        """Store the processed dataset and its ``summary``; end the job ``completed``. False if it had ended."""
        return self._finish(job_id, "completed", {"summary": summary}, output_json)

    def fail(self, job_id, error):
        """End the job ``failed`` with ``error`` (``{"type", "message", "operation_index"}``). False if it had ended."""
        return self._finish(job_id, "failed", {"error": error})

    def cancel(self, job_id):
        """End the job ``cancelled``. False if it had ended already."""
        error = job_error("cancelled", "The job was cancelled by request.")
        return self._finish(job_id, "cancelled", {"error": error})

    def _finish(self, job_id, outcome, extra, output_json=None):
        # Compare-and-set: only the first outcome sticks. The TTL restarts when a
        # job ends, so a result is kept for a full TTL however long the job queued.
        key = key_for(job_id)
        fields = {"finished_at": utcnow(), "outcome": outcome, **extra}

        def finish(pipe):
            if not pipe.exists(key) or pipe.hexists(key, "finished_at"):
                return False
            pipe.multi()
            pipe.hset(key, mapping=self._encode(fields))
            pipe.expire(key, self.ttl)
            if output_json is not None:
                pipe.set(key_for(job_id, "output"), output_json, ex=self.ttl)
            pipe.delete(key_for(job_id, "input"))
            return True

        return self.redis.transaction(finish, key, value_from_callable=True)

    def take_lease(self, job_id, holder, seconds):
        """Mark ``job_id`` as run by ``holder`` for ``seconds``. False while another holder's lease lives."""
        return bool(self.redis.set(key_for(job_id, "lease"), holder, nx=True, px=int(seconds * 1000)))

    def renew_lease(self, job_id, holder, seconds):
        """Extend ``holder``'s lease on ``job_id``. False if it is no longer theirs."""
        key = key_for(job_id, "lease")

        def renew(pipe):
            if pipe.get(key) != holder.encode():
                return False
            pipe.multi()
            pipe.pexpire(key, int(seconds * 1000))
            return True

        return self.redis.transaction(renew, key, value_from_callable=True)

    def lease_left(self, job_id):
        """Seconds left on ``job_id``'s lease (0 when there is none)."""
        return max(self.redis.pttl(key_for(job_id, "lease")), 0) / 1000

    def drop_lease(self, job_id, holder):
        """Give up ``holder``'s lease on ``job_id``, if it is still theirs."""
        key = key_for(job_id, "lease")

        def drop(pipe):
            if pipe.get(key) == holder.encode():
                pipe.multi()
                pipe.delete(key)

        self.redis.transaction(drop, key)

    def claim_idempotency_key(self, owner, key, digest, job_id):
        """Remember that ``owner``'s ``key`` (for a body with ``digest``) creates ``job_id``.

        Returns None when the key was free (the caller goes on and creates the
        job), else ``(job_id, digest)`` of the job the key created before.
        """
        name = idempotency_key(owner, key)
        if self.redis.set(name, json.dumps([job_id, digest]), nx=True, ex=self.ttl):
            return None
        raw = self.redis.get(name)
        if raw is None:  # expired between the two calls: claim it again
            return self.claim_idempotency_key(owner, key, digest, job_id)
        return tuple(json.loads(raw))

    def release_idempotency_key(self, owner, key):
        """Forget ``key`` (its job could not be created), so a retry can create it."""
        self.redis.delete(idempotency_key(owner, key))

    def _encode(self, record):
        return {k: json.dumps(v) if k in self._JSON_FIELDS else v for k, v in record.items()}
