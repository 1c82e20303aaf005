"""Text for the terminal: a harvest's summary, one job, the operations catalogue."""

import json

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
    if job.get("message"):
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
    error = job.get("error")
    if error:
        at = error.get("operation_index")
        where = f" at operation {at}" if at is not None else ""
        lines.append(f"Error{where}: {error.get('type')}: {error.get('message')}")
    return "\n".join(lines)


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
