"""The baseline: pandas behind Flask and Celery the naive way, for ``make bench``.

``POST /jobs`` puts the records inline in the task message
(``run_pipeline.delay(records, operations)``); the task runs the steps in plain
pandas (:func:`bench.workload.apply`) and returns the records as its Celery
result; ``GET /jobs/<id>`` answers the ``AsyncResult``'s state and result. No job
records, no validation, no data by reference: what datajobs is measured against.

Its own Celery app and queue (``naive``), JSON serializer, the Redis at ``REDIS_URL``::

    REDIS_URL=... celery -A bench.naive worker --concurrency 1 -Q naive
    REDIS_URL=... gunicorn "bench.naive:create_app()"

:func:`stack` starts both from ``/work/main`` and stops them.
"""

import contextlib
import os
import socket
import subprocess

import requests
from celery import Celery
from flask import Flask, request

import localstack
from bench import workload

QUEUE = "naive"


def make_celery(redis_url=None):
    """The naive Celery app: broker and result backend at ``redis_url`` (default ``REDIS_URL``)."""
    url = redis_url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    celery = Celery("naive", broker=url, backend=url)
    celery.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
    )
    return celery


app = make_celery()


@app.task(name="naive.run_pipeline")
def run_pipeline(records, operations):
    """Apply ``operations`` to ``records`` in plain pandas; return the records."""
    return workload.run_plain(records, operations)


def create_app():
    """The naive gateway: two routes over the Celery app, and a health check for start-up."""
    web = Flask(__name__)

    @web.post("/jobs")
    def submit():
        body = request.get_json()
        result = run_pipeline.delay(body["dataset"], body["operations"])
        return {"job_id": result.id}, 202

    @web.get("/jobs/<job_id>")
    def show(job_id):
        result = app.AsyncResult(job_id)
        state = result.state
        if state == "SUCCESS":
            return {"state": state, "result": result.result}
        if state == "FAILURE":
            return {"state": state, "error": repr(result.result)}
        return {"state": state}

    @web.get("/health")
    def health():
        return {"status": "ok"}

    return web


@contextlib.contextmanager
def stack(redis_url, log_dir, startup_timeout=60):
    """Start the naive worker (concurrency 1, queue ``naive``) and gateway (gunicorn); yield the gateway URL.

    Yields once the gateway answers and the worker answers a ping; stops both on exit.
    """
    env = dict(os.environ, REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    port = localstack.free_port()
    hostname = f"naive-{os.getpid()}-{port}@{socket.gethostname()}"
    worker_args = [str(localstack.BIN / "celery"), "-A", "bench.naive", "worker", "--concurrency", "1", "-Q", QUEUE]
    worker_args += ["--loglevel", "INFO", "--hostname", hostname, "--without-mingle", "--without-gossip"]
    gateway_args = [str(localstack.BIN / "gunicorn"), "bench.naive:create_app()", "--bind", f"127.0.0.1:{port}"]
    gateway_args += ["--workers", "2"]  # as localstack starts the datajobs gateway
    procs = []
    control = make_celery(redis_url)
    try:
        for args, log_name in ((worker_args, "naive-worker.log"), (gateway_args, "naive-gateway.log")):
            log = open(log_dir / log_name, "ab")
            procs.append(subprocess.Popen(args, cwd=localstack.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        url = f"http://127.0.0.1:{port}"
        localstack.wait_until(lambda: _answers(url), startup_timeout, "the naive gateway answering")
        localstack.wait_until(
            lambda: bool(control.control.ping(destination=[hostname], timeout=0.5)), startup_timeout, "the naive worker answering a ping"
        )
        yield url
    finally:
        control.close()
        for proc in reversed(procs):
            localstack.stop(proc)


def _answers(url):
    try:
        return requests.get(f"{url}/health", timeout=2).ok
    except requests.RequestException:
        return False
