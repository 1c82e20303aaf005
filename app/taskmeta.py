"""Celery's task states, as the gateway reads them: the same keys and decoding as ``AsyncResult``.

``GET /jobs/<id>`` needs two things: the job record (the job store) and the job's Celery
task state (the result backend). When the backend is the job store's own Redis database (the
default: both are ``REDIS_URL``) both are read in one round trip; otherwise in two. Either way
the task state is the backend's key for the task, decoded by the backend itself
(``backend.decode_result``): exactly what ``AsyncResult(job_id).state`` reads.

Connections: the gateway's Celery app keeps one backend for the process (``workers.celery.ClientApp``),
and this reads a Redis backend through the job store's bounded, blocking pool, or one like it
(:func:`workers.jobstore.connect`), so a thousand waiters woken at once queue for a connection
instead of failing with "Too many connections".
"""

from celery import states

from workers import jobstore

try:
    from celery.backends.redis import RedisBackend
except ImportError:  # pragma: no cover - celery[redis] is a dependency
    RedisBackend = ()


class TaskMeta:
    """Reads job records with their Celery task state, for one gateway process."""

    def __init__(self, backend, store, url=None):
        self.backend, self.store = backend, store
        self.redis_backend = isinstance(backend, RedisBackend)
        self.shared = self.redis_backend and jobstore.database_of(backend.connparams) == jobstore.database_of(
            store.redis.connection_pool.connection_kwargs
        )
        self.client = None
        if self.redis_backend:
            self.client = store.redis if self.shared else jobstore.connect(url)

    def read(self, job_id):
        """``(record, meta)`` of ``job_id``: record None when there is none; meta as ``backend.get_task_meta``."""
        if not self.shared:
            record = self.store.get(job_id)
            return record, (self.meta(job_id) if record is not None else None)
        record, raw = self.store.get_with(job_id, self.backend.get_key_for_task(job_id))
        return record, self._decode(raw)

    def read_many(self, job_ids):
        """``[(record, meta)]`` of ``job_ids``, as :meth:`read` gives each, in one round trip (two when the
        backend is elsewhere)."""
        with self.store.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(jobstore.key_for(job_id))
                if self.shared:
                    pipe.get(self.backend.get_key_for_task(job_id))
            raw = pipe.execute()
        if self.shared:
            return [(self.store.decode(raw[2 * i]), self._decode(raw[2 * i + 1])) for i in range(len(job_ids))]
        records = [self.store.decode(item) for item in raw]
        return [(record, self.meta(job_id) if record is not None else None) for job_id, record in zip(job_ids, records)]

    def meta(self, job_id):
        """The task meta of ``job_id`` (``{"status", "result", ...}``), PENDING when Celery knows nothing of it."""
        if not self.redis_backend:
            return self.backend.get_task_meta(job_id)
        return self._decode(self.client.get(self.backend.get_key_for_task(job_id)))

    def _decode(self, raw):
        if not raw:
            return {"status": states.PENDING, "result": None}
        return self.backend.decode_result(raw)
