"""Domain errors. Every error a user can cause is a :class:`DataJobsError`.

Each carries a snake_case ``code``, a one-sentence ``message`` and a ``details``
dict; the gateway turns them into its one JSON error shape (``app/errors.py``)
and the worker records them as a failed job's ``error``.
"""


class DataJobsError(Exception):
    """Base class of every datajobs error."""

    code = "datajobs_error"

    def __init__(self, message, **details):
        super().__init__(message)
        self.details = {k: v for k, v in details.items() if v is not None}

    @property
    def message(self):
        return str(self.args[0])


class UnknownOperation(DataJobsError):
    """An operation name that is not in the registry."""

    code = "unknown_operation"

    def __init__(self, name, step=None):
        self.name, self.step = name, step
        super().__init__(self._text(), operation=name, step=step)

    def _text(self):
        where = f"Step {self.step}: " if self.step is not None else ""
        return f"{where}unknown operation {self.name!r}. GET /operations lists the available ones."

    def at(self, step):
        return type(self)(self.name, step)


class ParameterError(DataJobsError):
    """A parameter of one operation is missing, unexpected or has a bad value.

    ``problem`` completes the sentence "The '<parameter>' parameter of <operation> ...".
    Operations raise it without knowing their step; the pipeline adds the step
    and operation name with :meth:`at`.
    """

    code = "invalid_parameter"

    def __init__(self, parameter, problem, operation=None, step=None):
        self.parameter, self.problem = parameter, problem
        self.operation, self.step = operation, step
        super().__init__(self._text(), step=step, operation=operation, parameter=parameter)

    def _text(self):
        where = f"Step {self.step} ({self.operation}): " if self.step is not None else ""
        owner = f" of {self.operation}" if self.operation else ""
        return f"{where}The {self.parameter!r} parameter{owner} {self.problem}"

    def at(self, step, operation):
        """Return the same error, placed at ``step`` of a pipeline, in ``operation``."""
        err = type(self).__new__(type(self))
        ParameterError.__init__(err, self.parameter, self.problem, operation, step)
        return err


class MissingParameter(ParameterError):
    code = "missing_parameter"

    def __init__(self, parameter, operation=None, step=None):
        super().__init__(parameter, "is required.", operation, step)


class UnexpectedParameter(ParameterError):
    code = "unexpected_parameter"

    def __init__(self, parameter, operation=None, step=None):
        super().__init__(parameter, "is not a parameter of this operation.", operation, step)


class ColumnNotFound(ParameterError):
    """A parameter names a column the frame does not have at that step."""

    code = "unknown_column"


class InvalidRequest(DataJobsError):
    """The request body is not a job: bad JSON, wrong shape, wrong content type."""

    def __init__(self, code, message, status=400, **details):
        self.code, self.status = code, status
        super().__init__(message, **details)


class StepFailed(DataJobsError):
    """An operation raised while running over the real data; ``type`` says what kind of failure."""

    code = "operation_failed"

    def __init__(self, step, operation, message, type="operation_failed"):
        self.step, self.operation, self.type = step, operation, type
        super().__init__(message, step=step, operation=operation)

    def to_json(self):
        """The ``error`` object of a failed job."""
        return {"type": self.type, "message": self.message, "operation_index": self.step}


class JobFailed(DataJobsError):
    """Raised by the task so Celery records FAILURE; the details are in the job record."""

    code = "job_failed"


def job_error(kind, message, operation_index=None):
    """The ``error`` object of a job that ended failed or cancelled."""
    return {"type": kind, "message": message, "operation_index": operation_index}


def hard_time_limit_error(seconds):
    """The ``error`` of a job whose process the hard time limit killed (written by worker or gateway)."""
    return job_error(
        "time_limit", f"The job ran past the hard time limit of {seconds:g} s; its worker process was stopped."
    )
