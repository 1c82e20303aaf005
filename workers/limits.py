"""The cap on the rows a job's steps make (``MAX_OUTPUT_ROWS``), for the pipeline and the operations.

:func:`workers.pipeline.run` puts the cap in force while it runs a job's steps
(:func:`output_rows`) and checks every step's output against it afterwards. An
operation that can multiply rows (``chunk_text``) asks first, with
:func:`check_output_rows`, once it knows how many rows it is about to make and
before it makes them: so a step that would pass the cap is refused before its
memory is spent. Outside a job (the gateway's dry run on an empty frame) no cap
is in force and the check passes.
"""

import contextlib
import contextvars

_cap = contextvars.ContextVar("datajobs_max_output_rows", default=None)


class OutputLimitExceeded(Exception):
    """A step would make ``rows`` rows, more than the cap in force (``limit``)."""

    def __init__(self, rows, limit):
        super().__init__(rows, limit)
        self.rows, self.limit = rows, limit


@contextlib.contextmanager
def output_rows(limit):
    """Put ``limit`` (rows a step may make; None for no cap) in force for the operations run in this block."""
    token = _cap.set(limit)
    try:
        yield
    finally:
        _cap.reset(token)


def check_output_rows(rows):
    """Raise :class:`OutputLimitExceeded` when a step about to make ``rows`` rows would pass the cap in force."""
    limit = _cap.get()
    if limit is not None and rows > limit:
        raise OutputLimitExceeded(rows, limit)


def message(index, name, rows, limit, made=False, where=""):
    """The error message of a step over the cap: its index and name, the rows, the cap and its setting."""
    verb = "made" if made else "would make"
    return (
        f"Step {index} ({name}) {verb} {rows:,} rows{where}, more than the limit of {limit:,} (MAX_OUTPUT_ROWS, "
        "or the job's input rows if more); the job was stopped and nothing of that step's output was kept."
    )
