"""The ceiling of issue 8's throughput goal: what this machine does per second with no job system at all.

The latency benchmark (``bench/latency.py``) compares datajobs with a naive Flask+Celery gateway. This
section measures, in the same closed loop (:func:`bench.latency.closed_loop`, 8 clients), what is left when
the job system is taken away (:data:`RUNS`), each on a ``redis-server`` of its own with a worker of
concurrency 2 (prefork, as both systems run it):

- Celery alone: each client thread, with a Celery app of its own, runs ``send_task("ceiling.echo",
  (records,)).get()`` back to back; the task only returns its argument (the one-record dataset of the
  latency runs). Twice: with the naive app's settings (``bench/naive.make_celery``), then with the delivery
  and event settings of ``celeryconfig.py`` (:data:`DATAJOBS_SETTINGS`: late acknowledgement, a prefetch of 1,
  task events for Flower);
- the least HTTP gateway in front of it (:func:`create_app`, under gunicorn as the naive app runs): a single
  ``POST /echo`` that sends the task and answers its result.

Then, one job after another in this process, the job protocol alone (:func:`protocol_job`): what a datajobs
job does to keep its guarantees, with no HTTP and no Celery. The report sets these beside twice the naive
gateway's jobs/s and the CPU a job may cost to reach it. Figures are printed, never asserted.
"""

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis
from flask import Flask, request

import celeryconfig
import localstack
from bench import latency, memory, naive, workload
from workers import chunks, datastore, frames
from workers.chunks import ChunkWriter
from workers.jobstore import JobStore, new_job_id

QUEUE = "ceiling"
#: The settings of ``celeryconfig.py`` that change what a task costs, taken from it (not copied).
DATAJOBS_SETTINGS = (
    "task_serializer", "result_serializer", "accept_content", "result_accept_content", "task_track_started",
    "task_acks_late", "task_reject_on_worker_lost", "worker_prefetch_multiplier", "worker_send_task_events",
    "task_send_sent_event",
)  # fmt: skip
CONFIGS = ("naive", "datajobs")


def make_celery(redis_url=None, config=None):
    """A Celery app on ``redis_url`` (default ``REDIS_URL``) with the ``config`` of :data:`CONFIGS`
    (default ``CEILING_CONFIG``, else ``naive``), routing to :data:`QUEUE`."""
    config = config or os.environ.get("CEILING_CONFIG", "naive")
    if config not in CONFIGS:
        raise ValueError(f"CEILING_CONFIG must be one of {', '.join(CONFIGS)}, not {config!r}")
    app = naive.make_celery(redis_url)
    app.main = "ceiling"
    app.conf.task_default_queue = QUEUE
    if config == "datajobs":
        app.conf.update({name: getattr(celeryconfig, name) for name in DATAJOBS_SETTINGS})
    return app


app = make_celery()


@app.task(name="ceiling.echo")
def echo(records):
    """Return ``records``: the least a task can do with a job's data."""
    return records


def _thread_app(local, redis_url, config, apps=None):
    """This thread's Celery app (one per thread, so no result consumer is shared between threads)."""
    if not hasattr(local, "app"):
        local.app = make_celery(redis_url, config)
        if apps is not None:
            apps.append(local.app)
    return local.app


def create_app():
    """The least gateway a job can have: ``POST /echo`` sends the body's ``dataset`` to ``ceiling.echo``, waits
    for the task and answers its result (no validation, no job record, no polling); ``GET /health``."""
    web = Flask(__name__)
    local = threading.local()

    @web.post("/echo")
    def submit():
        celery = _thread_app(local, None, None)
        result = celery.send_task("ceiling.echo", (request.get_json()["dataset"],))
        try:
            return {"result": result.get(timeout=latency.JOB_TIMEOUT)}
        finally:
            result.forget()

    @web.get("/health")
    def health():
        return {"status": "ok"}

    return web


@contextlib.contextmanager
def running(redis_url, config, log_dir, gateway=False, concurrency=2, startup_timeout=60):
    """Start a worker of ``concurrency`` pool processes on :data:`QUEUE` with ``config`` (and, if ``gateway``,
    :func:`create_app` under gunicorn as the naive app runs, :data:`bench.naive.GUNICORN_MODEL`); yield
    ``(worker, gateway or None, url or None)`` once they answer; stop them on exit."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, REDIS_URL=redis_url, CEILING_CONFIG=config, PYTHONUNBUFFERED="1")
    env.pop("GUNICORN_CMD_ARGS", None)
    hostname = f"ceiling-{config}-{os.getpid()}@{socket.gethostname()}"
    commands = [[str(localstack.BIN / "celery"), "-A", "bench.ceiling", "worker", "--concurrency", str(concurrency),
                 "-Q", QUEUE, "--loglevel", "WARNING", "--hostname", hostname, "--without-mingle", "--without-gossip"]]
    url = None
    if gateway:
        port = localstack.free_port()
        url = f"http://127.0.0.1:{port}"
        config_file = log_dir / "ceiling-gunicorn.conf.py"  # empty: not the repository's gunicorn.conf.py
        config_file.write_text("# The ceiling gateway's settings are all on its command line (bench/ceiling.py).\n")
        commands.append([str(localstack.BIN / "gunicorn"), "bench.ceiling:create_app()", "--config", str(config_file),
                         "--bind", f"127.0.0.1:{port}", *naive.GUNICORN_MODEL])
    control = make_celery(redis_url, config)
    procs = []
    try:
        for args in commands:
            with open(log_dir / f"ceiling-{config}-{Path(args[0]).name}.log", "ab") as log:
                procs.append(subprocess.Popen(args, cwd=localstack.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        localstack.wait_until(
            lambda: bool(control.control.ping(destination=[hostname], timeout=0.5)), startup_timeout,
            f"the {config} ceiling worker answering a ping",
        )
        if url:
            localstack.wait_until(lambda: naive.answers(url), startup_timeout, "the ceiling gateway answering")
        yield procs[0], (procs[1] if gateway else None), url
    finally:
        control.close()
        localstack.stop(*reversed(procs))


def celery_job(redis_url, config):
    """One task through Celery alone, for :func:`bench.latency.closed_loop` (the HTTP session is unused)."""
    local, apps = threading.local(), []

    def run(session):
        result = _thread_app(local, redis_url, config, apps).send_task("ceiling.echo", (workload.LATENCY_DATASET,))
        try:
            records = result.get(timeout=latency.JOB_TIMEOUT)
        finally:
            result.forget()
        if records != workload.LATENCY_DATASET:
            raise latency.JobFailed(f"task {result.id} returned {records!r}")
        return 0

    run.apps = apps
    return run


def http_job(url):
    """One job through :func:`create_app`: a single ``POST /echo`` that answers with the task's result."""

    def run(session):
        response = session.post(f"{url}/echo", json={"dataset": workload.LATENCY_DATASET}, timeout=latency.JOB_TIMEOUT)
        if response.status_code != 200 or response.json()["result"] != workload.LATENCY_DATASET:
            raise latency.JobFailed(f"POST /echo answered {response.status_code}: {response.text[:200]}")
        return 1

    return run


def protocol_job(store, records=workload.LATENCY_DATASET):
    """What one datajobs job does to keep its guarantees, without HTTP, Celery, validation, progress, events,
    metrics or logs: the gateway stores the inline dataset as a chunk, records the job and marks it sent; the
    worker reads the record, takes the lease, counts the attempt, reads the chunk, runs ``drop_nulls`` in pandas,
    stores the output chunk and the inline records, ends the job and drops the lease; the waiter reads the
    record once. Each through the :class:`~workers.jobstore.JobStore` calls the gateway and the tasks make."""
    job_id = new_job_id()
    with ChunkWriter(store.data, "job", job_id, "input", 250_000) as writer:
        writer.write(frames.records_to_table(records))
        ref = writer.close()
    store.create(job_id, workload.LATENCY_OPERATIONS, ref)
    store.sent(job_id)
    record = store.get(job_id)
    store.take_lease(job_id, "ceiling", 5)
    store.mark_started(job_id, worker="ceiling")
    out = frames.frame_to_table(frames.table_to_frame(chunks.read_all(store.data, record["input"])).dropna())
    with ChunkWriter(store.data, "job", job_id, "s", 250_000) as writer:
        writer.write(frames.normalise(out))
        output = writer.close()
    store.complete(job_id, output, {"output_items": out.num_rows}, json.loads(frames.table_to_json(out)))
    store.drop_lease(job_id, "ceiling")
    store.get(job_id)


def measure_protocol(jobs=3000, warmup=300):
    """CPU-ms per :func:`protocol_job`, this process's and Redis's, one job after another on a ``redis-server`` of
    its own: ``{"client", "redis", "jobs"}``."""
    with localstack.redis_server() as redis_url:
        client = redis.Redis.from_url(redis_url)
        try:
            store = JobStore(client, 3600, datastore.open_store("", client, 3600))
            for _ in range(warmup):
                protocol_job(store)
            before, cpu = client.info("cpu"), time.process_time()
            for _ in range(jobs):
                protocol_job(store)
            cpu, after = time.process_time() - cpu, client.info("cpu")
        finally:
            client.close()
    used = sum(after[k] - before[k] for k in ("used_cpu_user", "used_cpu_sys"))
    return {"client": cpu * 1000 / jobs, "redis": used * 1000 / jobs, "jobs": jobs}


#: What is measured, in order: (name, Celery settings, through the least HTTP gateway?).
RUNS = (("celery, naive settings", "naive", False), ("celery, datajobs settings", "datajobs", False),
        ("HTTP + celery, datajobs settings", "datajobs", True))


def run(seconds, warmup, log_dir, progress, clients=(8,)):
    """Each of :data:`RUNS` with each number of ``clients``, then :func:`measure_protocol`; returns
    ``{"loops": {name: {clients: LoopResult}}, "protocol": {...}}``."""
    figures = {}
    for name, config, gateway in RUNS:
        with localstack.redis_server() as redis_url, running(
            redis_url, config, Path(log_dir) / "ceiling", gateway=gateway
        ) as (worker, web, url):
            finders = {
                "gateway": memory.process_tree(web.pid) if web else (lambda table: []),
                "worker": memory.process_tree(worker.pid),
                "redis": lambda table, pid=memory.redis_memory(redis_url)["pid"]: [pid],
            }
            loops = {}
            for count in clients:
                progress(f"latency: {name}, {count} client(s), {warmup:g} s warm-up + {seconds:g} s")
                job = http_job(url) if gateway else celery_job(redis_url, config)
                loops[count] = latency.closed_loop(job, count, seconds, warmup, finders, redis_url)
                for each in getattr(job, "apps", ()):
                    each.close()
            figures[name] = loops
    progress("latency: the job protocol alone, one job after another")
    return {"loops": figures, "protocol": measure_protocol()}


# --- the report ---------------------------------------------------------------------------


def _row(label, loop, naive_rate):
    cpu = [loop.cpu_ms_per_job(name) for name in ("gateway", "worker", "redis", "client")]
    return [
        label, f"{loop.per_second:.1f}", f"{loop.per_second / naive_rate:.2f}×" if naive_rate else "n/a",
        latency._ms(loop.percentile(50)), *(latency._cpu(value) for value in cpu),
        latency._cpu(sum(cpu) if loop.jobs else None), f"{loop.jobs} ({len(loop.errors)})",
    ]


def section(f):
    """The ceiling beside both systems' 8-client figures from the same run (``f`` holds the latency
    figures and, under ``"ceiling"``, :func:`run`'s), as ``(tables, notes, warnings)``."""
    clients = max(latency.CLIENTS)
    naive_loop, ours = f["naive"]["loops"][clients], f["datajobs"]["loops"][clients]
    ceiling, protocol = {name: loops[clients] for name, loops in f["ceiling"]["loops"].items()}, f["ceiling"]["protocol"]
    naive_rate = naive_loop.per_second
    goal = latency.GOAL_THROUGHPUT * naive_rate
    header = [f"{clients} clients, closed loop, {f['seconds']:g} s", "jobs/s", "× naive gateway", "p50",
              "CPU-ms per job: gateway", "worker", "Redis", "clients", "all", "jobs (errors)"]
    rows = [_row("naive Flask+Celery gateway, polled every 10 ms", naive_loop, naive_rate),
            _row("datajobs, `POST ?wait=`", ours, naive_rate)]
    rows += [_row(name, loop, naive_rate) for name, loop in ceiling.items()]
    rows.append(["the job protocol alone, one job at a time (no HTTP, no Celery)", "", "", "", "", "", 
                 latency._cpu(protocol["redis"]), latency._cpu(protocol["client"]),
                 latency._cpu(protocol["client"] + protocol["redis"]), f"{protocol['jobs']} (0)"])
    rows.append([f"issue 8's goal: {latency.GOAL_THROUGHPUT:g} × the naive gateway", f"{goal:.1f}",
                 f"{latency.GOAL_THROUGHPUT:.2f}×", *[""] * 7])
    cpu_all = lambda loop: sum(loop.cpu_ms_per_job(n) for n in ("gateway", "worker", "redis", "client"))  # noqa: E731
    least = ceiling[RUNS[-1][0]]
    notes = [
        "The ceiling (`bench/ceiling.py`): the same closed loop with no job system at all. `celery, … settings`: "
        "each client thread sends a task that only returns its one-record argument (`send_task(...).get()`, a "
        "Celery app per thread) to a worker of concurrency 2 on a `redis-server` of its own, with the naive app's "
        "Celery settings, then with the delivery and event settings of `celeryconfig.py` (late acknowledgement, "
        "prefetch 1, task events). `HTTP + celery`: the least gateway, a Flask `POST /echo` that sends that task, "
        "waits for it and answers its result (no validation, no record), under gunicorn as the naive app runs "
        "(2 processes, gthread, 4 threads). The job protocol alone (`protocol_job`): what a datajobs job does "
        "to keep its guarantees (its inline chunk, record, lease, attempt, the step in pandas, its output and "
        "inline records, its end, one read by its waiter), through the job store's calls, in this process.",
    ]
    if goal and least.jobs and ours.jobs:
        budget = (os.cpu_count() or 1) * 1000 / goal
        floor = cpu_all(least) + protocol["client"] + protocol["redis"]
        notes.append(
            f"On {os.cpu_count()} CPUs the goal ({goal:.1f} jobs/s) leaves a job {budget:.2f} CPU-ms in all, clients "
            f"included, when the CPUs are the limit. The least HTTP gateway's job costs {cpu_all(least):.2f} "
            f"({least.per_second / naive_rate:.2f}× the naive gateway); with the job protocol on top, "
            f"{floor:.2f}: {'over' if floor > budget else 'within'} the budget, before validation, progress, "
            f"events or metrics. A datajobs job costs {cpu_all(ours):.2f}."
        )
    warnings = [f"ceiling, {name}: {len(loop.errors)} failed, first: {loop.errors[0]}"
                for name, loop in ceiling.items() if loop.errors]
    return [(header, rows)], notes, warnings
