"""Gunicorn settings for `gunicorn "app:create_app()"` run from this folder: port 5000 like `flask run`."""

bind = "127.0.0.1:5000"
workers = 2
# A request mostly waits on Redis: threads let each process serve others meanwhile. Submit
# latency under tests/faults/test_flood.py (500 POSTs, 20 clients, 2 cores shared with the
# worker) fell from p50 230-600 ms to 140-200 ms on 2026-11-27: noisy, but never worse.
threads = 4
