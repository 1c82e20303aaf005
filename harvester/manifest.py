"""The manifest written beside a harvest's output: where the records came from and how.

``out.csv`` gets ``out.csv.manifest.json``. It is written after the output, so a
manifest means the output beside it is complete; its ``output.sha256`` lets
anyone check that it still is, and ``source_sha256`` which bytes were read.
"""

from harvester import __version__
from harvester.io import shown


def manifest_path(output):
    """Return the manifest path of an output path: ``out.csv`` -> ``out.csv.manifest.json``."""
    return f"{output}.manifest.json"


def build_manifest(*, source, source_sha256, gateway, job, operations, rows_in, dataset, output, timings):
    """Return the manifest of a completed job as a JSON-ready dict.

    Args:
        source: the source as given (path or URL: kept without its userinfo, query and fragment), or None
            (``harvester fetch``).
        source_sha256: SHA-256 (hex) of the source's bytes as read, or None.
        gateway: base URL of the gateway.
        job: the gateway's last answer for the job (status ``completed``).
        operations: the operations as submitted.
        rows_in: records uploaded (None when the harvest did not upload them).
        dataset: the :class:`~harvester.upload.Uploaded` dataset, or None (``harvester fetch``).
        output: the :class:`~harvester.outputs.Output` written: path, format, rows,
            bytes, SHA-256, and whether (and how many) CSV cells were neutralised.
        timings: ``started_at``, ``uploaded_at``, ``submitted_at``, ``finished_at``, ``written_at``
            (ISO 8601 UTC, as the harvester saw them) and ``seconds`` (its wall time);
            the gateway's job timestamps are added here as ``job``.

    No token is ever part of a manifest.
    """
    data = job.get("data") or {}
    return {
        "harvester_version": __version__,
        "source": shown(source) if source is not None else None,
        "source_sha256": source_sha256,
        "gateway": gateway,
        "dataset": None
        if dataset is None
        else {
            "dataset_id": dataset.dataset_id,
            "parts": dataset.parts,
            "rows": dataset.rows,
            "bytes": dataset.bytes,
        },
        "job_id": job.get("job_id"),
        "status": job.get("status"),
        "operations": operations,
        "rows_in": data.get("processed_items", rows_in),
        "rows_out": data.get("output_items", output.rows),
        "operation_stats": data.get("operations") or [],
        "workers": data.get("workers") or [],
        "timings": {
            **timings,
            "job": {key: job.get(key) for key in ("created_at", "started_at", "finished_at")},
        },
        "output": {
            "path": str(output.path),
            "format": output.format,
            "rows": output.rows,
            "bytes": output.bytes,
            "sha256": output.sha256,
            "neutralise_formulas": output.neutralise_formulas,
            "cells_neutralised": output.cells_neutralised,
        },
    }
