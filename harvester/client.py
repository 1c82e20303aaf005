"""HTTP client of the datajobs gateway, shared by the harvester CLI and the benchmarks.

Retries live in one place: a urllib3 :class:`~urllib3.util.retry.Retry` mounted on
a :class:`requests.Session`. It retries connection errors and 502/503/504 with
exponential backoff, honours ``Retry-After``, and never sleeps past the deadline
of the call it serves. When it gives up, the client raises
:class:`~harvester.errors.GatewayUnreachable`; :func:`retry_until` and
:meth:`GatewayClient.wait` then try again at the next poll while their deadline
holds. Other error answers raise :class:`~harvester.errors.GatewayError` at once.

An optional bearer token goes in ``Authorization`` on every request to the
gateway (and only there: the session also fetches source URLs, so the token is
a per-request ``requests`` auth, never a session header). It is kept out of
every repr, log line and error message.

One client per thread: a ``requests.Session`` is not meant to be shared between
threads.
"""

import contextvars
import json
import logging
import re
import time
import uuid
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.util.retry import Retry

from harvester import __version__
from harvester.errors import GatewayError, GatewayUnreachable, JobNotFound, JobTimeout, ServerError, Unauthorized
from workers.status import JobStatus

log = logging.getLogger(__name__)

#: (connect, read) timeout of one HTTP attempt, in seconds.
DEFAULT_TIMEOUT = (3.05, 30.0)
#: Answers that mean "the gateway is there but cannot serve right now".
RETRY_STATUSES = frozenset({502, 503, 504})
#: Shortest timeout given to an attempt made at or just after a deadline.
MIN_ATTEMPT_TIMEOUT = 0.5
#: What a bearer token may hold: visible ASCII, no spaces (anything else cannot go in a header as is).
TOKEN_PATTERN = re.compile(r"[\x21-\x7e]+")

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
    submission, so a retried POST gets the job the first try made (answered 200)
    rather than a second job.
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


def check_token(token):
    """Return ``token`` if it can be sent as ``Authorization: Bearer <token>``.

    Raises:
        ValueError: it is empty or holds spaces, control or non-ASCII characters.
            The message never shows the token.
    """
    if not isinstance(token, str) or not TOKEN_PATTERN.fullmatch(token):
        raise ValueError(
            "The token cannot be sent in an HTTP header: it must be non-empty visible ASCII "
            "without spaces (it is not shown here)."
        )
    return token


class BearerAuth(AuthBase):
    """``requests`` auth that sends ``Authorization: Bearer <token>``; its repr hides the token."""

    def __init__(self, token):
        self._token = check_token(token)

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def redact(self, value):
        """Return ``value`` (text or any JSON value) with the token replaced by ``***``, should a server echo it."""
        if isinstance(value, str):
            return value.replace(self._token, "***")
        # The token is visible ASCII: in JSON text it is itself, but for " and \ escaped.
        return json.loads(json.dumps(value).replace(json.dumps(self._token)[1:-1], "***"))

    def __repr__(self):
        return "BearerAuth(token=***)"


class GatewayClient:
    """Client of one datajobs gateway.

    Args:
        base_url: the gateway, e.g. ``http://127.0.0.1:5000`` (a path prefix is kept).
        timeout: (connect, read) timeout of each HTTP attempt, in seconds.
        retry: a urllib3 ``Retry``; default :func:`make_retry`. Use a
            :class:`GatewayRetry` to keep the deadline and status-retry logging.
        token: bearer token sent to the gateway with every request, or None.

    Raises:
        ValueError: ``base_url`` is not an http(s) URL, or ``token`` cannot be sent
            (see :func:`check_token`).

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
        """Submit a job: ``POST /jobs``. Return the gateway's answer: a dict with ``job_id`` and ``status``.

        A new job is answered 202 ``{"job_id", "status", "message"}``. A submission
        the gateway already has under the same ``Idempotency-Key`` (a retried POST
        whose first answer was lost) is answered 200 with that job, as
        ``GET /jobs/<id>`` shows it; both are returned alike.

        Args:
            dataset: list of records (dicts of JSON values).
            operations: list of operation names or ``{"name", "params"}`` objects.
            idempotency_key: sent as ``Idempotency-Key``; a new uuid4 when None.
                Pass the same key when submitting the same job again.

        Raises:
            Unauthorized: the gateway needs a token, or refused this one (401).
            GatewayError: the gateway refused the job (4xx, e.g. ``unknown_operation``,
                or 409 ``idempotency_key_reused``: the key names a different job).
            ServerError: the gateway failed with a 5xx other than 502/503/504, or
                answered without a job id.
            GatewayUnreachable: the retries are exhausted.
        """
        key = idempotency_key or str(uuid.uuid4())
        body = {"dataset": dataset, "operations": operations}
        try:
            response = self._send("POST", "/jobs", deadline=deadline, json=body, headers={"Idempotency-Key": key})
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
        return self._body(self._send(method, path, deadline=deadline, **kwargs))

    def _send(self, method, path, *, deadline=None, **kwargs):
        """Send a request to the gateway and return its (2xx or 3xx) response, or raise the fitting error."""
        url = self.base_url + path
        response = send(self.session, method, url, timeout=self.timeout, deadline=deadline, auth=self.auth, **kwargs)
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
        return type(error)(error.status, error.code, message, details)


def gateway_error(response):
    """Return the :class:`GatewayError` (:class:`ServerError`, :class:`Unauthorized`) an error response stands for."""
    cls = ServerError if response.status_code >= 500 else Unauthorized if response.status_code == 401 else GatewayError
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
