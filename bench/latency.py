"""Latency, throughput and the CPU cost of one-record jobs under a closed loop, for ``make bench`` (issue 8).

N client threads (1, then 8), each with a ``requests.Session`` of its own, run one-record jobs
(:data:`bench.workload.LATENCY_DATASET`, :data:`~bench.workload.LATENCY_OPERATIONS`) back to back for
a fixed time after a short warm-up. The loop (:func:`closed_loop`) is the same for both systems; only
the callable that runs one job differs:

- datajobs (:func:`datajobs_job`): ``POST /jobs?wait=10``; on a 202, ``GET /jobs/<id>?wait=10`` (with
  ``If-None-Match`` of the last ``ETag`` seen) until the job has ended;
- the naive Flask+Celery app (:func:`naive_job`, ``bench/naive.py``): ``POST /jobs``, then
  ``GET /jobs/<id>`` every 10 ms until ``SUCCESS`` or ``FAILURE``.

Each system runs on a ``redis-server`` of its own (``localstack.redis_server``), alone on the machine,
one after the other: datajobs with ``localstack.running`` (1 worker of concurrency 2, the gateway as in
production: gunicorn with the repository's ``gunicorn.conf.py``), the naive app with a worker of
concurrency 2 and gunicorn with 2 processes of 4 threads (``naive.GUNICORN_MODEL``). Over the measured
window the CPU time (user + system) of each system's processes (gateway, worker, Redis) is sampled
(:class:`bench.memory.PeakSampler`), giving CPU-ms per job.

Then, against the datajobs stack (:func:`submit_with_waiters`): with its worker paused (SIGSTOP to its
process group) so a job stays queued, 1,000 raw sockets each wait on that job (``GET /jobs/<id>?wait=50``
with ``If-None-Match`` of its ETag), and 20 submissions are timed one after another, beside 20 with no
waiters held. Figures are printed, never asserted.
"""

import contextlib
import datetime
import http.client
import json
import os
import resource
import selectors
import signal
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import redis
import requests

import localstack
from bench import memory, naive, workload
from bench.report import ms

#: Client threads of each configuration, in the order they are run.
CLIENTS = (1, 8)
#: ``?wait=`` of the datajobs client's POST and GET, in seconds.
WAIT_SECONDS = 10
#: Seconds between two polls of the naive client.
NAIVE_POLL = 0.01
#: Seconds one job may take before its client gives up on it (an error).
JOB_TIMEOUT = 30
#: Raw-socket waiters held open while submissions are timed, their ``?wait=``, and the submissions timed.
WAITERS = 1000
WAITER_SECONDS = 50
SUBMISSIONS = 20
#: What "ended" is in each system.
DATAJOBS_ENDED = frozenset({"completed", "failed", "cancelled"})
NAIVE_ENDED = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
#: The goals of issue 8.
GOAL_P50 = 0.5  # datajobs' p50 with 1 client at most this share of the naive app's
GOAL_THROUGHPUT = 2.0  # datajobs' jobs/s with 8 clients at least this multiple of the naive app's


class JobFailed(Exception):
    """A job ended without the expected records, or an answer was not what the protocol says."""


def _body():
    return {"dataset": workload.LATENCY_DATASET, "operations": workload.LATENCY_OPERATIONS}


# --- one job, per system: run(session) -> HTTP requests it took ----------------------------


def datajobs_job(base_url, wait=WAIT_SECONDS):
    """Run one job through datajobs: ``POST ?wait=``, then ``GET ?wait=`` with If-None-Match until it ends.

    ``run.seen_after_end`` collects, per job, the seconds from its ``finished_at`` (the worker's clock,
    the same machine's) to the client holding the answer: how late a waiter learns of the end.
    """
    body = _body()
    seen_after_end = []

    def run(session):
        deadline = time.monotonic() + JOB_TIMEOUT
        response = session.post(f"{base_url}/jobs", params={"wait": wait}, json=body, timeout=wait + JOB_TIMEOUT)
        made = 1
        if response.status_code == 200:
            job = response.json()
        elif response.status_code == 202:
            job_id, etag, job = response.json()["job_id"], None, None
            while job is None or job["status"] not in DATAJOBS_ENDED:
                if time.monotonic() > deadline:
                    raise JobFailed(f"job {job_id} had not ended after {JOB_TIMEOUT} s")
                headers = {"If-None-Match": etag} if etag else {}
                response = session.get(
                    f"{base_url}/jobs/{job_id}", params={"wait": wait}, headers=headers, timeout=wait + JOB_TIMEOUT
                )
                made += 1
                if response.status_code == 304:
                    continue
                if response.status_code != 200:
                    raise JobFailed(f"GET /jobs/{job_id} answered {response.status_code}: {response.text[:200]}")
                etag, job = response.headers.get("ETag"), response.json()
        else:
            raise JobFailed(f"POST /jobs answered {response.status_code}: {response.text[:200]}")
        seen = datetime.datetime.now(datetime.timezone.utc)
        if job["status"] != "completed":
            raise JobFailed(f"job {job['job_id']} {job['status']}: {job.get('error')}")
        if job["data"]["data"] != workload.LATENCY_DATASET:
            raise JobFailed(f"job {job['job_id']} returned {job['data']['data']!r}")
        finished = datetime.datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00"))
        seen_after_end.append((seen - finished).total_seconds())
        return made

    run.seen_after_end = seen_after_end
    return run


def naive_job(base_url, poll=NAIVE_POLL):
    """Run one job through the naive app: ``POST /jobs``, then ``GET /jobs/<id>`` every ``poll`` s until it ends."""
    body = _body()

    def run(session):
        deadline = time.monotonic() + JOB_TIMEOUT
        response = session.post(f"{base_url}/jobs", json=body, timeout=JOB_TIMEOUT)
        if response.status_code != 202:
            raise JobFailed(f"POST /jobs answered {response.status_code}: {response.text[:200]}")
        job_id, made = response.json()["job_id"], 1
        while True:
            response = session.get(f"{base_url}/jobs/{job_id}", timeout=JOB_TIMEOUT)
            made += 1
            if response.status_code != 200:
                raise JobFailed(f"GET /jobs/{job_id} answered {response.status_code}: {response.text[:200]}")
            job = response.json()
            if job["state"] in NAIVE_ENDED:
                break
            if time.monotonic() > deadline:
                raise JobFailed(f"job {job_id} still {job['state']} after {JOB_TIMEOUT} s")
            time.sleep(poll)
        if job["state"] != "SUCCESS":
            raise JobFailed(f"job {job_id} {job['state']}: {job.get('error')}")
        if job["result"] != workload.LATENCY_DATASET:
            raise JobFailed(f"job {job_id} returned {job['result']!r}")
        return made

    return run


# --- the closed loop ---------------------------------------------------------------------


@dataclass
class LoopResult:
    """What one closed-loop run measured over its window."""

    clients: int
    seconds: float  # the measured window
    latencies: list = field(default_factory=list)  # seconds of each job that ended in the window
    requests: list = field(default_factory=list)  # HTTP requests each of those jobs took
    errors: list = field(default_factory=list)  # "Type: message" of each job that failed in the window
    cpu: dict = field(default_factory=dict)  # process set -> CPU seconds in the window
    client_cpu: float = 0.0  # CPU seconds of this process (the clients and the sampler) in the window
    redis_calls: dict = field(default_factory=dict)  # Redis command -> calls in the window (INFO commandstats)
    warmup_jobs: int = 0

    @property
    def jobs(self):
        return len(self.latencies)

    @property
    def per_second(self):
        return self.jobs / self.seconds

    def percentile(self, q):
        return float(np.percentile(self.latencies, q)) if self.latencies else None

    def redis_calls_per_job(self, command=None):
        calls = sum(self.redis_calls.values()) if command is None else self.redis_calls.get(command, 0)
        return calls / self.jobs if self.jobs else None

    def cpu_ms_per_job(self, name):
        seconds = self.client_cpu if name == "client" else self.cpu[name]
        return seconds * 1000 / self.jobs if self.jobs else None


def redis_calls(redis_url):
    """Calls of each command the Redis at ``redis_url`` has served since it started (``INFO commandstats``)."""
    client = redis.Redis.from_url(redis_url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): entry["calls"] for name, entry in stats.items()}


def closed_loop(run_one, clients, seconds, warmup, finders, redis_url=None):
    """``clients`` threads run ``run_one(session)`` back to back for ``warmup`` + ``seconds`` seconds.

    A job counts when it ends inside the measured window (the last ``seconds``); the CPU of the
    process sets of ``finders`` (see :class:`bench.memory.PeakSampler`) is sampled over that window,
    and so are the commands of the Redis at ``redis_url`` (if given; the two INFO calls included).
    A job that raises is an error; its client pauses 0.1 s before the next, so a broken system
    cannot turn the loop into a busy one.
    """
    stop = threading.Event()
    records = []  # (started, ended, requests, error): list.append is atomic

    def client():
        with requests.Session() as session:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    made, error = run_one(session), None
                except Exception as exc:  # noqa: BLE001 - any failure is a figure, not a crash of the benchmark
                    made, error = None, f"{type(exc).__name__}: {exc}"
                records.append((started, time.perf_counter(), made, error))
                if error:
                    stop.wait(0.1)

    threads = [threading.Thread(target=client, name=f"bench-client-{i}", daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    with memory.PeakSampler(finders) as sampler:
        calls_before = redis_calls(redis_url) if redis_url else {}
        window_starts, cpu_starts = time.perf_counter(), time.process_time()
        time.sleep(seconds)
        window_ends, cpu_ends = time.perf_counter(), time.process_time()
        calls_after = redis_calls(redis_url) if redis_url else {}
    stop.set()
    for thread in threads:
        thread.join(WAIT_SECONDS + JOB_TIMEOUT + 10)
    result = LoopResult(clients, window_ends - window_starts, client_cpu=cpu_ends - cpu_starts)
    result.cpu = {name: sampler.cpu_seconds(name) for name in finders}
    result.redis_calls = {
        name: calls - calls_before.get(name, 0) for name, calls in calls_after.items() if calls > calls_before.get(name, 0)
    }
    for started, ended, made, error in records:
        if ended < window_starts:
            result.warmup_jobs += 1
        elif ended < window_ends:
            if error:
                result.errors.append(error)
            else:
                result.latencies.append(ended - started)
                result.requests.append(made)
    return result


# --- the two systems, each on a Redis of its own ----------------------------------------


def _redis_pid(redis_url):
    return memory.redis_memory(redis_url)["pid"]


def measure_datajobs(seconds, warmup, log_dir, progress, waiters=WAITERS):
    """Both client counts against datajobs, then the submissions with ``waiters`` held; returns figures."""
    with localstack.redis_server() as redis_url, localstack.running(
        redis_url, workers=1, concurrency=2, log_dir=log_dir
    ) as stack:
        redis_info = memory.redis_memory(redis_url)
        finders = {
            "gateway": memory.process_tree(stack.gateway.pid),
            "worker": memory.process_group(stack.workers[0].pid),
            "redis": lambda table, pid=redis_info["pid"]: [pid],
        }
        loops, seen_after_end = {}, {}
        for clients in CLIENTS:
            progress(f"latency: datajobs, {clients} client(s), {warmup:g} s warm-up + {seconds:g} s")
            run = datajobs_job(stack.url)
            loops[clients] = closed_loop(run, clients, seconds, warmup, finders, redis_url)
            seen_after_end[clients] = run.seen_after_end
        progress(f"latency: datajobs, {SUBMISSIONS} submissions with no waiters, then with {waiters:,} waiters held")
        held = submit_with_waiters(stack, waiters)
    return {"loops": loops, "waiters": held, "redis_version": redis_info["version"], "seen_after_end": seen_after_end}


def measure_naive(seconds, warmup, log_dir, progress):
    """Both client counts against the naive app (worker concurrency 2, gunicorn gthread); returns figures."""
    with localstack.redis_server() as redis_url, naive.running(redis_url, log_dir, concurrency=2) as stack:
        redis_info = memory.redis_memory(redis_url)
        finders = {
            "gateway": memory.process_tree(stack.gateway.pid),
            "worker": memory.process_tree(stack.worker.pid),
            "redis": lambda table, pid=redis_info["pid"]: [pid],
        }
        loops = {}
        for clients in CLIENTS:
            progress(f"latency: naive, {clients} client(s), {warmup:g} s warm-up + {seconds:g} s")
            loops[clients] = closed_loop(naive_job(stack.url), clients, seconds, warmup, finders, redis_url)
    return {"loops": loops, "redis_version": redis_info["version"]}


def raise_open_files(needed):
    """Raise this process's soft RLIMIT_NOFILE to its hard limit if it is under ``needed`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(seconds, warmup, log_dir, progress, waiters=WAITERS):
    """The whole section: datajobs, then the naive app, each alone; returns the figures."""
    log_dir = Path(log_dir)
    limit = raise_open_files(waiters + 1024)  # before the stacks start: their gateways inherit it
    figures = {"seconds": seconds, "warmup": warmup, "open_files": limit}
    figures["datajobs"] = measure_datajobs(seconds, warmup, log_dir / "latency-datajobs", progress, waiters)
    figures["naive"] = measure_naive(seconds, warmup, log_dir / "latency-naive", progress)
    return figures


# --- submissions while waiters are held ----------------------------------------------------


def open_waiter(port, job_id, etag, seconds):
    """Send ``GET /jobs/<id>?wait=`` with ``If-None-Match`` on a socket of its own, not reading the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(
        f"GET /jobs/{job_id}?wait={seconds} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"If-None-Match: {etag}\r\nConnection: close\r\n\r\n".encode()
    )
    return sock


def accepted(stack):
    """Connections the gateway's processes hold, established, on its port."""
    return sum(
        1
        for process in psutil.Process(stack.gateway.pid).children()
        for conn in process.net_connections(kind="tcp")
        if conn.laddr.port == stack.port and conn.status == psutil.CONN_ESTABLISHED
    )


def gateway_rss_kb(stack):
    """Resident memory of the gateway's processes (master and workers) added up, in kB."""
    root = psutil.Process(stack.gateway.pid)
    return sum(process.memory_info().rss for process in [root, *root.children()]) // 1024


def _submit_many(session, url, count):
    """Time ``count`` ``POST /jobs`` (no wait) one after another; return (seconds, job ids, errors)."""
    seconds, job_ids, errors = [], [], []
    for _ in range(count):
        started = time.perf_counter()
        try:
            response = session.post(f"{url}/jobs", json=_body(), timeout=JOB_TIMEOUT)
        except requests.RequestException as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        took = time.perf_counter() - started
        if response.status_code != 202:
            errors.append(f"POST /jobs answered {response.status_code}: {response.text[:200]}")
            continue
        seconds.append(took)
        job_ids.append(response.json()["job_id"])
    return seconds, job_ids, errors


def _signal_workers(stack, sig):
    for worker in stack.workers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, sig)  # the worker and its pool: a session of their own (localstack)


def submit_with_waiters(stack, waiters=WAITERS, submissions=SUBMISSIONS):
    """Submission latency with no waiters, then with ``waiters`` raw-socket waiters held on a queued job.

    The worker is paused (SIGSTOP) throughout, so every job stays queued and the waiters' job never
    changes; afterwards the jobs are cancelled (the cancel wakes every waiter, whose answers are read
    and timed) and the worker is resumed.
    """
    figures = {"waiters": waiters, "errors": []}
    socks = []
    with requests.Session() as session:
        _signal_workers(stack, signal.SIGSTOP)
        try:
            job_id = session.post(f"{stack.url}/jobs", json=_body(), timeout=JOB_TIMEOUT).json()["job_id"]
            etag = session.get(f"{stack.url}/jobs/{job_id}", timeout=JOB_TIMEOUT).headers["ETag"]
            figures["rss_before_kb"] = gateway_rss_kb(stack)
            figures["alone"], ids, errors = _submit_many(session, stack.url, submissions)
            figures["errors"] += errors
            opened = time.perf_counter()
            for _ in range(waiters):
                socks.append(open_waiter(stack.port, job_id, etag, WAITER_SECONDS))
            localstack.wait_until(lambda: accepted(stack) >= waiters, 60, f"the gateway holding {waiters} waiters")
            figures["open_seconds"] = time.perf_counter() - opened
            figures["rss_held_kb"] = gateway_rss_kb(stack)
            figures["held"], more_ids, errors = _submit_many(session, stack.url, submissions)
            figures["errors"] += errors
            ids += more_ids
            with selectors.DefaultSelector() as selector:
                for sock in socks:
                    selector.register(sock, selectors.EVENT_READ)
                figures["answered_early"] = len(selector.select(timeout=0))  # should be 0: all still waiting
            cancelled = time.perf_counter()
            session.delete(f"{stack.url}/jobs/{job_id}", timeout=JOB_TIMEOUT)
            statuses = {}
            for sock in socks:
                response = http.client.HTTPResponse(sock)
                response.begin()
                response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            figures["woken_seconds"] = time.perf_counter() - cancelled
            figures["woken_statuses"] = statuses
            for other in ids:  # queued: cancelled before the worker ever sees them
                session.delete(f"{stack.url}/jobs/{other}", timeout=JOB_TIMEOUT)
        except (OSError, requests.RequestException, TimeoutError, KeyError, ValueError, http.client.HTTPException) as exc:
            figures["errors"].append(f"{type(exc).__name__}: {exc}")
        finally:
            for sock in socks:
                sock.close()
            _signal_workers(stack, signal.SIGCONT)
    return figures


# --- the report ---------------------------------------------------------------------------


def _ms(value):
    return ms(value) if value is not None else "n/a"


def _cpu(value):
    return f"{value:.2f}" if value is not None else "n/a"


def _met(value, goal, at_most):
    if value is None:
        return "n/a"
    return "**met**" if (value <= goal if at_most else value >= goal) else "**not met**"


def tables(f):
    """The section's tables as (header, rows) pairs: per configuration, the goals, the waiters."""
    columns = [(system, clients) for clients in CLIENTS for system in ("datajobs", "naive")]
    loop = lambda system, clients: f[system]["loops"][clients]  # noqa: E731
    header = [f"one-record jobs, closed loop, {f['seconds']:g} s"]
    header += [f"{'datajobs' if s == 'datajobs' else 'naive'}, {c} client{'s' if c > 1 else ''}" for s, c in columns]
    rows = [
        ["p50 (submit → seen ended)", *(_ms(loop(s, c).percentile(50)) for s, c in columns)],
        ["p95", *(_ms(loop(s, c).percentile(95)) for s, c in columns)],
        ["jobs/s", *(f"{loop(s, c).per_second:.1f}" for s, c in columns)],
        ["jobs (errors)", *(f"{loop(s, c).jobs} ({len(loop(s, c).errors)})" for s, c in columns)],
        ["HTTP requests per job", *(
            f"{statistics.fmean(loop(s, c).requests):.1f}" if loop(s, c).requests else "n/a" for s, c in columns
        )],
    ]
    per_job = lambda value: f"{value:.1f}" if value is not None else "n/a"  # noqa: E731
    rows.append(["Redis commands per job", *(per_job(loop(s, c).redis_calls_per_job()) for s, c in columns)])
    rows.append(["of which PUBLISH", *(per_job(loop(s, c).redis_calls_per_job("publish")) for s, c in columns)])
    for name, label in (("gateway", "CPU-ms per job: gateway"), ("worker", "worker"), ("redis", "Redis"),
                        ("client", "clients (this process)")):  # fmt: skip
        rows.append([label, *(_cpu(loop(s, c).cpu_ms_per_job(name)) for s, c in columns)])
    rows.append(["CPU-ms per job: gateway + worker + Redis", *(
        _cpu(sum(loop(s, c).cpu_ms_per_job(n) for n in ("gateway", "worker", "redis")) if loop(s, c).jobs else None)
        for s, c in columns
    )])

    p50 = [loop(s, 1).percentile(50) for s in ("datajobs", "naive")]
    rate = [loop(s, 8).per_second if 8 in f[s]["loops"] else None for s in ("datajobs", "naive")]
    p50_ratio = p50[0] / p50[1] if None not in p50 and p50[1] else None
    rate_ratio = rate[0] / rate[1] if None not in rate and rate[1] else None
    goals_header = ["issue 8 goal", "datajobs", "naive", "datajobs / naive", "goal", ""]
    goals = [
        ["p50, 1 client", _ms(p50[0]), _ms(p50[1]), f"{p50_ratio:.2f}×" if p50_ratio else "n/a", f"≤ {GOAL_P50}×",
         _met(p50_ratio, GOAL_P50, at_most=True)],
        ["jobs/s, 8 clients", f"{rate[0]:.1f}", f"{rate[1]:.1f}", f"{rate_ratio:.2f}×" if rate_ratio else "n/a",
         f"≥ {GOAL_THROUGHPUT:g}×", _met(rate_ratio, GOAL_THROUGHPUT, at_most=False)],
    ]  # fmt: skip

    w = f["datajobs"]["waiters"]
    waiters_header = [f"submission (`POST /jobs`, 202), worker paused, {SUBMISSIONS} in a row", "p50", "max"]
    waiters_rows = []
    for key, label in (("alone", "no waiters"), ("held", f"{w['waiters']:,} waiters held")):
        done = w.get(key) or []
        waiters_rows.append([label, _ms(statistics.median(done)) if done else "n/a", _ms(max(done)) if done else "n/a"])
    return [(header, rows), (goals_header, goals), (waiters_header, waiters_rows)]


def notes(f):
    w = f["datajobs"]["waiters"]
    dj1 = f["datajobs"]["loops"][1]
    notes = [
        f"Closed loop: 1 and 8 client threads in one process, each with its own `requests.Session`, running "
        f"one-record jobs back to back (dataset `{json.dumps(workload.LATENCY_DATASET)}`, operations "
        f"`{json.dumps(workload.LATENCY_OPERATIONS)}`) for {f['warmup']:g} s of warm-up, then {f['seconds']:g} s measured; a job "
        "counts when it ends in the measured window. Latency is from the submit to the client seeing the job ended "
        "(its records checked). The same loop for both systems; only the job differs: datajobs `POST /jobs?wait=10`, "
        "then on a 202 `GET /jobs/<id>?wait=10` with If-None-Match of the last ETag until it has ended; naive "
        f"`POST /jobs`, then `GET /jobs/<id>` every {NAIVE_POLL * 1000:g} ms until SUCCESS or FAILURE.",
        "Setup: each system on a `redis-server` of its own, alone on the machine, datajobs first. datajobs: "
        "`localstack.running` (1 worker, concurrency 2; the gateway under gunicorn with the repository's "
        "`gunicorn.conf.py`: 2 processes, gevent). naive (`bench/naive.py`): 1 worker, concurrency 2, and gunicorn "
        "with 2 processes of `--worker-class gthread --threads 4` given on its command line with an empty config "
        "file: the model it had from `gunicorn.conf.py` (`threads = 4`) before that file moved to gevent, now fixed "
        "so its figures do not move when `gunicorn.conf.py` does.",
        "CPU-ms per job: CPU time (user + system, from `/proc`, sampled every 0.2 s) of the gateway's processes "
        "(gunicorn master and workers), the worker's (Celery and its pool) and Redis's over the measured window, "
        "over the jobs that ended in it. The clients' line is this whole process (the client threads, and the "
        "sampler's `/proc` reads). Redis commands per job: `INFO commandstats` at both ends of the window.",
        f"Waiters: the datajobs worker is paused (SIGSTOP to its process group) so a job stays queued; "
        f"{w['waiters']:,} raw sockets each send `GET /jobs/<id>?wait={WAITER_SECONDS}` with If-None-Match of its "
        f"ETag, and once the gateway's processes hold them all (psutil), {SUBMISSIONS} submissions are timed one "
        "after another (plain `POST /jobs`, 202), beside as many with no waiters held, on the same stack.",
    ]
    if "woken_seconds" in w:
        notes.append(
            f"The waiters took {w['open_seconds']:.2f} s to open and be held; the gateway's RSS went from "
            f"{w['rss_before_kb'] / 1024:,.0f} MB to {w['rss_held_kb'] / 1024:,.0f} MB (master and workers added "
            f"up); {w['answered_early']} answered before their job changed; the cancel woke all of them in "
            f"{w['woken_seconds']:.2f} s (answers {', '.join(f'{n}× {s}' for s, n in sorted(w['woken_statuses'].items()))})."
        )
    for system in ("datajobs", "naive"):
        one = f[system]["loops"][1]
        if one.redis_calls and one.jobs:
            top = sorted(one.redis_calls.items(), key=lambda item: -item[1])[:8]
            notes.append(f"{system}, 1 client, Redis commands per job (the most called): "
                         + ", ".join(f"{name} {calls / one.jobs:.1f}" for name, calls in top) + ".")
    if dj1.requests:
        one = sum(1 for made in dj1.requests if made == 1) / len(dj1.requests)
        notes.append(f"datajobs, 1 client: {one:.0%} of the jobs were answered by the `POST ?wait=` alone (200).")
    for clients, late in sorted(f["datajobs"].get("seen_after_end", {}).items()):
        if late:
            p50, p95 = np.percentile(late, [50, 95])
            notes.append(f"datajobs, {clients} client(s): a waiter held the answer {ms(p50)} (p50), {ms(p95)} (p95), "
                         f"{ms(max(late))} (max) after the job's `finished_at` (the worker's clock, this machine's).")
    return notes


def warnings(f):
    found = []
    for system in ("datajobs", "naive"):
        for clients, loop in f[system]["loops"].items():
            if loop.errors:
                found.append(f"{system}, {clients} client(s): {len(loop.errors)} failed job(s), first: {loop.errors[0]}")
    w = f["datajobs"]["waiters"]
    for error in w["errors"][:5]:
        found.append(f"waiters: {error}")
    if w.get("answered_early"):
        found.append(f"waiters: {w['answered_early']} waiter(s) answered before their job changed")
    statuses = w.get("woken_statuses") or {}
    if set(statuses) - {200}:
        found.append(f"waiters: answers after the cancel {statuses}")
    return found


def section(f):
    """``(tables, notes, warnings)`` for ``bench/run.py``'s report."""
    return tables(f), notes(f), warnings(f)
