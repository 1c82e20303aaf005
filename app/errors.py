"""The one JSON error shape, and the app-wide handlers that produce it.

Every error the gateway returns is
``{"error": {"code": "<snake_case>", "message": "<sentence>", "details": {...}}}``:
never an HTML page, never a traceback.
"""

import errno
import logging
import re

import celery.exceptions
import kombu.exceptions
import redis.exceptions
from flask import current_app, jsonify
from werkzeug.exceptions import HTTPException

from workers.datastore import FULL_ERRORS, StorageFull
from workers.errors import DataJobsError

log = logging.getLogger(__name__)

#: Seconds a client should wait before retrying when the backend is down.
RETRY_AFTER_SECONDS = 5

#: Redis unreachable: for the job store (redis-py), the broker (kombu) and the result backend
#: (Celery's BackendGetMetaError once the retries of ``result_backend_always_retry`` are spent).
BACKEND_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    celery.exceptions.BackendGetMetaError,
)


def error_response(status, code, message, headers=None, **details):
    response = jsonify({"error": {"code": code, "message": message, "details": details}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _snake(name):
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def handle_domain_error(exc):
    return error_response(getattr(exc, "status", 400), exc.code, exc.message, **exc.details)


_HTTP_MESSAGES = {
    404: "No such resource.",
    405: "This method is not allowed on this resource.",
}


def handle_http_error(exc):
    if exc.code == 413:
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        return error_response(
            413, "payload_too_large", f"The request body is larger than the limit of {limit} bytes.", limit=limit
        )
    return error_response(exc.code, _snake(exc.name), _HTTP_MESSAGES.get(exc.code, exc.description or exc.name))


def handle_backend_down(exc):
    if isinstance(exc.__cause__, FULL_ERRORS):  # kombu's OperationalError for a message a full Redis refused
        return handle_storage_full(exc)
    # The next health check asks Redis, rather than answering from a count taken before the outage.
    current_app.extensions["live_workers"].forget()
    log.warning("backend unavailable: %s", exc)
    return error_response(
        503,
        "backend_unavailable",
        "The job backend (Redis) is unreachable; try again shortly.",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def handle_storage_full(exc):
    log.warning("data store full: %s", type(exc).__name__)
    return error_response(
        507,
        "storage_full",
        "The data store has no room for this upload or result; nothing was kept. Delete datasets or results "
        "you no longer need, or try again later.",
    )


def handle_os_error(exc):
    if exc.errno == errno.ENOSPC:
        return handle_storage_full(exc)
    return handle_unexpected(exc)


def handle_unexpected(exc):
    log.exception("unhandled error")
    return error_response(500, "internal_error", "The gateway hit an unexpected error; it has been logged.")


def init_app(app):
    app.register_error_handler(DataJobsError, handle_domain_error)
    app.register_error_handler(HTTPException, handle_http_error)
    for exc_type in BACKEND_ERRORS:
        app.register_error_handler(exc_type, handle_backend_down)
    for exc_type in (StorageFull, *FULL_ERRORS):
        app.register_error_handler(exc_type, handle_storage_full)
    app.register_error_handler(OSError, handle_os_error)
    app.register_error_handler(Exception, handle_unexpected)
