"""``GET /metrics``: Prometheus figures of the jobs (from Redis) and of this gateway's HTTP requests.

Two sources, read at each scrape:

- the job figures every gateway shares: :class:`workers.metrics.JobFigures`, one HGETALL of the hash the
  gateways and workers count into, plus the jobs being run now and the queue depth (``app/workers_view.py``);
- ``datajobs_http_requests_total{method,route,status}``, counted here after every request. Under gunicorn
  each process counts its own: ``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker
  process imports prometheus_client, each process then writes its counts to a file there, and a scrape,
  whichever process answers it, adds up every process's (``MultiProcessCollector``). Without that
  directory (``flask --app app run``) this process's own counts are reported.

Open to anyone, like ``/health``, also with ``API_TOKENS`` set (a Prometheus server carries no user's
token); with ``METRICS_TOKEN`` set it needs ``Authorization: Bearer <METRICS_TOKEN>``.
"""

import os

from flask import Blueprint, Response, current_app, request
from prometheus_client import CollectorRegistry, Counter, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from app.auth import _token_matches
from app.errors import error_response
from app.workers_view import queue_depth, running_jobs
from workers.jobstore import METRICS_KEY
from workers.metrics import JobFigures

bp = Blueprint("metrics", __name__)

#: Where each gateway process writes its counts when several serve (set by ``gunicorn.conf.py``).
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
#: ``route`` of a request no URL rule matched (a 404, or a 405): never the raw path, which is anyone's text.
UNMATCHED = "unmatched"
#: ``method`` values counted as themselves; any other method a client makes up counts as ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@bp.get("/metrics")
def metrics():
    """The figures, in the Prometheus text format (401 without ``METRICS_TOKEN`` when one is set)."""
    expected = current_app.config["METRICS_TOKEN"]
    if expected and not _presented(expected):
        return error_response(
            401, "unauthorized", "This endpoint needs the metrics token: send 'Authorization: Bearer <token>'.",
            headers={"WWW-Authenticate": 'Bearer realm="datajobs metrics"'},
        )
    registry = CollectorRegistry()
    directory = os.environ.get(MULTIPROC_DIR)
    if directory:
        MultiProcessCollector(registry, path=directory)
    else:
        registry.register(current_app.extensions["http_requests"])
    store = current_app.extensions["jobstore"]
    registry.register(
        JobFigures(store.redis, METRICS_KEY, jobs_running=lambda: len(running_jobs()), queue_depth=queue_depth)
    )
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)


def _presented(expected):
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return scheme.lower() == "bearer" and bool(token) and _token_matches(token, (expected,))


def count_request(app, method, route, status):
    """Count a request by its method, its URL rule (``/jobs/<job_id>``, not the path; None: unmatched) and its
    status."""
    app.extensions["http_requests"].labels(
        method=method if method in METHODS else "other", route=route or UNMATCHED, status=str(status)
    ).inc()


def _count(response):
    rule = request.url_rule
    count_request(current_app, request.method, rule.rule if rule is not None else None, response.status_code)
    return response


def init_app(app):
    """Serve ``/metrics`` and count every request the app answers."""
    # prometheus_client adds a ``_created`` series (a counter's start time) in-process but not in multiprocess
    # mode: off, so both modes expose the same series.
    disable_created_metrics()
    # Not in the default registry: in multiprocess mode the counts are read from the processes' files,
    # and each app (a test builds many) counts its own requests.
    app.extensions["http_requests"] = Counter(
        "datajobs_http_requests", "HTTP requests answered, by method, URL rule and status.",
        ["method", "route", "status"], registry=None,
    )
    app.after_request(_count)
    app.register_blueprint(bp)
