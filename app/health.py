"""``GET /health``: is Redis reachable, and how many workers answer."""

from flask import Blueprint, current_app

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    """Report Redis reachability and the number of live workers (503 when Redis is down)."""
    current_app.extensions["jobstore"].redis.ping()  # raises -> 503 backend_unavailable
    celery = current_app.extensions["celery"]
    replies = celery.control.ping(timeout=current_app.config["HEALTH_PING_TIMEOUT"]) or []
    return {"status": "ok", "redis": "reachable", "workers": len(replies)}
