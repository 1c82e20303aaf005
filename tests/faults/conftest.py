"""Fault tests: real worker processes and a real gateway against a ``redis-server`` of their own.

Each test module gets its own ``redis-server`` on a free port (never the shared
one at 6379, since some tests stop it), and the stacks load the test-only
operations of ``tests/faults/ops.py`` through ``OPERATION_MODULES``.
"""

import contextlib
import shutil
import sys
import time
from pathlib import Path

import pytest
import requests

import localstack

pytestmark = pytest.mark.integration

TEST_OPS = {"OPERATION_MODULES": "tests.faults.ops"}
HARVESTER = str(Path(sys.executable).parent / "harvester")

if shutil.which("redis-server") is None:  # pragma: no cover - the CI machine has one
    pytest.skip("fault tests need redis-server on the PATH", allow_module_level=True)


@pytest.fixture(scope="module")
def fault_redis():
    """URL of a redis-server started for this test module."""
    with localstack.redis_server() as url:
        yield url


@pytest.fixture(scope="module")
def start_stack(fault_redis, tmp_path_factory):
    """Start a gateway and workers with given settings; everything started is stopped after the module."""
    with contextlib.ExitStack() as started:

        def start(workers=1, concurrency=1, **env):
            log_dir = tmp_path_factory.mktemp("logs")
            return started.enter_context(
                localstack.running(fault_redis, workers, concurrency, log_dir, {**TEST_OPS, **env})
            )

        yield start


def submit(url, operations, dataset=None, **kwargs):
    """POST a job; return the response (raises on a network error)."""
    body = {"dataset": [{"id": 1}] if dataset is None else dataset, "operations": operations}
    return requests.post(f"{url}/jobs", json=body, timeout=10, **kwargs)


def wait_for(url, job_id, statuses=("completed", "failed", "cancelled"), timeout=60, **kwargs):
    """Poll ``GET /jobs/<id>`` until its status is one of ``statuses``; return the body."""
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        body = requests.get(f"{url}/jobs/{job_id}", timeout=10, **kwargs).json()
        if body.get("status") in statuses:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not in {statuses} within {timeout} s; last seen: {body}")


def sleep_step(seconds, pid_file=None):
    """A step of the test-only ``sleep`` operation, appending its process's pid to ``pid_file`` if given."""
    params = {"seconds": seconds, **({"pid_file": str(pid_file)} if pid_file else {})}
    return {"name": "sleep", "params": params}


def pids(path):
    """The pids ``sleep`` steps appended to ``path``, in order (one per step run)."""
    return path.read_text().split() if path.exists() else []


def submit_started(url, operations, pid_file, dataset=None):
    """Submit a job whose first step is a ``sleep`` writing to ``pid_file``; return its id once that step runs."""
    job_id = submit(url, operations, dataset).json()["job_id"]
    localstack.wait_until(lambda: pids(pid_file), 30, f"job {job_id} starting")
    return job_id


def harvest_command(url, source, output, *options):
    """``harvester run`` of ``source`` to ``output`` against the gateway at ``url``, polling every 0.1 s."""
    return [
        HARVESTER,
        "run",
        str(source),
        "--gateway",
        url,
        "-o",
        str(output),
        "--poll-interval",
        "0.1",
        "--timeout",
        "60",
        *options,
    ]
