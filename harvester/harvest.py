"""One harvest: read a source, submit it, wait for the job, write the records and the manifest.

Kept apart from the click commands so it can be driven without a terminal; the
CLI turns its outcome into an exit code.
"""

import logging
import time
import uuid
from datetime import datetime, timezone

from harvester import io
from harvester.client import retry_until
from harvester.errors import GatewayError, InputError, JobTimeout
from harvester.manifest import build_manifest, manifest_path
from harvester.operations import operation_name
from workers.status import JobStatus

log = logging.getLogger(__name__)


def utc_now():
    """The current time as ISO 8601 UTC, to the millisecond."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _plural(count, noun):
    return f"{count} {noun}{'' if count == 1 else 's'}"


class Harvest:
    """One run of ``harvester run``.

    Args:
        client: a :class:`~harvester.client.GatewayClient`.
        source: path or http(s) URL of the dataset.
        operations: the job's operations, in the gateway's format.
        output: path to write the processed records to, or None to write nothing.
        poll_interval: seconds between two polls (and two tries of an unreachable gateway).
        timeout: seconds from the start of :meth:`run` after which it gives up.
        neutralise_formulas: CSV output only: write text cells a spreadsheet would
            run as formulas with a leading ``'`` (:func:`harvester.io.neutralise_formula`).

    The attributes (``job_id``, ``job``, ``rows_in``...) fill in as the run goes,
    so :meth:`summary` can describe a run that stopped half way.
    """

    def __init__(
        self, client, source, operations, *, output=None, poll_interval=2.0, timeout=300.0, neutralise_formulas=True
    ):
        self.client, self.source, self.operations = client, source, operations
        self.output, self.poll_interval, self.timeout = output, poll_interval, timeout
        self.neutralise_formulas = neutralise_formulas
        self.output_format = self.manifest = None
        self.job_id = self.job = self.rows_in = None
        self.started = self.ended = None
        self.timings = {}

    def run(self):
        """Run the harvest and return its :meth:`summary`. A failed or cancelled job is an outcome, not an error.

        Only a completed job's records are written (with the manifest): a failed or
        cancelled job leaves nothing at the output path.

        Raises:
            InputError: bad output path, unreadable source, or the records cannot be written.
            GatewayError: the gateway refused the job or the token (4xx, ``Unauthorized`` for 401)
                or failed (5xx, ``ServerError``).
            GatewayUnreachable: the gateway could not be reached by the deadline.
            JobTimeout: the job had not ended by the deadline.
        """
        self.started = time.monotonic()
        self.timings["started_at"] = utc_now()
        deadline = self.started + self.timeout
        try:
            if self.output is not None:
                self.output_format = io.check_output(self.output)
            dataset = io.read_records(self.source, session=self.client.session, deadline=deadline)
            self.rows_in = len(dataset)
            log.info("Read %s from %s.", _plural(self.rows_in, "record"), self.source)
            self.job_id = self._submit(dataset, deadline)["job_id"]
            self.timings["submitted_at"] = utc_now()
            log.info(
                "Submitted job %s (%s, %s) to %s.",
                self.job_id,
                _plural(self.rows_in, "record"),
                _plural(len(self.operations), "operation"),
                self.client.base_url,
            )
            self.job = self._wait(deadline)
            self.timings["finished_at"] = utc_now()
            if self.output is not None and self.status is JobStatus.COMPLETED:
                try:
                    self._write()
                except InputError as exc:
                    raise InputError(
                        f"{exc.message} The records stay at the gateway until the job expires: "
                        f"harvester status {self.job_id} --json"
                    ) from None
        finally:
            self.ended = time.monotonic()
        return self.summary()

    def _submit(self, dataset, deadline):
        # One key for every try of this submission: a retry gets the job the first try made (200), not a second one.
        key = str(uuid.uuid4())
        return retry_until(
            lambda: self.client.submit(dataset, self.operations, idempotency_key=key, deadline=deadline),
            deadline=deadline,
            interval=self.poll_interval,
            what="submitting the job",
        )

    def _wait(self, deadline):
        try:
            return self.client.wait(
                self.job_id, poll_interval=self.poll_interval, deadline=deadline, on_change=self._on_change
            )
        except JobTimeout as exc:
            self.job = exc.job
            raise JobTimeout(self.job_id, exc.job, seconds=self.timeout) from None

    def _on_change(self, job):
        self.job = job
        progress = job.get("progress") or {}
        current = progress.get("current_operation")
        log.info(
            "Job %s %s: %s/%s operations%s.",
            self.job_id,
            job.get("status"),
            progress.get("operations_done", "?"),
            progress.get("operations_total", len(self.operations)),
            f" (now {current})" if current and job.get("status") == JobStatus.PROCESSING else "",
        )

    def _write(self):
        data = self.job.get("data") or {}
        records = data.get("data") or []
        written = io.write_records(
            records, self.output, self.output_format, neutralise_formulas=self.neutralise_formulas
        )
        # seconds: wall time from reading the source to the output written.
        timings = {**self.timings, "seconds": round(time.monotonic() - self.started, 3)}
        manifest = build_manifest(
            source=self.source,
            gateway=self.client.base_url,
            job=self.job,
            operations=self.operations,
            rows_in=self.rows_in,
            output=self.output,
            output_format=self.output_format,
            timings=timings,
            neutralise_formulas=self.neutralise_formulas and written.format == "csv",
            cells_neutralised=written.cells_neutralised,
        )
        io.write_json(manifest, manifest_path(self.output))
        self.manifest = manifest_path(self.output)
        if written.cells_neutralised:
            log.info(
                "Wrote %s with a leading ' so spreadsheets do not run them as formulas (--raw-csv to keep them as is).",
                _plural(written.cells_neutralised, "text cell"),
            )
        log.info("Wrote %d records to %s and the manifest to %s.", len(records), self.output, self.manifest)

    @property
    def status(self):
        """The job's last known :class:`~workers.status.JobStatus`, or None before the first answer."""
        return JobStatus(self.job["status"]) if self.job else None

    def summary(self, outcome=None, error=None):
        """Return the run as a JSON-ready dict: what a user wants to see at the end.

        Args:
            outcome: what happened, when the run ended by an error (``timeout``,
                ``unreachable``...); the job's status otherwise.
            error: that error.
        """
        data = (self.job or {}).get("data") or {}
        ended = self.ended if self.ended is not None else time.monotonic()
        summary = {
            "outcome": outcome or (self.status.value if self.status else None),
            "status": self.status.value if self.status else None,
            "job_id": self.job_id,
            "source": str(self.source),
            "gateway": self.client.base_url,
            "rows_in": data.get("processed_items", self.rows_in),
            "rows_out": data.get("output_items"),
            "operations": data.get("operations") or [],
            "seconds": round(ended - self.started, 3) if self.started is not None else None,
            "output": str(self.output) if self.manifest else None,
            "manifest": self.manifest,
            "error": None,
        }
        if self.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            summary["error"] = dict(self.job.get("error") or {})
            index = summary["error"].get("operation_index")
            if isinstance(index, int) and 0 <= index < len(self.operations):
                summary["error"]["operation"] = operation_name(self.operations[index])
        if error is not None:
            summary["error"] = describe_error(error)
        if self.job and self.status is not JobStatus.COMPLETED:
            summary["progress"] = self.job.get("progress")
        return summary


def describe_error(error):
    """Return a :class:`~harvester.errors.HarvesterError` as a JSON-ready ``{"type", "message", ...}``."""
    described = {"type": type(error).__name__, "message": error.message}
    if isinstance(error, GatewayError):
        described.update(status=error.status, code=error.code, details=error.details)
    return described
