"""Harvester errors: every error the harvester raises on purpose is a :class:`HarvesterError`.

The CLI maps each class to one exit code (``harvester.cli.ERROR_OUTCOMES``); the
client raises the gateway ones, the readers and writers raise :class:`InputError`.
"""


class HarvesterError(Exception):
    """Base class of every harvester error."""

    @property
    def message(self):
        return str(self.args[0]) if self.args else ""


class InputError(HarvesterError):
    """A local input cannot be used: the source, an operation spec, the output path.

    Raised before anything is submitted.
    """


class GatewayError(HarvesterError):
    """The gateway answered with an error and retrying would not help.

    ``status`` is the HTTP status; ``code``, ``message`` and ``details`` come from
    the gateway's error body ``{"error": {"code", "message", "details"}}``, or are
    made up from the status line when the body is not in that shape.
    """

    #: Seconds the gateway's ``Retry-After`` asked for, when it sent one.
    retry_after = None

    def __init__(self, status, code, message, details=None):
        super().__init__(message)
        self.status, self.code, self.details = status, code, details or {}

    def __str__(self):
        return f"{self.status} {self.code}: {self.message}"


class Unauthorized(GatewayError):
    """The gateway answered 401: it needs a bearer token, or refused the one sent. The token is never in the message."""


class JobNotFound(GatewayError):
    """``GET /jobs/<id>`` answered 404: the gateway has no such job (or it expired)."""


class ServerError(GatewayError):
    """The gateway failed: a 5xx that is not retried (502, 503 and 504 are), or an answer the API does not allow."""


class GatewayUnreachable(HarvesterError):
    """The gateway could not be reached, or kept answering 502/503/504, after every retry."""

    def __init__(self, message, job_id=None):
        super().__init__(message)
        self.job_id = job_id


class JobTimeout(HarvesterError):
    """The deadline passed before the job completed or failed. ``job`` is the last answer seen."""

    def __init__(self, job_id, job, seconds=None):
        status = (job or {}).get("status", "unknown")
        after = f" after {seconds:g} s" if seconds is not None else ""
        super().__init__(f"Job {job_id} was still {status}{after}.")
        self.job_id, self.job = job_id, job
