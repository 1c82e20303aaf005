"""``GET /health`` on the shared stack (gunicorn, a real worker): cheap enough that a hundred load balancer
checks at once do not hold up a submission. Prints its latency, one call at a time and a hundred at once, and
a submission's, alone and amid the checks."""

import multiprocessing
import selectors
import socket
import statistics
import time
from urllib.parse import urlsplit

import requests

JOB = {"dataset": [{"id": 1, "name": "Ada"}, {"id": 2, "name": None}], "operations": ["drop_nulls"]}
#: Checks sent at once, in each of :data:`BURSTS` bursts :data:`PERIOD` seconds apart.
CHECKERS, BURSTS, PERIOD = 100, 8, 0.25
#: Seconds after a burst is sent that a submission goes in: behind the hundred checks, the worst moment.
BEHIND = 0.002


def run_checks(gateway, start, answers):
    """:data:`BURSTS` bursts of :data:`CHECKERS` ``GET /health`` sent at once, burst ``k`` at ``start + k *
    PERIOD`` (``time.perf_counter()``: one clock for every process of the machine), from a process of its own,
    over raw sockets, so that neither a hundred client threads nor the checks' own work slow
    the submitting client. ``answers`` gets ``[(status, sent, answered)]`` at the end."""
    url = urlsplit(gateway)
    request = f"GET /health HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n".encode()
    done = []
    with selectors.DefaultSelector() as selector:
        for burst in range(BURSTS):
            # Connected beforehand, so that at the burst's time the hundred requests go out within a millisecond.
            sockets = [socket.create_connection((url.hostname, url.port), timeout=10) for _ in range(CHECKERS)]
            time.sleep(max(0.0, start + burst * PERIOD - time.perf_counter()))
            sent = time.perf_counter()
            for sock in sockets:
                sock.sendall(request)
                selector.register(sock, selectors.EVENT_READ, {"sent": sent, "data": b""})
            while selector.get_map():
                ready = selector.select(timeout=10)
                assert ready, "no answer to a health check in 10 s"
                for key, _ in ready:
                    chunk = key.fileobj.recv(65536)
                    if chunk:
                        key.data["data"] += chunk
                        continue
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                    status = int(key.data["data"].split(b" ", 2)[1]) if key.data["data"] else None
                    done.append((status, key.data["sent"], time.perf_counter()))
    answers.put(done)


def percentiles(seconds):
    """``(p50, p99)`` of ``seconds``, in milliseconds."""
    cuts = statistics.quantiles([s * 1000 for s in seconds], n=100, method="inclusive")
    return cuts[49], cuts[98]


def submissions(gateway, start, period=PERIOD):
    """One submission :data:`BEHIND` seconds after each burst's time (burst ``k`` at ``start + k * period``):
    ``(ids, seconds each took)``."""
    ids, seconds = [], []
    for burst in range(BURSTS):
        time.sleep(max(0.0, start + burst * period + BEHIND - time.perf_counter()))
        sent = time.perf_counter()
        response = requests.post(f"{gateway}/jobs", json=JOB, timeout=10)
        seconds.append(time.perf_counter() - sent)
        assert response.status_code == 202, response.text
        ids.append(response.json()["job_id"])
    return ids, seconds


def ms(seconds):
    return f"median {statistics.median(seconds) * 1000:.1f} ms, max {max(seconds) * 1000:.1f} ms"


def test_a_hundred_health_checks_at_once_do_not_slow_a_submission(gateway):
    alone = []
    for _ in range(200):  # one at a time first, each on a connection of its own as a load balancer's
        started = time.perf_counter()
        answer = requests.get(f"{gateway}/health", timeout=10)
        alone.append(time.perf_counter() - started)
        assert answer.status_code == 200 and answer.json()["workers"] >= 1, answer.text
    quiet_ids, quiet = submissions(gateway, time.perf_counter(), period=0.05)

    context = multiprocessing.get_context("fork")  # at once, with nothing to import
    answers = context.Queue()
    start = time.perf_counter() + 0.3
    checker = context.Process(target=run_checks, args=(gateway, start, answers), daemon=True)
    checker.start()
    busy_ids, busy = submissions(gateway, start)
    checked = answers.get(timeout=60)
    checker.join(10)

    assert [status for status, _, _ in checked] == [200] * (CHECKERS * BURSTS)
    p50, p99 = percentiles(alone)
    burst_p50, burst_p99 = percentiles([answered - sent for _, sent, answered in checked])
    print(f"\nGET /health one at a time: p50 {p50:.1f} ms, p99 {p99:.1f} ms; {CHECKERS} at once: p50 {burst_p50:.1f} "
          f"ms, p99 {burst_p99:.1f} ms; POST /jobs alone: {ms(quiet)}; {BEHIND * 1000:.0f} ms behind {CHECKERS} "
          f"checks: {ms(busy)}")
    assert max(busy) < 1, f"a submission took {max(busy):.3f} s amid the checks ({max(quiet):.3f} s alone)"
    for job_id in quiet_ids + busy_ids:  # leave the shared stack idle: every job done
        done = requests.get(f"{gateway}/jobs/{job_id}?wait=30", timeout=40).json()
        assert done["status"] == "completed", done
