"""Running a job's segments over its chunks, without Celery: what the tasks call, and what tests check.

A segment (``pipeline.segments``) runs either over one chunk (:func:`run_chunk`,
row-local steps, any chunk apart from the others) or over all the rows at once
(:func:`run_whole`). Both read their input from the data store and write their
output there as chunks of at most ``chunk_rows`` rows; a fanned-out segment's
output is the :func:`~workers.chunks.join` of its chunks' outputs, in order.
:func:`fans_out` is the one place that decides which.

Both take ``max_rows``, the most rows a step may make (``MAX_OUTPUT_ROWS``), and
refuse a step that would pass it (``pipeline.run``). Over a fanned-out segment
the cap is on the sum over its chunks: each chunk checks its own output, may
check the sum so far before it stores its own (``before_write``), and the join
checks the whole sum (:func:`check_totals`).
"""

import uuid

from workers import chunks, frames, limits, pipeline
from workers.errors import StepFailed

#: Called as ``hook(table)`` with every input a worker process loads (a chunk, or all of a segment's rows),
#: before any step runs over it: a seam for tests (``tests/faults/ops.py`` kills the process on a poison
#: input, as the kernel's OOM killer would on one too large to load).
LOAD_HOOKS = []


def fans_out(segment, ref):
    """True when ``segment`` runs as one task per chunk of ``ref``: row-local steps over several chunks."""
    return segment.row_local and len(ref["chunks"]) > 1


def new_stats(steps):
    """Per-step counters, by step index: rows in and out, seconds (summed over chunks)."""
    return {step.index: {"name": step.name, "rows_in": 0, "rows_out": 0, "seconds": 0.0} for step in steps}


def add_stats(total, more):
    """Add the counters ``more`` into ``total`` (both by step index)."""
    for index, entry in more.items():
        into = total.setdefault(index, {**entry, "rows_in": 0, "rows_out": 0, "seconds": 0.0})
        into["rows_in"] += entry["rows_in"]
        into["rows_out"] += entry["rows_out"]
        into["seconds"] += entry["seconds"]


def check_totals(stats, steps, max_rows, where=" over the job's chunks"):
    """Raise :class:`StepFailed` (``limit_exceeded``) for the first of ``steps`` whose rows out in ``stats``
    (summed over chunks) pass ``max_rows``."""
    for step in steps:
        rows = stats.get(step.index, {}).get("rows_out", 0)
        if max_rows is not None and rows > max_rows:
            message = limits.message(step.index, step.name, rows, max_rows, made=True, where=where)
            raise StepFailed(step.index, step.name, message, pipeline.LIMIT_EXCEEDED)


def grew(stats):
    """True when a step in ``stats`` made more rows than it was given (only then can a sum pass the cap)."""
    return any(entry["rows_out"] > entry["rows_in"] for entry in stats.values())


def _load(table):
    for hook in LOAD_HOOKS:
        hook(table)
    return table


def _run_steps(frame, segment, stats, on_progress, interrupts, max_rows):
    out, step_stats = pipeline.run(
        frame, list(segment.steps), on_progress=on_progress, interrupts=interrupts, max_rows=max_rows
    )
    add_stats(stats, {step.index: entry for step, entry in zip(segment.steps, step_stats)})
    return frames.frame_to_table(out)


def _writer(data, job_id, section, chunk_rows):
    # A section of its own per run: a rerun never overwrites chunks an earlier run may still be named by.
    name = f"{section}-{uuid.uuid4().hex[:8]}"
    return chunks.ChunkWriter(data, "job", job_id, name, chunk_rows, mixed_as_json=True)


def run_chunk(data, job_id, segment, ref, index, chunk_rows, on_progress=None, interrupts=(), max_rows=None,
              before_write=None):
    """Run row-local ``segment`` over chunk ``index`` of ``ref``; return ``{"ref", "stats"}`` of its output.

    ``before_write(stats)``, if given, is called with the chunk's step counters once its steps have run and
    before its output is stored; it may raise to store nothing.
    """
    table = _load(chunks.read_chunk(data, ref["chunks"][index], chunks.schema_of(ref)))
    stats = new_stats(segment.steps)
    out = _run_steps(frames.table_to_frame(table), segment, stats, on_progress, interrupts, max_rows)
    if before_write is not None:
        before_write(stats)
    with _writer(data, job_id, f"c{index}", chunk_rows) as writer:
        writer.write(out)
        return {"ref": writer.close(), "stats": stats}


def run_whole(data, job_id, segment, ref, chunk_rows, stats, on_progress=None, interrupts=(), max_rows=None):
    """Run ``segment`` over all the rows of ``ref`` at once, adding to ``stats``; return ``(reference, table)``
    of its output (the table as it was stored)."""
    frame = frames.table_to_frame(_load(chunks.read_all(data, ref)))
    with _writer(data, job_id, "s", chunk_rows) as writer:
        table = frames.normalise(_run_steps(frame, segment, stats, on_progress, interrupts, max_rows))
        writer.write(table)
        return writer.close(), table
