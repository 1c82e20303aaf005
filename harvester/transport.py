"""How the harvester talks HTTP: sessions, the retry policy, deadlines and the bearer token.

Retries live in one place: a urllib3 :class:`~urllib3.util.retry.Retry` mounted on
a :class:`requests.Session`. It retries connection errors and 502/503/504 with
exponential backoff, honours ``Retry-After``, and never sleeps past the deadline
of the call it serves. When it gives up, :func:`send` raises
:class:`~harvester.errors.GatewayUnreachable`; :func:`retry_until` (and
:meth:`~harvester.client.GatewayClient.wait`) then try again at the next interval
while their deadline holds.

An optional bearer token goes in ``Authorization`` on every request to the
gateway (and only there: the session also fetches source URLs, so the token is
a per-request ``requests`` auth, never a session header). It is kept out of
every repr, log line and error message.

The gateway's commands are in :mod:`harvester.client`; the readers use
:func:`send` for source URLs.
"""

import contextvars
import json
import logging
import re
import time

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.exceptions import ConnectTimeoutError, ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

from harvester import __version__
from harvester.errors import GatewayUnreachable

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
# What the call in progress talks to, as a retry's log line names it.
_target = contextvars.ContextVar("harvester_target", default="gateway")


def remaining(deadline):
    """Return the seconds left before ``deadline`` (a ``time.monotonic()`` value); infinite when None."""
    return float("inf") if deadline is None else deadline - time.monotonic()


class GatewayRetry(Retry):
    """urllib3 ``Retry`` that stops at the current call's deadline and says each retry in one short line.

    The line reads ``gateway unreachable, retrying in 1.0 s (2 of 4)`` (or ``gateway
    answered 503, ...``): the second retry of the 4 the policy allows after the first
    attempt (fewer are made when the deadline comes first). urllib3's own warning after
    a connection error, which is a repr of the Retry and of the exception, is dropped
    for this class (:class:`_OwnRetryLines`), and its retries after a 503 are logged
    only at DEBUG.
    """

    def is_exhausted(self):
        return super().is_exhausted() or remaining(_deadline.get()) <= 0

    def get_backoff_time(self):
        return max(0.0, min(super().get_backoff_time(), remaining(_deadline.get())))

    def get_retry_after(self, response):
        seconds = super().get_retry_after(response)
        if seconds is None:
            return None
        return max(0.0, min(seconds, remaining(_deadline.get())))

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        if response is not None and error is None:
            if response.get_redirect_location():
                return new
            problem = f"answered {response.status}"
            # urllib3 sleeps the Retry-After it was given, else the backoff (Retry.sleep).
            wait = new.get_retry_after(response) if self.respect_retry_after_header else None
        else:
            problem = _problem(error)
            wait = None
        if wait is None:
            wait = new.get_backoff_time()
        when = f"in {wait:.1f} s" if wait >= 0.05 else "now"
        count = len(new.history)
        of = f"{count} of {count + new.total}" if isinstance(new.total, int) else f"retry {count}"
        log.warning("%s %s, retrying %s (%s)", _target.get(), problem, when, of)
        return new


def _problem(error):
    """What went wrong with one attempt, in a few words (never a repr of urllib3's objects)."""
    if isinstance(error, ConnectTimeoutError):  # NewConnectionError too: refused, no route, unknown host
        return "unreachable"
    if isinstance(error, ReadTimeoutError):
        return "did not answer in time"
    if isinstance(error, ProtocolError):
        return "dropped the connection"
    return "failed"


class _OwnRetryLines(logging.Filter):
    """Drop urllib3's "Retrying (GatewayRetry(total=...)) after connection broken by ..." warnings.

    :meth:`GatewayRetry.increment` has logged the same retry in a line of its own;
    a retry policy of someone else's keeps urllib3's line.
    """

    def filter(self, record):
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and isinstance(args[0], GatewayRetry))


_URLLIB3_POOL_LOG = logging.getLogger("urllib3.connectionpool")
if not any(isinstance(f, _OwnRetryLines) for f in _URLLIB3_POOL_LOG.filters):
    _URLLIB3_POOL_LOG.addFilter(_OwnRetryLines())


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
    left = remaining(deadline)
    if left == float("inf"):
        return connect, read
    left = max(left, MIN_ATTEMPT_TIMEOUT)
    return min(connect, left), min(read, left)


def send(session, method, url, *, timeout=DEFAULT_TIMEOUT, deadline=None, target="gateway", **kwargs):
    """Send one request through ``session`` and return the response, whatever its status.

    ``target`` names what ``url`` is in the retries' log lines (``gateway``, ``source``).

    Raises:
        GatewayUnreachable: the retries are exhausted (connection errors, timeouts).
    """
    token, named = _deadline.set(deadline), _target.set(target)
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
        _target.reset(named)


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
            if remaining(deadline) <= 0:
                raise
            log.warning("%s failed: %s. Trying again in %.1f s.", what.capitalize(), exc, interval)
        sleep_until(interval, deadline)


def sleep_until(interval, deadline):
    """Sleep ``interval`` seconds, or until ``deadline`` if that comes first."""
    time.sleep(max(0.0, min(interval, remaining(deadline))))


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
