"""``GET /metrics`` on the shared stack: a real worker's figures reach the gateway, and gunicorn's two
processes' request counts add up in one scrape, whichever process answers it."""

import contextlib
import http.client
import time
from urllib.parse import urlsplit

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

JOB = {
    "dataset": [{"id": 3, "name": " Ada "}, {"id": 1, "name": None}, {"id": 2, "name": "Linus"}],
    "operations": ["drop_nulls", {"name": "sort", "params": {"by": "id"}}],
}


def scrape(gateway):
    """``{(sample name, frozenset of labels): value}`` of one scrape."""
    response = requests.get(f"{gateway}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def grown(before, after, name, **labels):
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_a_job_done_by_the_worker_shows_in_the_gateways_figures(gateway):
    before = scrape(gateway)
    response = requests.post(f"{gateway}/jobs?wait=30", json=JOB, timeout=40)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    after = scrape(gateway)
    # The stack (and its Redis) is shared, so other jobs may have moved the figures too: at least ours.
    assert grown(before, after, "datajobs_jobs_submitted_total") >= 1
    assert grown(before, after, "datajobs_jobs_finished_total", status="completed") >= 1
    assert grown(before, after, "datajobs_job_duration_seconds_count") >= 1
    for operation in ("drop_nulls", "sort"):  # counted by the worker process that completed the job
        assert grown(before, after, "datajobs_operation_seconds_count", operation=operation) >= 1
        assert after[("datajobs_operation_seconds_bucket", frozenset({"operation": operation, "le": "+Inf"}.items()))] >= 1
    assert grown(before, after, "datajobs_http_requests_total", method="POST", route="/jobs", status="200") == 1
    assert ("datajobs_jobs_running", frozenset()) in after and ("datajobs_queue_depth", frozenset()) in after


def _gateway_processes(gateway):
    """The pids of the gunicorn worker processes serving ``gateway``: the children of its master, ours."""
    bind = f":{urlsplit(gateway).port}"
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.cmdline()
            # Its workers are forks with the same command line, and no children of their own.
            if any("gunicorn" in part for part in cmdline) and any(part.endswith(bind) for part in cmdline):
                children = proc.children()
                if children:
                    return {child.pid for child in children}
    raise AssertionError(f"no gunicorn serving {gateway} among this test's processes")


def _served_by(pids, gateway_port, client_port):
    """Which of ``pids`` holds the server end of the connection from ``client_port`` (kept alive)."""
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == gateway_port and conn.raddr and conn.raddr.port == client_port:
                return pid
    return None


def test_requests_served_by_both_gateway_processes_add_up_in_one_scrape(gateway):
    url = urlsplit(gateway)
    pids = _gateway_processes(gateway)
    assert len(pids) == 2
    before = scrape(gateway)
    served, sent = {}, 0
    deadline = time.monotonic() + 20
    # New connections until each process has answered at least one (which one accepts is the kernel's call).
    while len(served) < 2 and time.monotonic() < deadline:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            conn.request("GET", "/operations")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            sent += 1
            pid = _served_by(pids, url.port, conn.sock.getsockname()[1])  # the server keeps it open: keep-alive
        finally:
            conn.close()
        if pid is not None:
            served[pid] = served.get(pid, 0) + 1
    assert len(served) == 2, f"only {served} of {pids} answered {sent} connections"
    after = scrape(gateway)
    # Each process answered only part of them; one scrape, from either process, counts them all.
    counted = grown(before, after, "datajobs_http_requests_total", method="GET", route="/operations", status="200")
    assert counted == sent
    assert all(count < sent for count in served.values())
