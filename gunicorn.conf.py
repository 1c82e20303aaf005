"""Gunicorn settings for `gunicorn "app:create_app()"` run from this folder: port 5000 like `flask run`.

Worker class gevent: a request that waits on a job (`GET /jobs/<id>?wait=S`) sleeps on an event in a
greenlet, holding neither a thread nor a Redis connection, so a thousand waiters cost each process
only memory, and submissions go on being answered meanwhile (tests/faults/test_waiting_live.py). With
threads instead (gthread), every waiter holds a thread, and 2 processes of 4 threads would stop taking
submissions at the eighth waiter. Our work in a request is Redis round trips (cooperative under gevent)
and short pyarrow calls; a large upload's parsing holds its process for as long as it takes, as a thread
would hold the GIL.

Metrics: each worker process counts its own HTTP requests for `GET /metrics` (app/metrics.py), in
prometheus_client's multiprocess mode, which it chooses when it is first imported: so the directory the
processes write their counts to is set in the master as it starts (`on_starting`), before it forks the
workers that import the app. A directory the environment names is used, its files from an earlier run
removed; otherwise a fresh one is made for this run and removed at exit. Only the master's hooks touch
the environment: reading this file (as a test does) changes nothing.
"""

import glob
import os
import shutil
import tempfile

_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
_made_dirs = []


def on_starting(server):
    directory = os.environ.get(_MULTIPROC)
    if not directory:
        directory = os.environ[_MULTIPROC] = tempfile.mkdtemp(prefix="datajobs-metrics-")
        _made_dirs.append(directory)
    # Files left by an earlier run in a directory the environment named would carry its counts over.
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.remove(path)


def child_exit(server, worker):
    # What prometheus_client asks of gunicorn: a dead process's live gauges go (its counts stay counted).
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    for directory in _made_dirs:
        shutil.rmtree(directory, ignore_errors=True)


bind = "127.0.0.1:5000"
workers = 2
worker_class = "gevent"
# Concurrent connections per process (waiters included) before it stops accepting more.
worker_connections = 2000
