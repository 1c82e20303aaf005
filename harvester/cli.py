"""The ``harvester`` command line: ``run``, ``fetch``, ``operations`` and ``status``.

Logs go to stderr (with progress bars when it is a terminal); with ``--json``
stdout holds exactly one JSON document.
Exit codes are :class:`ExitCode`; :data:`JOB_OUTCOMES` says which a job's end
status gives, :data:`ERROR_OUTCOMES` which error ends with which.

Every command that talks to the gateway takes ``--token`` (or ``$GATEWAY_TOKEN``);
the token is sent as ``Authorization: Bearer`` and never printed or logged.
"""

import enum
import json
import logging
import os
import sys

import click

from harvester import __version__
from harvester.client import DEFAULT_GATEWAY, DEFAULT_MAX_WAIT, GatewayClient
from harvester.errors import (
    GatewayError,
    GatewayUnreachable,
    HarvesterError,
    InputError,
    JobNotFound,
    JobTimeout,
    ServerError,
    Unauthorized,
)
from harvester.io import output_format, redact_urls
from harvester.operations import load_operations, parse_op
from harvester.report import format_catalogue, format_job, format_summary
from harvester.transport import check_token
from harvester.status import JobStatus

log = logging.getLogger("harvester")


class ExitCode(enum.IntEnum):
    """Exit status of every harvester command."""

    OK = 0
    JOB_FAILED = 1
    USAGE = 2  # bad arguments or input, or the gateway refused the request or the token (4xx, 401)
    TIMEOUT = 3
    UNREACHABLE = 4  # the gateway was unreachable (or failing with a 5xx) until the deadline
    CANCELLED = 5  # the job was cancelled (DELETE /jobs/<id>) before it completed


#: Exit code of a run whose job ended, by the job's status.
JOB_OUTCOMES = {
    JobStatus.COMPLETED: ExitCode.OK,
    JobStatus.FAILED: ExitCode.JOB_FAILED,
    JobStatus.CANCELLED: ExitCode.CANCELLED,
}

#: (error class, exit code, outcome in the summary); the first class that matches wins.
ERROR_OUTCOMES = (
    (InputError, ExitCode.USAGE, "input_error"),
    (Unauthorized, ExitCode.USAGE, "unauthorized"),
    (JobNotFound, ExitCode.USAGE, "not_found"),
    (ServerError, ExitCode.UNREACHABLE, "gateway_error"),
    (GatewayError, ExitCode.USAGE, "rejected"),
    (GatewayUnreachable, ExitCode.UNREACHABLE, "unreachable"),
    (JobTimeout, ExitCode.TIMEOUT, "timeout"),
)


def outcome_of(error):
    """Return ``(exit code, outcome)`` for a :class:`~harvester.errors.HarvesterError`."""
    for cls, code, outcome in ERROR_OUTCOMES:
        if isinstance(error, cls):
            return code, outcome
    raise TypeError(f"no outcome for {type(error).__name__}")


class _StderrHandler(logging.StreamHandler):
    """The CLI's log handler; a class of its own so a second invocation replaces it.

    It writes to whatever ``sys.stderr`` is at the time of each record: click's
    CliRunner swaps it, and so do the progress bars, which print log lines above themselves.
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _RedactingFormatter(logging.Formatter):
    """Every line without the userinfo, query or fragment of the URLs it names (urllib3's retry warnings too):
    a source URL's credentials or signature must not reach a log."""

    def format(self, record):
        return redact_urls(super().format(record))


def _configure_logging():
    handler = _StderrHandler()
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    # urllib3 logs its retries after connection errors at WARNING: show them.
    for name, level in (("harvester", logging.INFO), ("urllib3", logging.WARNING)):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)


def _gateway_option(command):
    return click.option(
        "--gateway",
        metavar="URL",
        envvar="GATEWAY_URL",
        default=DEFAULT_GATEWAY,
        show_default=f"$GATEWAY_URL, else {DEFAULT_GATEWAY}",
        help="Base URL of the datajobs gateway.",
    )(command)


def _check_token(ctx, param, value):
    if value is None:
        return None
    try:
        # Surrounding whitespace (a newline from a file) is dropped, as the gateway drops it from API_TOKENS.
        return check_token(value.strip())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _token_option(command):
    return click.option(
        "--token",
        metavar="TOKEN",
        envvar="GATEWAY_TOKEN",
        show_envvar=True,
        callback=_check_token,
        help="Bearer token for a gateway that has API_TOKENS set. Never printed or logged.",
    )(command)


def _output_options(command):
    for option in reversed(
        [
            click.option(
                "--output",
                "-o",
                metavar="PATH",
                help="Write the processed records here (.jsonl, .csv, .json, .parquet, .arrow for an Arrow IPC "
                "file or .arrows for a stream) with PATH.manifest.json beside it.",
            ),
            click.option("--force", is_flag=True, help="Write over PATH if it exists (never over the source)."),
            click.option(
                "--raw-csv",
                is_flag=True,
                help="CSV output: write text cells exactly as received. By default a text cell starting with "
                "=, +, -, @, tab or carriage return (not a plain number such as -12.5) gets a leading ' "
                "so spreadsheets do not run it as a formula.",
            ),
        ]
    ):
        command = option(command)
    return command


def _timeout_option(help_text):
    return click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=300.0,
        show_default=True,
        help=help_text,
    )


def _check_output_option(output):
    if output is not None:
        try:
            output_format(output)
        except InputError as exc:
            raise click.BadParameter(str(exc), param_hint="'--output'") from None


def _lean_allocator():
    """Make pyarrow allocate with the system's allocator, unless ``$ARROW_DEFAULT_MEMORY_POOL`` chooses one.

    pyarrow's default (mimalloc) keeps the pages of freed batches to reuse them:
    batch after batch of a large file, that was some 80 MB more than in use at
    the peak. The system's allocator gives large blocks back at once.
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        import pyarrow

        pyarrow.set_memory_pool(pyarrow.system_memory_pool())


def _display():
    from harvester.progress import display

    return display(sys.stderr)


def _finish(harvest, call, as_json):
    """Run ``call`` (the harvest's ``run`` or ``fetch``), print the summary, exit with its code."""
    try:
        summary = call()
        code = JOB_OUTCOMES[harvest.status]
    except HarvesterError as exc:
        code, outcome = outcome_of(exc)
        log.error("%s", exc)
        summary = harvest.summary(outcome, exc)
    summary["exit_code"] = int(code)
    click.echo(format_summary(summary), err=True)
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
    sys.exit(code)


def _poll_option(text):
    return click.option(
        "--poll-interval", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True, help=text
    )


def _json_option(command):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(command)


def _client(gateway, token=None):
    try:
        return GatewayClient(gateway, token=token)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--gateway'") from None


def _fail(error):
    """Log ``error`` and exit with its code."""
    code, _ = outcome_of(error)
    log.error("%s", error)
    sys.exit(code)


@click.group(name="harvester", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="harvester")
def main():
    """Send datasets through datajobs pipelines and collect the results."""
    _configure_logging()


@main.command()
@click.argument("source")
@click.option(
    "--op",
    "ops",
    multiple=True,
    metavar="SPEC",
    help='An operation: NAME or NAME:{"param": value}. Repeatable; applied in order, after --operations.',
)
@click.option(
    "--operations",
    "operations_file",
    metavar="FILE.json",
    help='A JSON list of operations in the gateway\'s format: ["name", {"name": ..., "params": {...}}].',
)
@_output_options
@_gateway_option
@_token_option
@_poll_option("Seconds between two polls of the job, against a gateway that does not wait (or with --max-wait 0).")
@click.option(
    "--max-wait",
    type=click.FloatRange(min=0),
    default=DEFAULT_MAX_WAIT,
    show_default=True,
    help="Longest wait, in seconds, of one request for news of the job (GET /jobs/<id>?wait=): the gateway "
    "answers as soon as the job changes. 0 polls instead.",
)
@_timeout_option(
    "Give up this many seconds after starting, upload, job and download together "
    "(exit 3, or 4 if the gateway is unreachable)."
)
@_json_option
def run(
    source, ops, operations_file, output, force, raw_csv, gateway, token, poll_interval, max_wait, timeout, as_json
):
    """Upload SOURCE, run operations on it, wait for the job, and write what it returns.

    SOURCE is a .csv, .tsv, .json (array of objects), .jsonl (or .ndjson),
    .parquet or .arrow/.arrows file, or an http(s) URL of one. It is read and
    uploaded in parts, and the result downloaded, without holding either in
    memory. A summary goes to stderr (and to stdout with --json).

    \b
    Exit codes: 0 completed, 1 job failed, 2 usage or input error (or the
    gateway refused the job or the token), 3 timeout, 4 gateway unreachable,
    5 job cancelled.
    """
    try:
        operations = load_operations(operations_file) if operations_file else []
    except InputError as exc:
        raise click.BadParameter(str(exc), param_hint="'--operations'") from None
    try:
        operations += [parse_op(spec) for spec in ops]
    except InputError as exc:
        raise click.BadParameter(str(exc), param_hint="'--op'") from None
    _check_output_option(output)
    # Imported here: pyarrow takes a moment to load, which `status` and `operations` need not pay.
    from harvester.harvest import Harvest

    _lean_allocator()

    harvest = Harvest(
        _client(gateway, token),
        source,
        operations,
        output=output,
        poll_interval=poll_interval,
        max_wait=max_wait,
        timeout=timeout,
        neutralise_formulas=not raw_csv,
        force=force,
        display=_display(),
    )
    _finish(harvest, harvest.run, as_json)


@main.command()
@click.argument("job_id")
@_output_options
@_gateway_option
@_token_option
@_poll_option("Seconds between two tries when the gateway is unreachable.")
@_timeout_option("Give up this many seconds after starting (exit 4 if the gateway is unreachable).")
@_json_option
def fetch(job_id, output, force, raw_csv, gateway, token, poll_interval, timeout, as_json):
    """Download the result of job JOB_ID, which has completed, to --output with its manifest.

    \b
    Exit codes: 0 written, 1 the job failed, 2 usage error, unknown job, or a
    job not finished yet (or its result deleted), 4 gateway unreachable,
    5 the job was cancelled.
    """
    if output is None:
        raise click.UsageError("Missing option '--output' / '-o': where to write the result.")
    _check_output_option(output)
    from harvester.harvest import Harvest

    _lean_allocator()
    harvest = Harvest(
        _client(gateway, token),
        None,
        [],
        output=output,
        poll_interval=poll_interval,
        timeout=timeout,
        neutralise_formulas=not raw_csv,
        force=force,
        display=_display(),
    )
    _finish(harvest, lambda: harvest.fetch(job_id), as_json)


@main.command()
@_gateway_option
@_token_option
@_json_option
def operations(gateway, token, as_json):
    """List the operations the gateway offers, with their parameters."""
    try:
        catalogue = _client(gateway, token).operations()
    except HarvesterError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps({"operations": catalogue}, ensure_ascii=False, indent=2))
    else:
        click.echo(format_catalogue(catalogue))


@main.command()
@click.argument("job_id")
@_gateway_option
@_token_option
@_json_option
def status(job_id, gateway, token, as_json):
    """Show one job: status, progress, timings, and its error if it failed or was cancelled."""
    client = _client(gateway, token)
    try:
        job = client.job(job_id)
    except JobNotFound:
        why = "the id is unknown, the job expired, or another token created it"
        if not token:
            why = "the id is unknown, or the job expired"
        _fail(InputError(f"No job {job_id} at {client.base_url}: {why}."))
    except HarvesterError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(job, ensure_ascii=False, indent=2))
    else:
        click.echo(format_job(job))

