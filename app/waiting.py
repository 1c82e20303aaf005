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

from workers.jobstore import read_job_event

log = logging.getLogger(__name__)

#: Seconds a listener blocks on its socket before it looks again (it also answers Redis's health checks then).
LISTEN_SECONDS = 1.0
#: Seconds a waiter gives its process's listener to subscribe before it reads the job anyway.
READY_SECONDS = 2.0
#: Seconds a listener waits before subscribing again after losing Redis (doubling up to the cap).
RECONNECT_SECONDS, RECONNECT_CAP_SECONDS = 0.1, 2.0


class Subscription:
    """What one listener subscribes to on one Redis: ``channels`` whose messages are job events
    (:func:`workers.jobstore.job_event`)."""

    def __init__(self, client, channels):
        self.client = client
        self.channels = [_text(channel) for channel in channels]

    @staticmethod
    def event_of(message):
        """``(job_id, ended)`` of a pub/sub ``message``, or ``(None, False)``."""
        if message["type"] == "message":
            return read_job_event(_text(message["data"]))
        return None, False


class JobEvents:
    """Wakes the requests of this process that wait on a job when the job changes."""

    def __init__(self, subscriptions):
        self.subscriptions = list(subscriptions)
        self._waiters = {}  # job id -> {threading.Event: ends_only}
        self._lock = threading.Lock()
        self._pid = None  # the process the listeners run in (gunicorn forks after the app is built)
        self._ready = []

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
    def waiting(self):
        """How many requests of this process are waiting now."""
        with self._lock:
            return sum(len(events) for events in self._waiters.values())

    def notify(self, job_id, ended=True):
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
        """Start this process's listeners if they are not running; wait (a little) until they have subscribed."""
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._ready = []
                for subscription in self.subscriptions:
                    ready = threading.Event()
                    self._ready.append(ready)
                    threading.Thread(
                        target=self._run, args=(subscription, ready), name="datajobs-job-events", daemon=True
                    ).start()
            ready_events = list(self._ready)
        deadline = time.monotonic() + READY_SECONDS
        for ready in ready_events:
            # Not subscribed yet (Redis down?): the waiter reads the job anyway, and its read answers for Redis.
            ready.wait(max(deadline - time.monotonic(), 0))

    def _run(self, subscription, ready):
        pause = RECONNECT_SECONDS
        while True:
            pubsub = subscription.client.pubsub()
            try:
                pubsub.subscribe(*subscription.channels)
                confirmed = set()
                while True:
                    message = pubsub.get_message(timeout=LISTEN_SECONDS)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        # Also after redis-py subscribes again by itself: what was published meanwhile is lost.
                        confirmed.add(_text(message["channel"]))
                        self.notify_all()  # before `ready`: a waiter let go by `ready` is not woken by this
                        if len(confirmed) >= len(subscription.channels):
                            ready.set()
                            pause = RECONNECT_SECONDS
                        continue
                    job_id, ended = subscription.event_of(message)
                    if job_id:
                        self.notify(job_id, ended)
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


def subscriptions_for(store_client):
    """The subscription that covers a gateway's jobs: the job store's events channel."""
    from workers.jobstore import EVENTS_CHANNEL

    return [Subscription(store_client, channels=[EVENTS_CHANNEL])]
