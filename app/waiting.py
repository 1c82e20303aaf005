"""Waiting on jobs: one Redis subscription per gateway process wakes every request waiting on a job.

A request that waits (``GET /jobs/<id>?wait=S``, ``POST /jobs?wait=S``) registers with
its process's :class:`JobEvents` and sleeps on an event: it holds no Redis connection and,
under gunicorn's gevent workers, no thread. One listener holds the process's subscription to
the job store's ``datajobs:events`` channel, on which every change that shows in a job's body
is published, in the same round trip as the change (``workers/jobstore.py``): its start, each
progress report (``workers/tasks.py``), its end (``<id> ended``: a waiter for the end sleeps
through the rest), its result freed. Not Celery's own ``celery-task-meta-*`` channels: those
carry every state of every task, chunks included, to every gateway process.

A message for a job sets the events of its waiters, which then read the job again. Pub/sub
delivers at most once, so when the subscription breaks every waiter is woken (it reads the
job again and goes on waiting) and the listener subscribes again.

The listener is a thread; gunicorn's gevent worker patches ``threading`` so that under it the
listener and the events are greenlets, and ``flask --app app run`` (threads) works the same.
"""

import contextlib
import logging
import os
import threading
import time

import redis

from workers.jobstore import EVENTS_CHANNEL, read_job_event

log = logging.getLogger(__name__)

#: Seconds a listener blocks on its socket before it looks again (it also answers Redis's health checks then).
LISTEN_SECONDS = 1.0
#: Seconds a waiter gives its process's listener to subscribe before it reads the job anyway.
READY_SECONDS = 2.0
#: Seconds a listener waits before subscribing again after losing Redis (doubling up to the cap).
RECONNECT_SECONDS, RECONNECT_CAP_SECONDS = 0.1, 2.0


class JobEvents:
    """Wakes the requests of this process that wait on a job when the job changes.

    ``client`` is the job store's Redis; its :data:`~workers.jobstore.EVENTS_CHANNEL` carries the events.
    """

    def __init__(self, client, channel=EVENTS_CHANNEL):
        self.client, self.channel = client, channel
        self._waiters = {}  # job id -> {threading.Event: ends_only}
        self._lock = threading.Lock()
        self._pid = None  # the process the listener runs in (gunicorn forks after the app is built)
        self._ready = threading.Event()

    @contextlib.contextmanager
    def watch(self, job_id, ends_only=False):
        """Yield an event that is set whenever ``job_id`` may have changed (clear it before each look).

        ``ends_only``: set only when the job may have ended (a waiter that wants its end, not its progress).
        """
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(job_id, {})[event] = ends_only
        try:
            self._listen()
            yield event
        finally:
            with self._lock:
                waiters = self._waiters.get(job_id, {})
                waiters.pop(event, None)
                if not waiters:
                    self._waiters.pop(job_id, None)

    @property
    def listening(self):
        """True while this process's listener is subscribed: from then on no change of a watched job goes
        unseen (if the subscription breaks, every waiter is woken to look for itself)."""
        return self._pid == os.getpid() and self._ready.is_set()

    @property
    def waiting(self):
        """How many requests of this process are waiting now."""
        with self._lock:
            return sum(len(events) for events in self._waiters.values())

    def notify(self, job_id, ended=False):
        """Wake the waiters of ``job_id`` (only those that watch every change, unless it ``ended``)."""
        with self._lock:
            events = [event for event, ends_only in self._waiters.get(job_id, {}).items() if ended or not ends_only]
        for event in events:
            event.set()

    def notify_all(self):
        with self._lock:
            events = [event for events in self._waiters.values() for event in events]
        for event in events:
            event.set()

    def _listen(self):
        """Start this process's listener if it is not running; wait (a little) until it has subscribed."""
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._ready = os.getpid(), threading.Event()
                threading.Thread(target=self._run, args=(self._ready,), name="datajobs-job-events", daemon=True).start()
            ready = self._ready
        # Not subscribed yet (Redis down?): the waiter reads the job anyway, and its read answers for Redis.
        ready.wait(READY_SECONDS)

    def _run(self, ready):
        pause = RECONNECT_SECONDS
        while True:
            pubsub = self.client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                while True:
                    message = pubsub.get_message(timeout=LISTEN_SECONDS)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        # Also after redis-py subscribes again by itself: what was published meanwhile is lost.
                        self.notify_all()  # before `ready`: a waiter let go by `ready` is not woken by this
                        ready.set()
                        pause = RECONNECT_SECONDS
                    elif message["type"] == "message":
                        self.notify(*read_job_event(_text(message["data"])))
            except redis.RedisError as exc:
                log.warning("job events: lost the Redis subscription (%s); subscribing again", type(exc).__name__)
                ready.clear()
                self.notify_all()
                time.sleep(pause)
                pause = min(pause * 2, RECONNECT_CAP_SECONDS)
            except Exception:  # pragma: no cover - a bug here must not end the listener for good
                log.exception("job events: listener error")
                time.sleep(RECONNECT_CAP_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)
