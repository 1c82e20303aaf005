"""The harvester's HTTP client and commands against a real HTTP server on 127.0.0.1.

:class:`FakeGateway` plays the gateway from scripted answers and records every
request it gets, so the tests see exactly what went over the wire: how many
tries, which headers, which body.
"""

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
from harvester.errors import GatewayError, GatewayUnreachable, JobNotFound, JobTimeout

JOB_ID = "3f2c5a0e8d8a4b6f9c1e2d3a4b5c6d7e"
TIMES = {
    "created_at": "2025-01-01T00:00:00+00:00",
    "started_at": "2025-01-01T00:00:01+00:00",
    "finished_at": "2025-01-01T00:00:02+00:00",
}


class FakeGateway:
    """A tiny gateway: answers ``(method, path)`` from a script; the last answer of a script repeats."""

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
JOB_PATH = f"/jobs/{JOB_ID}"


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


def fast_client(url):
    return GatewayClient(url, retry=make_retry(backoff_factor=0.001))


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
    assert manifest["output"] == {"path": str(output), "format": "csv"}
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
