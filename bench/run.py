"""`make bench`: datajobs beside a naive Flask+Celery app and plain pandas, measured in one run.

1. Latency: one-record jobs submitted one after another through the harvester's
   ``GatewayClient`` (submit, then poll), beside the same jobs through the naive
   app (``bench/naive.py``), polled the same way.
2. Throughput: a five-step pipeline over many rows through the whole system
   (submit, poll, get the data back), beside the naive app and the same steps
   in plain pandas in this process.
3. Scale (``bench/scale.py``): a 1,000,000-row CSV through the same five steps to
   Parquet with ``harvester run``, beside a plain pandas script and the
   inline-JSON path, each a process measured with ``/usr/bin/time -v``, each
   datajobs run on a Redis and a stack of its own. ``--huge`` adds a
   10,000,000-row run (about 1 GB of CSV; several minutes).

Redis for 1 and 2: ``BENCH_REDIS_URL`` (default database 13 of the local Redis,
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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402

import localstack  # noqa: E402
from bench import memory, naive, scale, workload  # noqa: E402
from bench.report import machine, markdown_table, ms, ratio, secs, table  # noqa: E402
from harvester.client import GatewayClient  # noqa: E402
from harvester.errors import HarvesterError  # noqa: E402

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
LATENCY_POLL = 0.02  # seconds between polls of a one-record job
PIPELINE_POLL = 0.05  # seconds between polls of the big job
WARMUP_JOBS = 5  # one-record jobs run on each system before measuring, not counted
JOB_TIMEOUT = 30  # seconds one one-record job may take
LATENCY_BUDGET = 60  # seconds each system gets for all its one-record jobs
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


RUN_ERRORS = (JobFailed, HarvesterError, requests.RequestException, KeyError, ValueError)


# --- measurements ------------------------------------------------------------------


def measure_latency(run, jobs):
    """Submit→completed seconds of ``jobs`` one-record jobs in a row (after the warm-up); and the errors."""
    for _ in range(WARMUP_JOBS):
        run(workload.LATENCY_DATASET, workload.LATENCY_OPERATIONS, LATENCY_POLL, time.monotonic() + JOB_TIMEOUT)
    budget_ends = time.monotonic() + LATENCY_BUDGET
    seconds, errors = [], []
    for _ in range(jobs):
        if time.monotonic() >= budget_ends:
            errors.append(f"stopped after {len(seconds) + len(errors)} jobs: the {LATENCY_BUDGET} s budget ran out")
            break
        deadline = min(time.monotonic() + JOB_TIMEOUT, budget_ends)
        started = time.perf_counter()
        try:
            run(workload.LATENCY_DATASET, workload.LATENCY_OPERATIONS, LATENCY_POLL, deadline)
        except RUN_ERRORS as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        seconds.append(time.perf_counter() - started)
    return seconds, errors


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
    """Run every measurement; return the figures as a dict."""
    figures = {"jobs": args.jobs, "rows": args.rows, "repeat": args.repeat}
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
            progress(f"datajobs: {WARMUP_JOBS} warm-up + {args.jobs} one-record jobs")
            figures["dj_latency"], figures["dj_latency_errors"] = measure_latency(run, args.jobs)
            progress(f"datajobs: {args.repeat} run(s) of the pipeline on {args.rows:,} rows")
            figures["dj"], dj_out, figures["dj_steps"] = measure_pipeline(run, records, args.repeat)
    figures["rows_out_dj"] = len(dj_out)
    figures["same_ids_dj"] = [r["id"] for r in dj_out] == plain_ids
    del dj_out

    progress("naive: starting its worker (concurrency 1, queue naive) and gateway (gunicorn, 2 workers)")
    with naive.stack(redis_url, log_dir) as base_url, requests.Session() as session:
        run = naive_runner(session, base_url)
        progress(f"naive: {WARMUP_JOBS} warm-up + {args.jobs} one-record jobs")
        figures["naive_latency"], figures["naive_latency_errors"] = measure_latency(run, args.jobs)
        progress(f"naive: {args.repeat} run(s) of the pipeline on {args.rows:,} rows")
        figures["naive"], naive_out, _ = measure_pipeline(run, records, args.repeat)
    figures["rows_out_naive"] = len(naive_out)
    figures["same_ids_naive"] = [r["id"] for r in naive_out] == plain_ids
    return figures


# --- the report --------------------------------------------------------------------


def latency_stats(seconds):
    if not seconds:
        return None
    p50, p95 = np.percentile(seconds, [50, 95])
    return {"p50": p50, "p95": p95, "mean": statistics.fmean(seconds), "max": max(seconds)}


def report_rows(f):
    """The two tables (latency, pipeline) as (header, rows) pairs."""
    dj, nv = latency_stats(f["dj_latency"]), latency_stats(f["naive_latency"])
    latency_header = ["one-record job, submit → completed", "datajobs", "naive Flask+Celery", "datajobs / naive"]
    latency = []
    for key in ("p50", "p95", "mean", "max"):
        latency.append(
            [key, ms(dj[key]) if dj else "n/a", ms(nv[key]) if nv else "n/a", ratio(dj[key], nv[key]) if dj and nv else "n/a"]
        )
    latency.append(["jobs completed", f"{len(f['dj_latency'])}/{f['jobs']}", f"{len(f['naive_latency'])}/{f['jobs']}", ""])

    plain, dj_wall, naive_wall = (statistics.median(f[k]) for k in ("plain", "dj", "naive"))
    pipeline_header = [f"{f['rows']:,} rows, 5 steps, end to end", "wall time", "× plain pandas", "rows out"]
    pipeline = [
        ["plain pandas, one process", secs(plain), "1.0×", f"{f['rows_out_plain']:,}"],
        ["datajobs (GatewayClient)", secs(dj_wall), ratio(dj_wall, plain), f"{f['rows_out_dj']:,}"],
        ["naive Flask+Celery", secs(naive_wall), ratio(naive_wall, plain), f"{f['rows_out_naive']:,}"],
    ]
    return (latency_header, latency), (pipeline_header, pipeline)


def notes(f):
    """What the tables need to be read right."""
    runs = lambda k: ", ".join(secs(s) for s in f[k])  # noqa: E731
    return [
        f"Latency: {f['jobs']} jobs one after another per system, after {WARMUP_JOBS} warm-up jobs; "
        f"dataset {json.dumps(workload.LATENCY_DATASET)}, operations {json.dumps(workload.LATENCY_OPERATIONS)}; "
        f"polled every {LATENCY_POLL} s (the first poll right after the submit answers), so a job is seen "
        f"done up to one interval after it ends: both columns are mostly submit + polling.",
        f"Pipeline: {workload.PIPELINE_TEXT}; wall time from records in memory to records back (datajobs: submit, poll, "
        f"then `GET /jobs/<id>/result?format=jsonl`), median of {f['repeat']} run(s), polled every {PIPELINE_POLL} s. "
        f"Request body {f['body_bytes'] / 1e6:.1f} MB of JSON (the same for datajobs and naive).",
        f"Runs: plain {runs('plain')}; datajobs {runs('dj')}; naive {runs('naive')}. Plain pandas steps alone "
        f"(frame already built, no records out): {secs(f['plain_steps_only'])}; the datajobs worker's five steps "
        f"(its job stats, last run): {secs(f['dj_steps'])}.",
        "Setup: datajobs = localstack.stack (1 worker, concurrency 2; gateway under gunicorn, 2 workers); "
        "naive = bench/naive.py (1 worker, concurrency 1, queue 'naive'; gunicorn, 2 workers); "
        "each system runs alone, one after the other, on the same Redis.",
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
    for system in ("dj", "naive"):
        for error in f[f"{system}_latency_errors"][:5]:
            warnings.append(f"{'datajobs' if system == 'dj' else 'naive'} latency job: {error}")
    return warnings


def command(argv):
    """The command that produced these figures, as Markdown code."""
    env = "BENCH_REDIS_URL=" + shlex.quote(os.environ["BENCH_REDIS_URL"]) + " " if "BENCH_REDIS_URL" in os.environ else ""
    line = env + shlex.join([".venv/bin/python", "bench/run.py", *argv])
    return "`make bench` (`" + line + "`)" if line == ".venv/bin/python bench/run.py" else f"`{line}`"


def latency_section(f):
    """The latency and in-memory pipeline figures as ``(tables, notes, warnings)``."""
    same = "the same ids in the same order" if f["same_ids_dj"] and f["same_ids_naive"] else "SEE WARNINGS"
    check = (
        f"Output check: datajobs {f['rows_out_dj']:,} rows, naive {f['rows_out_naive']:,}, "
        f"plain pandas {f['rows_out_plain']:,}: {same}."
    )
    return list(report_rows(f)), [*notes(f), check], output_warnings(f)


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
    parser.add_argument("--jobs", type=int, help="one-record jobs per system (default 200)")
    parser.add_argument("--rows", type=int, help="rows of the in-memory pipeline dataset (default 100000)")
    parser.add_argument("--repeat", type=int, help="runs of the in-memory pipeline per system (default 5)")
    parser.add_argument("--scale-rows", type=int, help="rows of the scale benchmark's CSV (default 1000000)")
    parser.add_argument("--scale-repeat", type=int, help="rounds of the scale benchmark (default 3)")
    parser.add_argument("--huge", action="store_true",
                        help="also run the scale benchmark once on --huge-rows rows (harvester and plain pandas)")
    parser.add_argument("--huge-rows", type=int, default=10_000_000, help="rows of the --huge run (default 10000000)")
    parser.add_argument("--scale-only", action="store_true", help="run the scale benchmark only")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale benchmark (and --huge)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 20 jobs, 10,000 rows, 1 run, scale 20,000 rows once (flags still win)")
    args = parser.parse_args(argv)
    names = ("jobs", "rows", "repeat", "scale_rows", "scale_repeat")
    defaults = (20, 10_000, 1, 20_000, 1) if args.quick else (200, 100_000, 5, 1_000_000, 3)
    for name, default in zip(names, defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if min(getattr(args, name) for name in names) < 1 or args.huge_rows < 1:
        parser.error("--jobs, --rows, --repeat, --scale-rows, --scale-repeat and --huge-rows must be at least 1")
    if args.scale_only and args.no_scale:
        parser.error("--scale-only and --no-scale leave nothing to run")
    return args


def run_latency(args, log_dir):
    """Benchmarks 1 and 2 on the Redis at ``BENCH_REDIS_URL`` (or one started here); return (section, Redis version)."""
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
    return latency_section(figures), version


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.no_scale:
        memory.check_time()
        if memory.redis_version() is None:
            raise SystemExit("bench: the scale benchmark starts redis-server, which is not on the PATH (or pass --no-scale)")
    log_dir = Path(tempfile.mkdtemp(prefix="datajobs-bench-"))
    progress(f"logs in {log_dir}")
    started = time.monotonic()
    sections, versions = [], []
    if not args.scale_only:
        section, version = run_latency(args, log_dir)
        sections.append(section)
        versions.append(version)
    if not args.no_scale:
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
