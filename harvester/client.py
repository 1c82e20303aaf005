"""HTTP client of the datajobs gateway, shared by the harvester CLI and the benchmarks.

Retries live in one place: a urllib3 :class:`~urllib3.util.retry.Retry` mounted on
a :class:`requests.Session`. It retries connection errors and 502/503/504 with
exponential backoff, honours ``Retry-After``, and never sleeps past the deadline
of the call it serves. When it gives up, the client raises
:class:`~harvester.errors.GatewayUnreachable`; :func:`retry_until` and
:meth:`GatewayClient.wait` then try again at the next poll while their deadline
holds. Other error answers raise :class:`~harvester.errors.GatewayError` at once.

One client per thread: a ``requests.Session`` is not meant to be shared between
threads.
"""

import contextvars
import logging
import time
import uuid
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from harvester import __version__
from harvester.errors import GatewayError, GatewayUnreachable, JobNotFound, JobTimeout, ServerError
from workers.status import JobStatus

log = logging.getLogger(__name__)

#: (connect, read) timeout of one HTTP attempt, in seconds.
DEFAULT_TIMEOUT = (3.05, 30.0)
#: Answers that mean "the gateway is there but cannot serve right now".
RETRY_STATUSES = frozenset({502, 503, 504})
#: Shortest timeout given to an attempt made at or just after a deadline.
MIN_ATTEMPT_TIMEOUT = 0.5

# The deadline of the call in progress. urllib3 copies the Retry for every attempt
# and requests has no per-request retry hook, so the Retry reads the deadline
# from here; a context variable keeps calls made by different threads apart.
_deadline = contextvars.ContextVar("harvester_deadline", default=None)


def _remaining(deadline):
    """Seconds left before ``deadline`` (a ``time.monotonic()`` value); infinite when None."""
    return float("inf") if deadline is None else deadline - time.monotonic()


class GatewayRetry(Retry):
    """urllib3 ``Retry`` that stops at the current call's deadline and logs status retries.

    urllib3 logs retries after connection errors itself (logger
    ``urllib3.connectionpool``, level WARNING) but retries after a 503 only at
    DEBUG, so those are logged here.
    """

    def is_exhausted(self):
        return super().is_exhausted() or _remaining(_deadline.get()) <= 0

    def get_backoff_time(self):
        return max(0.0, min(super().get_backoff_time(), _remaining(_deadline.get())))

    def get_retry_after(self, response):
        seconds = super().get_retry_after(response)
        if seconds is None:
            return None
        return max(0.0, min(seconds, _remaining(_deadline.get())))

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        if response is not None and error is None and not response.get_redirect_location():
            wait = None
            if self.respect_retry_after_header:
                wait = new.get_retry_after(response)
            if not wait:
                wait = new.get_backoff_time()
            log.warning(
                "%s %s answered %s; retrying in %.1f s (%s retries left).",
                method,
                url,
                response.status,
                wait,
                new.total,
            )
        return new


def make_retry(total=4, backoff_factor=0.5, backoff_max=10.0):
    """Return the retry policy of the client.

    Args:
        total: retries after the first attempt (connection errors and 502/503/504 alike).
        backoff_factor: sleeps between attempts are 0, 2×, 4×, 8×... this many seconds.
            Tests pass a tiny value.
        backoff_max: longest sleep between two attempts, in seconds.

    POST is retried too: the client sends an ``Idempotency-Key`` with every
    submission so that a retried POST does not create a second job once the
    gateway honours the key.
    """
    return GatewayRetry(
        total=total,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=Retry.DEFAULT_ALLOWED_METHODS | {"POST"},
        backoff_factor=backoff_factor,
        backoff_max=backoff_max,
        respect_retry_after_header=True,
        # Hand back the last 502/503/504 rather than raising: its body says why.
        raise_on_status=False,
    )


def make_session(retry=None):
    """Return a ``requests.Session`` that retries with ``retry`` (default :func:`make_retry`)."""
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry if retry is not None else make_retry())
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"datajobs-harvester/{__version__}"
    return session


def attempt_timeout(timeout, deadline):
    """Return ``timeout`` (connect, read) shortened so an attempt ends near ``deadline``."""
    connect, read = timeout
    left = _remaining(deadline)
    if left == float("inf"):
        return connect, read
    left = max(left, MIN_ATTEMPT_TIMEOUT)
    return min(connect, left), min(read, left)


def send(session, method, url, *, timeout=DEFAULT_TIMEOUT, deadline=None, **kwargs):
    """Send one request through ``session`` and return the response, whatever its status.

    Raises:
        GatewayUnreachable: the retries are exhausted (connection errors, timeouts).
    """
    token = _deadline.set(deadline)
    try:
        return session.request(method, url, timeout=attempt_timeout(timeout, deadline), **kwargs)
    except (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.RetryError,
        requests.exceptions.ChunkedEncodingError,
    ) as exc:
        raise GatewayUnreachable(f"{method} {url} failed: {_reason(exc)}") from exc
    finally:
        _deadline.reset(token)


def _reason(exc):
    """The innermost useful text of a requests exception (its urllib3 ``MaxRetryError`` reason)."""
    inner = exc.args[0] if exc.args else exc
    reason = getattr(inner, "reason", None) or inner
    text = str(reason)
    # "HTTPConnection(host='127.0.0.1', port=1): Failed to establish..." -> "Failed to establish..."
    return text.split("): ", 1)[1] if text.startswith("HTTP") and "): " in text else text


def retry_until(call, *, deadline, interval, retry_on=(GatewayUnreachable,), what="request"):
    """Return ``call()``, calling it again every ``interval`` seconds while it raises ``retry_on``.

    Gives up, re-raising the last error, once ``deadline`` (a ``time.monotonic()``
    value, or None for never) has passed. Each failure is logged at WARNING.
    """
    while True:
        try:
            return call()
        except retry_on as exc:
            if _remaining(deadline) <= 0:
                raise
            log.warning("%s failed: %s. Trying again in %.1f s.", what.capitalize(), exc, interval)
        sleep_until(interval, deadline)


def sleep_until(interval, deadline):
    """Sleep ``interval`` seconds, or until ``deadline`` if that comes first."""
    time.sleep(max(0.0, min(interval, _remaining(deadline))))


class GatewayClient:
    """Client of one datajobs gateway.

    Args:
        base_url: the gateway, e.g. ``http://127.0.0.1:5000`` (a path prefix is kept).
        timeout: (connect, read) timeout of each HTTP attempt, in seconds.
        retry: a urllib3 ``Retry``; default :func:`make_retry`. Use a
            :class:`GatewayRetry` to keep the deadline and status-retry logging.

    Raises:
        ValueError: ``base_url`` is not an http(s) URL.

    Every method takes an optional ``deadline`` (a ``time.monotonic()`` value):
    retries stop and timeouts shrink so the call ends near it.
    """

    def __init__(self, base_url, timeout=DEFAULT_TIMEOUT, retry=None):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"The gateway must be an http(s) URL such as http://127.0.0.1:5000. Got {base_url!r}.")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = make_session(retry)

    def __repr__(self):
        return f"GatewayClient({self.base_url!r})"

    def close(self):
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def submit(self, dataset, operations, *, idempotency_key=None, deadline=None):
        """Submit a job: ``POST /jobs``. Return the gateway's answer ``{"job_id", "status", "message"}``.

        Args:
            dataset: list of records (dicts of JSON values).
            operations: list of operation names or ``{"name", "params"}`` objects.
            idempotency_key: sent as ``Idempotency-Key``; a new uuid4 when None.
                Pass the same key when submitting the same job again.

        Raises:
            GatewayError: the gateway refused the job (4xx, e.g. ``unknown_operation``).
            ServerError: the gateway failed with a 5xx other than 502/503/504.
            GatewayUnreachable: the retries are exhausted.
        """
        # The gateway does not honour the key yet (a later version will): retried
        # POSTs may still create a second job until then.
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        body = {"dataset": dataset, "operations": operations}
        return self._json("POST", "/jobs", deadline=deadline, json=body, headers=headers)

    def job(self, job_id, *, deadline=None):
        """Return one job: ``GET /jobs/<id>``.

        Raises:
            JobNotFound: the gateway has no such job (404).
            GatewayError, ServerError, GatewayUnreachable: as for :meth:`submit`.
        """
        try:
            return self._json("GET", f"/jobs/{quote(str(job_id), safe='')}", deadline=deadline)
        except GatewayError as exc:
            if exc.status == 404:
                raise JobNotFound(exc.status, exc.code, exc.message, exc.details) from None
            raise

    def operations(self, *, deadline=None):
        """Return the operations catalogue: a list of ``{"name", "description", "parameters"}``."""
        return self._json("GET", "/operations", deadline=deadline)["operations"]

    def health(self, *, deadline=None):
        """Return the gateway's ``GET /health`` answer."""
        return self._json("GET", "/health", deadline=deadline)

    def wait(self, job_id, *, poll_interval=2.0, deadline=None, on_change=None):
        """Poll ``GET /jobs/<id>`` every ``poll_interval`` seconds until the job completes or fails.

        Args:
            on_change: called with the job each time its status or its count of
                operations done changes (including the first answer).

        Returns the last answer (status ``completed`` or ``failed``). While the
        deadline holds, an unreachable gateway or a 5xx is logged and polled again
        at the next interval.

        Raises:
            JobTimeout: the deadline passed while the job was still running.
            GatewayUnreachable, ServerError: the last poll, at the deadline, failed.
            JobNotFound, GatewayError: the gateway does not know the job, or refused.
        """
        seen = None
        while True:
            job = retry_until(
                lambda: self.job(job_id, deadline=deadline),
                deadline=deadline,
                interval=poll_interval,
                retry_on=(GatewayUnreachable, ServerError),
                what=f"polling job {job_id}",
            )
            status = job_status(job)
            now = (status, (job.get("progress") or {}).get("operations_done"))
            if now != seen and on_change is not None:
                on_change(job)
            seen = now
            if status.is_terminal:
                return job
            if _remaining(deadline) <= 0:
                raise JobTimeout(job_id, job)
            sleep_until(poll_interval, deadline)

    def _json(self, method, path, *, deadline=None, **kwargs):
        """Send a request to the gateway and return its JSON body, or raise the fitting error."""
        url = self.base_url + path
        response = send(self.session, method, url, timeout=self.timeout, deadline=deadline, **kwargs)
        if response.status_code in RETRY_STATUSES:
            error = gateway_error(response)
            raise GatewayUnreachable(f"{method} {url} kept answering {error.status} ({error.code}: {error.message})")
        if response.status_code >= 400:
            raise gateway_error(response)
        try:
            return response.json()
        except ValueError:
            raise ServerError(
                response.status_code, "invalid_response", f"{method} {url} answered something that is not JSON."
            ) from None


def gateway_error(response):
    """Return the :class:`GatewayError` (or :class:`ServerError`) an error response stands for."""
    cls = ServerError if response.status_code >= 500 else GatewayError
    try:
        error = response.json()["error"]
        return cls(response.status_code, error["code"], error["message"], error.get("details"))
    except (ValueError, KeyError, TypeError):
        code = (response.reason or "error").lower().replace(" ", "_")
        return cls(response.status_code, code, f"The gateway answered {response.status_code} {response.reason}.")


def job_status(job):
    """Return the :class:`~workers.status.JobStatus` of a job answer.

    Raises:
        ServerError: the answer has no status we know.
    """
    try:
        return JobStatus(job["status"])
    except (KeyError, TypeError, ValueError):
        text = f"The gateway answered a job without a known status: {job!r:.200}"
        raise ServerError(200, "invalid_response", text) from None
