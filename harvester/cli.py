"""The ``harvester`` command line: ``run``, ``wait``, ``fetch``, ``jobs``, ``status``, ``cancel``, ``operations``.

Logs go to stderr (with progress bars when it is a terminal); with ``--json``
stdout holds exactly one JSON document.
Exit codes are :class:`ExitCode`; :data:`JOB_OUTCOMES` says which a job's end
status gives, :data:`ERROR_OUTCOMES` which error ends with which.

Ctrl-C during ``run`` or ``wait`` leaves the job running at the gateway
(``--cancel-on-interrupt`` cancels it), says how to go on (``harvester wait``,
``harvester cancel``) and exits 130, as a shell reports a command stopped by SIGINT.

Every command that talks to the gateway takes ``--token`` (or ``$GATEWAY_TOKEN``);
the token is sent as ``Authorization: Bearer`` and never printed or logged.
"""

import enum
import json
import logging
import os
import sys
import time

import click

from harvester import __version__
from harvester.client import DEFAULT_GATEWAY, DEFAULT_MAX_WAIT, GatewayClient, job_status
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
from harvester.report import format_catalogue, format_job, format_jobs, format_plan, format_summary
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
    INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + 2, what a shell reports for a command SIGINT stopped


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
    # urllib3's warnings are shown; its own line for each retry is not: the harvester's Retry logs a short one
    # (harvester.transport.GatewayRetry).
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


def _finish(harvest, call, as_json, *, raw_csv=False, cancel_on_interrupt=False):
    """Run ``call`` (the harvest's ``run``, ``follow`` or ``fetch``), print the summary, exit with its code.

    Ctrl-C exits 130 after saying how to go on (:func:`_interrupted`), rather than click's "Aborted!" and 1.
    """
    try:
        try:
            summary = call()
        except KeyboardInterrupt:
            _interrupted(harvest, raw_csv=raw_csv, cancel=cancel_on_interrupt)
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


def _interrupted(harvest, *, raw_csv=False, cancel=False):
    """Ctrl-C: say where the harvest stopped and how to go on (or cancel its job), then exit 130."""
    try:
        for line in _interruption(harvest, raw_csv, cancel):
            click.echo(line, err=True)
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: stop there
    sys.exit(ExitCode.INTERRUPTED)


#: Seconds a cancel after Ctrl-C may take (``--cancel-on-interrupt`` of ``run`` and ``wait``).
CANCEL_SECONDS = 10.0


def _interruption(harvest, raw_csv, cancel):
    """The lines that tell the user what a Ctrl-C left behind (and, with ``cancel``, cancel the job)."""
    from harvester.harvest import command  # pyarrow is loaded by now: a harvest was running

    base, job_id = harvest.client.base_url, harvest.job_id
    if job_id is None:
        if harvest.stage == "submitting":
            yield f"Interrupted while submitting: the gateway may have the job; {command(base, 'jobs')} lists it."
            return
        yield "Interrupted: nothing was submitted."
        harvest.drop_dataset()
        return
    output = harvest.output if harvest.output is not None else "PATH"
    wait = command(base, "wait", job_id, "--output", output, *(["--raw-csv"] if raw_csv else []))
    status = harvest.status
    if status is JobStatus.COMPLETED:
        write = command(base, "fetch", job_id, "--output", output, *(["--raw-csv"] if raw_csv else []))
        yield f"Interrupted: job {job_id} has completed; its output was not written. Write it with: {write}"
        return
    if status is not None and status.is_terminal:
        yield f"Interrupted: job {job_id} has ended, {status.value}."
        return
    if cancel:
        try:
            harvest.client.cancel(job_id, deadline=time.monotonic() + CANCEL_SECONDS)
        except HarvesterError as exc:
            if getattr(exc, "code", None) == "job_finished":
                ended = exc.details.get("job_status", "ended")
                yield f"Interrupted: job {job_id} had already ended ({ended}); nothing was cancelled. See it with: {wait}"
            else:
                again = command(base, "cancel", job_id)
                yield f"Interrupted: cancelling job {job_id} failed ({exc}). Cancel it with: {again}"
            return
        yield f"Interrupted: job {job_id} is cancelled (--cancel-on-interrupt)."
        return
    seen = f" (last seen {status.value})" if status is not None else ""
    yield f"Interrupted: job {job_id} goes on at the gateway{seen}."
    yield f"  Follow it and write its output: {wait}"
    yield f"  Cancel it: {command(base, 'cancel', job_id)}"


def _unknown_job(client, job_id, token):
    """The error for a job the gateway does not know (404), saying why that may be."""
    why = "the id is unknown, the job expired, or another token created it"
    if not token:
        why = "the id is unknown, or the job expired"
    return InputError(f"No job {job_id} at {client.base_url}: {why}.")


def _poll_option(text):
    return click.option(
        "--poll-interval", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True, help=text
    )


def _max_wait_option(command):
    return click.option(
        "--max-wait",
        type=click.FloatRange(min=0),
        default=DEFAULT_MAX_WAIT,
        show_default=True,
        help="Longest wait, in seconds, of one request for news of the job (GET /jobs/<id>?wait=): the gateway "
        "answers as soon as the job changes. 0 polls instead.",
    )(command)


def _cancel_on_interrupt_option(command):
    return click.option(
        "--cancel-on-interrupt",
        is_flag=True,
        help="On Ctrl-C, cancel the job (DELETE /jobs/<id>) instead of leaving it running at the gateway.",
    )(command)


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
@_max_wait_option
@_timeout_option(
    "Give up this many seconds after starting, upload, job and download together "
    "(exit 3, or 4 if the gateway is unreachable)."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Upload SOURCE and have the gateway check the job on it without running it; print the columns after "
    "each step. Nothing is queued or written, and the dataset is deleted afterwards.",
)
@_cancel_on_interrupt_option
@_json_option
def run(
    source,
    ops,
    operations_file,
    output,
    force,
    raw_csv,
    gateway,
    token,
    poll_interval,
    max_wait,
    timeout,
    dry_run,
    cancel_on_interrupt,
    as_json,
):
    """Upload SOURCE, run operations on it, wait for the job, and write what it returns.

    SOURCE is a .csv, .tsv, .json (array of objects), .jsonl (or .ndjson),
    .parquet or .arrow/.arrows file, or an http(s) URL of one. It is read and
    uploaded in parts, and the result downloaded, without holding either in
    memory. A summary goes to stderr (and to stdout with --json). Without
    --output the result stays on the gateway, for harvester fetch.

    Ctrl-C once the job is submitted leaves it running (harvester wait and
    harvester cancel go on from there) unless --cancel-on-interrupt.

    \b
    Exit codes: 0 completed (with --dry-run: the job is valid), 1 job failed,
    2 usage or input error (or the gateway refused the job or the token),
    3 timeout, 4 gateway unreachable, 5 job cancelled, 130 interrupted (Ctrl-C).
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
    if dry_run:
        _plan(harvest, as_json)
    _finish(harvest, harvest.run, as_json, raw_csv=raw_csv, cancel_on_interrupt=cancel_on_interrupt)


def _plan(harvest, as_json):
    """``run --dry-run``: print the plan of the job the gateway checked, exit 0 (2 if it refused the job)."""
    if harvest.output is not None:
        log.info("Dry run: nothing is submitted, and nothing is written to %s.", harvest.output)
    try:
        plan = harvest.dry_run()
    except KeyboardInterrupt:
        click.echo("Interrupted: nothing was submitted.", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except HarvesterError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(plan, ensure_ascii=False, indent=2))
    else:
        from harvester.io import shown

        click.echo(format_plan(plan, shown(harvest.source)))
    sys.exit(ExitCode.OK)


@main.command()
@click.argument("job_id")
@_output_options
@_gateway_option
@_token_option
@_poll_option("Seconds between two polls of the job, against a gateway that does not wait (or with --max-wait 0).")
@_max_wait_option
@_timeout_option("Give up this many seconds after starting, wait and download together (exit 3, or 4 if the "
                 "gateway is unreachable).")  # fmt: skip
@_cancel_on_interrupt_option
@_json_option
def wait(job_id, output, force, raw_csv, gateway, token, poll_interval, max_wait, timeout, cancel_on_interrupt,
         as_json):  # fmt: skip
    """Follow job JOB_ID to its end, as run does once it has submitted; with --output, write its result.

    The output and its manifest are written as by fetch. Ctrl-C leaves the job
    running and says how to go on, unless --cancel-on-interrupt.

    \b
    Exit codes: 0 completed, 1 job failed, 2 usage error or unknown job,
    3 timeout, 4 gateway unreachable, 5 job cancelled, 130 interrupted.
    """
    harvest = _existing_job_harvest(gateway, token, output, raw_csv, force, poll_interval, timeout, max_wait=max_wait)
    _finish(harvest, lambda: harvest.follow(job_id), as_json, raw_csv=raw_csv, cancel_on_interrupt=cancel_on_interrupt)


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
    harvest = _existing_job_harvest(gateway, token, output, raw_csv, force, poll_interval, timeout)
    _finish(harvest, lambda: harvest.fetch(job_id), as_json, raw_csv=raw_csv)


def _existing_job_harvest(gateway, token, output, raw_csv, force, poll_interval, timeout, **options):
    """A :class:`Harvest` of a job already on the gateway (no source, no operations): for wait and fetch."""
    _check_output_option(output)
    from harvester.harvest import Harvest

    _lean_allocator()
    return Harvest(
        _client(gateway, token),
        None,
        [],
        output=output,
        poll_interval=poll_interval,
        timeout=timeout,
        neutralise_formulas=not raw_csv,
        force=force,
        display=_display(),
        **options,
    )


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
    """Show one job: status, progress, timings, and its error if it failed or was cancelled.

    \b
    Exit codes: 0 completed, or still queued or running; 1 failed; 5 cancelled;
    2 unknown job; 4 gateway unreachable.
    """
    client = _client(gateway, token)
    try:
        job = client.job(job_id)
        ended = job_status(job)
    except JobNotFound:
        _fail(_unknown_job(client, job_id, token))
    except HarvesterError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(job, ensure_ascii=False, indent=2))
    else:
        click.echo(format_job(job))
    sys.exit(JOB_OUTCOMES.get(ended, ExitCode.OK))


#: Most jobs one ``GET /jobs`` may ask for (the gateway's limit).
PAGE_LIMIT = 500


def _check_statuses(ctx, param, values):
    """``--status`` values, repeated or comma-separated, each a job status."""
    known = [s.value for s in JobStatus]
    statuses = []
    for value in values:
        for name in filter(None, (part.strip().lower() for part in value.split(","))):
            if name not in known:
                raise click.BadParameter(f"{name!r} is not a job status: one of {', '.join(known)}.")
            statuses.append(JobStatus(name))
    return tuple(dict.fromkeys(statuses))


@main.command()
@click.option(
    "--status",
    "statuses",
    multiple=True,
    metavar="STATUS",
    callback=_check_statuses,
    help="Only jobs in this status: started, processing, completed, failed or cancelled. Repeatable, or "
    "comma-separated.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Show at most this many jobs."
)
@_gateway_option
@_token_option
@_json_option
def jobs(statuses, limit, gateway, token, as_json):
    """List your jobs, newest first: id, status, progress, rows in and out, when created, how long.

    With a token, the jobs of that token; with --json, {"jobs": [...]} as the gateway gives them.
    """
    client = _client(gateway, token)
    found, cursor = [], None
    try:
        while len(found) < limit:
            page, cursor = client.jobs(statuses=statuses, limit=min(limit - len(found), PAGE_LIMIT), cursor=cursor)
            found += page[: limit - len(found)]
            # A page filtered by status may come back short, even empty, with a next one to go on from.
            if not cursor:
                break
    except GatewayError as exc:
        if exc.status in (404, 405):
            _fail(GatewayError(exc.status, exc.code, f"The gateway at {client.base_url} does not list jobs "
                               f"(GET /jobs): it is older than this harvester.", exc.details))  # fmt: skip
        _fail(exc)
    except HarvesterError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps({"jobs": found}, ensure_ascii=False, indent=2))
    else:
        click.echo(format_jobs(found))


@main.command()
@click.argument("job_id")
@_gateway_option
@_token_option
def cancel(job_id, gateway, token):
    """Cancel job JOB_ID, queued or running: it ends cancelled at once.

    \b
    Exit codes: 0 cancelled; 2 the job had already ended (its status is named),
    the job is unknown, or the gateway refused; 4 gateway unreachable.
    """
    client = _client(gateway, token)
    try:
        job = client.cancel(job_id)
    except JobNotFound:
        _fail(_unknown_job(client, job_id, token))
    except GatewayError as exc:
        if exc.code == "job_finished":
            ended = exc.details.get("job_status", "ended")
            _fail(GatewayError(exc.status, exc.code, f"Job {job_id} had already ended: it is {ended}. Nothing "
                               "was cancelled.", exc.details))  # fmt: skip
        _fail(exc)
    except HarvesterError as exc:
        _fail(exc)
    click.echo(f"Job {job_id} cancelled." + (f" {job['message']}" if job.get("message") else ""))

