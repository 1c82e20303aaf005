"""Flower, started as the README says, sees the shared stack's jobs from the workers' task events.

``celery -A workers flower`` reads the broker from ``celeryconfig`` through the app, as the
worker does (``REDIS_URL`` in its environment); the workers send task events and the gateway
the ``task-sent`` one (``celeryconfig.py``), so a job's task shows up in Flower with its state.
"""

import subprocess
import time

import pytest
import requests

import localstack

pytestmark = pytest.mark.integration

#: Flower's HTTP API answers without a login only when told to: this one listens on loopback alone.
FLOWER_ENV = {"FLOWER_UNAUTHENTICATED_API": "true"}
#: A cell value that must never reach a monitor: task messages and results carry ids and summaries only.
SECRET = "s3cret-cell-value"


def _get(url, **params):
    """Flower's JSON at ``url``, or None while it does not answer."""
    try:
        response = requests.get(url, params=params, timeout=2)
    except requests.ConnectionError:
        return None
    return response.json() if response.ok else None


def _until(probe, timeout, what):
    """Call ``probe`` until it gives something truthy (bounded: ``timeout`` seconds); return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s")


@pytest.fixture
def flower(redis_url, tmp_path):
    """Base URL of ``celery -A workers flower`` on a free loopback port, against the shared stack's Redis."""
    port = localstack.free_port()
    args = [str(localstack.BIN / "celery"), "-A", "workers", "flower", f"--port={port}", "--address=127.0.0.1"]
    log = open(tmp_path / "flower.log", "ab")
    proc = subprocess.Popen(
        args, cwd=localstack.ROOT, env=localstack._env(redis_url, FLOWER_ENV), stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        yield url
    finally:
        # Flower keeps nothing (not --persistent): no need to wait out its graceful shutdown.
        proc.kill()
        proc.wait()
        log.close()


def test_flower_shows_each_job_as_a_successful_run_job_task(gateway, flower):
    # Flower knows only the events sent while it listens: wait until it hears the shared worker
    # (its heartbeat events, every 2 s), which also says its event receiver is connected.
    alive = _until(lambda: _get(f"{flower}/api/workers", status="true"), 30, "Flower did not hear a worker")
    assert any(alive.values())

    job_ids = []
    for n in range(2):
        body = {"dataset": [{"id": n, "note": SECRET}], "operations": ["drop_nulls"]}
        response = requests.post(f"{gateway}/jobs", params={"wait": 30}, json=body, timeout=40)
        assert response.status_code == 200, response.text  # ended within the wait
        assert response.json()["status"] == "completed"
        job_ids.append(response.json()["job_id"])

    def seen():
        tasks = _get(f"{flower}/api/tasks", taskname="datajobs.run_job") or {}
        if all(tasks.get(job_id, {}).get("state") == "SUCCESS" for job_id in job_ids):
            return tasks

    tasks = _until(seen, 10, f"Flower did not show {job_ids} as SUCCESS")
    for job_id in job_ids:
        task = tasks[job_id]  # the job id is the task id
        assert task["name"] == "datajobs.run_job" and task["worker"] in alive
        assert task["sent"] is not None  # the gateway's task-sent event: Flower knew it while it was queued
        assert task["args"] == f"['{job_id}']"  # the message holds the id only
    assert SECRET not in requests.get(f"{flower}/api/tasks", timeout=5).text
