"""``GET /health``: is Redis reachable, and how many workers are alive.

The plain check is cheap and open to anyone (a load balancer's): one read-only Redis round trip
that counts the workers whose heartbeat (``workers/tasks.py``, every ``HEARTBEAT_SECONDS``) is
recent, so a hundred callers at once hold no request for long, and an outage shows at once (503).
``?deep=true`` also pings every worker through the broker (a broadcast, waiting up to
``HEALTH_PING_TIMEOUT``) and needs a token when ``API_TOKENS`` is set.
"""

from flask import Blueprint, current_app

from app.errors import BACKEND_ERRORS
from app.validation import query_flag

bp = Blueprint("health", __name__)

#: A worker counts as alive while its last heartbeat is younger than this many heartbeats.
BEATS_MISSED = 3


@bp.get("/health")
def health():
    """Report Redis reachability and the number of live workers (503 when Redis is down)."""
    body = {"status": "ok", "redis": "reachable", "workers": _live_workers()}
    if query_flag("deep"):
        celery, timeout = current_app.extensions["celery"], current_app.config["HEALTH_PING_TIMEOUT"]
        body["workers_answering"] = _answering(celery, timeout)
    return body


def _live_workers():
    seconds = BEATS_MISSED * current_app.config["HEARTBEAT_SECONDS"]
    return current_app.extensions["jobstore"].live_workers(seconds)  # raises -> 503 backend_unavailable


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
