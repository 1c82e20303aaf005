"""`make bench`: datajobs beside a naive Flask+Celery app and plain pandas, measured in one run.

1. Latency (``bench/latency.py``, issue 8): one-record jobs under a closed loop of
   1 and then 8 client threads for ``--seconds`` each: datajobs with
   ``POST /jobs?wait=`` then ``GET /jobs/<id>?wait=``, beside the naive app
   (``bench/naive.py``) polled every 10 ms; p50, p95, jobs/s and the CPU-ms per
   job of each system's gateway, worker and Redis, against the goals (1 client:
   p50 at most half the naive app's; 8 clients: at least twice its jobs/s). Then
   the submission latency while 1,000 waiters are held open on the datajobs
   gateway. Each system on a ``redis-server`` of its own. Then the ceiling
   (``bench/ceiling.py``): Celery alone, and behind the least HTTP gateway, with
   8 clients.
2. Throughput: a five-step pipeline over many rows through the whole system
   (submit, poll, get the data back), beside the naive app and the same steps
   in plain pandas in this process.
3. Scale (``bench/scale.py``): a 1,000,000-row CSV through the same five steps to
   Parquet with ``harvester run``, beside a plain pandas script and the
   inline-JSON path, each a process measured with ``/usr/bin/time -v``, each
   datajobs run on a Redis and a stack of its own. ``--huge`` adds a
   10,000,000-row run (about 1 GB of CSV; several minutes).

Redis for 2: ``BENCH_REDIS_URL`` (default database 13 of the local Redis,
flushed before and after: the benchmark owns it), else a Redis started here. The
systems run one after the other, each with the machine to itself. Progress goes
to stderr; the figures and a Markdown snippet for the README go to stdout.
Timings are printed, never asserted.
"""

import argparse
import contextlib
import datetime
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402

import localstack  # noqa: E402
from bench import ceiling, latency, memory, naive, scale, workload  # noqa: E402
from bench.report import machine, markdown_table, ratio, secs, table  # noqa: E402
from harvester.client import GatewayClient  # noqa: E402

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
PIPELINE_POLL = 0.05  # seconds between polls of the big job
PIPELINE_TIMEOUT = 60  # seconds one big job may take


class JobFailed(Exception):
    """A benchmark job ended without its data."""


# --- the two systems, behind one call: run(dataset, operations, poll, deadline) -> (records, step seconds)


def datajobs_runner(client):
    """Run a job through datajobs with the harvester's client: submit, wait, then the records.

    A result of more than ``INLINE_RESULT_ROWS`` rows is not inline in the job
    (``data.truncated``): it is downloaded as JSON Lines from ``GET /jobs/<id>/result``.
    """

    def run(dataset, operations, poll_interval, deadline):
        job_id = client.submit(dataset, operations, deadline=deadline)["job_id"]
        job = client.wait(job_id, poll_interval=poll_interval, deadline=deadline)
        if job["status"] != "completed":
            raise JobFailed(f"datajobs job {job_id} {job['status']}: {job.get('error')}")
        data, records = job["data"], job["data"]["data"]
        if data.get("truncated"):
            with contextlib.closing(client.result(job_id, fmt="jsonl", deadline=deadline)) as response:
                records = [json.loads(line) for line in response.iter_lines(chunk_size=1 << 20) if line]
        return records, sum(step["seconds"] for step in data["operations"])

    return run


def naive_runner(session, base_url):
    """Run a job through the naive app: POST, then poll GET /jobs/<id> as ``GatewayClient.wait`` does."""

    def run(dataset, operations, poll_interval, deadline):
        response = session.post(f"{base_url}/jobs", json={"dataset": dataset, "operations": operations}, timeout=30)
        response.raise_for_status()
        job_id = response.json()["job_id"]
        while True:
            job = session.get(f"{base_url}/jobs/{job_id}", timeout=30).json()
            if job["state"] == "SUCCESS":
                return job["result"], None
            if job["state"] in ("FAILURE", "REVOKED"):
                raise JobFailed(f"naive job {job_id} {job['state']}: {job.get('error')}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobFailed(f"naive job {job_id} still {job['state']} at its deadline")
            time.sleep(min(poll_interval, left))

    return run


# --- measurements ------------------------------------------------------------------


def measure_pipeline(run, records, repeat):
    """Wall seconds of ``repeat`` runs of the pipeline; the last run's records and step seconds."""
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        output, step_seconds = run(records, workload.OPERATIONS, PIPELINE_POLL, time.monotonic() + PIPELINE_TIMEOUT)
        seconds.append(time.perf_counter() - started)
    return seconds, output, step_seconds


def measure_plain(records, repeat):
    """Wall seconds of ``repeat`` plain-pandas runs (records → frame → steps → records); the output."""
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        output = workload.run_plain(records, workload.OPERATIONS)
        seconds.append(time.perf_counter() - started)
    frame = pd.DataFrame.from_records(records)
    started = time.perf_counter()
    workload.apply(frame, workload.OPERATIONS)
    steps_only = time.perf_counter() - started
    return seconds, output, steps_only


# --- the run -----------------------------------------------------------------------


def progress(text):
    print(f"bench: {text}", file=sys.stderr, flush=True)


def run_benchmarks(args, redis_url, log_dir):
    """Run the in-memory pipeline measurements; return the figures as a dict."""
    figures = {"rows": args.rows, "repeat": args.repeat}
    progress(f"making {args.rows:,} records")
    records = workload.make_records(args.rows)
    body = {"dataset": records, "operations": workload.OPERATIONS}
    figures["body_bytes"] = len(json.dumps(body, allow_nan=False).encode())  # as requests encodes json=

    progress(f"plain pandas: {args.repeat} run(s) of the pipeline")
    figures["plain"], plain_out, figures["plain_steps_only"] = measure_plain(records, args.repeat)
    figures["rows_out_plain"] = len(plain_out)
    plain_ids = [r["id"] for r in plain_out]

    progress("datajobs: starting a worker (concurrency 2) and the gateway (gunicorn, 2 workers)")
    with localstack.stack(redis_url, workers=1, concurrency=2, log_dir=log_dir / "datajobs") as gateway:
        workload.check_operations(gateway)
        with GatewayClient(gateway) as client:
            run = datajobs_runner(client)
            progress(f"datajobs: {args.repeat} run(s) of the pipeline on {args.rows:,} rows")
            figures["dj"], dj_out, figures["dj_steps"] = measure_pipeline(run, records, args.repeat)
    figures["rows_out_dj"] = len(dj_out)
    figures["same_ids_dj"] = [r["id"] for r in dj_out] == plain_ids
    del dj_out

    progress("naive: starting its worker (concurrency 1, queue naive) and gateway (gunicorn, 2 gthread workers)")
    with naive.stack(redis_url, log_dir, concurrency=1) as base_url, requests.Session() as session:
        run = naive_runner(session, base_url)
        progress(f"naive: {args.repeat} run(s) of the pipeline on {args.rows:,} rows")
        figures["naive"], naive_out, _ = measure_pipeline(run, records, args.repeat)
    figures["rows_out_naive"] = len(naive_out)
    figures["same_ids_naive"] = [r["id"] for r in naive_out] == plain_ids
    return figures


# --- the report --------------------------------------------------------------------


def report_rows(f):
    """The pipeline table as a (header, rows) pair."""
    plain, dj_wall, naive_wall = (statistics.median(f[k]) for k in ("plain", "dj", "naive"))
    pipeline_header = [f"{f['rows']:,} rows, 5 steps, end to end", "wall time", "× plain pandas", "rows out"]
    pipeline = [
        ["plain pandas, one process", secs(plain), "1.0×", f"{f['rows_out_plain']:,}"],
        ["datajobs (GatewayClient)", secs(dj_wall), ratio(dj_wall, plain), f"{f['rows_out_dj']:,}"],
        ["naive Flask+Celery", secs(naive_wall), ratio(naive_wall, plain), f"{f['rows_out_naive']:,}"],
    ]
    return (pipeline_header, pipeline)


def notes(f):
    """What the tables need to be read right."""
    runs = lambda k: ", ".join(secs(s) for s in f[k])  # noqa: E731
    return [
        f"Pipeline: {workload.PIPELINE_TEXT}; wall time from records in memory to records back (datajobs: submit, poll, "
        f"then `GET /jobs/<id>/result?format=jsonl`), median of {f['repeat']} run(s), polled every {PIPELINE_POLL} s. "
        f"Request body {f['body_bytes'] / 1e6:.1f} MB of JSON (the same for datajobs and naive).",
        f"Runs: plain {runs('plain')}; datajobs {runs('dj')}; naive {runs('naive')}. Plain pandas steps alone "
        f"(frame already built, no records out): {secs(f['plain_steps_only'])}; the datajobs worker's five steps "
        f"(its job stats, last run): {secs(f['dj_steps'])}.",
        "Setup: datajobs = localstack.stack (1 worker, concurrency 2; gateway under gunicorn, gunicorn.conf.py: "
        "2 gevent workers); naive = bench/naive.py (1 worker, concurrency 1, queue 'naive'; gunicorn, 2 workers of "
        "4 threads); each system runs alone, one after the other, on the same Redis.",
    ]


def output_warnings(f):
    warnings = []
    if f["rows_out_dj"] != f["rows_out_plain"]:
        warnings.append(f"datajobs returned {f['rows_out_dj']:,} rows but plain pandas {f['rows_out_plain']:,}")
    elif not f["same_ids_dj"]:
        warnings.append("datajobs returned as many rows as plain pandas, but not the same ids in the same order")
    if f["rows_out_naive"] != f["rows_out_plain"]:
        warnings.append(f"naive returned {f['rows_out_naive']:,} rows but plain pandas {f['rows_out_plain']:,}")
    elif not f["same_ids_naive"]:
        warnings.append("naive returned as many rows as plain pandas, but not the same ids in the same order")
    return warnings


def command(argv):
    """The command that produced these figures, as Markdown code."""
    env = "BENCH_REDIS_URL=" + shlex.quote(os.environ["BENCH_REDIS_URL"]) + " " if "BENCH_REDIS_URL" in os.environ else ""
    line = env + shlex.join([".venv/bin/python", "bench/run.py", *argv])
    return "`make bench` (`" + line + "`)" if line == ".venv/bin/python bench/run.py" else f"`{line}`"


def pipeline_section(f):
    """The in-memory pipeline figures as ``(tables, notes, warnings)``."""
    same = "the same ids in the same order" if f["same_ids_dj"] and f["same_ids_naive"] else "SEE WARNINGS"
    check = (
        f"Output check: datajobs {f['rows_out_dj']:,} rows, naive {f['rows_out_naive']:,}, "
        f"plain pandas {f['rows_out_plain']:,}: {same}."
    )
    return [report_rows(f)], [*notes(f), check], output_warnings(f)


def scale_section(f):
    """The figures of one scale run (``bench/scale.py``) as ``(tables, notes, warnings)``."""
    return list(scale.tables(f)), scale.notes(f), f["warnings"]


def print_report(sections, redis_versions, argv):
    """Print every section as text, then as Markdown for the README, warnings at the end of each."""
    warnings = [warning for _, _, section_warnings in sections for warning in section_warnings]
    for tables, section_notes, _ in sections:
        for header, rows in tables:
            print()
            print(table(header, rows))
        print()
        for note in section_notes:
            print(f"- {note}")
    for warning in warnings:
        print(f"\n!!!!!!!! WARNING: {warning} !!!!!!!!", flush=True)

    print("\n--- Markdown for the README's Benchmarks section ---\n")
    print(f"### {datetime.date.today().isoformat()}: {machine(' / '.join(sorted(set(redis_versions))))}\n")
    print(f"{command(argv)}\n")
    for tables, section_notes, section_warnings in sections:
        for header, rows in tables:
            print(markdown_table(header, rows))
            print()
        for note in section_notes:
            print(f"- {note}")
        if section_warnings:
            print(f"- **Warning**: {'; '.join(section_warnings)}.")
        print()


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], prog="bench/run.py")
    parser.add_argument("--seconds", type=float,
                        help="measured seconds of each closed-loop latency run, after its warm-up (default 10)")
    parser.add_argument("--waiters", type=int, default=latency.WAITERS,
                        help=f"waiters held open while submissions are timed (default {latency.WAITERS})")
    parser.add_argument("--rows", type=int, help="rows of the in-memory pipeline dataset (default 100000)")
    parser.add_argument("--repeat", type=int, help="runs of the in-memory pipeline per system (default 5)")
    parser.add_argument("--scale-rows", type=int, help="rows of the scale benchmark's CSV (default 1000000)")
    parser.add_argument("--scale-repeat", type=int, help="rounds of the scale benchmark (default 3)")
    parser.add_argument("--huge", action="store_true",
                        help="also run the scale benchmark once on --huge-rows rows (harvester and plain pandas)")
    parser.add_argument("--huge-rows", type=int, default=10_000_000, help="rows of the --huge run (default 10000000)")
    parser.add_argument("--latency-only", action="store_true", help="run the latency benchmark only")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency benchmark")
    parser.add_argument("--scale-only", action="store_true", help="run the scale benchmark only")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale benchmark (and --huge)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: latency 2 s per run, 10,000 rows, 1 run, scale 20,000 rows once "
                             "(flags still win)")
    args = parser.parse_args(argv)
    names = ("seconds", "rows", "repeat", "scale_rows", "scale_repeat")
    defaults = (2, 10_000, 1, 20_000, 1) if args.quick else (10, 100_000, 5, 1_000_000, 3)
    for name, default in zip(names, defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.seconds <= 0 or min(getattr(args, name) for name in names[1:]) < 1 or args.huge_rows < 1:
        parser.error("--seconds must be above 0; --rows, --repeat, --scale-rows, --scale-repeat and --huge-rows at least 1")
    if args.waiters < 1:
        parser.error("--waiters must be at least 1")
    if sum((args.latency_only, args.scale_only)) > 1:
        parser.error("--latency-only and --scale-only leave nothing to run together")
    if (args.latency_only and args.no_latency) or (args.scale_only and args.no_scale):
        parser.error("--X-only and --no-X leave nothing to run")
    args.warmup = 1.0 if args.quick else 2.0
    args.run_latency = not args.no_latency and not args.scale_only
    args.run_pipeline = not args.latency_only and not args.scale_only
    args.run_scale = not args.no_scale and not args.latency_only
    return args


def run_latency(args, log_dir):
    """Benchmark 1, each system on a ``redis-server`` of its own; return (section, Redis versions)."""
    figures = latency.run(args.seconds, args.warmup, log_dir, progress, waiters=args.waiters)
    figures["ceiling"] = ceiling.run(args.seconds, args.warmup, log_dir, progress, clients=(max(latency.CLIENTS),))
    latency_tables, latency_notes, latency_warnings = latency.section(figures)
    ceiling_tables, ceiling_notes, ceiling_warnings = ceiling.section(figures)
    section = (latency_tables + ceiling_tables, latency_notes + ceiling_notes, latency_warnings + ceiling_warnings)
    return section, [figures[system]["redis_version"] for system in ("datajobs", "naive")]


def run_pipeline(args, log_dir):
    """Benchmark 2 on the Redis at ``BENCH_REDIS_URL`` (or one started here); return (section, Redis version)."""
    with localstack.any_redis(os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)) as (redis_url, how):
        progress(how)
        db = redis.Redis.from_url(redis_url)
        db.flushdb()
        try:
            version = db.info("server")["redis_version"]
            figures = run_benchmarks(args, redis_url, log_dir)
        finally:
            db.flushdb()
            db.close()
    return pipeline_section(figures), version


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.run_scale:
        memory.check_time()
    if (args.run_scale or args.run_latency) and memory.redis_version() is None:
        raise SystemExit("bench: the latency and scale benchmarks start redis-server, which is not on the PATH "
                         "(or pass --no-latency --no-scale)")
    log_dir = Path(tempfile.mkdtemp(prefix="datajobs-bench-"))
    progress(f"logs in {log_dir}")
    started = time.monotonic()
    sections, versions = [], []
    if args.run_latency:
        section, latency_versions = run_latency(args, log_dir)
        sections.append(section)
        versions.extend(latency_versions)
    if args.run_pipeline:
        section, version = run_pipeline(args, log_dir)
        sections.append(section)
        versions.append(version)
    if args.run_scale:
        runs = [(args.scale_rows, args.scale_repeat)] + ([(args.huge_rows, 1)] if args.huge else [])
        for rows, repeat in runs:
            figures = scale.run_scale(rows, repeat, log_dir)
            sections.append(scale_section(figures))
            versions.append(figures["redis_version"])
    progress(f"measured in {time.monotonic() - started:.0f} s; every process started is stopped")
    print_report(sections, versions, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
