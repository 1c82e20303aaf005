"""``GET /health`` on the shared stack (gunicorn, a real worker): cheap enough that a hundred load balancer
checks at once do not hold up a submission. Prints its latency, one call at a time and a hundred at once."""

import selectors
import socket
import statistics
import threading
import time
from urllib.parse import urlsplit

import requests

JOB = {"dataset": [{"id": 1, "name": "Ada"}, {"id": 2, "name": None}], "operations": ["drop_nulls"]}
#: Checks in flight at every moment, and calls each of them makes one after the other.
CHECKERS, CALLS = 100, 5


class Checks(threading.Thread):
    """:data:`CHECKERS` ``GET /health`` in flight at once, each sent again when answered, :data:`CALLS` times,
    over raw sockets from one thread (no hundred client threads fighting the submission for the GIL).

    ``answers`` holds ``(status, sent, answered)`` of each call (``time.perf_counter()`` values).
    """

    def __init__(self, gateway):
        super().__init__(daemon=True)
        url = urlsplit(gateway)
        self.address = (url.hostname, url.port)
        self.request = f"GET /health HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n".encode()
        self.answers = []

    def _send(self, selector, left):
        sock = socket.create_connection(self.address, timeout=10)
        sent = time.perf_counter()
        sock.sendall(self.request)
        selector.register(sock, selectors.EVENT_READ, {"left": left, "sent": sent, "data": b""})

    def run(self):
        with selectors.DefaultSelector() as selector:
            for _ in range(CHECKERS):
                self._send(selector, CALLS)
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
                    self.answers.append((status, key.data["sent"], time.perf_counter()))
                    if key.data["left"] > 1:
                        self._send(selector, key.data["left"] - 1)


def percentiles(seconds):
    """``(p50, p99)`` of ``seconds``, in milliseconds."""
    cuts = statistics.quantiles([s * 1000 for s in seconds], n=100, method="inclusive")
    return cuts[49], cuts[98]


def submit(gateway):
    """POST the job; ``(response, when it was sent, when it was answered)``."""
    sent = time.perf_counter()
    response = requests.post(f"{gateway}/jobs", json=JOB, timeout=10)
    return response, sent, time.perf_counter()


def test_a_hundred_health_checks_at_once_do_not_slow_a_submission(gateway):
    alone = []
    with requests.Session() as session:  # one at a time first: what a single check costs
        for _ in range(200):
            started = time.perf_counter()
            answer = session.get(f"{gateway}/health", timeout=10)
            alone.append(time.perf_counter() - started)
            assert answer.status_code == 200 and answer.json()["workers"] >= 1, answer.text
    quiet, sent, answered = submit(gateway)
    assert quiet.status_code == 202, quiet.text
    quiet_seconds = answered - sent

    checks = Checks(gateway)
    checks.start()
    deadline = time.monotonic() + 10
    while len(checks.answers) < CHECKERS and time.monotonic() < deadline:  # the checks in full flow
        time.sleep(0.005)
    busy, sent, answered = submit(gateway)
    checks.join(30)

    assert busy.status_code == 202, busy.text
    assert not checks.is_alive() and [status for status, _, _ in checks.answers] == [200] * (CHECKERS * CALLS)
    # The submission went in while checks were coming and going: some answered before it, some after.
    assert any(end < sent for _, _, end in checks.answers) and any(end > answered for _, _, end in checks.answers)
    busy_seconds = answered - sent
    p50, p99 = percentiles(alone)
    busy_p50, busy_p99 = percentiles([end - start for _, start, end in checks.answers])
    print(f"\nGET /health one at a time: p50 {p50:.1f} ms, p99 {p99:.1f} ms; {CHECKERS} at once: "
          f"p50 {busy_p50:.1f} ms, p99 {busy_p99:.1f} ms; POST /jobs alone {quiet_seconds * 1000:.1f} ms, "
          f"amid the checks {busy_seconds * 1000:.1f} ms")
    assert busy_seconds < 1, f"a submission took {busy_seconds:.3f} s amid the checks ({quiet_seconds:.3f} s alone)"
    for job in (quiet, busy):  # leave the shared stack idle: both jobs done
        job_id = job.json()["job_id"]
        done = requests.get(f"{gateway}/jobs/{job_id}?wait=30", timeout=40).json()
        assert done["status"] == "completed", done
