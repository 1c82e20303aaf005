"""Gunicorn settings for `gunicorn "app:create_app()"` run from this folder: port 5000 like `flask run`.

Worker class gevent: a request that waits on a job (`GET /jobs/<id>?wait=S`) sleeps on an event in a
greenlet, holding neither a thread nor a Redis connection, so a thousand waiters cost each process
only memory, and submissions go on being answered meanwhile (tests/faults/test_waiting_live.py). With
threads instead (gthread), every waiter holds a thread, and 2 processes of 4 threads would stop taking
submissions at the eighth waiter. Our work in a request is Redis round trips (cooperative under gevent)
and short pyarrow calls; a large upload's parsing holds its process for as long as it takes, as a thread
would hold the GIL.
"""

bind = "127.0.0.1:5000"
workers = 2
worker_class = "gevent"
# Concurrent connections per process (waiters included) before it stops accepting more.
worker_connections = 2000
