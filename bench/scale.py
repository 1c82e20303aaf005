"""The scale benchmark: a CSV file through the five steps to Parquet, three ways, each a process of its own.

1. ``harvester run SOURCE.csv --op ... --output OUT.parquet``: the source uploaded in
   parts, the job run over chunks, the result downloaded as Arrow and written batch
   by batch; on a fresh stack, then once more on the same stack (``harvester_warm``:
   its worker and gateway processes have run a job, as a deployed stack's have);
2. ``bench/plain.py``: a plain single-process pandas script (``read_csv``, the same
   steps in ordinary pandas, ``to_parquet``);
3. ``bench/inline.py``: the inline-JSON path (records in ``POST /jobs``, the result
   as JSON Lines), against a gateway started with ``MAX_CONTENT_LENGTH`` and
   ``MAX_RECORDS`` raised so it is accepted. Skipped above :data:`INLINE_MAX_ROWS`.

Each runs alone under ``/usr/bin/time -v`` (wall time, peak RSS), one after the
other, round after round. Each datajobs run gets a stack of its own: a new
``redis-server`` (``localstack.redis_server``), one worker of concurrency 2 and the
gateway under gunicorn with 2 processes (``localstack.running``), whose processes'
peak memory is sampled meanwhile (the worker's process group, the gateway's
process tree, Redis, and Redis's ``used_memory_peak``). The CSV
(:func:`bench.workload.write_csv`, seeded) and the outputs live in a temporary
directory removed at the end; the logs stay in the benchmark's log directory.
After each round the outputs are compared (row count, ids in order). Figures,
never assertions.
"""

import contextlib
import json
import shutil
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq

import localstack
from bench import memory, workload
from bench.report import mb, ratio, secs

ROOT = localstack.ROOT
#: Seconds between two polls of the job, for the inline client (the harvester waits on the job instead; its
#: ``--poll-interval`` counts only against a gateway that does not wait).
POLL_INTERVAL = 0.25
#: Largest dataset sent inline: its JSON body is parsed whole into Python objects by the gateway
#: (about 1.5 GB of JSON and well over 10 GB of objects at 10,000,000 rows).
INLINE_MAX_ROWS = 2_000_000
#: The harvester's goals, from the issue: no slower than the plain pandas script, and its peak RSS under this.
GOAL_RATIO = 1.0
GOAL_RSS_KB = 300 * 1024
#: The contenders, in the order each round runs them; each runner measures the runs it names.
CONTENDERS = ("plain", "harvester", "inline")
RUN_NAMES = {"plain": ("plain",), "harvester": ("harvester", "harvester_warm"), "inline": ("inline",)}
STACK_LABELS = {"harvester": "`harvester run` (first harvest)", "inline": "inline JSON"}
LABELS = {
    "plain": "plain pandas script, one process",
    "harvester": "`harvester run`, fresh stack (1 worker, concurrency 2)",
    "harvester_warm": "`harvester run` again, same stack",
    "inline": "inline JSON (`POST /jobs` with the records), fresh stack",
}


def progress(text):
    print(f"bench: {text}", file=sys.stderr, flush=True)


def timeout_for(rows):
    """Seconds one run may take: generous, so only a hung run stops."""
    return int(600 + rows * 300 / 1_000_000)


def run_scale(rows, repeat, log_dir):
    """Write the CSV, run every contender ``repeat`` times, check the outputs; return the figures as a dict."""
    memory.check_time()
    contenders = [c for c in CONTENDERS if c != "inline" or rows <= INLINE_MAX_ROWS]
    names = [name for c in contenders for name in RUN_NAMES[c]]
    figures = {"rows": rows, "repeat": repeat, "contenders": names, "runs": {name: [] for name in names},
               "checks": [], "warnings": [], "redis_version": memory.redis_version()}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="datajobs-scale-"))
    try:
        source = work / f"scale-{rows}.csv"
        progress(f"scale: writing {rows:,} rows of CSV to {source}")
        figures["csv_bytes"] = workload.write_csv(source, rows)
        progress(f"scale: {figures['csv_bytes'] / 1e6:,.1f} MB; {repeat} round(s) of {', '.join(contenders)}")
        for round_ in range(1, repeat + 1):
            outputs = {}
            for contender in contenders:
                logs = Path(log_dir) / f"scale-{rows}" / f"{round_}-{contender}"
                logs.mkdir(parents=True, exist_ok=True)
                progress(f"scale: round {round_}/{repeat}: {contender} (logs in {logs})")
                runs = RUNNERS[contender](source, work, logs, rows)
                for name, run in runs.items():
                    progress(f"scale: {name}: " + (run["error"] or f"{run['wall']:.2f} s, {mb(run['max_rss_kb'])}"))
                    figures["runs"][name].append(run)
                    if run["error"] is None:
                        outputs[name] = run.pop("output")
                    else:
                        figures["warnings"].append(f"round {round_}: {name} failed: {run['error']}")
            check, warnings = check_outputs(outputs)
            figures["checks"].append(f"round {round_}: {check}")
            figures["warnings"] += [f"round {round_}: {w}" for w in warnings]
            for path in work.glob("*.parquet*"):
                path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures


# --- the runners: each returns {name: run} for its RUN_NAMES, a run being
# {"wall", "user", "system", "max_rss_kb", "rows_out", "phases", "error", "output", ...}


def _run(timed, output, rows_out, phases, error=None, **more):
    return {"wall": timed.wall, "user": timed.user, "system": timed.system, "max_rss_kb": timed.max_rss_kb,
            "rows_out": rows_out, "phases": phases, "error": error, "output": output, **more}  # fmt: skip


def _script_output(timed):
    """The JSON object a bench script prints last on stdout, or None."""
    lines = [line for line in timed.stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]) if lines else None
    except ValueError:
        return None


def run_plain(source, work, logs, rows):
    output = work / "plain.parquet"
    timed = memory.timed([sys.executable, ROOT / "bench" / "plain.py", source, output],
                         log_path=logs / "plain.log", cwd=ROOT, timeout=timeout_for(rows))  # fmt: skip
    said = _script_output(timed)
    if timed.returncode != 0 or said is None:
        return {"plain": _run(timed, output, None, {}, f"exit status {timed.returncode}; see {logs / 'plain.log'}")}
    return {"plain": _run(timed, output, said["rows_out"], said["phases"])}


class Probe:
    """What a running stack has used so far: its processes' peak memory and their CPU time (sampled when asked)."""

    def __init__(self, stack, redis_url, sampler):
        self.stack, self.redis_url, self.sampler = stack, redis_url, sampler

    def cpu(self):
        """CPU seconds per set of processes (worker, gateway, Redis) since the stack was started."""
        self.sampler.sample()
        return {name: self.sampler.cpu_seconds(name) for name in self.sampler.finders}

    def peaks(self):
        """The peaks so far (a process's VmHWM, and Redis's ``used_memory_peak``, only grow)."""
        sampler, redis = self.sampler, memory.redis_memory(self.redis_url)
        sampler.sample()
        return {
            "worker_kb": sampler.largest_kb("worker"),
            "worker_sum_kb": sampler.summed_kb("worker"),
            "worker_processes": sampler.processes("worker"),
            "gateway_kb": sampler.largest_kb("gateway"),
            "gateway_processes": sampler.processes("gateway"),
            "redis_peak_human": redis["peak_human"],
            "redis_peak_bytes": redis["peak_bytes"],
            "redis_rss_kb": sampler.largest_kb("redis"),
        }


@contextlib.contextmanager
def _stack(logs, extra_env=None):
    """A stack of its own on a ``redis-server`` of its own, its processes sampled meanwhile; yields a :class:`Probe`."""
    with localstack.redis_server() as redis_url, localstack.running(
        redis_url, workers=1, concurrency=2, log_dir=logs, extra_env=extra_env
    ) as stack:
        workload.check_operations(stack.url)
        redis_pid = memory.redis_memory(redis_url)["pid"]
        finders = {
            "worker": memory.process_group(stack.workers[0].pid),
            "gateway": memory.process_tree(stack.gateway.pid),
            "redis": lambda table: [redis_pid],
        }
        with memory.PeakSampler(finders) as sampler:
            yield Probe(stack, redis_url, sampler)


def _used(probe, command):
    """Run ``command`` (a callable returning a :class:`memory.Timed`) on the probed stack.

    Returns ``(timed, extra)``: ``extra`` holds the stack's CPU during the command and its peaks at the end.
    """
    before = probe.cpu()
    timed = command()
    after = probe.cpu()
    cpu = {name: after[name] - before[name] for name in after}
    return timed, {"stack_cpu": sum(cpu.values()), "worker_cpu": cpu["worker"], **probe.peaks()}


def harvester_command(source, output, gateway, rows):
    """The ``harvester run`` command line of the benchmark."""
    ops = [arg for step in workload.OPERATIONS for arg in ("--op", f"{step['name']}:{json.dumps(step['params'])}")]
    return [localstack.BIN / "harvester", "run", source, *ops, "--output", output, "--force", "--gateway", gateway,
            "--timeout", str(timeout_for(rows)), "--poll-interval", str(POLL_INTERVAL), "--json"]  # fmt: skip


def run_harvester(source, work, logs, rows):
    """Two harvests on one fresh stack, one after the other: ``harvester`` (cold) and ``harvester_warm``.

    The second one's memory peaks include the first's (and Redis still holds the first's dataset).
    """
    runs = {}
    with _stack(logs) as probe:
        for name in RUN_NAMES["harvester"]:
            output, log_path = work / f"{name}.parquet", logs / f"{name}.log"
            argv = harvester_command(source, output, probe.stack.url, rows)
            timed, extra = _used(probe, lambda: memory.timed(argv, log_path=log_path, cwd=ROOT,
                                                             timeout=timeout_for(rows) + 60))  # fmt: skip
            runs[name] = _harvest(timed, output, log_path, extra)
    return runs


def _harvest(timed, output, log_path, extra):
    """One harvest's run, from ``/usr/bin/time`` and the manifest beside its output."""
    manifest_path = Path(f"{output}.manifest.json")
    if timed.returncode != 0 or not manifest_path.exists():
        said = _script_output(timed) or {}
        error = (said.get("error") or {}).get("message") or f"see {log_path}"
        return _run(timed, output, None, {}, f"exit status {timed.returncode}: {error}", **extra)
    manifest = json.loads(manifest_path.read_text())
    steps = {s["name"]: s["seconds"] for s in manifest["operation_stats"]}
    return _run(timed, output, manifest["rows_out"], harvester_phases(timed.wall, manifest["timings"]), steps=steps,
                parts=manifest["dataset"]["parts"], **extra)  # fmt: skip


def harvester_phases(wall, timings):
    """A harvest's wall time split by its manifest's timestamps (harvester's and gateway's, one clock)."""
    at = {key: datetime.fromisoformat(value).timestamp() for key, value in timings.items() if isinstance(value, str)}
    job = {key: datetime.fromisoformat(value).timestamp() for key, value in timings["job"].items()}
    return {
        "start and exit": wall - timings["seconds"],  # interpreter, imports; the manifest and the summary
        "upload": at["uploaded_at"] - at["started_at"],  # read, parts sent, the gateway storing chunks, commit
        "submit and queue": job["started_at"] - at["uploaded_at"],
        "job running": job["finished_at"] - job["started_at"],
        "until seen": at["finished_at"] - job["finished_at"],  # how late the harvester's wait learned of the end
        "download and write": at["written_at"] - at["finished_at"],
    }


def run_inline(source, work, logs, rows):
    # The records go in one body: let the gateway take it (this is the path being measured, not its limits).
    extra_env = {"MAX_CONTENT_LENGTH": str(64 * 1024**3), "MAX_RECORDS": str(max(rows, 1))}
    output, log_path = work / "inline.parquet", logs / "inline.log"
    with _stack(logs, extra_env) as probe:
        argv = [sys.executable, ROOT / "bench" / "inline.py", source, output, "--gateway", probe.stack.url,
                "--timeout", str(timeout_for(rows)), "--poll-interval", str(POLL_INTERVAL)]  # fmt: skip
        timed, extra = _used(probe, lambda: memory.timed(argv, log_path=log_path, cwd=ROOT,
                                                         timeout=timeout_for(rows) + 60))  # fmt: skip
    said = _script_output(timed)
    if timed.returncode != 0 or said is None:
        return {"inline": _run(timed, output, None, {}, f"exit status {timed.returncode}; see {log_path}", **extra)}
    return {"inline": _run(timed, output, said["rows_out"], said["phases"], **extra)}


RUNNERS = {"plain": run_plain, "harvester": run_harvester, "inline": run_inline}


# --- the outputs agree --------------------------------------------------------------


def check_outputs(outputs):
    """Compare the Parquet files of one round: row count and ids in order; return (a sentence, warnings)."""
    ids = {name: pq.read_table(path, columns=["id"]).column("id").to_numpy() for name, path in outputs.items()}
    if not ids:
        return "no output to compare", ["no contender wrote an output"]
    reference = "plain" if "plain" in ids else next(iter(ids))
    counts = ", ".join(f"{name} {len(values):,}" for name, values in ids.items())
    warnings = []
    for name, values in ids.items():
        if name == reference:
            continue
        if len(values) != len(ids[reference]):
            warnings.append(f"{name} wrote {len(values):,} rows but {reference} {len(ids[reference]):,}")
        elif not (values == ids[reference]).all():
            warnings.append(f"{name} wrote as many rows as {reference}, but not the same ids in the same order")
    verdict = "the same ids in the same order" if not warnings else "THEY DIFFER (see the warnings)"
    return f"{counts} rows: {verdict}", warnings


# --- the report -----------------------------------------------------------------------


def _ok(runs):
    return [run for run in runs if run["error"] is None]


def median_run(runs):
    """The run of median wall time (the lower middle one for an even count), or None."""
    done = sorted(_ok(runs), key=lambda run: run["wall"])
    return done[(len(done) - 1) // 2] if done else None


def _median_wall(runs):
    done = _ok(runs)
    return statistics.median(run["wall"] for run in done) if done else None


def tables(f):
    """The scale tables as (header, rows) pairs: wall time and peak RSS; the stacks' memory."""
    plain = _median_wall(f["runs"]["plain"])
    title = f"{f['rows']:,} rows ({f['csv_bytes'] / 1e6:,.0f} MB of CSV), 5 steps, to Parquet"
    header = [title, "wall time", "× plain pandas", "peak RSS of the command", "CPU: command + stack", "rows out"]
    rows = []
    for name in f["contenders"]:
        runs, wall = f["runs"][name], _median_wall(f["runs"][name])
        best = median_run(runs)
        if best is None:
            rows.append([LABELS[name], "failed", "", "", "", ""])
            continue
        rss = max(run["max_rss_kb"] for run in _ok(runs))
        cpu = secs(best["user"] + best["system"])
        if "stack_cpu" in best:  # worker, gateway and Redis, during the run
            cpu = f"{best['user'] + best['system']:.2f} + {best['stack_cpu']:.2f} s"
        rows.append([LABELS[name], secs(wall), ratio(wall, plain) if plain else "n/a", mb(rss), cpu, f"{best['rows_out']:,}"])
    stacks = [name for name in f["contenders"] if name in ("harvester", "inline") and _ok(f["runs"][name])]
    memory_header = ["peak memory of the stack (max over runs)", *[STACK_LABELS[name] for name in stacks]]

    def most(name, key):
        return max(run[key] for run in _ok(f["runs"][name]))

    memory_rows = [
        ["worker, largest process (VmHWM)", *[mb(most(n, "worker_kb")) for n in stacks]],
        ["worker, its processes' peaks added up", *[f"{mb(most(n, 'worker_sum_kb'))} ({most(n, 'worker_processes')} processes)" for n in stacks]],
        ["gateway, largest process (VmHWM)", *[mb(most(n, "gateway_kb")) for n in stacks]],
        ["Redis `used_memory_peak`", *[_redis_peak(f["runs"][n]) for n in stacks]],
        ["Redis process (VmHWM)", *[mb(most(n, "redis_rss_kb")) for n in stacks]],
    ]  # fmt: skip
    return (header, rows), (memory_header, memory_rows)


def _redis_peak(runs):
    top = max(_ok(runs), key=lambda run: run["redis_peak_bytes"])
    return top["redis_peak_human"]


def _phases(run):
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in run["phases"].items())


def notes(f):
    """What the tables need to be read right: goals, where the time goes, the runs, the setup, the check."""
    out = []
    plain = _median_wall(f["runs"]["plain"])
    cold, warm = _median_wall(f["runs"]["harvester"]), _median_wall(f["runs"]["harvester_warm"])
    if cold is not None and plain:
        rss = max(run["max_rss_kb"] for name in ("harvester", "harvester_warm") for run in _ok(f["runs"][name]))
        again = f", {ratio(warm, plain, 2)} again on the same stack" if warm is not None else ""
        out.append(
            f"Goals: `harvester run` at most {GOAL_RATIO:.1f}× the plain pandas script: "
            f"{'met' if cold <= GOAL_RATIO * plain else 'not met'} ({ratio(cold, plain, 2)} on a fresh stack{again}); "
            f"its peak RSS under {mb(GOAL_RSS_KB)}: {'met' if rss < GOAL_RSS_KB else 'not met'} ({mb(rss)})."
        )
    for name in f["contenders"]:
        run = median_run(f["runs"][name])
        if run is None:
            continue
        text = f"Where the time goes, {name} (median run, seconds): {_phases(run)}"
        if "steps" in run:
            steps = ", ".join(f"{step} {seconds:.2f}" for step, seconds in run["steps"].items())
            text += f"; the worker's steps (summed over chunks and processes): {steps}; {run['parts']} part(s) uploaded"
        out.append(text + ".")
    runs = "; ".join(
        f"{name} " + ", ".join(secs(run["wall"]) if run["error"] is None else "failed" for run in f["runs"][name])
        for name in f["contenders"]
    )
    out.append(f"Runs ({f['repeat']} round(s); median shown): {runs}.")
    out.append(
        f"Pipeline: {workload.PIPELINE_TEXT}. CSV from `bench/workload.py` `write_csv` (seed 0; id, name, email, "
        "city, score, quantity, active, comment; nulls in city, score, comment)."
    )
    out.append(
        "Setup: each contender a process of its own, alone on the machine, one after the other; wall time, peak RSS "
        "and the command's CPU from `/usr/bin/time -v`. Each datajobs contender on a fresh `redis-server` and "
        "`localstack.running` stack (1 worker, concurrency 2; gateway under gunicorn, 2 processes); the second "
        "harvest reuses the first one's stack. Stack peaks are the VmHWM of the worker's processes, the gateway's "
        f"and Redis, sampled every {memory.SAMPLE_SECONDS} s, and Redis's `used_memory_peak`; the stack's CPU is "
        f"theirs during the run. The harvester waits on its job (`GET /jobs/<id>?wait=`); the inline client polls "
        f"every {POLL_INTERVAL} s."
    )
    if not any(name == "inline" for name in f["contenders"]):
        out.append(f"Inline JSON not run: above {INLINE_MAX_ROWS:,} rows its body is parsed whole by the gateway.")
    out.append("Output check: " + "; ".join(f["checks"]) + ".")
    return out
