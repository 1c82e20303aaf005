"""Running a job's segments over its chunks, without Celery: what the tasks call, and what tests check.

A segment (``pipeline.segments``) runs either over one chunk (:func:`run_chunk`,
row-local steps, any chunk apart from the others) or over all the rows at once
(:func:`run_whole`). Both read their input from the data store and write their
output there as chunks of at most ``chunk_rows`` rows; a fanned-out segment's
output is the :func:`~workers.chunks.join` of its chunks' outputs, in order.
:func:`fans_out` is the one place that decides which.
"""

import uuid

from workers import chunks, frames, pipeline


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


def _run_steps(frame, segment, stats, on_progress, interrupts):
    out, step_stats = pipeline.run(frame, list(segment.steps), on_progress=on_progress, interrupts=interrupts)
    add_stats(stats, {step.index: entry for step, entry in zip(segment.steps, step_stats)})
    return frames.frame_to_table(out)


def _writer(data, job_id, section, chunk_rows):
    # A section of its own per run: a rerun never overwrites chunks an earlier run may still be named by.
    name = f"{section}-{uuid.uuid4().hex[:8]}"
    return chunks.ChunkWriter(data, "job", job_id, name, chunk_rows, mixed_as_json=True)


def run_chunk(data, job_id, segment, ref, index, chunk_rows, on_progress=None, interrupts=()):
    """Run row-local ``segment`` over chunk ``index`` of ``ref``; return ``{"ref", "stats"}`` of its output."""
    table = chunks.read_chunk(data, ref["chunks"][index], chunks.schema_of(ref))
    stats = new_stats(segment.steps)
    with _writer(data, job_id, f"c{index}", chunk_rows) as writer:
        writer.write(_run_steps(frames.table_to_frame(table), segment, stats, on_progress, interrupts))
        return {"ref": writer.close(), "stats": stats}


def run_whole(data, job_id, segment, ref, chunk_rows, stats, on_progress=None, interrupts=()):
    """Run ``segment`` over all the rows of ``ref`` at once, adding to ``stats``; return ``(reference, table)``
    of its output (the table as it was stored)."""
    frame = frames.table_to_frame(chunks.read_all(data, ref))
    with _writer(data, job_id, "s", chunk_rows) as writer:
        table = frames.normalise(_run_steps(frame, segment, stats, on_progress, interrupts))
        writer.write(table)
        return writer.close(), table
