"""Waiting on jobs instead of polling them, against a real worker, Redis and the gateway under gunicorn.

The gateway runs as in production: gunicorn, 2 processes of gevent workers (``gunicorn.conf.py``),
with its access log on so a test can see which requests the harvester sent. The wake-ups here are
the real ones: the job store's publish and Celery's result backend's own.
"""

import http.client
import json
import re
import selectors
import socket
import subprocess
import time

import psutil
import pytest
import requests

import localstack
from tests.faults.conftest import harvest_command, sleep_step, submit, wait_for
from workers.jobstore import utcnow

WAITERS = 1000


@pytest.fixture(scope="module")
def stack(start_stack):
    return start_stack(concurrency=1, CANCEL_GRACE_SECONDS="1", GUNICORN_CMD_ARGS="--access-logfile -")


def tag(text):
    return {"name": "add_column", "params": {"name": "tag", "value": text}}


def settled(url, job_id, timeout=30):
    """The ETag of ``job_id`` once it runs its first step (a body that stays put while the step sleeps)."""
    def running():
        response = requests.get(f"{url}/jobs/{job_id}", timeout=10)
        progress = response.json()["progress"]
        return response.headers["ETag"] if progress["phase"] == "running" and progress["current_operation"] else None

    localstack.wait_until(running, timeout, f"job {job_id} running its first step")
    return running()


def test_a_post_that_waits_answers_with_the_final_body_or_202_if_the_job_goes_on(stack):
    done = requests.post(
        f"{stack.url}/jobs?wait=30", json={"dataset": [{"id": 1}], "operations": [tag("x")]}, timeout=40
    )
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "completed" and body["data"]["data"] == [{"id": 1, "tag": "x"}]
    assert done.headers["Location"] == f"/jobs/{body['job_id']}" and done.headers["ETag"]

    slow = requests.post(
        f"{stack.url}/jobs?wait=0.5", json={"dataset": [{"id": 1}], "operations": [sleep_step(2)]}, timeout=10
    )
    assert slow.status_code == 202 and slow.json()["status"] in ("started", "processing")
    assert wait_for(stack.url, slow.json()["job_id"])["status"] == "completed"


def test_a_waiter_returns_when_its_job_ends_not_when_its_wait_runs_out(stack):
    job_id = submit(stack.url, [sleep_step(1), tag("y")]).json()["job_id"]
    asked = time.monotonic()
    answer = requests.get(f"{stack.url}/jobs/{job_id}?wait=30", timeout=40)
    seen_at, took = utcnow(), time.monotonic() - asked
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "completed", body
    assert body["data"]["data"] == [{"id": 1, "tag": "y"}]
    assert took < 20, took  # the job's end (about 1 s), not the wait's (30 s)
    assert seen_at >= body["finished_at"]
    print(f"\nwaiter answered {took:.3f} s after asking; the job ended at {body['finished_at']}, seen at {seen_at}")


def test_an_unchanged_body_is_304_and_every_change_wakes_the_waiter(stack):
    job_id = submit(stack.url, [sleep_step(1.5), tag("z")]).json()["job_id"]
    etag = settled(stack.url, job_id)
    unchanged = requests.get(f"{stack.url}/jobs/{job_id}?wait=0.3", headers={"If-None-Match": etag}, timeout=10)
    assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["ETag"] == etag
    assert requests.get(f"{stack.url}/jobs/{job_id}", headers={"If-None-Match": etag}, timeout=10).status_code == 304

    answers = []
    while not answers or answers[-1]["status"] != "completed":
        response = requests.get(f"{stack.url}/jobs/{job_id}?wait=30", headers={"If-None-Match": etag}, timeout=40)
        assert response.status_code == 200, response.status_code  # woken by a change, never by the 30 s
        assert response.headers["ETag"] != etag
        etag = response.headers["ETag"]
        answers.append(response.json())
        assert len(answers) < 20, answers  # one answer per change: no loop that answers at once
    assert "Retry-After" not in response.headers
    assert answers[-1]["data"]["data"] == [{"id": 1, "tag": "z"}]


def open_waiter(port, job_id, etag, seconds):
    """Send ``GET /jobs/<id>?wait=`` on a socket of its own, not reading the answer; return the socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    request = (
        f"GET /jobs/{job_id}?wait={seconds} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"If-None-Match: {etag}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(request.encode())
    return sock


def accepted(stack):
    """Connections the gateway's processes have accepted (and hold) on its port."""
    processes = psutil.Process(stack.gateway.pid).children()
    return sum(
        1
        for process in processes
        for conn in process.net_connections(kind="tcp")
        if conn.laddr.port == stack.port and conn.status == psutil.CONN_ESTABLISHED
    )


def test_a_thousand_waiters_do_not_hold_up_a_submission(stack):
    job_id = submit(stack.url, [sleep_step(120)]).json()["job_id"]
    etag = settled(stack.url, job_id)
    waiters = [open_waiter(stack.port, job_id, etag, 50) for _ in range(WAITERS)]
    try:
        # Every waiter is in a gateway process's hands (accepted, its request read), not queued in the backlog.
        localstack.wait_until(lambda: accepted(stack) >= WAITERS, 30, f"the gateway holding {WAITERS} waiters")
        asked = time.monotonic()
        submission = submit(stack.url, [tag("meanwhile")])
        took = time.monotonic() - asked
        assert submission.status_code == 202, submission.text
        with selectors.DefaultSelector() as selector:
            for sock in waiters:
                selector.register(sock, selectors.EVENT_READ)
            assert selector.select(timeout=0) == []  # and all the waiters are still waiting
        print(f"\nsubmission answered in {took * 1000:.0f} ms with {WAITERS} waiters held")

        assert requests.delete(f"{stack.url}/jobs/{job_id}", timeout=10).json()["status"] == "cancelled"
        statuses = set()
        for sock in waiters:  # the cancel wakes every one of them, in both processes
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 200
            statuses.add(json.loads(response.read())["status"])
        assert statuses == {"cancelled"}
    finally:
        for sock in waiters:
            sock.close()
    assert wait_for(stack.url, submission.json()["job_id"])["status"] == "completed"


def test_the_harvester_waits_on_the_job_instead_of_polling_it(stack, tmp_path):
    source, output = tmp_path / "in.csv", tmp_path / "out.jsonl"
    source.write_text("id,name\n1,ada\n2,grace\n")
    command = harvest_command(stack.url, source, output, "--op", 'sleep:{"seconds": 1}')
    command = [arg if arg != "0.1" else "5" for arg in command]  # a poll interval it must not use
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in output.read_text().splitlines()] == [
        {"id": 1, "name": "ada"}, {"id": 2, "name": "grace"}
    ]
    job_id = json.loads(output.with_name("out.jsonl.manifest.json").read_text())["job_id"]
    looks = re.findall(rf'"GET /jobs/{job_id}(\?\S*)? HTTP', stack.logs())
    # One look for the job's body and tag, then waits for each change (not one poll every 5 s).
    assert len(looks) >= 2 and looks[0] == "" and all(query.startswith("?wait=") for query in looks[1:]), looks
    assert len(looks) < 10, looks
