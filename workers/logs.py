"""Log lines: one line per record, in ``text`` or ``json`` (the ``LOG_FORMAT`` setting), each with its job id.

:func:`setup` configures a process; the gateway's ``create_app`` and the
worker (through Celery's ``setup_logging`` signal, :func:`setup_worker`) both
call it, so both write the same lines. A record's job id is the one bound with
:func:`bind_job` (the gateway, per request), else the id of the Celery task
being run (in datajobs the task id is the job id), else the one in Celery's
own ``Task ... received`` line, else none.

A user string can never start a log line: ``text`` lines escape CR, LF and
every other control character, exception text and tracebacks included, and
``json`` lines are JSON-encoded, which escapes them too.
"""

import contextvars
import json
import logging
import re
import sys
import time

from celery import current_task

from workers import settings

FORMATS = ("text", "json")

#: The name of the handler :func:`setup` installs, so calling it again replaces it.
HANDLER_NAME = "datajobs"

_job_id = contextvars.ContextVar("datajobs_job_id", default=None)

_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: anything a reader may take for a new line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def bind_job(job_id):
    """Tag every log line of the current context (a gateway request, say) with ``job_id``; None unbinds.

    The gateway binds the job its URL names before each request and unbinds
    after it; ``POST /jobs`` calls ``logs.bind_job(job_id)`` once it has made
    the new job's id.
    """
    _job_id.set(job_id)


def job_id_of(record):
    """The job id a record belongs to, or None: bound, else the running task's, else Celery's line's own."""
    explicit = getattr(record, "job_id", None)  # logged with extra={"job_id": ...}
    if explicit is not None:
        return explicit
    if _job_id.get() is not None:
        return _job_id.get()
    if current_task and current_task.request.id:
        return current_task.request.id
    data = getattr(record, "data", None)  # Celery logs "Task ... received" outside the task, with extra={"data": ...}
    return data.get("id") if isinstance(data, dict) else None


class JobIdFilter(logging.Filter):
    """Set ``record.job_id`` (see :func:`job_id_of`); never drops a record."""

    def filter(self, record):
        record.job_id = job_id_of(record)
        return True


def escape(text):
    """``text`` on one line: CR, LF and tab as ``\\r``, ``\\n``, ``\\t``; other controls as ``\\xNN`` or ``\\uNNNN``."""
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match):
    char = match[0]
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}")


def utc_time(record):
    """The record's time in ISO 8601, UTC, to the millisecond: ``2026-11-27T20:30:00.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class _Formatter(logging.Formatter):
    def details(self, record):
        """The record's traceback and stack, as text, or None."""
        parts = []
        if record.exc_info:
            parts.append(self.formatException(record.exc_info))
        elif record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(parts) or None


class TextFormatter(_Formatter):
    """``2026-11-27T20:30:00.123Z INFO workers.tasks job=<id or -> message``, tracebacks escaped onto the same line."""

    def format(self, record):
        job = job_id_of(record) or "-"
        line = f"{utc_time(record)} {record.levelname} {record.name} job={job} {record.getMessage()}"
        details = self.details(record)
        return escape(line if details is None else f"{line}\n{details}")


class JsonFormatter(_Formatter):
    """One JSON object: ``time``, ``level``, ``logger``, ``job_id`` (null when none), ``message``, and ``exc_info``.

    The fields are a fixed list: nothing passed with ``extra=`` is copied in
    (Celery passes each task's arguments and traceback that way).
    """

    def format(self, record):
        entry = {
            "time": utc_time(record),
            "level": record.levelname,
            "logger": record.name,
            "job_id": job_id_of(record),
            "message": record.getMessage(),
        }
        details = self.details(record)
        if details is not None:
            entry["exc_info"] = details
        # ensure_ascii also escapes U+2028/U+2029, which some readers take for line breaks.
        return json.dumps(entry, ensure_ascii=True, default=str)


_FORMATTERS = {"text": TextFormatter, "json": JsonFormatter}


def setup(fmt, level="INFO", stream=None):
    """Send this process's log records (the root logger's) to ``stream`` (stderr) as ``fmt``; return the handler.

    ``fmt`` is ``"text"`` or ``"json"``; ``level`` a level name or number.
    Calling it again replaces the handler it installed before (``create_app``
    runs once per test) and leaves other handlers (pytest's) alone.
    Raises ``ValueError`` for any other ``fmt``.
    """
    if fmt not in _FORMATTERS:
        raise ValueError(f"The LOG_FORMAT setting must be one of {', '.join(map(repr, FORMATS))}. Got {fmt!r} instead.")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(_FORMATTERS[fmt]())
    handler.addFilter(JobIdFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def setup_worker(app, loglevel=None, logfile=None):
    """Configure the logging of a Celery worker's process (``workers/celery.py`` calls it from Celery's signals).

    Answering ``celery.signals.setup_logging`` turns Celery's own logging
    configuration off, so every record, Celery's ``Task ... received/succeeded``
    lines and task loggers included, reaches the root handler of :func:`setup`.
    The rest is what Celery would have done: warnings are logged, billiard's
    pool logger (which does not propagate) logs errors, and print()s and stray
    stderr writes become log records when ``worker_redirect_stdouts`` is on
    (the default). Celery's startup banner and shutdown notices are printed
    to stdout, not logged: ``celery --quiet -A workers worker`` hides the banner.
    """
    # The original stderr: in a pool process sys.stderr may already be Celery's logging proxy.
    stream = open(logfile, "a", encoding="utf-8") if logfile else sys.__stderr__
    handler = setup(settings.get("LOG_FORMAT"), loglevel or "INFO", stream)
    pool_logger = logging.getLogger("multiprocessing")
    pool_logger.handlers = [handler]
    pool_logger.setLevel(logging.ERROR)
    logging.captureWarnings(True)
    if app.conf.worker_redirect_stdouts:
        app.log.redirect_stdouts(app.conf.worker_redirect_stdouts_level)
