"""``GET /health``: is Redis reachable, and how many workers answer."""

from flask import Blueprint, current_app

from app.errors import BACKEND_ERRORS

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    """Report Redis reachability and the number of live workers (503 when Redis is down)."""
    current_app.extensions["jobstore"].redis.ping()  # raises -> 503 backend_unavailable
    workers = _live_workers(current_app.extensions["celery"], current_app.config["HEALTH_PING_TIMEOUT"])
    return {"status": "ok", "redis": "reachable", "workers": workers}


def _live_workers(celery, timeout):
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
