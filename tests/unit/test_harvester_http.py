"""The harvester's HTTP client and commands against a real HTTP server on 127.0.0.1.

:class:`FakeGateway` plays the gateway from scripted answers and records every
request it gets, so the tests see exactly what went over the wire: how many
tries, which headers, which body.
"""

import functools
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from harvester.cli import ExitCode, main
from harvester.client import GatewayClient, make_retry
from harvester.errors import GatewayError, GatewayUnreachable, JobNotFound, JobTimeout, ServerError, Unauthorized

JOB_ID = "3f2c5a0e8d8a4b6f9c1e2d3a4b5c6d7e"
TIMES = {
    "created_at": "2025-01-01T00:00:00+00:00",
    "started_at": "2025-01-01T00:00:01+00:00",
    "finished_at": "2025-01-01T00:00:02+00:00",
}


class FakeGateway:
    """A tiny gateway: answers ``(method, path)`` from a script; the last answer of a script repeats.

    The answer :data:`DROP` closes the connection without answering, as a gateway that dies mid-request.
    """

    def __init__(self):
        self.requests = []  # (method, path, headers, body) as received
        self._scripts = {}
        self._lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                status, payload, headers = gateway._next(self.command, self.path, (dict(self.headers), body))
                if status is None:
                    self.close_connection = True
                    return
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def on(self, method, path, *answers):
        """Script the answers to ``method path``: ``(status, body)`` or ``(status, body, headers)``."""
        self._scripts[(method, path)] = [answer if len(answer) == 3 else (*answer, {}) for answer in answers]
        return self

    def _next(self, method, path, request):
        with self._lock:
            self.requests.append((method, path, *request))
            script = self._scripts.get((method, path))
            if not script:
                return 404, {"error": {"code": "not_found", "message": f"No route {path}.", "details": {}}}, {}
            return script.pop(0) if len(script) > 1 else script[0]

    def seen(self, method=None):
        return [r for r in self.requests if method is None or r[0] == method]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()


def job(status, done=0, total=2, **fields):
    return {
        "job_id": JOB_ID,
        "status": status,
        "message": "",
        "progress": {"operations_done": done, "operations_total": total, "current_operation": None},
        "data": None,
        "error": None,
        **TIMES,
        **fields,
    }


OUTPUT = [{"id": 1, "name": "Zoë", "count": 3}, {"id": 3, "name": "李", "count": None, "note": "late key"}]
COMPLETED = job(
    "completed",
    done=2,
    data={
        "processed_items": 3,
        "output_items": 2,
        "operations_applied": 2,
        "data": OUTPUT,
        "operations": [
            {"name": "drop_nulls", "rows_in": 3, "rows_out": 2, "seconds": 0.002},
            {"name": "limit", "rows_in": 2, "rows_out": 2, "seconds": 0.001},
        ],
    },
)
FAILED = job(
    "failed",
    done=1,
    error={"type": "operation_failed", "message": "Step 1 (limit) failed: boom.", "operation_index": 1},
)
ACCEPTED = (202, {"job_id": JOB_ID, "status": "started", "message": "Job accepted."}, {"Location": f"/jobs/{JOB_ID}"})
REFUSED = (400, {"error": {"code": "unknown_operation", "message": "Step 0: unknown operation 'nope'.", "details": {}}})
UNAVAILABLE = (503, {"error": {"code": "backend_unavailable", "message": "Redis is down.", "details": {}}})
DROP = (None, None)
JOB_PATH = f"/jobs/{JOB_ID}"


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch):
    monkeypatch.delenv("GATEWAY_TOKEN", raising=False)


@pytest.fixture
def gateway():
    with FakeGateway() as fake:
        yield fake


@pytest.fixture
def closed_url():
    """URL of a port on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def fast_client(url, token=None):
    return GatewayClient(url, retry=make_retry(backoff_factor=0.001), token=token)


# The client


def test_submit_is_retried_after_503_with_one_idempotency_key(gateway):
    gateway.on("POST", "/jobs", UNAVAILABLE, UNAVAILABLE, ACCEPTED)

    answer = fast_client(gateway.url).submit([{"a": 1}], ["drop_nulls"])

    assert answer["job_id"] == JOB_ID
    posts = gateway.seen("POST")
    assert len(posts) == 3
    assert posts[0][3] == {"dataset": [{"a": 1}], "operations": ["drop_nulls"]}
    keys = {headers["Idempotency-Key"] for _, _, headers, _ in posts}
    assert len(keys) == 1 and len(keys.pop()) == 36  # the same uuid4 on every try


def test_a_4xx_is_not_retried(gateway):
    gateway.on("POST", "/jobs", REFUSED)

    with pytest.raises(GatewayError) as caught:
        fast_client(gateway.url).submit([{"a": 1}], ["nope"])

    assert (caught.value.status, caught.value.code) == (400, "unknown_operation")
    assert "unknown operation 'nope'" in caught.value.message
    assert len(gateway.requests) == 1


def test_closed_port_is_unreachable(closed_url):
    started = time.monotonic()

    with pytest.raises(GatewayUnreachable, match="POST .*/jobs"):
        fast_client(closed_url).submit([], [])

    assert time.monotonic() - started < 2


def test_503_for_ever_is_unreachable_with_the_gateways_reason(gateway):
    gateway.on("GET", "/health", UNAVAILABLE)

    with pytest.raises(GatewayUnreachable, match="Redis is down"):
        fast_client(gateway.url).health()

    assert len(gateway.requests) == 5  # the first try and 4 retries


def test_retry_after_is_honoured_but_never_past_the_deadline(gateway):
    gateway.on("GET", "/operations", (503, {}, {"Retry-After": "60"}))
    started = time.monotonic()

    with pytest.raises(GatewayUnreachable):
        fast_client(gateway.url).operations(deadline=started + 0.5)

    assert time.monotonic() - started < 2
    assert len(gateway.requests) == 2  # one try, one after sleeping until the deadline


def test_unknown_job_is_job_not_found(gateway):
    with pytest.raises(JobNotFound):
        fast_client(gateway.url).job("nope")


def test_wait_reports_each_change_and_rides_out_a_gateway_hiccup(gateway):
    gateway.on(
        "GET",
        JOB_PATH,
        (200, job("started")),
        (200, job("processing", done=1)),
        (200, job("processing", done=1)),
        (500, {"error": {"code": "internal_error", "message": "Oops.", "details": {}}}),
        (200, COMPLETED),
    )
    changes = []

    final = fast_client(gateway.url).wait(
        JOB_ID, poll_interval=0.01, deadline=time.monotonic() + 5, on_change=lambda j: changes.append(j["status"])
    )

    assert final["data"]["data"] == OUTPUT
    assert changes == ["started", "processing", "completed"]


def test_wait_polls_again_after_the_retries_run_out(gateway):
    gateway.on("GET", JOB_PATH, *[UNAVAILABLE] * 5, (200, COMPLETED))

    final = fast_client(gateway.url).wait(JOB_ID, poll_interval=0.01, deadline=time.monotonic() + 5)

    assert final["status"] == "completed"
    assert len(gateway.requests) == 6  # 5 tries (all 503) in the first poll, then the second poll


def test_wait_gives_up_at_the_deadline(gateway):
    gateway.on("GET", JOB_PATH, (200, job("processing", done=1)))

    with pytest.raises(JobTimeout) as caught:
        fast_client(gateway.url).wait(JOB_ID, poll_interval=0.05, deadline=time.monotonic() + 0.3)

    assert caught.value.job["status"] == "processing"


# The commands


def invoke(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env)


def run_job(gateway, *gets):
    gateway.on("POST", "/jobs", ACCEPTED)
    gateway.on("GET", JOB_PATH, *[(200, body) for body in gets])


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,name,count\n1,Zoë,3\n2,,\n3,李,\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def ops_file(tmp_path):
    path = tmp_path / "ops.json"
    path.write_text(json.dumps(["drop_nulls"]))
    return str(path)


def test_run_submits_polls_and_writes_output_and_manifest(gateway, source, ops_file, tmp_path):
    run_job(gateway, job("started"), job("processing", done=1), COMPLETED)
    output = tmp_path / "out.csv"

    result = invoke(
        "run", source, "--operations", ops_file, "--op", 'limit:{"n": 2}', "--output", str(output),
        "--gateway", gateway.url, "--poll-interval", "0.01",
    )  # fmt: skip

    assert result.exit_code == ExitCode.OK, result.output
    # What was submitted: blanks as null, ints as ints, the file's operations before --op.
    body = gateway.seen("POST")[0][3]
    assert body["dataset"] == [
        {"id": 1, "name": "Zoë", "count": 3},
        {"id": 2, "name": None, "count": None},
        {"id": 3, "name": "李", "count": None},
    ]
    assert body["operations"] == ["drop_nulls", {"name": "limit", "params": {"n": 2}}]
    # What was written: the first record's columns, then the later key.
    assert output.read_text(encoding="utf-8") == "id,name,count,note\n1,Zoë,3,\n3,李,,late key\n"
    manifest = json.loads((tmp_path / "out.csv.manifest.json").read_text())
    assert manifest["job_id"] == JOB_ID
    assert manifest["source"] == source
    assert manifest["gateway"] == gateway.url
    assert manifest["operations"] == body["operations"]
    assert (manifest["rows_in"], manifest["rows_out"]) == (3, 2)
    assert [s["name"] for s in manifest["operation_stats"]] == ["drop_nulls", "limit"]
    assert manifest["output"] == {
        "path": str(output), "format": "csv", "neutralise_formulas": True, "cells_neutralised": 0
    }
    assert manifest["timings"]["job"] == TIMES
    assert manifest["timings"]["submitted_at"].endswith("+00:00")
    assert manifest["timings"]["seconds"] >= 0
    assert manifest["harvester_version"]
    # What the user saw on stderr: the job id, progress, the summary.
    assert f"Submitted job {JOB_ID}" in result.stderr
    assert "processing: 1/2 operations" in result.stderr
    assert "3 rows in -> 2 rows out" in result.stderr
    assert "drop_nulls" in result.stderr and f"Output: {output}" in result.stderr
    assert result.stdout == ""


def test_json_prints_one_object_on_stdout(gateway, source):
    run_job(gateway, COMPLETED)

    result = invoke("run", source, "--op", "drop_nulls", "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.OK, result.output
    summary = json.loads(result.stdout)
    assert summary["outcome"] == "completed"
    assert summary["job_id"] == JOB_ID
    assert (summary["rows_in"], summary["rows_out"]) == (3, 2)
    assert summary["operations"][0] == {"name": "drop_nulls", "rows_in": 3, "rows_out": 2, "seconds": 0.002}
    assert summary["output"] is None  # no --output: nothing written


def test_failed_job_exits_1_with_the_error(gateway, source, tmp_path):
    run_job(gateway, job("processing"), FAILED)
    output = tmp_path / "out.jsonl"

    result = invoke(
        "run", source, "--op", "drop_nulls", "--op", "limit", "--output", str(output),
        "--gateway", gateway.url, "--poll-interval", "0.01", "--json",
    )  # fmt: skip

    assert result.exit_code == ExitCode.JOB_FAILED
    assert "failed" in result.stderr
    assert "at operation 1 (limit): operation_failed: Step 1 (limit) failed: boom." in result.stderr
    assert json.loads(result.stdout)["error"]["operation_index"] == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


def test_refused_job_exits_2_with_the_gateways_code_and_writes_nothing(gateway, source, tmp_path):
    gateway.on("POST", "/jobs", REFUSED)

    result = invoke("run", source, "--op", "nope", "--output", str(tmp_path / "out.json"), "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert "unknown_operation" in result.stderr and "unknown operation 'nope'" in result.stderr
    assert len(gateway.requests) == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["--op", "limit:{n: 2}"], "not valid JSON"),
        (["--op", "limit:[2]"], "must be a JSON object"),
        (["--operations", "missing.json"], "Cannot read operations file"),
        (["--output", "out.txt"], "extension must be one of"),
    ],
)
def test_local_errors_exit_2_before_anything_is_submitted(gateway, source, args, complaint):
    result = invoke("run", source, *args, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert complaint in result.stderr
    assert gateway.requests == []


def test_unreadable_source_exits_2_without_submitting(gateway, tmp_path):
    result = invoke("run", str(tmp_path / "missing.csv"), "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.USAGE
    assert "Cannot read" in result.stderr
    assert json.loads(result.stdout)["job_id"] is None
    assert gateway.requests == []


def test_source_url_is_fetched(gateway):
    gateway.on("GET", "/data/in.jsonl", (200, b'{"a": 1}\n{"a": 2}\n'))
    run_job(gateway, COMPLETED)

    result = invoke("run", f"{gateway.url}/data/in.jsonl", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    assert gateway.seen("POST")[0][3]["dataset"] == [{"a": 1}, {"a": 2}]


def test_job_still_running_at_the_deadline_exits_3(gateway, source):
    run_job(gateway, job("processing", done=1))
    started = time.monotonic()

    result = invoke("run", source, "--gateway", gateway.url, "--timeout", "1", "--poll-interval", "0.1", "--json")

    assert result.exit_code == ExitCode.TIMEOUT
    assert 1 <= time.monotonic() - started < 3
    assert "timed out" in result.stderr and "1/2 operations" in result.stderr
    assert json.loads(result.stdout)["outcome"] == "timeout"


def test_unreachable_gateway_exits_4_at_the_deadline(closed_url, source):
    started = time.monotonic()

    result = invoke("run", source, "--gateway", closed_url, "--timeout", "1", "--poll-interval", "0.2")

    assert result.exit_code == ExitCode.UNREACHABLE
    assert 1 <= time.monotonic() - started < 3
    assert "Retrying" in result.stderr  # urllib3's own retry warnings are shown
    assert "No job: gateway unreachable" in result.stderr


def test_gateway_lost_while_polling_is_retried_then_exits_4(gateway, source):
    gateway.on("POST", "/jobs", ACCEPTED)
    gateway.on("GET", JOB_PATH, (200, job("processing")), UNAVAILABLE)

    result = invoke("run", source, "--gateway", gateway.url, "--timeout", "1", "--poll-interval", "0.1")

    assert result.exit_code == ExitCode.UNREACHABLE
    assert "answered 503; retrying" in result.stderr
    assert "kept answering 503 (backend_unavailable: Redis is down.)" in result.stderr
    assert f"Job {JOB_ID}: gateway unreachable after 1.0 s, last seen processing" in result.stderr


def test_503_on_submit_is_retried_and_logged(gateway, source):
    gateway.on("POST", "/jobs", UNAVAILABLE, ACCEPTED)
    gateway.on("GET", JOB_PATH, (200, COMPLETED))

    result = invoke("run", source, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    assert "POST /jobs answered 503; retrying" in result.stderr
    assert len(gateway.seen("POST")) == 2


def test_gateway_defaults_to_the_environment(gateway):
    gateway.on("GET", "/operations", (200, {"operations": []}))

    result = invoke("operations", "--json", env={"GATEWAY_URL": gateway.url})

    assert result.exit_code == ExitCode.OK, result.output
    assert json.loads(result.stdout) == {"operations": []}


def test_operations_lists_the_catalogue(gateway):
    catalogue = [
        {
            "name": "limit",
            "description": "Keep the first n rows.",
            "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
        }
    ]
    gateway.on("GET", "/operations", (200, {"operations": catalogue}))

    result = invoke("operations", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK
    assert result.stdout == "limit\n    Keep the first n rows.\n    n  required  integer\n"


def test_status_shows_a_job(gateway):
    gateway.on("GET", JOB_PATH, (200, FAILED))

    result = invoke("status", JOB_ID, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK
    assert f"Job {JOB_ID}: failed" in result.stdout
    assert "Error at operation 1: operation_failed: Step 1 (limit) failed: boom." in result.stdout


def test_status_of_an_unknown_job_exits_2(gateway):
    result = invoke("status", "nope", "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.USAGE
    assert "No job nope" in result.stderr
    assert result.stdout == ""


def test_python_dash_m_harvester():
    result = subprocess.run(
        [sys.executable, "-m", "harvester", "--version"], capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 0
    assert "harvester, version" in result.stdout


# Tokens

TOKEN = "s3cret-Tok.en_42"


def authorizations(gateway):
    return [(method, path, headers.get("Authorization")) for method, path, headers, _ in gateway.requests]


def test_token_goes_with_every_gateway_request_but_not_to_the_source_and_is_never_shown(gateway, tmp_path):
    gateway.on("GET", "/data/in.jsonl", (200, b'{"a": 1}\n'))
    run_job(gateway, job("processing"), COMPLETED)
    output = tmp_path / "out.csv"

    result = invoke(
        "run", f"{gateway.url}/data/in.jsonl", "--output", str(output), "--gateway", gateway.url,
        "--token", TOKEN, "--poll-interval", "0.01", "--json",
    )  # fmt: skip

    assert result.exit_code == ExitCode.OK, result.output
    sent = authorizations(gateway)
    assert sent[0] == ("GET", "/data/in.jsonl", None)  # the source is not the gateway: no token
    assert sent[1] == ("POST", "/jobs", f"Bearer {TOKEN}")
    assert sent[2:] == [("GET", JOB_PATH, f"Bearer {TOKEN}")] * 2
    manifest = (tmp_path / "out.csv.manifest.json").read_text()
    for text in (result.stdout, result.stderr, output.read_text(), manifest):
        assert TOKEN not in text


def test_refused_token_exits_2_with_one_error_line_that_never_shows_it(gateway, source, tmp_path):
    # Even a gateway that echoes the token back does not get it printed.
    error = {"code": "unauthorized", "message": f"Unknown token {TOKEN}.", "details": {"sent": f"Bearer {TOKEN}"}}
    gateway.on("POST", "/jobs", (401, {"error": error}, {"WWW-Authenticate": "Bearer"}))

    result = invoke(
        "run", source, "--output", str(tmp_path / "out.csv"), "--gateway", gateway.url, "--token", TOKEN, "--json"
    )

    assert result.exit_code == ExitCode.USAGE
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1
    assert errors[0].endswith(
        "401 unauthorized: The gateway refused the token given by --token or $GATEWAY_TOKEN (Unknown token ***.)."
    )
    summary = json.loads(result.stdout)
    assert (summary["outcome"], summary["exit_code"]) == ("unauthorized", 2)
    assert summary["error"]["details"] == {"sent": "Bearer ***"}
    assert "token missing or refused by the gateway" in result.stderr
    assert len(gateway.requests) == 1  # a 401 is not retried
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


def test_gateway_that_needs_a_token_says_how_to_give_one(gateway):
    error = {"code": "unauthorized", "message": "A bearer token is required.", "details": {}}
    gateway.on("GET", "/operations", (401, {"error": error}, {"WWW-Authenticate": "Bearer"}))

    result = invoke("operations", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert "The gateway needs a token: pass --token or set $GATEWAY_TOKEN (A bearer token is required.)" in (
        result.stderr
    )
    assert authorizations(gateway) == [("GET", "/operations", None)]


def test_token_from_the_environment_for_operations_and_status(gateway):
    gateway.on("GET", "/operations", (200, {"operations": []}))
    gateway.on("GET", JOB_PATH, (200, COMPLETED))
    env = {"GATEWAY_TOKEN": f"{TOKEN}\n"}  # surrounding whitespace, as an env file may leave, is dropped

    listed = invoke("operations", "--gateway", gateway.url, env=env)
    shown = invoke("status", JOB_ID, "--gateway", gateway.url, env=env)

    assert (listed.exit_code, shown.exit_code) == (ExitCode.OK, ExitCode.OK), listed.output + shown.output
    assert [auth for _, _, auth in authorizations(gateway)] == [f"Bearer {TOKEN}"] * 2
    assert TOKEN not in listed.output + shown.output


def test_unknown_job_with_a_token_may_belong_to_another_token(gateway):
    result = invoke("status", "nope", "--gateway", gateway.url, "--token", TOKEN)

    assert result.exit_code == ExitCode.USAGE
    assert "or another token created it" in result.stderr
    assert TOKEN not in result.stderr


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak", "naïve"])
def test_token_that_cannot_be_sent_is_a_usage_error_that_does_not_show_it(gateway, source, token):
    result = invoke("run", source, "--gateway", gateway.url, "--token", token)

    assert result.exit_code == ExitCode.USAGE
    assert "Invalid value for '--token' (env var: 'GATEWAY_TOKEN'): The token cannot be sent" in result.stderr
    if token:
        assert token not in result.output and token.split()[0] not in result.output
    assert gateway.requests == []


def test_the_token_is_in_no_repr_and_no_error(closed_url):
    client = GatewayClient(closed_url, retry=make_retry(total=0), token=TOKEN)

    with pytest.raises(GatewayUnreachable) as caught:
        client.health()

    for text in (repr(client), repr(client.auth), repr(vars(client)), str(caught.value), repr(caught.value)):
        assert TOKEN not in text
    with pytest.raises(ValueError) as bad:
        GatewayClient(closed_url, token=f"{TOKEN} x")
    assert TOKEN not in str(bad.value)


def test_client_raises_unauthorized_for_a_401(gateway):
    gateway.on("GET", JOB_PATH, (401, {"error": {"code": "unauthorized", "message": "No.", "details": {}}}))

    with pytest.raises(Unauthorized, match="refused the token"):
        fast_client(gateway.url, token=TOKEN).job(JOB_ID)


# Cancelled jobs

CANCELLED = job(
    "cancelled",
    done=1,
    error={"type": "cancelled", "message": "The job was cancelled (DELETE /jobs/<id>).", "operation_index": None},
)


def test_cancelled_job_exits_5_and_writes_nothing(gateway, source, tmp_path):
    run_job(gateway, job("processing", done=1), CANCELLED)

    result = invoke(
        "run", source, "--output", str(tmp_path / "out.csv"), "--gateway", gateway.url,
        "--poll-interval", "0.01", "--json",
    )  # fmt: skip

    assert result.exit_code == ExitCode.CANCELLED == 5
    assert f"Job {JOB_ID} was cancelled in " in result.stderr
    assert "The job was cancelled (DELETE /jobs/<id>)." in result.stderr
    summary = json.loads(result.stdout)
    assert (summary["outcome"], summary["status"], summary["exit_code"]) == ("cancelled", "cancelled", 5)
    assert summary["error"]["type"] == "cancelled"
    assert summary["output"] is None and summary["manifest"] is None
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]  # no output, no manifest


# Idempotent submissions


def test_replayed_submission_answered_200_is_followed_like_a_new_job(gateway, source, tmp_path):
    # The first POST is lost with its connection; its retry, same key, gets the job the first one made.
    gateway.on("POST", "/jobs", DROP, (200, job("processing", done=1), {"Location": JOB_PATH}))
    gateway.on("GET", JOB_PATH, (200, COMPLETED))
    output = tmp_path / "out.jsonl"

    result = invoke("run", source, "--output", str(output), "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.OK, result.output
    posts = gateway.seen("POST")
    assert len(posts) == 2 and posts[0][2]["Idempotency-Key"] == posts[1][2]["Idempotency-Key"]
    assert "The gateway already had this submission" in result.stderr
    assert f"Submitted job {JOB_ID}" in result.stderr
    assert [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()] == OUTPUT


def test_client_returns_a_replayed_job_even_when_it_is_already_done(gateway):
    gateway.on("POST", "/jobs", (200, COMPLETED, {"Location": JOB_PATH}))

    answer = fast_client(gateway.url).submit([{"a": 1}], ["drop_nulls"], idempotency_key="k-1")

    assert (answer["job_id"], answer["status"]) == (JOB_ID, "completed")
    assert gateway.seen("POST")[0][2]["Idempotency-Key"] == "k-1"


def test_submit_answer_without_a_job_id_is_a_server_error(gateway):
    gateway.on("POST", "/jobs", (200, {"status": "completed"}))

    with pytest.raises(ServerError, match="without a job_id"):
        fast_client(gateway.url).submit([{"a": 1}], [])


def test_reused_idempotency_key_exits_2_and_says_nothing_was_submitted(gateway, source, tmp_path):
    error = {"code": "idempotency_key_reused", "message": "This Idempotency-Key was used with another body.",
             "details": {}}  # fmt: skip
    gateway.on("POST", "/jobs", (409, {"error": error}))

    result = invoke("run", source, "--output", str(tmp_path / "out.csv"), "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.USAGE
    assert "409 idempotency_key_reused: This Idempotency-Key was used with another body." in result.stderr
    assert "nothing was submitted. Run again to submit with a new key." in result.stderr
    assert json.loads(result.stdout)["outcome"] == "rejected"
    assert len(gateway.seen("POST")) == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


# Outages while polling


def test_polling_rides_out_an_outage_and_writes_the_output(gateway, source, tmp_path, monkeypatch):
    # The CLI's own client, with tiny backoffs: its retries run out in milliseconds, not seconds.
    monkeypatch.setattr("harvester.client.make_retry", functools.partial(make_retry, backoff_factor=0.001))
    down = (503, UNAVAILABLE[1], {"Retry-After": "0"})
    gateway.on("POST", "/jobs", ACCEPTED)
    gateway.on(
        "GET",
        JOB_PATH,
        (200, job("processing")),
        *[down] * 5,  # every try of one poll: that poll fails, the next comes a poll interval later
        DROP,
        DROP,  # the gateway's process is gone...
        (503, UNAVAILABLE[1], {"Retry-After": "1"}),  # ...and back, asking for a second
        (200, job("processing", done=1)),
        (200, COMPLETED),
    )
    output = tmp_path / "out.jsonl"
    started = time.monotonic()

    result = invoke(
        "run", source, "--output", str(output), "--gateway", gateway.url,
        "--poll-interval", "0.05", "--timeout", "30", "--json",
    )  # fmt: skip

    assert result.exit_code == ExitCode.OK, result.output
    assert 1 <= time.monotonic() - started < 10  # Retry-After: 1 was honoured, the deadline was not waited for
    assert len(gateway.seen("GET")) == 1 + 5 + 4 + 1
    assert "answered 503; retrying" in result.stderr
    assert f"Polling job {JOB_ID} failed" in result.stderr and "kept answering 503" in result.stderr
    assert "Retrying" in result.stderr  # urllib3's warning after a dropped connection
    assert [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()] == OUTPUT
    assert json.loads((tmp_path / "out.jsonl.manifest.json").read_text())["rows_out"] == 2
    assert json.loads(result.stdout)["outcome"] == "completed"


# CSV formulas

FORMULA_JOB = job(
    "completed",
    done=2,
    data={
        "processed_items": 2,
        "output_items": 2,
        "data": [
            {"id": 1, "name": "=1+2", "count": -2, "ok": True},
            {"id": 2, "name": "-12.5", "count": None, "ok": False, "note": "@home"},
        ],
        "operations": [],
    },
)


@pytest.mark.parametrize(
    "name, flags, expected, neutralised, cells",
    [
        ("out.csv", [], "id,name,count,ok,note\n1,'=1+2,-2,True,\n2,-12.5,,False,'@home\n", True, 2),
        ("out.csv", ["--raw-csv"], "id,name,count,ok,note\n1,=1+2,-2,True,\n2,-12.5,,False,@home\n", False, 0),
        ("out.jsonl", [], None, False, 0),  # JSON Lines: written as received
    ],
)
def test_csv_output_neutralises_formulas_unless_raw_and_the_manifest_says_so(
    gateway, source, tmp_path, name, flags, expected, neutralised, cells
):
    run_job(gateway, FORMULA_JOB)
    output = tmp_path / name

    result = invoke("run", source, "--output", str(output), *flags, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    text = output.read_text(encoding="utf-8")
    if expected is None:
        assert [json.loads(line) for line in text.splitlines()] == FORMULA_JOB["data"]["data"]
    else:
        assert text == expected
    manifest = json.loads((tmp_path / f"{name}.manifest.json").read_text())
    assert (manifest["output"]["neutralise_formulas"], manifest["output"]["cells_neutralised"]) == (neutralised, cells)
    assert ("Wrote 2 text cells with a leading '" in result.stderr) is (cells == 2)
