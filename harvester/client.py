"""HTTP client of the datajobs gateway, shared by the harvester CLI and the benchmarks.

:class:`GatewayClient` has one method per gateway command: datasets
(``POST /datasets?upload=parts``, ``PUT /datasets/<id>/parts/<n>``, ``POST
/datasets/<id>/commit``), jobs (``POST /jobs`` and its dry run, ``GET /jobs``,
``GET /jobs/<id>``, ``DELETE /jobs/<id>``) and results
(``GET /jobs/<id>/result``). How a request is sent and retried (the session, the
retry policy, deadlines, the token) is :mod:`harvester.transport`.

Error answers raise :class:`~harvester.errors.GatewayError` (or a subclass) at
once; 502/503/504 and connection errors are retried by the transport, then raise
:class:`~harvester.errors.GatewayUnreachable`.

One client per thread: a ``requests.Session`` is not meant to be shared between
threads.
"""

import copy
import logging
import uuid
from urllib.parse import quote, urlsplit

from harvester.errors import (
    GatewayError,
    GatewayUnreachable,
    HarvesterError,
    JobNotFound,
    JobTimeout,
    ServerError,
    Unauthorized,
)
from harvester.transport import (
    DEFAULT_TIMEOUT,
    RETRY_STATUSES,
    BearerAuth,
    make_session,
    remaining,
    retry_until,
    send,
    sleep_until,
)
from harvester.status import JobStatus

log = logging.getLogger(__name__)

#: Seconds to wait before submitting again after a 429 that names no ``Retry-After``.
QUOTA_WAIT_SECONDS = 5

#: The gateway the harvester talks to unless ``--gateway`` or ``$GATEWAY_URL`` names another (the settings
#: table's ``GATEWAY_URL``: ``tests/unit/test_harvester.py`` checks they agree).
DEFAULT_GATEWAY = "http://127.0.0.1:5000"
#: Media type of the parts the harvester uploads and of the results it downloads.
ARROW_STREAM = "application/vnd.apache.arrow.stream"
#: Longest wait, in seconds, of one ``GET /jobs/<id>?wait=`` (the gateway allows up to its ``MAX_WAIT_SECONDS``).
DEFAULT_MAX_WAIT = 30.0
#: A wait shorter than this (at the very end of a deadline) is a plain look instead.
MIN_WAIT_SECONDS = 0.05
#: Seconds a waiting request's read timeout allows beyond its wait.
WAIT_MARGIN_SECONDS = 10.0
#: Seconds before the deadline a wait ends at the latest (half the time left, when less is left).
DEADLINE_MARGIN_SECONDS = 1.0


class GatewayClient:
    """Client of one datajobs gateway.

    Args:
        base_url: the gateway, e.g. ``http://127.0.0.1:5000`` (a path prefix is kept).
        timeout: (connect, read) timeout of each HTTP attempt, in seconds.
        retry: a urllib3 ``Retry``; default :func:`~harvester.transport.make_retry`. Use a
            :class:`~harvester.transport.GatewayRetry` to keep the deadline and status-retry logging.
        token: bearer token sent to the gateway with every request, or None.

    Raises:
        ValueError: ``base_url`` is not an http(s) URL, or ``token`` cannot be sent
            (see :func:`~harvester.transport.check_token`).

    Every method takes an optional ``deadline`` (a ``time.monotonic()`` value):
    retries stop and timeouts shrink so the call ends near it.
    """

    def __init__(self, base_url, timeout=DEFAULT_TIMEOUT, retry=None, token=None):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"The gateway must be an http(s) URL such as http://127.0.0.1:5000. Got {base_url!r}.")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        # Per request, not on the session: the session also fetches source URLs.
        self.auth = BearerAuth(token) if token is not None else None
        self.retry = retry
        self.session = make_session(retry)

    def __repr__(self):
        return f"GatewayClient({self.base_url!r})"

    def clone(self):
        """A client of the same gateway, with the same timeout, retry policy and token, and a session of its
        own: for another thread."""
        twin = copy.copy(self)
        twin.session = make_session(self.retry)
        return twin

    def close(self):
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # Datasets

    def create_dataset(self, *, deadline=None):
        """Open a dataset to upload in parts: ``POST /datasets?upload=parts``. Return its description.

        The description has ``dataset_id`` and ``status`` (``uploading``).

        Raises:
            GatewayError: the gateway refused (e.g. 507 ``storage_full`` is a :class:`ServerError`).
            ServerError: the answer has no ``dataset_id``.
            GatewayUnreachable: the retries are exhausted.
        """
        answer = self._json("POST", "/datasets?upload=parts", deadline=deadline)
        if not isinstance(answer, dict) or not answer.get("dataset_id"):
            raise ServerError(201, "invalid_response", "POST /datasets answered without a dataset_id.")
        return answer

    def put_part(self, dataset_id, number, body, *, deadline=None):
        """Upload part ``number`` (1, 2, ...) of a dataset: ``PUT /datasets/<id>/parts/<n>``. Return ``{"part", "rows", "bytes"}``.

        ``body`` is the part as Arrow IPC stream bytes. Sending a part again replaces it.

        Raises:
            GatewayError: 400 ``schema_mismatch`` or ``limit_exceeded``, 404, 409 ``dataset_committed``,
                413 ``payload_too_large``, 415.
            GatewayUnreachable: the retries are exhausted.
        """
        path = f"{self._dataset_path(dataset_id)}/parts/{int(number)}"
        return self._json("PUT", path, deadline=deadline, data=body, headers={"Content-Type": ARROW_STREAM})

    def commit_dataset(self, dataset_id, *, deadline=None):
        """Close a dataset uploaded in parts: ``POST /datasets/<id>/commit``. Return its description (``ready``).

        A commit whose answer was lost and was retried finds the dataset committed
        (409 ``dataset_committed``): the description is then fetched and returned.

        Raises:
            GatewayError: 400 ``schema_mismatch`` (``details`` name the part and the column),
                404 ``dataset_not_found``.
            GatewayUnreachable: the retries are exhausted.
        """
        try:
            return self._json("POST", f"{self._dataset_path(dataset_id)}/commit", deadline=deadline)
        except GatewayError as exc:
            if exc.code != "dataset_committed":
                raise
        described = self.dataset(dataset_id, deadline=deadline)
        if described.get("status") != "ready":
            raise ServerError(409, "dataset_committed", f"Dataset {dataset_id} is committed but not ready.")
        return described

    def dataset(self, dataset_id, *, deadline=None):
        """Return a dataset's description: ``GET /datasets/<id>``."""
        return self._json("GET", self._dataset_path(dataset_id), deadline=deadline)

    def delete_dataset(self, dataset_id, *, deadline=None):
        """Delete a dataset: ``DELETE /datasets/<id>``. A dataset already gone is not an error."""
        try:
            self._send("DELETE", self._dataset_path(dataset_id), deadline=deadline)
        except GatewayError as exc:
            if exc.status != 404:
                raise

    @staticmethod
    def _dataset_path(dataset_id):
        return f"/datasets/{quote(str(dataset_id), safe='')}"

    # Jobs

    def submit(self, dataset, operations, *, idempotency_key=None, deadline=None):
        """Submit a job: ``POST /jobs``. Return the gateway's answer: a dict with ``job_id`` and ``status``.

        A new job is answered 202 ``{"job_id", "status", "message"}``. A submission
        the gateway already has under the same ``Idempotency-Key`` (a retried POST
        whose first answer was lost) is answered 200 with that job, as
        ``GET /jobs/<id>`` shows it; both are returned alike.

        Args:
            dataset: the id of a dataset uploaded before (a str: sent as ``dataset_id``),
                or a list of records (dicts of JSON values: sent inline as ``dataset``).
            operations: list of operation names or ``{"name", "params"}`` objects.
            idempotency_key: sent as ``Idempotency-Key``; a new uuid4 when None.
                Pass the same key when submitting the same job again.

        Raises:
            Unauthorized: the gateway needs a token, or refused this one (401).
            GatewayError: the gateway refused the job (4xx, e.g. ``unknown_operation``,
                404 ``dataset_not_found``, 409 ``dataset_not_ready``, or 409
                ``idempotency_key_reused``: the key names a different job).
            ServerError: the gateway failed with a 5xx other than 502/503/504, or
                answered without a job id.
            GatewayUnreachable: the retries are exhausted.
        """
        key = idempotency_key or str(uuid.uuid4())
        body = {"dataset_id" if isinstance(dataset, str) else "dataset": dataset, "operations": operations}
        try:
            response = self._send_within_quota(body, key, deadline)
        except GatewayError as exc:
            if exc.code == "idempotency_key_reused":
                raise GatewayError(
                    exc.status,
                    exc.code,
                    f"{exc.message} The gateway holds a different job under this submission's Idempotency-Key "
                    f"{key}; nothing was submitted. Run again to submit with a new key.",
                    exc.details,
                ) from None
            raise
        answer = self._body(response)
        if not isinstance(answer, dict) or not answer.get("job_id"):
            raise ServerError(
                response.status_code, "invalid_response", f"POST {response.url} answered without a job_id."
            )
        if response.status_code == 200:
            log.info(
                "The gateway already had this submission (Idempotency-Key %s): job %s, %s.",
                key,
                answer["job_id"],
                answer.get("status"),
            )
        return answer

    def _send_within_quota(self, body, key, deadline):
        """POST the job; while the gateway answers 429 (the token's quota of active jobs is full), wait its
        ``Retry-After`` and submit again, with the same ``Idempotency-Key``, until ``deadline``."""
        while True:
            try:
                return self._send("POST", "/jobs", deadline=deadline, json=body, headers={"Idempotency-Key": key})
            except GatewayError as exc:
                if exc.status != 429 or remaining(deadline) <= 0:
                    raise
                wait = min(QUOTA_WAIT_SECONDS if exc.retry_after is None else exc.retry_after, remaining(deadline))
                log.warning("The gateway runs as many of this token's jobs as it allows (%s); submitting again "
                            "in %.0f s.", exc.code, wait)
                sleep_until(wait, deadline)

    def job(self, job_id, *, deadline=None):
        """Return one job: ``GET /jobs/<id>``.

        Raises:
            JobNotFound: the gateway has no such job (404).
            GatewayError, ServerError, GatewayUnreachable: as for :meth:`submit`.
        """
        return self._on_job("GET", job_id, deadline)

    def result(self, job_id, *, fmt="arrow", offset=0, deadline=None):
        """Start downloading a completed job's output: ``GET /jobs/<id>/result?format=...&offset=N``.

        Returns the streaming ``requests.Response`` (status 200), its body not read
        yet: read it (``response.raw``) and close it. ``offset`` skips that many
        rows, to resume a download that broke.

        Raises:
            JobNotFound: the gateway has no such job (404).
            GatewayError: 409 ``job_not_finished``, 410 ``result_deleted``.
            GatewayUnreachable: the retries are exhausted.
        """
        path = f"{self._job_path(job_id)}/result?format={quote(fmt)}&offset={int(offset)}"
        try:
            response = self._send("GET", path, deadline=deadline, stream=True)
        except GatewayError as exc:
            if exc.status == 404:
                raise JobNotFound(exc.status, exc.code, exc.message, exc.details) from None
            raise
        # The body is read through urllib3 (pyarrow reads response.raw): undo any Content-Encoding there.
        response.raw.decode_content = True
        return response

    def jobs(self, *, statuses=(), limit=None, cursor=None, deadline=None):
        """One page of the caller's jobs, newest first: ``GET /jobs``. Return ``(jobs, next cursor or None)``.

        Each job is its ``GET /jobs/<id>`` body without the inline records (``data.data`` is null).

        Args:
            statuses: keep the jobs in these statuses (:class:`~harvester.status.JobStatus` or their values).
            limit: at most this many (the gateway's default, 50, when None; it allows up to 500).
            cursor: the ``next`` of the page before.

        Raises:
            GatewayError: 400 ``invalid_parameter``; a gateway older than the list answers 404 or 405.
            ServerError, GatewayUnreachable: as for :meth:`submit`.
        """
        query = [("status", JobStatus(s).value) for s in statuses]
        if limit is not None:
            query.append(("limit", str(int(limit))))
        if cursor is not None:
            query.append(("cursor", cursor))
        answer = self._json("GET", "/jobs", deadline=deadline, params=query)
        if not isinstance(answer, dict) or not isinstance(answer.get("jobs"), list):
            raise ServerError(200, "invalid_response", "GET /jobs answered without a list of jobs.")
        return answer["jobs"], answer.get("next")

    def cancel(self, job_id, *, deadline=None):
        """Cancel a queued or running job: ``DELETE /jobs/<id>``. Return its body (status ``cancelled``).

        Raises:
            JobNotFound: the gateway has no such job (404).
            GatewayError: 409 ``job_finished``: it had ended already (its status in ``details["job_status"]``).
            ServerError, GatewayUnreachable: as for :meth:`submit`.
        """
        return self._on_job("DELETE", job_id, deadline)

    def _on_job(self, method, job_id, deadline):
        """``method`` on ``/jobs/<id>``: its JSON body; a 404 is :class:`JobNotFound`."""
        try:
            return self._json(method, self._job_path(job_id), deadline=deadline)
        except GatewayError as exc:
            if exc.status == 404:
                raise JobNotFound(exc.status, exc.code, exc.message, exc.details) from None
            raise

    def plan(self, dataset, operations, *, deadline=None):
        """Check a job without running it: ``POST /jobs?dry_run=true``. Return the plan.

        Every check of :meth:`submit` runs and nothing is stored or queued. The plan is
        ``{"dry_run": true, "rows", "columns": [{"name", "type"}], "steps": [{"index", "name",
        "columns" (null when they depend on the data)}], "message"}``.

        Raises:
            GatewayError: the gateway refused the job (the 4xx :meth:`submit` would get).
            ServerError: the answer is not a plan. A gateway that does not know dry runs
                queues a real job: it is cancelled at once, and this says so.
            GatewayUnreachable: the retries are exhausted.
        """
        body = {"dataset_id" if isinstance(dataset, str) else "dataset": dataset, "operations": operations}
        answer = self._json("POST", "/jobs?dry_run=true", deadline=deadline, json=body)
        if isinstance(answer, dict) and answer.get("dry_run") is True:
            return answer
        job_id = answer.get("job_id") if isinstance(answer, dict) else None
        text = "POST /jobs?dry_run=true answered something that is not a plan."
        if job_id:
            try:
                self.cancel(job_id, deadline=deadline)
                undone = "it was cancelled"
            except HarvesterError as exc:
                undone = f"cancelling it failed ({exc}): harvester cancel {job_id}"
            text = f"The gateway does not know dry runs: it queued job {job_id} instead ({undone})."
        raise ServerError(200, "invalid_response", text)

    @staticmethod
    def _job_path(job_id):
        return f"/jobs/{quote(str(job_id), safe='')}"

    def operations(self, *, deadline=None):
        """Return the operations catalogue: a list of ``{"name", "description", "parameters"}``."""
        return self._json("GET", "/operations", deadline=deadline)["operations"]

    def health(self, *, deadline=None):
        """Return the gateway's ``GET /health`` answer."""
        return self._json("GET", "/health", deadline=deadline)

    def look(self, job_id, *, wait=None, etag=None, deadline=None):
        """``GET /jobs/<id>``, waiting at the gateway up to ``wait`` seconds for the job to change from ``etag``.

        Returns ``(job, etag)``: ``job`` is None when the gateway answered 304 (the body
        named by ``etag`` is still current); ``etag`` is None from a gateway that does not
        tag (nor wait on) job bodies.

        Raises:
            JobNotFound, GatewayError, ServerError, GatewayUnreachable: as for :meth:`job`.
        """
        path, headers, timeout = self._job_path(job_id), {}, self.timeout
        if wait is not None:
            path += f"?wait={wait:g}"
            timeout = (timeout[0], max(timeout[1], wait + WAIT_MARGIN_SECONDS))  # the answer may take `wait`
        if etag is not None:
            headers["If-None-Match"] = etag
        try:
            response = self._send("GET", path, deadline=deadline, headers=headers, timeout=timeout)
        except GatewayError as exc:
            if exc.status == 404:
                raise JobNotFound(exc.status, exc.code, exc.message, exc.details) from None
            raise
        tag = response.headers.get("ETag")
        return (None if response.status_code == 304 else self._body(response)), tag

    def wait(self, job_id, *, poll_interval=2.0, max_wait=DEFAULT_MAX_WAIT, deadline=None, on_change=None):
        """Follow ``GET /jobs/<id>`` until the job completes or fails; return its last answer.

        Each request waits at the gateway for the job to change (``?wait=`` up to
        ``max_wait`` seconds, with ``If-None-Match``), so a change is seen as it happens.
        With ``max_wait`` 0, or against a gateway that does not wait (its answers carry
        no ``ETag``), the job is polled every ``poll_interval`` seconds instead.

        Args:
            on_change: called with the job each time its status or its progress
                (operations done, chunks done, phase) changes, including the first answer.

        While the deadline holds, an unreachable gateway or a 5xx is logged and tried
        again every ``poll_interval`` seconds.

        Raises:
            JobTimeout: the deadline passed while the job was still running.
            GatewayUnreachable, ServerError: the last try, at the deadline, failed.
            JobNotFound, GatewayError: the gateway does not know the job, or refused.
        """
        seen, job, tag, waits = None, None, None, max_wait > 0
        while True:
            # The first look does not wait: it brings the body (and tag) that later looks wait to change from.
            # A wait ends early enough before the deadline for its answer to arrive within it (else a late
            # answer would read as an unreachable gateway, not as a job still running).
            left = remaining(deadline)
            seconds = min(max_wait, left - min(DEADLINE_MARGIN_SECONDS, left / 2)) if waits and tag else None
            if seconds is not None and seconds < MIN_WAIT_SECONDS:
                seconds = None
            near_deadline = bool(waits and tag and seconds is None)
            try:
                answer, new_tag = retry_until(
                    lambda: self.look(job_id, wait=seconds, etag=tag if seconds else None, deadline=deadline),
                    deadline=deadline,
                    interval=poll_interval,
                    retry_on=(GatewayUnreachable, ServerError),
                    what=f"following job {job_id}",
                )
            except GatewayError as exc:
                if not (seconds and exc.status == 400 and (exc.details or {}).get("parameter") == "wait"):
                    raise
                log.info("The gateway refused to wait %g s (%s); polling job %s instead.", seconds, exc.message, job_id)
                waits = False
                continue
            if answer is not None:
                job = answer
            if new_tag is None and waits:
                log.info("The gateway does not wait on jobs; polling job %s every %g s.", job_id, poll_interval)
                waits = False
            tag = new_tag
            status = job_status(job)
            progress = job.get("progress") or {}
            now = (status, *(progress.get(key) for key in ("operations_done", "chunks_done", "phase")))
            if now != seen and on_change is not None:
                on_change(job)
            seen = now
            if status.is_terminal:
                return job
            if remaining(deadline) <= 0:
                raise JobTimeout(job_id, job)
            if not waits or near_deadline:  # polling, or too near the deadline to wait
                sleep_until(poll_interval, deadline)

    def _json(self, method, path, *, deadline=None, **kwargs):
        """Send a request to the gateway and return its JSON body, or raise the fitting error."""
        return self._body(self._send(method, path, deadline=deadline, **kwargs))

    def _send(self, method, path, *, deadline=None, timeout=None, **kwargs):
        """Send a request to the gateway and return its (2xx or 3xx) response, or raise the fitting error."""
        url = self.base_url + path
        timeout = timeout or self.timeout
        response = send(self.session, method, url, timeout=timeout, deadline=deadline, auth=self.auth, **kwargs)
        if response.status_code in RETRY_STATUSES:
            error = self._error(response)
            raise GatewayUnreachable(f"{method} {url} kept answering {error.status} ({error.code}: {error.message})")
        if response.status_code >= 400:
            raise self._error(response)
        return response

    @staticmethod
    def _body(response):
        try:
            return response.json()
        except ValueError:
            raise ServerError(
                response.status_code,
                "invalid_response",
                f"{response.request.method} {response.url} answered something that is not JSON.",
            ) from None

    def _error(self, response):
        """:func:`gateway_error` for this client: a 401 says what to do, and the token is never in the text."""
        error = gateway_error(response)
        message, details = error.message, error.details
        if isinstance(error, Unauthorized):
            if self.auth is None:
                message = f"The gateway needs a token: pass --token or set $GATEWAY_TOKEN ({message})."
            else:
                message = f"The gateway refused the token given by --token or $GATEWAY_TOKEN ({message})."
        if self.auth is not None:
            message, details = self.auth.redact(message), self.auth.redact(details)
        redacted = type(error)(error.status, error.code, message, details)
        redacted.retry_after = error.retry_after
        return redacted


def gateway_error(response):
    """Return the :class:`GatewayError` (:class:`ServerError`, :class:`Unauthorized`) an error response stands for."""
    cls = ServerError if response.status_code >= 500 else Unauthorized if response.status_code == 401 else GatewayError
    try:
        body = response.json()["error"]
        error = cls(response.status_code, body["code"], body["message"], body.get("details"))
    except (ValueError, KeyError, TypeError):
        code = (response.reason or "error").lower().replace(" ", "_")
        error = cls(response.status_code, code, f"The gateway answered {response.status_code} {response.reason}.")
    retry_after = response.headers.get("Retry-After", "")
    error.retry_after = float(retry_after) if retry_after.isdigit() else None
    return error


def job_status(job):
    """Return the :class:`~harvester.status.JobStatus` of a job answer.

    Raises:
        ServerError: the answer has no status we know.
    """
    try:
        return JobStatus(job["status"])
    except (KeyError, TypeError, ValueError):
        text = f"The gateway answered a job without a known status: {job!r:.200}"
        raise ServerError(200, "invalid_response", text) from None
