"""Run the whole datajobs stack on one machine, for ``make demo`` and the integration tests.

It finds a Redis (the one at ``REDIS_URL`` if it answers, else a ``redis-server``
it starts, else an embedded Redis-protocol server from fakeredis), then starts a
Celery worker and the gateway as real processes, exactly as the README starts
them, and stops everything it started.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
import requests

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_answers(url, timeout=0.5):
    """True when a Redis at ``url`` answers PING within ``timeout`` seconds."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except (redis.exceptions.RedisError, OSError):
        return False


def wait_until(predicate, timeout, what, interval=0.1):
    """Call ``predicate`` until it is true; raise ``TimeoutError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} did not happen within {timeout} s")


def redis_server_args(port, data_dir=None):
    """Arguments for a ``redis-server`` on 127.0.0.1:``port``: in memory, or with an fsync'ed AOF in ``data_dir``."""
    args = [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    if data_dir is None:
        return args + ["--appendonly", "no"]
    # As the compose file runs it: AOF, and refuse writes rather than evict keys when full.
    return args + ["--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "always",
                   "--maxmemory-policy", "noeviction"]


def start_redis(port, data_dir=None):
    """Start ``redis-server`` on ``port``; return the process once it answers."""
    proc = subprocess.Popen(redis_server_args(port, data_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: redis_answers(url), 10, f"redis-server on port {port} answering")
    except TimeoutError:
        stop(proc)
        raise
    return proc


@contextlib.contextmanager
def redis_server(port=None, data_dir=None):
    """Start a throwaway ``redis-server`` on 127.0.0.1 (no persistence unless ``data_dir``); yield its URL."""
    port = port or free_port()
    proc = start_redis(port, data_dir)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


@contextlib.contextmanager
def embedded_redis(port=None):
    """Serve the Redis protocol from fakeredis (``fakeredis[lua]``) in a thread; yield its URL."""
    from fakeredis import TcpFakeServer

    port = port or free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def any_redis(url):
    """Yield ``(url, how)``: the Redis at ``url`` if it answers, else one started here."""
    if redis_answers(url):
        yield url, f"using the Redis at {url}"
    elif shutil.which("redis-server"):
        with redis_server() as started:
            yield started, f"no Redis at {url}; started redis-server at {started}"
    else:
        with embedded_redis() as started:
            yield started, f"no Redis at {url} and no redis-server installed; started the embedded fakeredis server at {started}"


def _env(redis_url, extra=None):
    env = dict(os.environ)
    env.update({"REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"})
    env.pop("CELERY_BROKER_URL", None)
    env.pop("CELERY_RESULT_BACKEND", None)
    env.update(extra or {})
    return env


def start_worker(redis_url, log_path, concurrency=2, extra_env=None, name=None):
    """Start ``celery -A workers worker`` as the README does; return the process."""
    args = [str(BIN / "celery"), "-A", "workers", "worker", "--loglevel", "INFO", "--concurrency", str(concurrency)]
    args += ["--hostname", f"{name or 'worker'}-{os.getpid()}-{free_port()}@%h", "--without-mingle", "--without-gossip"]
    env = _env(redis_url, extra_env)
    if env.get("LOG_FORMAT") == "json":
        args.insert(1, "--quiet")  # `celery --quiet`: the startup banner is printed, not logged; keep to JSON lines
    # A session of its own, so a test can kill the worker and its pool processes at once, as a lost host.
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def start_gateway(redis_url, port, log_path, extra_env=None):
    """Start the gateway under gunicorn, as in production; return the process."""
    args = [str(BIN / "gunicorn"), "app:create_app()", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    return subprocess.Popen(
        args, cwd=ROOT, env=_env(redis_url, extra_env), stdout=open(log_path, "ab"), stderr=subprocess.STDOUT
    )


def live_workers(gateway_url):
    """Number of workers the gateway's ``/health`` reports, or -1 when it does not answer."""
    try:
        return requests.get(f"{gateway_url}/health", timeout=5).json().get("workers", -1)
    except (requests.RequestException, ValueError):
        return -1


def stop(*procs, timeout=15, sig=signal.SIGTERM):
    """Stop ``procs`` gracefully (SIGTERM to all, then wait for each), killing any that linger.

    ``sig`` is the signal sent first (see :func:`stop_quickly` for a test's stack).
    """
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(sig)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill_session(proc):
    """SIGKILL ``proc`` and every process left in the session it leads (a worker's pool processes)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stop_quickly(gateway, workers, timeout=5):
    """Stop a stack whose state nobody needs any more (a test's), without waiting for a warm shutdown.

    The gateway gets SIGINT (gunicorn's quick shutdown: under a second, where SIGTERM waits out its
    workers); each worker's session (the worker and its pool processes, see :func:`start_worker`) is
    killed at once, as a lost host would be: Celery's warm shutdown takes seconds, and even its cold one
    (SIGQUIT) over a second, and a test's jobs need not be given back to a queue nobody reads again.
    """
    if gateway is not None and gateway.poll() is None:
        gateway.send_signal(signal.SIGINT)
    for worker in workers:
        kill_session(worker)
    if gateway is not None:
        stop(gateway, timeout=timeout)


#: The log folders of every stack started in this process, for :func:`log_sizes` and :func:`logs_since`.
LOG_DIRS = []


def log_sizes():
    """The size of every log file of the stacks started so far: where each one's next line will begin."""
    return {path: path.stat().st_size for folder in LOG_DIRS for path in folder.glob("*.log")}


def logs_since(sizes, max_lines=120):
    """What the stacks' processes logged after :func:`log_sizes` gave ``sizes``: each file's last ``max_lines``
    new lines, under its path."""
    parts = []
    for path, size in log_sizes().items():
        start = sizes.get(path, 0)
        if size > start:
            with path.open("rb") as log:
                log.seek(start)
                lines = log.read(size - start).decode(errors="replace").splitlines()
            parts.append(f"== {path} ==\n" + "\n".join(lines[-max_lines:]))
    return "\n".join(parts)


class Stack:
    """A running gateway and its worker processes (see :func:`running`)."""

    def __init__(self, redis_url, log_dir, extra_env=None):
        self.redis_url, self.log_dir, self.extra_env = redis_url, Path(log_dir), extra_env
        LOG_DIRS.append(self.log_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers, self.gateway = [], None

    def add_worker(self, concurrency=2, extra_env=None):
        """Start one more worker process (it answers the gateway's ping soon after)."""
        name = f"worker{len(self.workers)}"
        env = {**(self.extra_env or {}), **(extra_env or {})}
        proc = start_worker(self.redis_url, self.log_dir / f"{name}.log", concurrency, env, name=name)
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, count, timeout=60):
        wait_until(lambda: live_workers(self.url) >= count, timeout, f"{count} worker(s) answering the gateway")

    def logs(self):
        """Everything the processes have logged so far, as one text."""
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.log_dir.glob("*.log")))

    def stop(self, quick=False):
        """Stop the gateway and the workers: gracefully (Celery's warm shutdown), or ``quick``ly
        (:func:`stop_quickly`: for a test's stack, whose jobs and state nobody needs afterwards)."""
        if quick:
            stop_quickly(self.gateway, self.workers)
        else:
            stop(*[proc for proc in [self.gateway, *self.workers] if proc is not None])


@contextlib.contextmanager
def running(redis_url, workers=1, concurrency=2, log_dir=None, extra_env=None, quick_stop=False):
    """Start worker(s) and a gateway against ``redis_url``; yield the :class:`Stack` once the workers answer.

    On leaving, the stack is stopped gracefully, or with ``quick_stop`` at once (see :meth:`Stack.stop`).
    """
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="datajobs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    running_stack = Stack(redis_url, log_dir, extra_env)
    try:
        for _ in range(workers):
            running_stack.add_worker(concurrency)
        running_stack.gateway = start_gateway(redis_url, running_stack.port, log_dir / "gateway.log", extra_env)
        running_stack.wait_for_workers(workers)
        yield running_stack
    finally:
        running_stack.stop(quick=quick_stop)


@contextlib.contextmanager
def stack(redis_url, workers=1, concurrency=2, log_dir=None, extra_env=None, quick_stop=False):
    """Start worker(s) and a gateway against ``redis_url``; yield the gateway URL once a worker answers."""
    with running(redis_url, workers, concurrency, log_dir, extra_env, quick_stop) as started:
        yield started.url
