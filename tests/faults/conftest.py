"""Fault tests: real worker processes and a real gateway against a ``redis-server`` of their own.

Never the shared Redis at 6379: some tests stop theirs. The stacks load the
test-only operations of ``tests/faults/ops.py`` through ``OPERATION_MODULES``.

Two kinds of stack:

- :func:`shared_stack`: one of the stacks in :data:`SHARED`, each started once per
  session on a ``redis-server`` of its own, for the modules whose settings agree
  and which leave the stack as they found it (they may kill a pool process, which
  Celery replaces, never a whole worker, nor stop Redis). Each module gets it idle:
  nothing queued, nothing unacknowledged, every worker answering. Its Redis and
  its logs hold what the modules before it left: a test sharing one counts keys
  and log lines of its own jobs, or compares with a count taken before.
  Settings only the gateway reads (``API_TOKENS``, the ``MAX_*`` limits) can be
  given too: the module then gets a gateway of its own in front of the shared workers.
- :func:`start_stack`: a stack of the module's own, on the module's own
  ``redis-server`` (:func:`fault_redis`), for the modules that stop Redis, kill a
  whole worker, need a topology or worker settings of their own, or may leave
  the stack busy.

Test stacks are stopped quickly (``localstack.stop_quickly``): nothing in them is
needed once their tests are done.
"""

import contextlib
import shutil
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

import celeryconfig
import localstack

TEST_OPS = {"OPERATION_MODULES": "tests.faults.ops"}
HARVESTER = str(Path(sys.executable).parent / "harvester")
QUEUE = celeryconfig.task_default_queue

#: Seconds a running step may go on after a cancel on the ``serial`` stack (test_cancel.py).
CANCEL_GRACE = 3
#: Rows per chunk on the ``serial`` stack (test_storage_full.py, test_dashboard.py).
SERIAL_CHUNK_ROWS = 1000

#: The shared stacks: ``(workers, concurrency, settings)``.
SHARED = {
    # One worker process, one job at a time, FIFO.
    "serial": (1, 1, {"CANCEL_GRACE_SECONDS": str(CANCEL_GRACE), "CHUNK_ROWS": str(SERIAL_CHUNK_ROWS)}),
    # One worker with two processes (this machine has 2 cores).
    "pair": (1, 2, {}),
}

#: Settings only the gateway reads: a module may set them on a shared stack (a gateway of its own).
GATEWAY_ONLY = {
    "API_TOKENS",
    "MAX_ACTIVE_JOBS_PER_TOKEN",
    "MAX_CONTENT_LENGTH",
    "MAX_RECORDS",
    "MAX_OPERATIONS",
    "MAX_STRING_LENGTH",
    "MAX_JSON_DEPTH",
    "ORPHAN_SECONDS",  # stamped on each job by the gateway that records it (test_orphans.py)
    "TEST_DIE_BEFORE_SEND",
}


#: Why a fault test that needs a ``redis-server`` of its own errors where there is none.
NO_REDIS_SERVER = (
    "The fault tests start redis-servers of their own, and there is no redis-server on the PATH: "
    "install it (apt-get install redis-server) and run them again."
)


def require_redis_server():
    """Error the calling test (from a fixture) when there is no ``redis-server`` to start.

    An error, never a skip: a run without one must not pass for a run of the guarantees. Fault tests
    that start nothing run as usual.
    """
    if shutil.which("redis-server") is None:
        pytest.fail(NO_REDIS_SERVER, pytrace=False)


@pytest.fixture(scope="module")
def fault_redis():
    """URL of a redis-server started for this test module."""
    require_redis_server()
    with localstack.redis_server() as url:
        yield url


@pytest.fixture(scope="module")
def start_stack(fault_redis, tmp_path_factory):
    """Start a gateway and workers with given settings; everything started is stopped after the module."""
    with contextlib.ExitStack() as started:

        def start(workers=1, concurrency=1, **env):
            log_dir = tmp_path_factory.mktemp("logs")
            return started.enter_context(
                localstack.running(fault_redis, workers, concurrency, log_dir, {**TEST_OPS, **env}, quick_stop=True)
            )

        yield start


@pytest.fixture(scope="session")
def shared_stacks(tmp_path_factory):
    """``get(name)``: the shared stack ``name`` of :data:`SHARED`, started (with its Redis) on first use."""
    with contextlib.ExitStack() as started:
        stacks = {}

        def get(name):
            if name not in stacks:
                workers, concurrency, env = SHARED[name]
                url = started.enter_context(localstack.redis_server())
                log_dir = tmp_path_factory.mktemp(f"shared-{name}-logs")
                stacks[name] = started.enter_context(
                    localstack.running(url, workers, concurrency, log_dir, {**TEST_OPS, **env}, quick_stop=True)
                )
            return stacks[name]

        yield get


def idle(stack, timeout=60):
    """``stack`` once nothing is queued or unacknowledged in its Redis, its processes all running."""
    procs = [stack.gateway, *stack.workers]
    assert all(proc.poll() is None for proc in procs), "a module before stopped a process of a shared stack"
    client = redis.Redis.from_url(stack.redis_url)
    localstack.wait_until(
        lambda: client.llen(QUEUE) == 0 and client.hlen("unacked") == 0, timeout, "the shared stack going idle"
    )
    return stack


@contextlib.contextmanager
def own_gateway(shared, log_dir, env):
    """A :class:`localstack.Stack` of a gateway of its own with settings ``env`` before ``shared``'s workers.

    Its ``workers`` are ``shared``'s, borrowed (stopped with ``shared``, not here); its logs are the gateway's.
    """
    view = localstack.Stack(shared.redis_url, log_dir, {**shared.extra_env, **env})
    view.workers = shared.workers
    view.gateway = localstack.start_gateway(shared.redis_url, view.port, view.log_dir / "gateway.log", view.extra_env)
    try:
        view.wait_for_workers(len(shared.workers))
        yield view
    finally:
        localstack.stop_quickly(view.gateway, [])


@pytest.fixture(scope="module")
def shared_stack(shared_stacks, tmp_path_factory):
    """``get(name, **gateway_settings)``: the shared stack ``name``, idle, with a gateway of the module's own
    if ``gateway_settings`` (only :data:`GATEWAY_ONLY` ones) are given."""
    require_redis_server()
    with contextlib.ExitStack() as started:

        def get(name, **gateway_env):
            assert set(gateway_env) <= GATEWAY_ONLY, f"not gateway-only settings: {set(gateway_env) - GATEWAY_ONLY}"
            stack = idle(shared_stacks(name))
            if not gateway_env:
                return stack
            return started.enter_context(own_gateway(stack, tmp_path_factory.mktemp("logs"), gateway_env))

        yield get


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
