"""One harvest: upload a source, submit a job on it, follow it, download the result, write the manifest.

Also the parts of one: following a job submitted before (``harvester wait``),
downloading a result (``fetch``), checking a job without running it (``run --dry-run``).

Kept apart from the click commands so it can be driven without a terminal; the
CLI turns its outcome into an exit code. Nothing of the source or the result is
held whole in memory: the source goes up in parts (:mod:`harvester.upload`), the
result comes down batch by batch (:mod:`harvester.download`) into a temporary
file that becomes the output only once complete (:mod:`harvester.outputs`).
"""

import logging
import shlex
import time
import uuid
from datetime import datetime, timezone

from harvester import io, upload
from harvester.client import DEFAULT_GATEWAY, DEFAULT_MAX_WAIT
from harvester.download import download
from harvester.errors import GatewayError, HarvesterError, InputError, JobTimeout
from harvester.manifest import build_manifest, manifest_path
from harvester.operations import operation_name
from harvester.outputs import Output
from harvester.progress import Display, Task
from harvester.sources import Source
from harvester.transport import retry_until
from harvester.status import JobStatus

log = logging.getLogger(__name__)


def utc_now():
    """The current time as ISO 8601 UTC, to the millisecond."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _plural(count, noun):
    return f"{count} {noun}{'' if count == 1 else 's'}"


class Harvest:
    """One run of ``harvester run`` (:meth:`run`, :meth:`dry_run`), ``wait`` (:meth:`follow`) or ``fetch``.

    Args:
        client: a :class:`~harvester.client.GatewayClient`.
        source: path or http(s) URL of the dataset (None for :meth:`fetch`).
        operations: the job's operations, in the gateway's format.
        output: path to write the processed records to, or None to write nothing.
        poll_interval: seconds between two polls of a gateway that does not wait, and two tries of an
            unreachable one.
        max_wait: longest wait of one request for news of the job (``GET /jobs/<id>?wait=``); 0 polls.
        timeout: seconds from the start after which it gives up: upload, job and download together.
        neutralise_formulas: CSV output only: write text cells a spreadsheet would
            run as formulas with a leading ``'`` (:mod:`harvester.formulas`).
        force: write over an existing output. The source itself is never written over.
        display: a :class:`~harvester.progress.Display` for progress bars; none by default.
        part_bytes: target size of an uploaded part; :data:`~harvester.upload.PART_BYTES` when None.

    The attributes (``job_id``, ``job``, ``rows_in``, ``uploader``...) fill in as the
    run goes, so :meth:`summary` can describe a run that stopped half way.
    """

    def __init__(
        self,
        client,
        source,
        operations,
        *,
        output=None,
        poll_interval=2.0,
        max_wait=DEFAULT_MAX_WAIT,
        timeout=300.0,
        neutralise_formulas=True,
        force=False,
        display=None,
        part_bytes=None,
    ):
        self.client, self.source, self.operations = client, source, operations
        self.output, self.poll_interval, self.timeout = output, poll_interval, timeout
        self.max_wait = max_wait
        self.neutralise_formulas, self.force = neutralise_formulas, force
        self.display = display or Display()
        self.part_bytes = part_bytes or upload.PART_BYTES
        self.output_format = self.manifest = self.written = None
        self.job_id = self.job = self.rows_in = None
        self.reader = self.uploader = self.uploaded = None
        self.started = self.ended = None
        self.timings = {}
        self.stage = None  # what it is doing: uploading, submitting, following, writing (Ctrl-C tells the user)
        self.plan = None  # the gateway's answer to a dry run
        self._job_task = Task()
        self._logged = None

    def run(self):
        """Run the harvest and return its :meth:`summary`. A failed or cancelled job is an outcome, not an error.

        Only a completed job's records are written (with the manifest): a failed or
        cancelled job leaves nothing at the output path.

        Raises:
            InputError: bad or existing output path, unreadable source, or the records cannot be written.
            GatewayError: the gateway refused the dataset, the job or the token (4xx, ``Unauthorized``
                for 401) or failed (5xx, ``ServerError``).
            GatewayUnreachable: the gateway could not be reached by the deadline.
            JobTimeout: the job had not ended by the deadline.
        """
        deadline = self._start()
        try:
            self._check_output()
            self.reader = Source(self.source, session=self.client.session, deadline=deadline)
            with self.display:
                self._upload(deadline)
                self.stage = "submitting"
                self.job_id = self._submit(deadline)["job_id"]
                self.timings["submitted_at"] = utc_now()
                log.info(
                    "Submitted job %s (%s, %s) to %s.",
                    self.job_id,
                    _plural(self.rows_in, "record"),
                    _plural(len(self.operations), "operation"),
                    self.client.base_url,
                )
                self._follow(deadline)
        finally:
            self.ended = time.monotonic()
        return self.summary()

    def follow(self, job_id):
        """Follow job ``job_id``, submitted before, to its end, and write its output if it completes.

        What ``run`` does once it has submitted (the same waiting, the same writing);
        return the :meth:`summary`.

        Raises:
            InputError: bad or existing output path, or the records cannot be written.
            JobNotFound: the gateway has no such job.
            GatewayError, GatewayUnreachable, JobTimeout: as for :meth:`run`.
        """
        deadline = self._start()
        self.job_id = job_id
        try:
            self._check_output()
            with self.display:
                self._follow(deadline)
        finally:
            self.ended = time.monotonic()
        return self.summary()

    def dry_run(self):
        """Upload the source, have the gateway check the job on it (``POST /jobs?dry_run=true``), delete it.

        The dataset is uploaded as :meth:`run` uploads it, so the checks see the
        columns and types the real job would (every row read, types widened as
        needed), not a sample's. Nothing is queued; the dataset is deleted after the
        check (best effort: it expires anyway). Return the plan (``plan``).

        Raises:
            InputError: unreadable source.
            GatewayError: the gateway refused the job (what ``run`` would be refused), or the dataset.
            GatewayUnreachable: the gateway could not be reached by the deadline.
        """
        deadline = self._start()
        try:
            self.reader = Source(self.source, session=self.client.session, deadline=deadline)
            with self.display:
                self._upload(deadline)
            self.stage = "checking"
            self.plan = retry_until(
                lambda: self.client.plan(self.uploaded.dataset_id, self.operations, deadline=deadline),
                deadline=deadline,
                interval=self.poll_interval,
                what="checking the job",
            )
        finally:
            self.drop_dataset()
            self.ended = time.monotonic()
        return self.plan

    def drop_dataset(self, seconds=5.0):
        """Delete the dataset this harvest uploaded (or was uploading), if any; best effort, it expires anyway."""
        dataset_id = self.uploader.dataset_id if self.uploader else None
        if dataset_id is None:
            return
        try:
            self.client.delete_dataset(dataset_id, deadline=time.monotonic() + seconds)
        except HarvesterError as exc:
            log.warning("Could not delete dataset %s (%s); it expires on its own.", dataset_id, exc)
            return
        log.info("Deleted dataset %s from %s.", dataset_id, self.client.base_url)

    def _follow(self, deadline):
        self.stage = "following"
        self.job = self._wait(deadline)
        self.timings["finished_at"] = utc_now()
        if self.status is not JobStatus.COMPLETED:
            return
        if self.output is not None:
            self.stage = "writing"
            self._write(deadline)
        else:
            log.info(
                "The result of job %s stays on the gateway until it expires (JOB_TTL_SECONDS on the gateway, "
                "a day by default): %s",
                self.job_id,
                fetch_command(self.client.base_url, self.job_id),
            )

    def fetch(self, job_id):
        """Download the result of job ``job_id``, which ended before, into the output; return the :meth:`summary`.

        A job that failed or was cancelled is an outcome (nothing is written); one
        still queued or running is an error.

        Raises:
            InputError: bad or existing output path, the job has not ended, or the records cannot be written.
            JobNotFound: the gateway has no such job.
            GatewayError, GatewayUnreachable: as for :meth:`run`.
        """
        deadline = self._start()
        self.job_id = job_id
        self.stage = "following"
        try:
            self._check_output()
            self.job = retry_until(
                lambda: self.client.job(job_id, deadline=deadline),
                deadline=deadline,
                interval=self.poll_interval,
                what=f"getting job {job_id}",
            )
            if not self.status.is_terminal:
                raise InputError(
                    f"Job {job_id} has not finished: it is {self.status.value}. Follow it with "
                    f"harvester status {job_id}, then fetch it."
                )
            if self.status is JobStatus.COMPLETED:
                self.stage = "writing"
                with self.display:
                    self._write(deadline)
        finally:
            self.ended = time.monotonic()
        return self.summary()

    def _start(self):
        self.started = time.monotonic()
        self.timings["started_at"] = utc_now()
        return self.started + self.timeout

    def _check_output(self):
        if self.output is not None:
            self.output_format = io.check_output(self.output, source=self.source, force=self.force)

    def _upload(self, deadline):
        self.stage = "uploading"
        reader = self.reader
        log.info("Uploading %s to %s.", io.shown(self.source), self.client.base_url)
        task = self.display.task("Uploading", total=None, unit=reader.unit)
        self.uploader = upload.Upload(
            self.client,
            reader,
            deadline=deadline,
            interval=self.poll_interval,
            progress=task,
            part_bytes=self.part_bytes,
        )
        self.uploaded = self.uploader.run()
        task.finish()
        self.rows_in = self.uploaded.rows
        self.timings["uploaded_at"] = utc_now()
        log.info(
            "Uploaded %s from %s as dataset %s (%s, %s).",
            _plural(self.rows_in, "record"),
            io.shown(self.source),
            self.uploaded.dataset_id,
            _plural(self.uploaded.parts, "part"),
            _plural(self.uploaded.bytes, "byte"),
        )

    def _submit(self, deadline):
        # One key for every try of this submission: a retry gets the job the first try made (200), not a second one.
        key = str(uuid.uuid4())
        dataset_id = self.uploaded.dataset_id
        return retry_until(
            lambda: self.client.submit(dataset_id, self.operations, idempotency_key=key, deadline=deadline),
            deadline=deadline,
            interval=self.poll_interval,
            what="submitting the job",
        )

    def _wait(self, deadline):
        self._job_task = self.display.task(f"Job {self.job_id[:8]}", total=None, unit="chunks")
        try:
            job = self.client.wait(
                self.job_id,
                poll_interval=self.poll_interval,
                max_wait=self.max_wait,
                deadline=deadline,
                on_change=self._on_change,
            )
        except JobTimeout as exc:
            self.job = exc.job
            raise JobTimeout(self.job_id, exc.job, seconds=self.timeout) from None
        self._job_task.finish()
        return job

    def _on_change(self, job):
        self.job = job
        progress = job.get("progress") or {}
        current = progress.get("current_operation")
        done, total = progress.get("operations_done", "?"), progress.get("operations_total", len(self.operations))
        running = f" (now {current})" if current and job.get("status") == JobStatus.PROCESSING else ""
        phase = f", {progress['phase']}" if progress.get("phase") else ""
        self._job_task.update(
            progress.get("chunks_done") or 0,
            total=progress.get("chunks_total"),
            description=f"Job {self.job_id[:8]} {job.get('status')}: {done}/{total} operations{phase}",
        )
        # One log line per status or operation, not one per chunk.
        if (job.get("status"), done) != self._logged:
            self._logged = (job.get("status"), done)
            log.info("Job %s %s: %s/%s operations%s.", self.job_id, job.get("status"), done, total, running)

    def _write(self, deadline):
        data = self.job.get("data") or {}
        rows = data.get("output_items")
        log.info("Downloading the result of job %s (%s) to %s.", self.job_id, _plural(rows, "record"), self.output)
        task = self.display.task("Downloading", total=rows, unit="rows")
        try:
            with Output(self.output, self.output_format, neutralise_formulas=self.neutralise_formulas) as out:
                download(
                    self.client,
                    self.job_id,
                    out,
                    rows=rows,
                    deadline=deadline,
                    interval=self.poll_interval,
                    progress=task,
                )
        except HarvesterError as exc:
            log.info(
                "The result stays at the gateway until the job expires: %s",
                fetch_command(self.client.base_url, self.job_id, self.output),
            )
            raise exc from None
        task.finish()
        self.written = out
        self.timings["written_at"] = utc_now()
        # seconds: wall time from reading the source to the output written.
        timings = {**self.timings, "seconds": round(time.monotonic() - self.started, 3)}
        manifest = build_manifest(
            source=self.source,
            source_sha256=self.reader.sha256 if self.reader else None,
            gateway=self.client.base_url,
            job=self.job,
            operations=self.operations,
            rows_in=self.rows_in,
            dataset=self.uploaded,
            output=out,
            timings=timings,
        )
        io.write_json(manifest, manifest_path(self.output))
        self.manifest = manifest_path(self.output)
        if out.cells_neutralised:
            log.info(
                "Wrote %s with a leading ' so spreadsheets do not run them as formulas (--raw-csv to keep them as is).",
                _plural(out.cells_neutralised, "text cell"),
            )
        log.info("Wrote %d records to %s and the manifest to %s.", out.rows, self.output, self.manifest)

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
            "source": io.shown(self.source) if self.source is not None else None,
            "gateway": self.client.base_url,
            "dataset_id": self.uploader.dataset_id if self.uploader else None,
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


def command(base_url, *args):
    """A harvester command line to go on with, as text to paste: ``--gateway`` when it is not the default."""
    line = ["harvester", *map(str, args)]
    if base_url.rstrip("/") != DEFAULT_GATEWAY:
        line += ["--gateway", base_url]
    return shlex.join(line)


def fetch_command(base_url, job_id, output=None):
    """``harvester fetch <id> --output PATH`` for the job at ``base_url``."""
    return command(base_url, "fetch", job_id, "--output", output if output is not None else "PATH")


def describe_error(error):
    """Return a :class:`~harvester.errors.HarvesterError` as a JSON-ready ``{"type", "message", ...}``."""
    described = {"type": type(error).__name__, "message": error.message}
    if isinstance(error, GatewayError):
        described.update(status=error.status, code=error.code, details=error.details)
    return described
