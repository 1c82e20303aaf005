"""The manifest written beside a harvest's output: where the records came from and how.

``out.csv`` gets ``out.csv.manifest.json``. It is written after the output, so a
manifest means the output beside it is complete.
"""

from harvester import __version__


def manifest_path(output):
    """Return the manifest path of an output path: ``out.csv`` -> ``out.csv.manifest.json``."""
    return f"{output}.manifest.json"


def build_manifest(
    *,
    source,
    gateway,
    job,
    operations,
    rows_in,
    output,
    output_format,
    timings,
    neutralise_formulas=False,
    cells_neutralised=0,
):
    """Return the manifest of a completed job as a JSON-ready dict.

    Args:
        source: the source as given (path or URL).
        gateway: base URL of the gateway.
        job: the gateway's last answer for the job (status ``completed``).
        operations: the operations as submitted.
        rows_in: records submitted.
        output, output_format: where and how the records were written.
        timings: ``started_at``, ``submitted_at``, ``finished_at`` (ISO 8601 UTC, when
            the harvester started, had the job accepted, saw it end) and ``seconds``
            (its wall time); the gateway's job timestamps are added here as ``job``.
        neutralise_formulas: whether CSV formula neutralisation was applied (only
            ever true for CSV output without ``--raw-csv``).
        cells_neutralised: how many text cells it changed.

    No token is ever part of a manifest.
    """
    data = job.get("data") or {}
    return {
        "harvester_version": __version__,
        "source": str(source),
        "gateway": gateway,
        "job_id": job.get("job_id"),
        "status": job.get("status"),
        "operations": operations,
        "rows_in": data.get("processed_items", rows_in),
        "rows_out": data.get("output_items", len(data.get("data") or [])),
        "operation_stats": data.get("operations") or [],
        "timings": {
            **timings,
            "job": {key: job.get(key) for key in ("created_at", "started_at", "finished_at")},
        },
        "output": {
            "path": str(output),
            "format": output_format,
            "neutralise_formulas": neutralise_formulas,
            "cells_neutralised": cells_neutralised,
        },
    }
