"""The job store: job records in Redis, and the references to their data, under one key scheme.

Celery's result backend says what state a task is in; it cannot say whether a
job id was ever issued (it reports PENDING for any id). So the gateway writes a
job record here *before* it enqueues, and ``GET /jobs/<id>`` answers 404 when
there is none. A job's data is a list of chunks in the data store
(``datastore.py``), named in its record, so a broker message carries only the
job id, whatever the size of the data.

Redis keys (all built by :func:`key_for` and :func:`dataset_key`, all expiring after the job TTL):

- ``datajobs:job:<id>``         hash: the job record, with its ``input`` and ``output`` chunk lists
- ``datajobs:job:<id>:lease``   who is running the job, while they renew it (seconds);
  ``…:lease:<segment>:<chunk>`` likewise for one chunk of a segment that fans out
- ``datajobs:job:<id>:segment:<n>``  hash: the results of segment n's chunks, as they finish
- ``datajobs:job:<id>:workers`` set: the workers that took part
- ``datajobs:dataset:<id>``     hash: a dataset's description, its parts and chunk list (``datasets.py``)
- ``datajobs:idempotency:<digest>``  the job an ``Idempotency-Key`` created, for the TTL
- ``datajobs:joins``            sorted set: segments whose chunks are all done, by when (:data:`FANOUT_INDEX`)
- ``datajobs:unsent``           sorted set: jobs recorded whose message the gateway has not yet said it sent, by
  when the sweeper sends it instead (:data:`UNSENT_INDEX`)
- ``datajobs:lock:sweeper``     the lock of the worker sweeping overdue joins (:data:`SWEEPER_LOCK`)
- ``datajobs:workers``          sorted set: live workers by their last heartbeat (:data:`WORKERS_INDEX`)
- ``datajobs:running``          sorted set: the leases held now, ``<job id> <lease> <holder>`` by when each
  runs out unless renewed (:data:`RUNNING_INDEX`): who runs what, for ``GET /workers``
- ``datajobs:index:<owner>``    sorted set: an owner's jobs in the order of their creation (:func:`index_key`,
  :func:`index_member`), for ``GET /jobs``
- ``datajobs:active:<owner>``   sorted set: an owner's jobs queued or running (:func:`active_key`), its quota
- ``datajobs:metrics``          hash: the job figures of ``GET /metrics``, kept for good (:data:`METRICS_KEY`)

Pub/sub: every change that shows in ``GET /jobs/<id>`` (a start, its end, its result freed, and each
progress report, which ``workers/tasks.py`` writes) publishes a :func:`job_event` on ``datajobs:events``
(:data:`EVENTS_CHANNEL`), in the same round trip as the change; the gateway's waiters wake on it
(``app/waiting.py``).

Chunk names in the data store (built by :func:`chunk_name`): ``datasets/<id>/p<part>-<n>.arrow``,
``jobs/<id>/input-<n>.arrow`` (an inline dataset, deleted when the job ends) and
``jobs/<id>/output-<n>.arrow``.

A record ends exactly once: :meth:`JobStore.complete`, :meth:`JobStore.fail` and
:meth:`JobStore.cancel` are compare-and-set (one Lua script), so a worker that
finishes a job someone cancelled, or a redelivered job that finishes twice,
cannot overwrite the outcome that was stored first.
"""

import hashlib
import itertools
import json
import logging
import time
import uuid
from datetime import datetime, timezone

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from workers import metrics, settings
from workers.datastore import RedisDataStore
from workers.errors import job_error

log = logging.getLogger(__name__)

KEY_PREFIX = "datajobs"


def key_for(job_id, part=None):
    """Return the Redis key of ``job_id``'s record, or of one of its parts (``input``, ``output``)."""
    key = f"{KEY_PREFIX}:job:{job_id}"
    return f"{key}:{part}" if part else key


def index_key(owner):
    """Return the Redis key of the index of ``owner``'s jobs ("" when tokens are off)."""
    return f"{KEY_PREFIX}:index:{owner or 'open'}"


def active_key(owner):
    """Return the Redis key of the set of ``owner``'s jobs that have not ended (``MAX_ACTIVE_JOBS_PER_TOKEN``)."""
    return f"{KEY_PREFIX}:active:{owner or 'open'}"


def index_member(created):
    """The start of the members of an owner's index for the jobs created at ``created`` (epoch seconds):
    ``<ms, 13 digits>:``, to which :meth:`JobStore.create` adds ``<sequence, 12 digits>:<id>``.

    Members sort as text in the order the jobs were created: by millisecond, then, within one, by the
    sequence number of the process that created them (:data:`_CREATED`). Members written
    before the sequence, ``<ms>:<id>``, are still read (:func:`read_index_member`, :func:`is_index_member`).
    As a bound: every job created at or after that millisecond sorts above it.
    """
    return f"{round(created * 1000):013d}:"


#: This process's count of the jobs it created: the sequence of their :func:`index_member` s.
_CREATED = itertools.count(1)


def read_index_member(member):
    """``job_id`` of an :func:`index_member` (or of a ``<ms>:<id>`` member, written before the sequence)."""
    return member.rpartition(":")[2]


def is_index_member(text):
    """True when ``text`` is a member of an owner's index (:func:`index_member`), of either format."""
    created, _, rest = text.partition(":")
    sequence, between, job_id = rest.rpartition(":")
    if between and not (len(sequence) == 12 and sequence.isdigit()):
        return False
    return len(created) == 13 and created.isdigit() and is_job_id(job_id)


def created_at(record):
    """Epoch seconds of a record's ``created_at``."""
    return datetime.fromisoformat(record["created_at"]).timestamp()


def dataset_key(dataset_id):
    """Return the Redis key of a dataset's record."""
    return f"{KEY_PREFIX}:dataset:{dataset_id}"


#: Sorted set of fanned-out segments whose every chunk is done, by when: what the sweeper looks at.
FANOUT_INDEX = f"{KEY_PREFIX}:joins"
#: Sorted set of workers (Celery hostnames) by the time of their last heartbeat: what ``GET /health`` counts.
WORKERS_INDEX = f"{KEY_PREFIX}:workers"
#: Sorted set of the leases held now (a job, or a chunk of one), by when each runs out unless renewed.
RUNNING_INDEX = f"{KEY_PREFIX}:running"
#: Sorted set of the jobs recorded whose message is not known to be sent, by when the workers' sweeper sends it
#: instead (creation + ``ORPHAN_SECONDS``): a gateway that died between the record and its message left an orphan.
UNSENT_INDEX = f"{KEY_PREFIX}:unsent"
#: Lock held by the one worker sweeping at a time.
SWEEPER_LOCK = f"{KEY_PREFIX}:lock:sweeper"
#: Hash of job figures (counters, histogram buckets) every gateway reports on ``GET /metrics`` (``metrics.py``).
METRICS_KEY = f"{KEY_PREFIX}:metrics"
#: Pub/sub channel on which a job's id is published whenever its record changes (waiters wake on it):
#: ``<job id>``, or ``<job id> ended`` when the change is its end (:func:`job_event`).
EVENTS_CHANNEL = f"{KEY_PREFIX}:events"


def job_event(job_id, ended=False):
    """The message published on :data:`EVENTS_CHANNEL` when ``job_id``'s record changes (``ended``: it ended)."""
    return f"{job_id} ended" if ended else job_id


def server_of(kwargs):
    """Which Redis server a client's connection kwargs name (pub/sub spans all its databases)."""
    return kwargs.get("host"), kwargs.get("port"), kwargs.get("path")


def database_of(kwargs):
    """Which Redis database a client's connection kwargs name."""
    return (*server_of(kwargs), int(kwargs.get("db") or 0))


def read_job_event(message):
    """``(job_id, ended)`` of a :func:`job_event` message (text)."""
    job_id, _, kind = message.partition(" ")
    return job_id, kind == "ended"


def running_entry(job_id, lease, holder):
    """The member of :data:`RUNNING_INDEX` for ``holder``'s ``lease`` on ``job_id`` (a holder is
    ``<worker hostname>:<pid>:<uuid>``, ``workers/tasks.py``)."""
    return f"{job_id} {lease} {holder}"


def read_running_entry(entry):
    """``{"job_id", "lease", "worker"}`` of a :func:`running_entry`."""
    job_id, lease, holder = entry.split(" ", 2)
    return {"job_id": job_id, "lease": lease, "worker": holder.rsplit(":", 2)[0]}


def chunk_name(kind, owner_id, section, index):
    """The data-store name of chunk ``index`` of ``section`` (``input``, ``output``, ``p00001``...) of a job or dataset."""
    return f"{kind}s/{owner_id}/{section}-{index:05d}.arrow"


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
    return iso_time(time.time())


def iso_time(epoch):
    """Epoch seconds as ISO 8601 UTC text with milliseconds, as :func:`utcnow` writes it."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: Redis connections one gateway process holds at most, and seconds a request waits for one (then 503).
GATEWAY_CONNECTIONS, GATEWAY_POOL_TIMEOUT = 50, 2.0
#: Seconds the gateway waits for Redis to answer one command (a worker waits ``WORKER_SOCKET_TIMEOUT``).
GATEWAY_SOCKET_TIMEOUT, WORKER_SOCKET_TIMEOUT = 1.0, 10.0


def connect(url=None, patient=False):
    """A Redis client for ``url`` (default: the ``REDIS_URL`` setting).

    The gateway's client fails fast, so no request hangs during an outage: two quick
    retries ride out a dropped connection, then the caller answers 503; a Redis that
    accepts connections but does not answer (frozen, or behind a partition) is given
    ``GATEWAY_SOCKET_TIMEOUT`` once, never retried, so the 503 comes within about a second.
    A worker's client is ``patient``: it retries for about half a minute, so a job
    finishing during a short outage still stores its outcome once Redis is back.
    """
    options = {"socket_connect_timeout": 1, "health_check_interval": 30}
    url = url or settings.get("REDIS_URL")
    if patient:
        retry = Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=40)
        return redis.Redis.from_url(url, retry=retry, socket_timeout=WORKER_SOCKET_TIMEOUT, **options)
    # The gateway's requests share a bounded pool and queue for a connection (a thousand waiters
    # woken at once, under gevent), rather than open one each or fail past redis-py's 100.
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=2, supported_errors=(redis.ConnectionError,))
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=GATEWAY_CONNECTIONS, timeout=GATEWAY_POOL_TIMEOUT, retry=retry,
        socket_timeout=GATEWAY_SOCKET_TIMEOUT, **options,
    )
    return redis.Redis(connection_pool=pool, retry=retry)


#: A Lua script doing ``then`` only when the lease at KEYS[1] is held by ARGV[1]; returns 1 if it did.
_IF_HOLDER = "if redis.call('get', KEYS[1]) == ARGV[1] then {then}; return 1 end; return 0"

#: Take the lease at KEYS[1] for ARGV[1], for ARGV[2] ms, unless someone holds it; on success add ARGV[4] to the
#: running index KEYS[2] with score ARGV[3] (when the lease runs out). Returns 1 if it was taken.
_TAKE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('zadd', KEYS[2], ARGV[3], ARGV[4])
  return 1
end
return 0
"""

#: Hand the lease at KEYS[1] from ARGV[5] (a holder known dead) to ARGV[1], for ARGV[2] ms, unless it changed
#: hands meanwhile; the running index KEYS[2] drops ARGV[6] (the dead holder's entry) for ARGV[4] (score ARGV[3]).
_REPLACE = """
if redis.call('get', KEYS[1]) ~= ARGV[5] then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('zrem', KEYS[2], ARGV[6])
redis.call('zadd', KEYS[2], ARGV[3], ARGV[4])
return 1
"""

#: End the record at KEYS[1] unless it is gone or has ended: set the fields ARGV[4:], restart its TTL (ARGV[1]),
#: publish ARGV[3] on ARGV[2]; return its ``input``, ``owner`` and ``created_at`` fields ("" if none), or nil (false) when it was not ended here.
_END = """
if redis.call('exists', KEYS[1]) == 0 or redis.call('hexists', KEYS[1], 'finished_at') == 1 then return false end
local found = redis.call('hmget', KEYS[1], 'input', 'owner', 'created_at')
redis.call('hset', KEYS[1], unpack(ARGV, 4))
redis.call('expire', KEYS[1], ARGV[1])
redis.call('publish', ARGV[2], ARGV[3])
return {found[1] or '', found[2] or '', found[3] or ''}
"""

#: Add ARGV[2] (score ARGV[3]) to the set KEYS[1] unless it holds ARGV[1] members already; the set expires
#: after ARGV[4] seconds. Returns 1 if it was added.
_CLAIM = """
if redis.call('zcard', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('zadd', KEYS[1], ARGV[3], ARGV[2])
redis.call('expire', KEYS[1], ARGV[4])
return 1
"""


class JobStore:
    """Job records and their data, for the gateway and the workers.

    ``redis`` is a redis-py client (or fakeredis); ``ttl`` is in seconds and
    should equal Celery's ``result_expires`` so a record and its Celery result
    live as long as each other; ``data`` is the :class:`~workers.datastore.DataStore`
    holding the chunks (default: chunks in the same Redis).
    """

    _JSON_FIELDS = ("operations", "error", "summary", "input", "output", "inline", "stage")
    _INT_FIELDS = ("operations_total", "rows_in", "attempts")

    def __init__(self, redis_client, ttl, data=None):
        self.redis = redis_client
        self.ttl = int(ttl)
        self.data = data if data is not None else RedisDataStore(redis_client, ttl)
        # Compare-and-set on a lease in one round trip (redis-py loads a script again after a Redis restart).
        # Each also keeps the lease's entry in the running index (KEYS[2]) in step with it.
        self._take = redis_client.register_script(_TAKE)
        self._replace = redis_client.register_script(_REPLACE)
        self._renew = redis_client.register_script(
            _IF_HOLDER.format(then="redis.call('pexpire', KEYS[1], ARGV[2]); redis.call('zadd', KEYS[2], ARGV[3], ARGV[4])")
        )
        self._drop = redis_client.register_script(
            "redis.call('zrem', KEYS[2], ARGV[2]); " + _IF_HOLDER.format(then="redis.call('del', KEYS[1])")
        )
        self._end = redis_client.register_script(_END)
        self._claim = redis_client.register_script(_CLAIM)

    def create(self, job_id, operations, input_ref, owner="", orphan_seconds=None):
        """Record a new job whose dataset is ``input_ref``. Returns the record.

        ``operations`` is the validated list of ``{"name", "params"}``;
        ``input_ref`` is ``{"dataset_id", "chunks": [{"name", "rows"}], "schema", "rows"}``
        (``dataset_id`` None for an inline dataset, whose chunks the job owns);
        ``owner`` who may see it (a digest of its creator's token, or "").
        The job is listed as unsent until :meth:`sent`: ``orphan_seconds`` (default ``ORPHAN_SECONDS``)
        after its creation the workers' sweeper sends its message itself (:meth:`unsent`).
        """
        record = {
            "job_id": job_id,
            "created_at": utcnow(),
            "owner": owner,
            "operations": operations,
            "operations_total": len(operations),
            "rows_in": input_ref["rows"],
            "input": input_ref,
        }
        if input_ref.get("dataset_id"):
            record["dataset_id"] = input_ref["dataset_id"]
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key_for(job_id), mapping=self._encode(record))
            pipe.expire(key_for(job_id), self.ttl)
            self._index(pipe, owner, job_id, created_at(record))
            # In the same transaction as the record: no record can be left without a way to its message.
            if orphan_seconds is None:
                orphan_seconds = settings.get("ORPHAN_SECONDS")
            pipe.zadd(UNSENT_INDEX, {job_id: created_at(record) + orphan_seconds})
            metrics.count_submitted(pipe, METRICS_KEY)
            pipe.execute()
        return record

    def _index(self, pipe, owner, job_id, created):
        # Members sort by creation (one score, ordered as text: ``<ms>:<sequence>:<id>``), so a page starts
        # exactly after the last member of the one before, ties included. The sequence is this process's count
        # of the jobs it created (:data:`_CREATED`): two jobs of one millisecond from one gateway process keep
        # the order they were made in (two processes' jobs of one millisecond were made at once, in no order).
        # A record lives at most two TTLs from its creation (one to end, one after its end), so an older member
        # names a record gone: dropped here, and the index expires with its jobs. Members whose record expired
        # sooner are dropped as they are read.
        key = index_key(owner)
        pipe.zadd(key, {f"{index_member(created)}{next(_CREATED):012d}:{job_id}": 0})
        pipe.zremrangebylex(key, "-", f"({index_member(created - 2 * self.ttl)}")
        pipe.expire(key, 2 * self.ttl)

    def page(self, owner, before=None, after=None, count=100):
        """Up to ``count`` members of ``owner``'s index, newest first, strictly between ``after`` and
        ``before`` (members, or :func:`index_member` of a time alone; None: no bound)."""
        high = "+" if before is None else f"({before}"
        low = "-" if after is None else f"({after}"
        return [member.decode() for member in self.redis.zrevrangebylex(index_key(owner), high, low, 0, count)]

    def unindex(self, owner, members):
        """Drop ``members`` from ``owner``'s index (their records are gone)."""
        if members:
            self.redis.zrem(index_key(owner), *members)

    def members_of(self, owner, job_id, created):
        """The members of ``owner``'s index naming ``job_id``, created at ``created`` (epoch seconds)."""
        low = index_member(created)  # ``<ms>:``; every member of that millisecond sorts below ``<ms>;``
        found = self.redis.zrangebylex(index_key(owner), f"[{low}", f"({low[:-1]};")
        return [member for member in (m.decode() for m in found) if read_index_member(member) == job_id]

    def delete(self, job_id):
        """Remove ``job_id``'s record and the chunks it owns (used when a job could not be enqueued)."""
        record = self.get(job_id)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(key_for(job_id), key_for(job_id, "lease"))
            pipe.zrem(UNSENT_INDEX, job_id)  # no message to send
            pipe.execute()
        if record:
            owner = record.get("owner", "")
            self.unindex(owner, self.members_of(owner, job_id, created_at(record)))
            if record.get("owner"):
                self.release_slot(record["owner"], job_id)
            self.data.delete(self.owned_chunks(record))

    @staticmethod
    def owned_chunks(record, parts=("input", "output")):
        """Names of the chunks the job owns: an inline input (not a dataset's) and its output."""
        names = []
        for part in parts:
            ref = record.get(part) or {}
            if part == "input" and ref.get("dataset_id"):
                continue
            names += [chunk["name"] for chunk in ref.get("chunks", ())]
        return names

    def get(self, job_id):
        """Return the record of ``job_id`` as a dict, or None when there is none (unknown or expired)."""
        return self.decode(self.redis.hgetall(key_for(job_id)))

    def get_with(self, job_id, key):
        """Return the record of ``job_id`` (as :meth:`get`) and the value at ``key``, read in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(key_for(job_id))
            pipe.get(key)
            raw, value = pipe.execute()
        return self.decode(raw), value

    def decode(self, raw):
        """A record as :meth:`get` returns it, from its raw Redis hash (None when empty)."""
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

    def drop_output(self, job_id):
        """Free a completed job's result (its chunks); the record remembers when. False if there was none."""
        record = self.get(job_id)
        if not record or not record.get("output") or record.get("result_deleted_at"):
            return False
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key_for(job_id), mapping={"result_deleted_at": utcnow(), "inline": "null"})
            pipe.publish(EVENTS_CHANNEL, job_event(job_id))
            pipe.execute()
        self.data.delete(self.owned_chunks(record, ("output",)))
        return True

    def mark_started(self, job_id, worker=None):
        """Count an attempt at ``job_id``, set ``started_at`` on the first one, and remember ``worker``
        (:meth:`add_worker`), in one round trip. Returns the attempt number."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key_for(job_id), "started_at", utcnow())
            pipe.hincrby(key_for(job_id), "attempts", 1)
            pipe.publish(EVENTS_CHANNEL, job_event(job_id))
            if worker is not None:
                self._add_worker(pipe, job_id, worker)
            attempts = pipe.execute()[1]
        return attempts

    def notify(self, job_id, ended=False):
        """Publish that ``job_id`` changed (``ended``: it ended) without a change to its record here."""
        self.redis.publish(EVENTS_CHANNEL, job_event(job_id, ended))

    def is_finished(self, job_id):
        """True once ``job_id`` has ended (or its record is gone)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(key_for(job_id))
            pipe.hexists(key_for(job_id), "finished_at")
            exists, finished = pipe.execute()
        return not exists or bool(finished)

    def complete(self, job_id, output_ref, summary, inline=None):
        """End the job ``completed``: ``output_ref`` names its result's chunks, ``inline`` its records if small.

        False if the job had ended already (the caller then drops its chunks).
        """
        extra = {"summary": summary, "output": output_ref}
        if inline is not None:
            extra["inline"] = inline
        done = self._finish(job_id, "completed", extra)
        if done:
            self.data.touch([chunk["name"] for chunk in output_ref["chunks"]], self.ttl)
        return done

    def fail(self, job_id, error):
        """End the job ``failed`` with ``error`` (``{"type", "message", "operation_index"}``). False if it had ended."""
        return self._finish(job_id, "failed", {"error": error})

    def cancel(self, job_id):
        """End the job ``cancelled``. False if it had ended already."""
        error = job_error("cancelled", "The job was cancelled by request.")
        return self._finish(job_id, "cancelled", {"error": error})

    def _finish(self, job_id, outcome, extra):
        # Compare-and-set, in one script: only the first outcome sticks. The TTL restarts when a
        # job ends, so a result is kept for a full TTL however long the job queued.
        fields = {"finished_at": utcnow(), "outcome": outcome, **extra}
        flat = [item for pair in self._encode(fields).items() for item in pair]
        raw = self._end(
            keys=[key_for(job_id)], args=[self.ttl, EVENTS_CHANNEL, job_event(job_id, ended=True), *flat]
        )
        if raw is None:
            return False
        raw_input, owner, created = (value.decode() for value in raw)
        inputs = self.owned_chunks({"input": json.loads(raw_input)} if raw_input else {}, ("input",))
        if inputs:
            # An inline dataset is the job's own: nothing else can use it once the job has ended.
            self.data.delete(inputs)
        # Whoever ended the job gives back its place in its token's quota and counts it, so once per job, in
        # one round trip. Should that fail, the end stands: the quota finds the place when it next fills up,
        # and the figures miss one job (logged), never count it twice.
        seconds = metrics.seconds_between(created, fields["finished_at"]) if created else 0.0
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                if owner:  # only a token's jobs count against a quota
                    pipe.zrem(active_key(owner), job_id)
                metrics.count_end(pipe, METRICS_KEY, outcome, seconds, extra.get("summary"))
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("job %s: its end (%s) was not counted: %s", job_id, outcome, type(exc).__name__)
        return True

    def take_lease(self, job_id, holder, seconds, lease="lease"):
        """Mark ``job_id`` (or one of its chunks: ``lease`` names which) as run by ``holder`` for ``seconds``.

        False while another holder's lease lives. A lease held shows in :meth:`running` until it is
        dropped or runs out (its holder died), in the same round trip.
        """
        args = [holder, int(seconds * 1000), time.time() + seconds, running_entry(job_id, lease, holder)]
        return bool(self._take(keys=[key_for(job_id, lease), RUNNING_INDEX], args=args))

    def lease_holder(self, job_id, lease="lease"):
        """Who holds ``job_id``'s lease now (None when nobody does)."""
        raw = self.redis.get(key_for(job_id, lease))
        return raw.decode() if raw is not None else None

    def replace_lease(self, job_id, dead, holder, seconds, lease="lease"):
        """Take ``job_id``'s lease from ``dead``, a holder known to have died, for ``holder``. False if the lease is
        no longer ``dead``'s (it ran out, or someone else took it)."""
        args = [holder, int(seconds * 1000), time.time() + seconds, running_entry(job_id, lease, holder), dead,
                running_entry(job_id, lease, dead)]
        return bool(self._replace(keys=[key_for(job_id, lease), RUNNING_INDEX], args=args))

    def renew_lease(self, job_id, holder, seconds, lease="lease"):
        """Extend ``holder``'s lease on ``job_id``. False if it is no longer theirs."""
        args = [holder, int(seconds * 1000), time.time() + seconds, running_entry(job_id, lease, holder)]
        return bool(self._renew(keys=[key_for(job_id, lease), RUNNING_INDEX], args=args))

    def lease_left(self, job_id, lease="lease"):
        """Seconds left on ``job_id``'s lease (0 when there is none)."""
        return max(self.redis.pttl(key_for(job_id, lease)), 0) / 1000

    def drop_lease(self, job_id, holder, lease="lease"):
        """Give up ``holder``'s lease on ``job_id``, if it is still theirs."""
        self._drop(keys=[key_for(job_id, lease), RUNNING_INDEX], args=[holder, running_entry(job_id, lease, holder)])

    def running(self):
        """``[{"job_id", "lease", "worker"}]`` of the leases held now, a job's or a chunk's: what runs where.

        A holder that died leaves its entry behind until the lease would have run out; such entries
        are dropped here on the way.
        """
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(RUNNING_INDEX, "-inf", now)
            pipe.zrangebyscore(RUNNING_INDEX, now, "+inf")
            entries = pipe.execute()[1]
        return [read_running_entry(entry.decode()) for entry in entries]

    # --- fan-out: a segment's chunks run as tasks of their own --------------------------

    def begin_fanout(self, job_id, segment, ref, stats):
        """Record that segment ``segment`` runs over the chunks of ``ref``, one task each (``stats`` so far)."""
        stage = {"segment": segment, "input": ref, "stats": stats}
        self.redis.hset(key_for(job_id), "stage", json.dumps(stage))

    def count_chunk_attempt(self, job_id, segment, index):
        """Count a start of chunk ``index`` of ``segment``; return how many there have been."""
        return self.redis.hincrby(key_for(job_id), f"attempts:{segment}:{index}", 1)

    def chunk_done(self, job_id, segment, index, result):
        """Record chunk ``index``'s ``result`` once (a rerun's is dropped); return ``(recorded, chunks done)``."""
        key = key_for(job_id, f"segment:{segment}")
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, str(index), json.dumps(result))
            pipe.expire(key, self.ttl)
            pipe.hlen(key)
            recorded, _, done = pipe.execute()
        return bool(recorded), done

    def chunk_results(self, job_id, segment):
        """``{index: result}`` of the chunks of ``segment`` done so far."""
        raw = self.redis.hgetall(key_for(job_id, f"segment:{segment}"))
        return {int(k): json.loads(v) for k, v in raw.items()}

    def mark_joinable(self, job_id, segment):
        """Note that every chunk of ``segment`` is done and its join is due (the sweeper's index)."""
        self.redis.zadd(FANOUT_INDEX, {f"{job_id}:{segment}": time.time()})

    def joined(self, job_id, segment):
        """The join of ``segment`` has begun: the sweeper need not send it again."""
        self.redis.zrem(FANOUT_INDEX, f"{job_id}:{segment}")

    def overdue_joins(self, seconds):
        """``[(job_id, segment)]`` whose join has been due for more than ``seconds`` (its message lost?)."""
        due = self.redis.zrangebyscore(FANOUT_INDEX, 0, time.time() - seconds)
        return [(member.decode().rsplit(":", 1)[0], int(member.decode().rsplit(":", 1)[1])) for member in due]

    def sent(self, job_id):
        """``job_id``'s message is on the queue: the sweeper need not send it (see :meth:`create`)."""
        self.redis.zrem(UNSENT_INDEX, job_id)

    def unsent(self, count=100):
        """Up to ``count`` ids of jobs, oldest first, not said to be sent and now due to be sent by the sweeper."""
        due = self.redis.zrangebyscore(UNSENT_INDEX, "-inf", time.time(), start=0, num=count)
        return [member.decode() for member in due]

    def add_worker(self, job_id, worker):
        """Remember that ``worker`` (a Celery hostname) worked on the job."""
        with self.redis.pipeline(transaction=False) as pipe:
            self._add_worker(pipe, job_id, worker)
            pipe.execute()

    def _add_worker(self, pipe, job_id, worker):
        pipe.sadd(key_for(job_id, "workers"), worker)
        pipe.expire(key_for(job_id, "workers"), self.ttl)

    def beat(self, worker, keep_seconds=3600):
        """Note that ``worker`` (a Celery hostname) is alive now: its heartbeat. Heartbeats older than
        ``keep_seconds`` (workers long gone) are dropped on the way."""
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(WORKERS_INDEX, {worker: now})
            pipe.zremrangebyscore(WORKERS_INDEX, "-inf", now - keep_seconds)
            pipe.execute()

    def forget_worker(self, worker):
        """``worker`` has stopped: it no longer counts as live."""
        self.redis.zrem(WORKERS_INDEX, worker)

    def live_workers(self, seconds):
        """How many workers beat within the last ``seconds``."""
        return self.redis.zcount(WORKERS_INDEX, time.time() - seconds, "+inf")

    def live_worker_beats(self, seconds):
        """``[(worker, epoch seconds of its last beat)]`` of the workers that beat within the last ``seconds``."""
        beats = self.redis.zrangebyscore(WORKERS_INDEX, time.time() - seconds, "+inf", withscores=True)
        return [(worker.decode(), beat) for worker, beat in beats]

    def workers(self, job_id):
        return sorted(w.decode() for w in self.redis.smembers(key_for(job_id, "workers")))

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

    def find_idempotency_key(self, owner, key):
        """``(job_id, digest)`` of the job ``owner``'s ``key`` created, or None when the key is free."""
        raw = self.redis.get(idempotency_key(owner, key))
        return None if raw is None else tuple(json.loads(raw))

    def claim_slot(self, owner, job_id, limit):
        """Count ``job_id`` among ``owner``'s active jobs unless they number ``limit`` already. False at the limit.

        A job leaves the count when it ends (:meth:`_finish`) or is deleted; one whose end did not release
        it (a process dying between the two) is found, and dropped, when the count reaches the limit.
        """
        key, args = active_key(owner), [limit, job_id, time.time(), 2 * self.ttl]
        if self._claim(keys=[key], args=args):
            return True
        members = [member.decode() for member in self.redis.zrange(key, 0, -1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.exists(key_for(member))
                pipe.hexists(key_for(member), "finished_at")
            found = pipe.execute()
        ended = [member for i, member in enumerate(members) if not found[2 * i] or found[2 * i + 1]]
        if not ended:
            return False
        self.redis.zrem(key, *ended)
        return bool(self._claim(keys=[key], args=args))

    def release_slot(self, owner, job_id):
        """``job_id`` no longer counts among ``owner``'s active jobs."""
        self.redis.zrem(active_key(owner), job_id)

    def release_idempotency_key(self, owner, key):
        """Forget ``key`` (its job could not be created), so a retry can create it."""
        self.redis.delete(idempotency_key(owner, key))

    def _encode(self, record):
        return {k: json.dumps(v) if k in self._JSON_FIELDS else v for k, v in record.items()}
