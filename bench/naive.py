"""The baseline: pandas behind Flask and Celery the naive way, for ``make bench``.

``POST /jobs`` puts the records inline in the task message
(``run_pipeline.delay(records, operations)``); the task runs the steps in plain
pandas (:func:`bench.workload.apply`) and returns the records as its Celery
result; ``GET /jobs/<id>`` answers the ``AsyncResult``'s state and result. No job
records, no validation, no data by reference: what datajobs is measured against.

Its own Celery app and queue (``naive``), JSON serializer, the Redis at ``REDIS_URL``::

    REDIS_URL=... celery -A bench.naive worker --concurrency 1 -Q naive
    REDIS_URL=... gunicorn "bench.naive:create_app()" --workers 2 --worker-class gthread --threads 4

:func:`running` (and :func:`stack`, which yields only the URL) starts both from the repository's root and
stops them. Its gunicorn model is given on the command line with a configuration file of its own (empty),
so the repository's ``gunicorn.conf.py`` (the datajobs gateway's: gevent) never applies to it: the
baseline's figures do not move when datajobs' gateway settings do.
"""

import contextlib
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

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


#: How the naive gateway runs under gunicorn: the model it had before datajobs moved to gevent.
GUNICORN_MODEL = ["--workers", "2", "--worker-class", "gthread", "--threads", "4"]


@dataclass
class NaiveStack:
    """A running naive app: its gateway's URL and port, and its two processes."""

    url: str
    port: int
    worker: subprocess.Popen  # the Celery worker; its pool processes are its children
    gateway: subprocess.Popen  # gunicorn's master; its workers are its children


@contextlib.contextmanager
def running(redis_url, log_dir, concurrency=1, startup_timeout=60):
    """Start the naive worker (``concurrency`` pool processes, queue ``naive``) and gateway (gunicorn,
    :data:`GUNICORN_MODEL`); yield a :class:`NaiveStack` once the gateway answers and the worker answers a
    ping; stop both on exit."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    env.pop("GUNICORN_CMD_ARGS", None)
    config = log_dir / "naive-gunicorn.conf.py"  # empty: not the repository's gunicorn.conf.py
    config.write_text("# The naive gateway's settings are all on its command line (bench/naive.py).\n")
    port = localstack.free_port()
    hostname = f"naive-{os.getpid()}-{port}@{socket.gethostname()}"
    worker_args = [str(localstack.BIN / "celery"), "-A", "bench.naive", "worker", "--concurrency", str(concurrency)]
    worker_args += ["-Q", QUEUE, "--loglevel", "INFO", "--hostname", hostname, "--without-mingle", "--without-gossip"]
    gateway_args = [str(localstack.BIN / "gunicorn"), "bench.naive:create_app()", "--config", str(config)]
    gateway_args += ["--bind", f"127.0.0.1:{port}", *GUNICORN_MODEL]
    procs = []
    control = make_celery(redis_url)
    try:
        for args, log_name in ((worker_args, "naive-worker.log"), (gateway_args, "naive-gateway.log")):
            log = open(log_dir / log_name, "ab")
            procs.append(subprocess.Popen(args, cwd=localstack.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        url = f"http://127.0.0.1:{port}"
        localstack.wait_until(lambda: answers(url), startup_timeout, "the naive gateway answering")
        localstack.wait_until(
            lambda: bool(control.control.ping(destination=[hostname], timeout=0.5)), startup_timeout, "the naive worker answering a ping"
        )
        yield NaiveStack(url, port, *procs)
    finally:
        control.close()
        for proc in reversed(procs):
            localstack.stop(proc)


@contextlib.contextmanager
def stack(redis_url, log_dir, concurrency=1, startup_timeout=60):
    """:func:`running`, yielding only the gateway's URL."""
    with running(redis_url, log_dir, concurrency, startup_timeout) as started:
        yield started.url


def answers(url):
    try:
        return requests.get(f"{url}/health", timeout=2).ok
    except requests.RequestException:
        return False
