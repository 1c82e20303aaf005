"""``GET /health``: is Redis reachable, and how many workers are alive.

The plain check is cheap and open to anyone (a load balancer's). It answers from what the workers already
publish, their heartbeats (``workers/tasks.py``, every ``HEARTBEAT_SECONDS``): the count of recent ones,
read from Redis at most once per ``HEALTH_CACHE_SECONDS`` by each gateway process and kept in between,
so a hundred callers at once cost one Redis read, not a hundred, and none of them waits on Redis. An outage
shows within that time (503), and at once after any request of the process has found Redis unreachable.
``?deep=true`` reads Redis every time, also pings every worker through the broker (a broadcast, waiting up
to ``HEALTH_PING_TIMEOUT``) and needs a token when ``API_TOKENS`` is set.
"""

import time

from flask import Blueprint, current_app

from app.errors import BACKEND_ERRORS
from app.metrics import count_request
from app.validation import query_flag

bp = Blueprint("health", __name__)

#: A worker counts as alive while its last heartbeat is younger than this many heartbeats.
BEATS_MISSED = 3


class LiveWorkers:
    """The number of live workers, as one gateway process last read it, and until when that reading holds.

    ``within``: a worker is alive while its last heartbeat is younger than this many seconds (``GET /workers``
    lists the same ones)."""

    def __init__(self, jobstore, heartbeat_seconds, cache_seconds):
        self.jobstore, self.cache_seconds = jobstore, cache_seconds
        self.within = BEATS_MISSED * heartbeat_seconds
        self.count, self.until, self.refreshing = None, 0.0, False

    def get(self, fresh=False):
        """The count, read afresh from Redis when asked to or when the last reading no longer holds."""
        if fresh or self.cached() is None:
            self.refreshing = True  # meanwhile, requests of this process go on answering from the last one
            try:
                count = self.jobstore.live_workers(self.within)  # raises -> 503 backend_unavailable
            except BaseException:
                self.forget()
                raise
            finally:
                self.refreshing = False
            self.count, self.until = count, time.monotonic() + self.cache_seconds
        return self.count

    def cached(self):
        """The last count while it holds, or while another request of this process is reading it afresh; else
        None (none taken yet, or dropped after an error)."""
        if self.count is not None and (self.refreshing or time.monotonic() < self.until):
            return self.count
        return None

    def forget(self):
        """Drop the reading: the next call reads Redis again (after an error says Redis may be gone)."""
        self.count = None


@bp.get("/health")
def health():
    """Report Redis reachability and the number of live workers (503 when Redis is down)."""
    deep = query_flag("deep")
    body = _body(current_app.extensions["live_workers"].get(fresh=deep))
    if deep:
        celery, timeout = current_app.extensions["celery"], current_app.config["HEALTH_PING_TIMEOUT"]
        body["workers_answering"] = _answering(celery, timeout)
    return body


def _body(workers):
    return {"status": "ok", "redis": "reachable", "workers": workers}


def _answering(celery, timeout):
    """Number of workers answering a ping within ``timeout`` seconds.

    The ping goes over a pooled broker connection. After Redis has restarted,
    the pooled one is dead: its first use fails ("Connection closed by server")
    and drops it, so one more try, on a new connection, tells the truth.
    """
    try:
        replies = celery.control.ping(timeout=timeout)
    except BACKEND_ERRORS:
        replies = celery.control.ping(timeout=timeout)  # raises -> 503 backend_unavailable
    return len(replies or [])


def init_app(app):
    app.extensions["live_workers"] = LiveWorkers(
        app.extensions["jobstore"], app.config["HEARTBEAT_SECONDS"], app.config["HEALTH_CACHE_SECONDS"]
    )
    app.register_blueprint(bp)
    _answer_from_cache(app)


def _answer_from_cache(app):
    """Put in front of the Flask app a WSGI layer that answers a plain ``GET /health`` from the process's last
    count while it holds: the answer Flask would give, counted in the metrics as Flask's are, without its
    request context, hooks and routing. Checks come in bursts (a load balancer per gateway, several probes per
    balancer), and this way a hundred of them cost a submission waiting behind them milliseconds, not tens."""
    inner, live = app.wsgi_app, app.extensions["live_workers"]

    def wsgi(environ, start_response):
        plain_check = environ["REQUEST_METHOD"] == "GET" and environ["PATH_INFO"] == "/health"
        count = live.cached() if plain_check and not environ.get("QUERY_STRING") else None
        if count is None:
            return inner(environ, start_response)
        count_request(app, "GET", "/health", 200)
        return app.json.response(_body(count))(environ, start_response)

    app.wsgi_app = wsgi
