"""Text for the terminal: a harvest's summary, one job, a list of jobs, a dry run's plan, the operations catalogue."""

import json
from datetime import datetime, timezone

from harvester.status import JobStatus

_OUTCOME_TEXT = {
    "timeout": "timed out",
    "unreachable": "gateway unreachable",
    "gateway_error": "gateway error",
    "rejected": "refused by the gateway",
    "unauthorized": "token missing or refused by the gateway",
    "input_error": "input error",
    "not_found": "not found",
}


def format_summary(summary):
    """Return a harvest summary (:meth:`harvester.harvest.Harvest.summary`) as text.

    The first line says how it ended; then one row per operation; then where the
    output went.
    """
    job = f"Job {summary['job_id']}" if summary["job_id"] else "No job"
    seconds = f" in {summary['seconds']:.1f} s" if summary["seconds"] is not None else ""
    outcome = summary["outcome"]
    error = summary["error"] or {}
    if outcome == JobStatus.COMPLETED:
        head = f"{job} completed{seconds}: {summary['rows_in']} rows in -> {summary['rows_out']} rows out."
    elif outcome == JobStatus.FAILED:
        at, name = error.get("operation_index"), error.get("operation")
        where = f" at operation {at}" if at is not None else ""
        where += f" ({name})" if name else ""
        head = f"{job} failed{seconds}{where}: {error.get('type', 'error')}: {error.get('message', '')}"
    elif outcome == JobStatus.CANCELLED:
        head = f"{job} was cancelled{seconds}" + (f": {error['message']}" if error.get("message") else ".")
    else:
        after = f" after {summary['seconds']:.1f} s" if summary["seconds"] is not None else ""
        head = f"{job}: {_OUTCOME_TEXT.get(outcome, outcome)}{after}"
        progress = summary.get("progress")
        if summary["status"] and progress:
            head += f", last seen {summary['status']} ({_progress(progress)})"
        head += "."
    lines = [head]
    lines += _stats_table(summary["operations"])
    if summary["output"]:
        lines.append(f"Output: {summary['output']} (manifest: {summary['manifest']})")
    return "\n".join(lines)


def format_job(job):
    """Return one job (``GET /jobs/<id>``) as text, without its records."""
    lines = [f"Job {job.get('job_id')}: {job.get('status')}"]
    error = job.get("error")
    # A failed or cancelled job's message is its error's: the Error line below says it, once.
    if job.get("message") and not (error and error.get("message") == job["message"]):
        lines.append(f"  {job['message']}")
    if job.get("progress"):
        lines.append(f"Progress: {_progress(job['progress'])}")
    times = [f"{key.split('_')[0]} {job[key]}" for key in ("created_at", "started_at", "finished_at") if job.get(key)]
    if times:
        lines.append("Times: " + ", ".join(times))
    data = job.get("data") or {}
    if data:
        lines.append(f"Rows: {data.get('processed_items')} in -> {data.get('output_items')} out")
        lines += _stats_table(data.get("operations") or [])
    if error:
        at = error.get("operation_index")
        where = f" at operation {at}" if at is not None else ""
        lines.append(f"Error{where}: {error.get('type')}: {error.get('message')}")
    return "\n".join(lines)


#: Columns of ``harvester jobs``: (heading, right-aligned).
_JOB_COLUMNS = (
    ("JOB", False),
    ("STATUS", False),
    ("PROGRESS", False),
    ("ROWS IN", True),
    ("ROWS OUT", True),
    ("CREATED (UTC)", False),
    ("DURATION", True),
)


def format_jobs(jobs, now=None):
    """Return a list of jobs (``GET /jobs``) as a table, one line per job, newest first as given::

        JOB                               STATUS      PROGRESS              ROWS IN  ROWS OUT  CREATED (UTC)        DURATION
        3f2c5a0e8d8a4b6f9c1e2d3a4b5c6d7e  processing  1/2 ops, 3/8 chunks         -         -  2026-11-27 20:25:01    12.3 s

    Rows are known once a job has completed; a duration runs from the start (or, for a job that
    never started, the submission) to the end, or to ``now`` (default: the current time) until then.
    """
    if not jobs:
        return "No jobs."
    now = now or datetime.now(timezone.utc)
    rows = [[heading for heading, _ in _JOB_COLUMNS]]
    for job in jobs:
        data = job.get("data") or {}
        rows.append(
            [
                str(job.get("job_id")),
                str(job.get("status")),
                _short_progress(job.get("progress") or {}),
                _count(data.get("processed_items")),
                _count(data.get("output_items")),
                _shown_time(job.get("created_at")),
                _duration(job, now),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_JOB_COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, (_, right) in zip(row, widths, _JOB_COLUMNS)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _short_progress(progress):
    text = f"{progress.get('operations_done', '?')}/{progress.get('operations_total', '?')} ops"
    if progress.get("chunks_total"):
        text += f", {progress.get('chunks_done', 0)}/{progress['chunks_total']} chunks"
    return text


def _count(value):
    return f"{value:,}" if isinstance(value, int) else "-"


def _parse_time(text):
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _shown_time(text):
    moment = _parse_time(text)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if moment else (text or "-")


def _duration(job, now):
    start = _parse_time(job.get("started_at")) or _parse_time(job.get("created_at"))
    ended = job.get("status") in {s.value for s in JobStatus if s.is_terminal}
    end = _parse_time(job.get("finished_at")) or (None if ended else now)
    if start is None or end is None:
        return "-"
    return seconds_text((end - start).total_seconds())


def seconds_text(seconds):
    """A duration as ``0.4 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 10 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_plan(plan, source=None):
    """Return a dry run's answer (``POST /jobs?dry_run=true``) as text: the input's columns, then each step's::

        Input: in.csv, 3 rows: id integer, name string
        Step 0 drop_nulls: id integer, name string
        Step 1 sample: columns depend on the data
        <the gateway's message>
    """
    of = f"{source}, " if source else ""
    rows = plan.get("rows")
    lines = [f"Input: {of}{_count(rows)} rows: {_columns(plan.get('columns'))}"]
    for step in plan.get("steps") or []:
        columns = step.get("columns")
        after = _columns(columns) if columns is not None else "columns depend on the data"
        lines.append(f"Step {step.get('index')} {step.get('name')}: {after}")
    if plan.get("message"):
        lines.append(plan["message"])
    return "\n".join(lines)


def _columns(columns):
    if not columns:
        return "no columns"
    return ", ".join(f"{c.get('name')} {c.get('type')}" for c in columns)


def _progress(progress):
    text = f"{progress.get('operations_done', '?')}/{progress.get('operations_total', '?')} operations"
    if progress.get("current_operation"):
        text += f", running {progress['current_operation']}"
    if progress.get("chunks_total"):
        text += f", {progress.get('chunks_done', 0)}/{progress['chunks_total']} chunks"
    if progress.get("phase"):
        text += f" ({progress['phase']})"
    return text


def _stats_table(stats):
    if not stats:
        return []
    width = max(len("operation"), *(len(str(s.get("name", "?"))) for s in stats))
    lines = [f"  {'#':>2}  {'operation':<{width}}  {'rows in':>9}  {'rows out':>9}  {'seconds':>8}"]
    for index, s in enumerate(stats):
        seconds = s.get("seconds")
        seconds = f"{seconds:.3f}" if isinstance(seconds, (int, float)) else ""
        lines.append(
            f"  {index:>2}  {str(s.get('name', '?')):<{width}}  {str(s.get('rows_in', '')):>9}  "
            f"{str(s.get('rows_out', '')):>9}  {seconds:>8}"
        )
    return lines


def format_catalogue(catalogue):
    """Return the operations catalogue (``GET /operations``) as text::

        filter_rows
            Keep the rows where a column compares true to a value.
            column    required      string
            operator  required      one of "eq", "ne", ...
            value     default null  string or number
    """
    blocks = []
    for entry in sorted(catalogue, key=lambda e: e.get("name", "")):
        lines = [entry.get("name", "?")]
        lines += [f"    {line}" for line in (entry.get("description") or "").strip().splitlines()]
        schema = entry.get("parameters") or {}
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        rows = [(name, _type_text(spec), _need_text(name, spec, required)) for name, spec in properties.items()]
        if not rows:
            lines.append("    (no parameters)")
        name_width = max((len(row[0]) for row in rows), default=0)
        need_width = max((len(row[2]) for row in rows), default=0)
        lines += [f"    {n:<{name_width}}  {need:<{need_width}}  {t}" for n, t, need in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _need_text(name, spec, required):
    if name in required:
        return "required"
    if "default" in spec:
        return f"default {json.dumps(spec['default'], ensure_ascii=False)}"
    return "optional"


def _type_text(spec):
    """A short reading of a JSON Schema: ``string``, ``array of string``, ``one of "a", "b"``..."""
    if "enum" in spec:
        return "one of " + ", ".join(json.dumps(v, ensure_ascii=False) for v in spec["enum"])
    if "const" in spec:
        return json.dumps(spec["const"], ensure_ascii=False)
    for key in ("anyOf", "oneOf"):
        if key in spec:
            return " or ".join(_type_text(s) for s in spec[key])
    kinds = spec.get("type", "any")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    items = spec.get("items")
    return " or ".join(
        f"array of {_type_text(items)}" if kind == "array" and isinstance(items, dict) else kind for kind in kinds
    )
