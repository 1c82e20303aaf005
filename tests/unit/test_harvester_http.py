"""The harvester's HTTP client and commands against a real HTTP server on 127.0.0.1.

:class:`FakeGateway` plays the gateway from scripted answers and records every
request it gets, so the tests see exactly what went over the wire: how many
tries, which headers, which body. :class:`FakeDatasets` gives it the dataset
routes (parts are read back with pyarrow, so a test sees the rows that arrived)
and :meth:`FakeGateway.serve_result` a job's result as an Arrow stream.
"""

import functools
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from harvester.cli import ExitCode, main
from harvester.client import GatewayClient
from harvester.errors import GatewayError, GatewayUnreachable, JobNotFound, JobTimeout, ServerError, Unauthorized
from harvester.transport import make_retry

JOB_ID = "3f2c5a0e8d8a4b6f9c1e2d3a4b5c6d7e"
JOB_PATH = f"/jobs/{JOB_ID}"
TIMES = {
    "created_at": "2025-01-01T00:00:00+00:00",
    "started_at": "2025-01-01T00:00:01+00:00",
    "finished_at": "2025-01-01T00:00:02+00:00",
}
ARROW = "application/vnd.apache.arrow.stream"


class Request(NamedTuple):
    method: str
    path: str  # with the query string
    headers: dict
    body: object  # parsed JSON for a JSON body, else the raw bytes (b"" for none)


class Cut(NamedTuple):
    """An answer body sent with its full Content-Length but cut after ``at`` bytes: a connection lost mid-body."""

    data: bytes
    at: int


class FakeGateway:
    """A tiny gateway: answers ``(method, path)`` from a script; the last answer of a script repeats.

    An answer is ``(status, body)`` or ``(status, body, headers)``, or a function of the
    :class:`Request` returning one. The answer :data:`DROP` closes the connection
    without answering, as a gateway that dies mid-request; a :class:`Cut` body stops half way.
    """

    def __init__(self):
        self.requests = []  # Request, as received
        self._scripts = {}
        self._routes = []  # (method, compiled pattern of the path without query, handler)
        self._lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                # Headers and body go out in two writes: without this, each answer waits out a delayed ACK.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                is_json = raw and (self.headers.get("Content-Type") or "").startswith("application/json")
                request = Request(self.command, self.path, dict(self.headers), json.loads(raw) if is_json else raw)
                status, payload, headers = gateway._next(request)
                if status is None:
                    self.close_connection = True
                    return
                if isinstance(payload, Cut):
                    data, cut = payload.data, payload.at
                else:
                    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                    cut = None
                self.send_response(status)
                if "Content-Type" not in headers:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data if cut is None else data[:cut])
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def on(self, method, path, *answers):
        """Script the answers to ``method path``: ``(status, body)`` or ``(status, body, headers)``."""
        self._scripts[(method, path)] = list(answers)
        return self

    def route(self, method, pattern, handler):
        """Answer ``method`` on paths (query left out) matching ``pattern`` with ``handler(request, match)``."""
        self._routes.append((method, re.compile(pattern), handler))
        return self

    def _next(self, request):
        with self._lock:
            self.requests.append(request)
            # A script for the path with its query, else for the path alone (a gateway that ignores `?wait=`).
            script = self._scripts.get((request.method, request.path)) or self._scripts.get(
                (request.method, urlsplit(request.path).path)
            )
            if script:
                answer = script.pop(0) if len(script) > 1 else script[0]
            else:
                answer = self._routed(request)
            if callable(answer):
                answer = answer(request)
            return answer if len(answer) == 3 else (*answer, {})

    def _routed(self, request):
        path = urlsplit(request.path).path
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if method == request.method and match:
                return lambda req: handler(req, match)
        return 404, {"error": {"code": "not_found", "message": f"No route {path}.", "details": {}}}

    def seen(self, method=None, path=None):
        """The requests received, of ``method`` (and whose path, query left out, matches ``path``)."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (path is None or re.fullmatch(path, urlsplit(r.path).path))
        ]

    def serve_result(self, job_id, table, *, cuts=(), batch_rows=2):
        """Serve ``table`` at ``GET /jobs/<job_id>/result?format=arrow&offset=N``, in batches of ``batch_rows``.

        The first answers are :class:`Cut` after the bytes in ``cuts``, one by one.
        """
        cuts = list(cuts)

        def result(request, match):
            query = parse_qs(urlsplit(request.path).query)
            assert query["format"] == ["arrow"]
            offset = int(query.get("offset", ["0"])[0])
            sink = pa.BufferOutputStream()
            with ipc.new_stream(sink, table.schema) as writer:
                for batch in table.slice(offset).to_batches(max_chunksize=batch_rows):
                    writer.write_batch(batch)
            data = sink.getvalue().to_pybytes()
            body = Cut(data, cuts.pop(0)) if cuts else data
            return 200, body, {"Content-Type": ARROW, "X-Result-Rows": str(table.num_rows - offset)}

        return self.route("GET", f"/jobs/{job_id}/result", result)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()


class FakeDatasets:
    """The gateway's dataset routes on a :class:`FakeGateway`, keeping every part as the table it holds.

    ``drop[n] = k`` drops the connection on the first ``k`` PUTs of part ``n``
    (after reading the body, before answering), as a gateway that dies mid-upload.
    Commit is stricter than the real gateway: every part must have the same schema.
    """

    def __init__(self, gateway):
        self.datasets = {}  # id -> {n: table}
        self.ready = set()
        self.deleted = []
        self.drop = {}
        gateway.route("POST", "/datasets", self._create)
        gateway.route("PUT", r"/datasets/([\w-]+)/parts/(\d+)", self._put)
        gateway.route("POST", r"/datasets/([\w-]+)/commit", self._commit)
        gateway.route("DELETE", r"/datasets/([\w-]+)", self._delete)

    def table(self, dataset_id=None):
        """The rows of a committed dataset (the last one created when None), parts in order."""
        dataset_id = dataset_id or list(self.datasets)[-1]
        parts = self.datasets[dataset_id]
        return pa.Table.from_batches(
            [b for n in sorted(parts) for b in parts[n].to_batches()], schema=parts[min(parts)].schema
        )

    def _describe(self, dataset_id, status):
        parts = self.datasets[dataset_id]
        return {
            "dataset_id": dataset_id,
            "status": status,
            "rows": sum(t.num_rows for t in parts.values()),
            "columns": [],
            "bytes": 0,
            "parts": len(parts),
            "created_at": TIMES["created_at"],
            "expires_at": TIMES["finished_at"],
        }

    def _create(self, request, match):
        assert request.path == "/datasets?upload=parts" and request.body == b""
        dataset_id = f"ds-{len(self.datasets) + 1}"
        self.datasets[dataset_id] = {}
        return 201, self._describe(dataset_id, "uploading"), {"Location": f"/datasets/{dataset_id}"}

    def _put(self, request, match):
        dataset_id, number = match.group(1), int(match.group(2))
        if self.drop.get(number):
            self.drop[number] -= 1
            return DROP
        assert request.headers["Content-Type"] == ARROW
        table = ipc.open_stream(pa.py_buffer(request.body)).read_all()
        self.datasets[dataset_id][number] = table
        return 200, {"part": number, "rows": table.num_rows, "bytes": len(request.body)}

    def _commit(self, request, match):
        dataset_id = match.group(1)
        parts = self.datasets[dataset_id]
        if sorted(parts) != list(range(1, len(parts) + 1)):
            return 400, {"error": {"code": "missing_part", "message": "A part is missing.", "details": {}}}
        schemas = {str(t.schema) for t in parts.values()}
        if len(schemas) > 1:
            return 400, {"error": {"code": "schema_mismatch", "message": "Parts disagree.", "details": {}}}
        self.ready.add(dataset_id)
        return 200, self._describe(dataset_id, "ready")

    def _delete(self, request, match):
        self.deleted.append(match.group(1))
        return 204, b""


def job(status, done=0, total=2, **fields):
    return {
        "job_id": JOB_ID,
        "status": status,
        "message": "",
        "progress": {
            "operations_done": done,
            "operations_total": total,
            "current_operation": None,
            "phase": None,
            "chunks_done": 0,
            "chunks_total": 0,
        },
        "data": None,
        "error": None,
        **TIMES,
        **fields,
    }


OUTPUT = [{"id": 1, "name": "Zoë", "count": 3, "note": None}, {"id": 3, "name": "李", "count": None, "note": "late key"}]
OUTPUT_TABLE = pa.Table.from_pylist(OUTPUT)


def completed(rows, processed=3, **data):
    return job(
        "completed",
        done=2,
        data={
            "processed_items": processed,
            "output_items": rows,
            "operations_applied": 2,
            "operations": [
                {"name": "drop_nulls", "rows_in": processed, "rows_out": rows, "seconds": 0.002},
                {"name": "limit", "rows_in": rows, "rows_out": rows, "seconds": 0.001},
            ],
            "columns": [],
            "result_url": f"{JOB_PATH}/result",
            "workers": ["celery@host-1"],
            "truncated": False,
            "data": None,
            **data,
        },
    )


COMPLETED = completed(len(OUTPUT))
FAILED = job(
    "failed",
    done=1,
    error={"type": "operation_failed", "message": "Step 1 (limit) failed: boom.", "operation_index": 1},
)
ACCEPTED = (202, {"job_id": JOB_ID, "status": "started", "message": "Job accepted."}, {"Location": JOB_PATH})
REFUSED = (400, {"error": {"code": "unknown_operation", "message": "Step 0: unknown operation 'nope'.", "details": {}}})
UNAVAILABLE = (503, {"error": {"code": "backend_unavailable", "message": "Redis is down.", "details": {}}})
DROP = (None, None)


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch):
    monkeypatch.delenv("GATEWAY_TOKEN", raising=False)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    """The CLI's own client, with tiny backoffs: its retries run out in milliseconds, not seconds."""
    monkeypatch.setattr("harvester.transport.make_retry", functools.partial(make_retry, backoff_factor=0.001))


@pytest.fixture
def gateway():
    with FakeGateway() as fake:
        yield fake


@pytest.fixture
def datasets(gateway):
    return FakeDatasets(gateway)


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
    assert posts[0].body == {"dataset": [{"a": 1}], "operations": ["drop_nulls"]}
    keys = {headers["Idempotency-Key"] for _, _, headers, _ in posts}
    assert len(keys) == 1 and len(keys.pop()) == 36  # the same uuid4 on every try


def test_submit_waits_out_a_full_quota_past_the_retries_of_urllib3_with_one_idempotency_key(gateway):
    full = (429, {"error": {"code": "too_many_jobs", "message": "quota", "details": {}}}, {"Retry-After": "0"})
    gateway.on("POST", "/jobs", *[full] * 7, ACCEPTED)  # more 429s than urllib3's retries

    answer = fast_client(gateway.url).submit([{"a": 1}], ["drop_nulls"], deadline=time.monotonic() + 10)

    assert answer["job_id"] == JOB_ID
    posts = gateway.seen("POST")
    assert len(posts) == 8
    assert len({headers["Idempotency-Key"] for _, _, headers, _ in posts}) == 1


def test_a_full_quota_is_an_error_at_the_deadline(gateway):
    full = (429, {"error": {"code": "too_many_jobs", "message": "quota", "details": {}}}, {"Retry-After": "1"})
    gateway.on("POST", "/jobs", full)

    with pytest.raises(GatewayError) as caught:
        fast_client(gateway.url).submit([{"a": 1}], ["drop_nulls"], deadline=time.monotonic() + 0.3)

    assert (caught.value.status, caught.value.code) == (429, "too_many_jobs")


def test_submit_by_dataset_id(gateway):
    gateway.on("POST", "/jobs", ACCEPTED)

    fast_client(gateway.url).submit("ds-1", ["drop_nulls"])

    assert gateway.seen("POST")[0].body == {"dataset_id": "ds-1", "operations": ["drop_nulls"]}


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


def test_a_commit_retried_after_its_answer_was_lost_finds_the_dataset_ready(gateway):
    committed = (409, {"error": {"code": "dataset_committed", "message": "Committed.", "details": {}}})
    gateway.on("POST", "/datasets/ds-1/commit", committed)
    gateway.on("GET", "/datasets/ds-1", (200, {"dataset_id": "ds-1", "status": "ready", "rows": 2}))

    assert fast_client(gateway.url).commit_dataset("ds-1")["status"] == "ready"


def test_wait_reports_each_change_and_rides_out_a_gateway_hiccup(gateway):
    chunk = job("processing", done=1)
    chunk["progress"].update(chunks_done=1, chunks_total=2, phase="running")
    gateway.on(
        "GET",
        JOB_PATH,
        (200, job("started")),
        (200, job("processing", done=1)),
        (200, job("processing", done=1)),
        (200, chunk),
        (500, {"error": {"code": "internal_error", "message": "Oops.", "details": {}}}),
        (200, COMPLETED),
    )
    changes = []

    final = fast_client(gateway.url).wait(
        JOB_ID, poll_interval=0.01, deadline=time.monotonic() + 5, on_change=lambda j: changes.append(j["status"])
    )

    assert final["data"]["output_items"] == 2
    assert changes == ["started", "processing", "processing", "completed"]  # a new chunk done is a change


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
    return CliRunner().invoke(main, list(map(str, args)), env=env)


def run_job(gateway, *gets, result=OUTPUT_TABLE, cuts=()):
    """Script a job: POST /jobs accepts it, GET /jobs/<id> answers ``gets``, the result is ``result``."""
    FakeDatasets(gateway)
    gateway.on("POST", "/jobs", ACCEPTED)
    gateway.on("GET", JOB_PATH, *[(200, body) for body in gets])
    gateway.serve_result(JOB_ID, result, cuts=cuts)


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


def uploaded(gateway):
    """The rows the fake gateway received in the last dataset, as records."""
    store = next(handler.__self__ for method, _, handler in gateway._routes if method == "PUT")
    return store.table().to_pylist()


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_run_uploads_submits_polls_downloads_and_writes_output_and_manifest(gateway, source, ops_file, tmp_path):
    run_job(gateway, job("started"), job("processing", done=1), COMPLETED)
    output = tmp_path / "out.csv"

    result = invoke(
        "run", source, "--operations", ops_file, "--op", 'limit:{"n": 2}', "--output", output,
        "--gateway", gateway.url, "--poll-interval", "0.01",
    )  # fmt: skip

    assert result.exit_code == ExitCode.OK, result.output
    # What was uploaded: blanks as null, ints as ints, in one part of Arrow.
    assert uploaded(gateway) == [
        {"id": 1, "name": "Zoë", "count": 3},
        {"id": 2, "name": None, "count": None},
        {"id": 3, "name": "李", "count": None},
    ]
    assert [r.path for r in gateway.seen("PUT")] == ["/datasets/ds-1/parts/1"]
    # What was submitted: the dataset by id, the file's operations before --op.
    body = gateway.seen("POST", "/jobs")[0].body
    assert body == {"dataset_id": "ds-1", "operations": ["drop_nulls", {"name": "limit", "params": {"n": 2}}]}
    # What was written, from the Arrow result: the gateway's CSV (text quoted, nulls empty).
    assert output.read_text(encoding="utf-8") == '"id","name","count","note"\n1,"Zoë",3,\n3,"李",,"late key"\n'
    manifest = json.loads((tmp_path / "out.csv.manifest.json").read_text())
    assert manifest["job_id"] == JOB_ID
    assert manifest["source"] == source
    assert manifest["source_sha256"] == sha256(source)
    assert manifest["gateway"] == gateway.url
    assert manifest["dataset"]["dataset_id"] == "ds-1"
    assert (manifest["dataset"]["parts"], manifest["dataset"]["rows"]) == (1, 3)
    assert manifest["dataset"]["bytes"] == len(gateway.seen("PUT")[0].body)
    assert manifest["operations"] == body["operations"]
    assert (manifest["rows_in"], manifest["rows_out"]) == (3, 2)
    assert [s["name"] for s in manifest["operation_stats"]] == ["drop_nulls", "limit"]
    assert manifest["workers"] == ["celery@host-1"]
    assert manifest["output"] == {
        "path": str(output), "format": "csv", "rows": 2, "bytes": output.stat().st_size, "sha256": sha256(output),
        "neutralise_formulas": True, "cells_neutralised": 0,
    }  # fmt: skip
    assert manifest["timings"]["job"] == TIMES
    assert manifest["timings"]["submitted_at"].endswith("+00:00")
    assert manifest["timings"]["seconds"] >= 0
    assert manifest["harvester_version"]
    # What the user saw on stderr: one line per phase, the job id, progress, the summary.
    assert "Uploaded 3 records from" in result.stderr and "as dataset ds-1 (1 part" in result.stderr
    assert f"Submitted job {JOB_ID}" in result.stderr
    assert "processing: 1/2 operations" in result.stderr
    assert "Wrote 2 records to" in result.stderr
    assert "3 rows in -> 2 rows out" in result.stderr
    assert "drop_nulls" in result.stderr and f"Output: {output}" in result.stderr
    assert result.stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["in.csv", "ops.json", "out.csv", "out.csv.manifest.json"]


def test_json_prints_one_object_on_stdout(gateway, source):
    run_job(gateway, COMPLETED)

    result = invoke("run", source, "--op", "drop_nulls", "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.OK, result.output
    summary = json.loads(result.stdout)
    assert summary["outcome"] == "completed"
    assert (summary["job_id"], summary["dataset_id"]) == (JOB_ID, "ds-1")
    assert (summary["rows_in"], summary["rows_out"]) == (3, 2)
    assert summary["operations"][0] == {"name": "drop_nulls", "rows_in": 3, "rows_out": 2, "seconds": 0.002}
    assert summary["output"] is None  # no --output: nothing written
    assert not gateway.seen("GET", f"{JOB_PATH}/result")  # ...nor downloaded


@pytest.mark.parametrize(
    "name, read",
    [
        ("out.jsonl", lambda p: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]),
        ("out.json", lambda p: json.loads(p.read_text(encoding="utf-8"))),
        ("out.parquet", lambda p: pq.read_table(p).to_pylist()),
        ("out.arrow", lambda p: ipc.open_file(str(p)).read_all().to_pylist()),
        ("out.arrows", lambda p: ipc.open_stream(p.read_bytes()).read_all().to_pylist()),
    ],
)
def test_every_output_format_holds_the_result(gateway, source, tmp_path, name, read):
    run_job(gateway, COMPLETED)
    output = tmp_path / name

    result = invoke("run", source, "--output", output, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    assert read(output) == OUTPUT


def test_a_source_goes_up_in_parts_and_a_dropped_part_is_sent_again(gateway, tmp_path, monkeypatch):
    monkeypatch.setattr("harvester.upload.PART_BYTES", 2048)
    monkeypatch.setattr("harvester.upload.MIN_PART_BYTES", 1)
    source = tmp_path / "in.jsonl"
    rows = [{"id": i, "text": f"row {i} " + "x" * (i % 50)} for i in range(1000)]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run_job(gateway, completed(2, processed=1000))
    datasets = next(h.__self__ for m, _, h in gateway._routes if m == "PUT")
    # The gateway dies on part 3 more times than the transport retries (1 + 4): the upload carries on from part 3.
    datasets.drop[3] = 7

    result = invoke("run", source, "--gateway", gateway.url, "--poll-interval", "0.01", "--json")

    assert result.exit_code == ExitCode.OK, result.output
    puts = [int(r.path.rsplit("/", 1)[1]) for r in gateway.seen("PUT")]
    parts = max(puts)
    assert parts >= 5
    assert puts == [1, 2] + [3] * 8 + list(range(4, parts + 1))  # nothing before part 3 was sent again
    assert f"Uploading part 3 of dataset ds-1 failed" in result.stderr
    assert datasets.table().to_pylist() == rows
    summary = json.loads(result.stdout)
    assert summary["rows_in"] == 1000
    assert all(len(r.body) < 2048 * 2 for r in gateway.seen("PUT"))


def test_a_csv_column_that_stops_fitting_its_type_is_uploaded_again_from_part_1(gateway, tmp_path, monkeypatch):
    monkeypatch.setattr("harvester.sources.CSV_BLOCK_BYTES", 4096)
    monkeypatch.setattr("harvester.sources.CSV_SAMPLE_BYTES", 4096)
    monkeypatch.setattr("harvester.upload.PART_BYTES", 4096)
    source = tmp_path / "in.csv"
    source.write_text("n,label\n" + "".join(f"{i},row {i}\n" for i in range(2000)) + "2.5,late\n")
    run_job(gateway, completed(2, processed=2001))

    result = invoke("run", source, "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.OK, result.output
    assert "CSV column 'n' holds '2.5', which is not int64: reading it as double; uploading again from part 1" in (
        result.stderr
    )
    puts = [int(r.path.rsplit("/", 1)[1]) for r in gateway.seen("PUT")]
    assert puts.count(1) == 2  # part 1 went twice: ints, then floats
    table = next(h.__self__ for m, _, h in gateway._routes if m == "PUT").table()
    assert table.schema.field("n").type == pa.float64()
    assert table.column("n").to_pylist() == [float(i) for i in range(2000)] + [2.5]


def test_a_download_that_breaks_goes_on_from_the_rows_written(gateway, source, tmp_path):
    rows = [{"id": i, "name": f"n{i}"} for i in range(10)]
    run_job(gateway, completed(10), result=pa.Table.from_pylist(rows), cuts=[700, 500])
    output = tmp_path / "out.jsonl"

    result = invoke("run", source, "--output", output, "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.OK, result.output
    offsets = [parse_qs(urlsplit(r.path).query)["offset"][0] for r in gateway.seen("GET", f"{JOB_PATH}/result")]
    assert len(offsets) == 3 and offsets[0] == "0" and 0 < int(offsets[1]) < int(offsets[2]) < 10
    assert "Download of job" in result.stderr and "resuming there" in result.stderr
    assert [json.loads(line) for line in output.read_text().splitlines()] == rows


def test_a_result_that_cannot_be_downloaded_leaves_no_output_at_all(gateway, source, tmp_path):
    run_job(gateway, COMPLETED)
    gone = (410, {"error": {"code": "result_deleted", "message": "The result was deleted.", "details": {}}})
    gateway._routes = [r for r in gateway._routes if not r[1].pattern.endswith("/result")]
    gateway.route("GET", f"{JOB_PATH}/result", lambda request, match: gone)
    output = tmp_path / "out.parquet"

    result = invoke("run", source, "--output", output, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert "410 result_deleted" in result.stderr
    assert f"harvester fetch {JOB_ID} --output {output}" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.csv"]  # no output, no manifest, no temporary file


def test_an_existing_output_is_kept_unless_forced(gateway, source, tmp_path):
    run_job(gateway, COMPLETED)
    output = tmp_path / "out.jsonl"
    output.write_text("precious\n")

    refused = invoke("run", source, "--output", output, "--gateway", gateway.url)

    assert refused.exit_code == ExitCode.USAGE
    assert "it exists. Pass --force to replace it." in refused.stderr
    assert gateway.requests == []  # nothing uploaded, nothing submitted
    assert output.read_text() == "precious\n"

    forced = invoke("run", source, "--output", output, "--force", "--gateway", gateway.url)

    assert forced.exit_code == ExitCode.OK, forced.output
    assert [json.loads(line) for line in output.read_text().splitlines()] == OUTPUT


@pytest.mark.parametrize("how", ["same path", "symbolic link"])
def test_the_source_is_never_written_over_even_with_force(gateway, tmp_path, how):
    source = tmp_path / "data.jsonl"
    source.write_text('{"a": 1}\n')
    output = source
    if how == "symbolic link":
        output = tmp_path / "link.jsonl"
        output.symlink_to(source)

    result = invoke("run", source, "--output", output, "--force", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert "it is the source" in result.stderr
    assert gateway.requests == []
    assert source.read_text() == '{"a": 1}\n'


def test_failed_job_exits_1_with_the_error(gateway, source, tmp_path):
    run_job(gateway, job("processing"), FAILED)
    output = tmp_path / "out.jsonl"

    result = invoke(
        "run", source, "--op", "drop_nulls", "--op", "limit", "--output", output,
        "--gateway", gateway.url, "--poll-interval", "0.01", "--json",
    )  # fmt: skip

    assert result.exit_code == ExitCode.JOB_FAILED
    assert "failed" in result.stderr
    assert "at operation 1 (limit): operation_failed: Step 1 (limit) failed: boom." in result.stderr
    assert json.loads(result.stdout)["error"]["operation_index"] == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


def test_refused_job_exits_2_with_the_gateways_code_and_writes_nothing(gateway, source, tmp_path):
    FakeDatasets(gateway)
    gateway.on("POST", "/jobs", REFUSED)

    result = invoke("run", source, "--op", "nope", "--output", tmp_path / "out.json", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert "unknown_operation" in result.stderr and "unknown operation 'nope'" in result.stderr
    assert len(gateway.seen("POST", "/jobs")) == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


def test_a_part_the_gateway_refuses_exits_2_before_any_job(gateway, source):
    FakeDatasets(gateway)
    mismatch = {"code": "schema_mismatch", "message": "Part 2 does not fit.", "details": {"part": 2, "column": "a"}}
    gateway.on("POST", "/datasets/ds-1/commit", (400, {"error": mismatch}))

    result = invoke("run", source, "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.USAGE
    assert "400 schema_mismatch: Part 2 does not fit." in result.stderr
    summary = json.loads(result.stdout)
    assert summary["error"]["details"] == {"part": 2, "column": "a"}
    assert (summary["job_id"], summary["dataset_id"]) == (None, "ds-1")
    assert not gateway.seen("POST", "/jobs")


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


@pytest.mark.parametrize(
    "name, content, complaint",
    [
        ("missing.csv", None, "Cannot read"),
        ("bad.jsonl", '{"a": 1}\n[1]\n', "line 2 must be a JSON object"),
        ("in.xlsx", "", "extension must be one of"),
    ],
)
def test_unreadable_source_exits_2_without_submitting(gateway, tmp_path, name, content, complaint):
    FakeDatasets(gateway)
    if content is not None:
        (tmp_path / name).write_text(content)

    result = invoke("run", tmp_path / name, "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.USAGE
    assert complaint in result.stderr
    assert json.loads(result.stdout)["job_id"] is None
    assert not gateway.seen("PUT") and not gateway.seen("POST", "/jobs")


def test_source_url_is_fetched(gateway):
    gateway.on("GET", "/data/in.jsonl", (200, b'{"a": 1}\n{"a": 2}\n'))
    run_job(gateway, COMPLETED)

    result = invoke("run", f"{gateway.url}/data/in.jsonl", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    assert uploaded(gateway) == [{"a": 1}, {"a": 2}]


def test_a_source_urls_credentials_and_signature_reach_no_log_summary_or_manifest(gateway, tmp_path):
    gateway.on("GET", "/data/in.jsonl?X-Amz-Signature=SIGNED&X-Amz-Credential=KEYID", (200, b'{"a": 1}\n'))
    run_job(gateway, COMPLETED)
    output = tmp_path / "out.jsonl"
    host = gateway.url.split("://", 1)[1]
    source = f"http://alice:PASSWORD@{host}/data/in.jsonl?X-Amz-Signature=SIGNED&X-Amz-Credential=KEYID"

    result = invoke("run", source, "--output", str(output), "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.OK, result.output
    assert gateway.seen("GET", "/data/in.jsonl")  # fetched with its query, as given
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["source"] == f"{gateway.url}/data/in.jsonl" and manifest["source_sha256"]
    assert json.loads(result.stdout)["source"] == manifest["source"]
    for text in (result.stdout, result.stderr, json.dumps(manifest)):
        assert "PASSWORD" not in text and "SIGNED" not in text and "KEYID" not in text


def test_a_source_url_that_fails_is_named_without_its_query(gateway):
    result = invoke("run", f"{gateway.url}/missing.csv?sig=SIGNED", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert f"{gateway.url}/missing.csv" in result.stderr and "SIGNED" not in result.stderr


def test_parquet_source_url_is_spooled_and_read(gateway, tmp_path):
    table = pa.table({"a": [1, 2, 3], "tags": [["x"], [], None]})
    pq.write_table(table, tmp_path / "in.parquet")
    gateway.on("GET", "/data/in.parquet", (200, (tmp_path / "in.parquet").read_bytes()))
    run_job(gateway, COMPLETED)

    result = invoke("run", f"{gateway.url}/data/in.parquet", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    # Nested values go as JSON text, marked so the gateway reads them back as values.
    assert uploaded(gateway) == [{"a": 1, "tags": '["x"]'}, {"a": 2, "tags": "[]"}, {"a": 3, "tags": None}]


def test_job_still_running_at_the_deadline_exits_3(gateway, source):
    run_job(gateway, job("processing", done=1))
    started = time.monotonic()

    result = invoke("run", source, "--gateway", gateway.url, "--timeout", "1", "--poll-interval", "0.1", "--json")

    assert result.exit_code == ExitCode.TIMEOUT
    assert 1 <= time.monotonic() - started < 3
    assert "timed out" in result.stderr and "1/2 operations" in result.stderr
    assert json.loads(result.stdout)["outcome"] == "timeout"


def test_unreachable_gateway_exits_4_at_the_deadline(closed_url, source, monkeypatch):
    monkeypatch.setattr("harvester.transport.make_retry", make_retry)  # urllib3's own backoff, as users get it
    started = time.monotonic()

    result = invoke("run", source, "--gateway", closed_url, "--timeout", "1", "--poll-interval", "0.2")

    assert result.exit_code == ExitCode.UNREACHABLE
    assert 1 <= time.monotonic() - started < 3
    # One short line per retry, urllib3's backoff in it; never urllib3's repr of its Retry and exception.
    assert re.search(r"WARNING Gateway unreachable, retrying now \(1 of 4\)\.\n", result.stderr)
    assert re.search(r"WARNING Gateway unreachable, retrying in 1\.0 s \(2 of 4\)\.\n", result.stderr)
    assert "Retry(" not in result.stderr and "NewConnectionError" not in result.stderr
    assert "No job: gateway unreachable" in result.stderr


def test_gateway_lost_while_polling_is_retried_then_exits_4(gateway, source):
    run_job(gateway, job("processing"), UNAVAILABLE[1])
    gateway.on("GET", JOB_PATH, (200, job("processing")), UNAVAILABLE)

    result = invoke("run", source, "--gateway", gateway.url, "--timeout", "1", "--poll-interval", "0.1")

    assert result.exit_code == ExitCode.UNREACHABLE
    assert "Gateway answered 503, retrying" in result.stderr
    assert "kept answering 503 (backend_unavailable: Redis is down.)" in result.stderr
    assert re.search(rf"Job {JOB_ID}: gateway unreachable after 1\.\d s, last seen processing", result.stderr)


def test_503_on_submit_is_retried_and_logged(gateway, source):
    run_job(gateway, COMPLETED)
    gateway.on("POST", "/jobs", UNAVAILABLE, ACCEPTED)

    result = invoke("run", source, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    assert re.search(r"WARNING Gateway answered 503, retrying now \(1 of 4\)\.\n", result.stderr)
    assert len(gateway.seen("POST", "/jobs")) == 2


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


def test_status_shows_a_failed_job_with_its_message_once_and_exits_1(gateway):
    # The gateway's message of a failed job is its error's message.
    gateway.on("GET", JOB_PATH, (200, {**FAILED, "message": FAILED["error"]["message"]}))

    result = invoke("status", JOB_ID, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.JOB_FAILED
    assert f"Job {JOB_ID}: failed" in result.stdout
    assert "Error at operation 1: operation_failed: Step 1 (limit) failed: boom." in result.stdout
    assert result.stdout.count("boom") == 1


@pytest.mark.parametrize(
    "body, code",
    [
        (job("started", message="Queued: waiting for a worker."), ExitCode.OK),
        (job("processing", done=1, message="Processing: 1 of 2 operations done."), ExitCode.OK),
        ({**completed(2), "message": "Successfully processed 3 items with 2 operations"}, ExitCode.OK),
        (job("cancelled", error={"type": "cancelled", "message": "Cancelled by request.", "operation_index": None},
             message="Cancelled by request."), ExitCode.CANCELLED),
    ],
    ids=["queued", "processing", "completed", "cancelled"],
)  # fmt: skip
def test_status_exits_with_the_jobs_code_and_says_each_message_once(gateway, body, code):
    gateway.on("GET", JOB_PATH, (200, body))

    result = invoke("status", JOB_ID, "--gateway", gateway.url)
    as_json = invoke("status", JOB_ID, "--gateway", gateway.url, "--json")

    assert result.exit_code == code, result.output
    assert as_json.exit_code == code and json.loads(as_json.stdout) == body
    assert result.stdout.count(body["message"]) == 1


def test_status_shows_how_far_a_running_job_got(gateway):
    running = job("processing", done=1)
    running["progress"].update(current_operation="limit", chunks_done=3, chunks_total=8, phase="running")
    gateway.on("GET", JOB_PATH, (200, running))

    result = invoke("status", JOB_ID, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK
    assert "Progress: 1/2 operations, running limit, 3/8 chunks (running)" in result.stdout


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


# harvester fetch


def test_fetch_writes_the_result_of_a_finished_job_with_its_manifest(gateway, tmp_path):
    gateway.on("GET", JOB_PATH, (200, COMPLETED))
    gateway.serve_result(JOB_ID, OUTPUT_TABLE)
    output = tmp_path / "out.parquet"

    result = invoke("fetch", JOB_ID, "--output", output, "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.OK, result.output
    assert pq.read_table(output).to_pylist() == OUTPUT
    manifest = json.loads((tmp_path / "out.parquet.manifest.json").read_text())
    assert (manifest["job_id"], manifest["source"], manifest["dataset"]) == (JOB_ID, None, None)
    assert manifest["output"]["sha256"] == sha256(output) and manifest["output"]["rows"] == 2
    assert json.loads(result.stdout)["output"] == str(output)


@pytest.mark.parametrize(
    "answer, code, complaint",
    [
        (None, ExitCode.USAGE, "No job with id"),
        ((200, job("processing", done=1)), ExitCode.USAGE, "has not finished: it is processing"),
        ((200, FAILED), ExitCode.JOB_FAILED, "failed"),
        ((200, job("cancelled")), ExitCode.CANCELLED, "was cancelled"),
    ],
)
def test_fetch_of_a_job_without_a_result_writes_nothing(gateway, tmp_path, answer, code, complaint):
    missing = (404, {"error": {"code": "job_not_found", "message": f"No job with id {JOB_ID!r}.", "details": {}}})
    gateway.on("GET", JOB_PATH, answer or missing)
    output = tmp_path / "out.csv"

    result = invoke("fetch", JOB_ID, "-o", output, "--gateway", gateway.url)

    assert result.exit_code == code
    assert complaint in result.stderr
    assert not gateway.seen("GET", f"{JOB_PATH}/result")
    assert list(tmp_path.iterdir()) == []


def test_fetch_of_a_result_the_gateway_does_not_have_yet_exits_2(gateway, tmp_path):
    gateway.on("GET", JOB_PATH, (200, COMPLETED))
    early = {"code": "job_not_finished", "message": "Job has no result.", "details": {}}
    gateway.route("GET", f"{JOB_PATH}/result", lambda request, match: (409, {"error": early}))

    result = invoke("fetch", JOB_ID, "-o", tmp_path / "out.csv", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert "409 job_not_finished" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_fetch_needs_an_output_and_keeps_an_existing_one(gateway, tmp_path):
    (tmp_path / "out.csv").write_text("kept")

    missing = invoke("fetch", JOB_ID, "--gateway", gateway.url)
    existing = invoke("fetch", JOB_ID, "-o", tmp_path / "out.csv", "--gateway", gateway.url)

    assert (missing.exit_code, existing.exit_code) == (ExitCode.USAGE, ExitCode.USAGE)
    assert "Missing option '--output'" in missing.stderr and "Pass --force" in existing.stderr
    assert gateway.requests == [] and (tmp_path / "out.csv").read_text() == "kept"


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
    assert [(method, urlsplit(path).path) for method, path, _ in sent[1:]] == [
        ("POST", "/datasets"), ("PUT", "/datasets/ds-1/parts/1"), ("POST", "/datasets/ds-1/commit"),
        ("POST", "/jobs"), ("GET", JOB_PATH), ("GET", JOB_PATH), ("GET", f"{JOB_PATH}/result"),
    ]  # fmt: skip
    assert {auth for _, _, auth in sent[1:]} == {f"Bearer {TOKEN}"}
    manifest = (tmp_path / "out.csv.manifest.json").read_text()
    for text in (result.stdout, result.stderr, output.read_text(), manifest):
        assert TOKEN not in text


def test_refused_token_exits_2_with_one_error_line_that_never_shows_it(gateway, source, tmp_path):
    # Even a gateway that echoes the token back does not get it printed.
    error = {"code": "unauthorized", "message": f"Unknown token {TOKEN}.", "details": {"sent": f"Bearer {TOKEN}"}}
    gateway.on("POST", "/datasets?upload=parts", (401, {"error": error}, {"WWW-Authenticate": "Bearer"}))

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
    run_job(gateway, COMPLETED)
    gateway.on("POST", "/jobs", DROP, (200, job("processing", done=1), {"Location": JOB_PATH}))
    output = tmp_path / "out.jsonl"

    result = invoke("run", source, "--output", str(output), "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.OK, result.output
    posts = gateway.seen("POST", "/jobs")
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
    FakeDatasets(gateway)
    gateway.on("POST", "/jobs", (409, {"error": error}))

    result = invoke("run", source, "--output", str(tmp_path / "out.csv"), "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.USAGE
    assert "409 idempotency_key_reused: This Idempotency-Key was used with another body." in result.stderr
    assert "nothing was submitted. Run again to submit with a new key." in result.stderr
    assert json.loads(result.stdout)["outcome"] == "rejected"
    assert len(gateway.seen("POST", "/jobs")) == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


# Outages while polling


def test_polling_rides_out_an_outage_and_writes_the_output(gateway, source, tmp_path):
    down = (503, UNAVAILABLE[1], {"Retry-After": "0"})
    run_job(gateway)
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
    assert len(gateway.seen("GET", JOB_PATH)) == 1 + 5 + 4 + 1
    assert "Gateway answered 503, retrying" in result.stderr
    assert f"Following job {JOB_ID} failed" in result.stderr and "kept answering 503" in result.stderr
    assert "Gateway dropped the connection, retrying" in result.stderr  # the gateway's process gone
    assert "Retry(" not in result.stderr  # not urllib3's own warning
    assert [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()] == OUTPUT
    assert json.loads((tmp_path / "out.jsonl.manifest.json").read_text())["rows_out"] == 2
    assert json.loads(result.stdout)["outcome"] == "completed"


# CSV formulas

FORMULA_ROWS = [
    {"id": 1, "name": "=1+2", "count": -2, "ok": True, "note": None},
    {"id": 2, "name": "-12.5", "count": None, "ok": False, "note": "@home"},
]


@pytest.mark.parametrize(
    "name, flags, expected, neutralised, cells",
    [
        (
            "out.csv", [],
            '"id","name","count","ok","note"\n1,"\'=1+2",-2,true,\n2,"-12.5",,false,"\'@home"\n', True, 2,
        ),
        (
            "out.csv", ["--raw-csv"],
            '"id","name","count","ok","note"\n1,"=1+2",-2,true,\n2,"-12.5",,false,"@home"\n', False, 0,
        ),
        ("out.jsonl", [], None, False, 0),  # JSON Lines: written as received
    ],
)  # fmt: skip
def test_csv_output_neutralises_formulas_unless_raw_and_the_manifest_says_so(
    gateway, source, tmp_path, name, flags, expected, neutralised, cells
):
    run_job(gateway, completed(2), result=pa.Table.from_pylist(FORMULA_ROWS))
    output = tmp_path / name

    result = invoke("run", source, "--output", output, *flags, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    text = output.read_text(encoding="utf-8")
    if expected is None:
        assert [json.loads(line) for line in text.splitlines()] == FORMULA_ROWS
    else:
        assert text == expected
    manifest = json.loads((tmp_path / f"{name}.manifest.json").read_text())
    assert (manifest["output"]["neutralise_formulas"], manifest["output"]["cells_neutralised"]) == (neutralised, cells)
    assert ("Wrote 2 text cells with a leading \'" in result.stderr) is (cells == 2)


# harvester jobs


def listed(job_id, status, created, **fields):
    """A job as ``GET /jobs`` lists it: its body, without inline records."""
    body = job(status, **fields)
    body.update(job_id=job_id, created_at=created)
    return body


RUNNING = listed(
    "a" * 32, "processing", "2026-12-03T10:00:00.000Z", done=1, started_at="2026-12-03T10:00:01.000Z",
    finished_at=None,
)  # fmt: skip
RUNNING["progress"].update(chunks_done=3, chunks_total=8, current_operation="limit", phase="running")
DONE = {
    **completed(2, processed=1500),
    "job_id": "b" * 32,
    "created_at": "2026-12-03T09:00:00.000Z",
    "started_at": "2026-12-03T09:00:00.500Z",
    "finished_at": "2026-12-03T09:04:05.500Z",
}
QUEUED_CANCELLED = listed(
    "c" * 32, "cancelled", "2026-12-03T08:00:00.000Z", started_at=None, finished_at="2026-12-03T08:00:02.000Z",
    error={"type": "cancelled", "message": "Cancelled.", "operation_index": None},
)  # fmt: skip


def test_jobs_prints_a_table_of_the_callers_jobs(gateway):
    gateway.on("GET", "/jobs", (200, {"jobs": [RUNNING, DONE, QUEUED_CANCELLED], "next": None}))

    result = invoke("jobs", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    head, running, done, cancelled = result.stdout.splitlines()
    assert head.split() == ["JOB", "STATUS", "PROGRESS", "ROWS", "IN", "ROWS", "OUT", "CREATED", "(UTC)", "DURATION"]
    assert running.startswith("a" * 32 + "  processing  1/2 ops, 3/8 chunks")
    assert " 2026-12-03 10:00:00 " in running
    assert done.split()[:6] == ["b" * 32, "completed", "2/2", "ops", "1,500", "2"]
    assert done.endswith("2026-12-03 09:00:00  4 min 05 s")
    assert cancelled.split()[4:] == ["-", "-", "2026-12-03", "08:00:00", "2.0", "s"]  # never started
    assert [r.path for r in gateway.seen("GET", "/jobs")] == ["/jobs?limit=20"]


def test_jobs_json_filters_by_status_and_follows_the_next_page_up_to_the_limit(gateway):
    # A page filtered by status may be empty and still have a next one.
    pages = {None: ([RUNNING, DONE], "p2"), "p2": ([], "p3"), "p3": ([QUEUED_CANCELLED, RUNNING], "p4")}

    def page(request, match):
        cursor = parse_qs(urlsplit(request.path).query).get("cursor", [None])[0]
        found, after = pages[cursor]
        return 200, {"jobs": found, "next": after}, {"Link": f'</jobs?cursor={after}>; rel="next"'}

    gateway.route("GET", "/jobs", page)

    result = invoke("jobs", "--status", "processing,completed", "--status", "cancelled", "--limit", "3",
                    "--json", "--gateway", gateway.url)  # fmt: skip

    assert result.exit_code == ExitCode.OK, result.output
    assert json.loads(result.stdout) == {"jobs": [RUNNING, DONE, QUEUED_CANCELLED]}
    queries = [parse_qs(urlsplit(r.path).query) for r in gateway.seen("GET", "/jobs")]
    statuses = ["processing", "completed", "cancelled"]
    assert queries == [
        {"status": statuses, "limit": ["3"]},
        {"status": statuses, "limit": ["1"], "cursor": ["p2"]},
        {"status": statuses, "limit": ["1"], "cursor": ["p3"]},
    ]


def test_jobs_without_any_says_so(gateway):
    gateway.on("GET", "/jobs", (200, {"jobs": [], "next": None}))

    result = invoke("jobs", "--gateway", gateway.url)

    assert (result.exit_code, result.stdout) == (ExitCode.OK, "No jobs.\n")


def test_jobs_with_a_status_that_does_not_exist_exits_2_asking_nothing(gateway):
    result = invoke("jobs", "--status", "running", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert "'running' is not a job status" in result.stderr
    assert gateway.requests == []


@pytest.mark.parametrize(
    "answer, complaint",
    [
        ((400, {"error": {"code": "invalid_parameter", "message": "The 'limit' parameter must be at most 500.",
                          "details": {"parameter": "limit"}}}), "400 invalid_parameter: The 'limit' parameter"),
        ((405, {"error": {"code": "method_not_allowed", "message": "Not allowed.", "details": {}}}),
         "does not list jobs (GET /jobs): it is older than this harvester"),
    ],
    ids=["refused", "old gateway"],
)  # fmt: skip
def test_jobs_the_gateway_refuses_exits_2_with_its_reason(gateway, answer, complaint):
    gateway.on("GET", "/jobs", answer)

    result = invoke("jobs", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert complaint in result.stderr and result.stdout == ""


# harvester cancel


def test_cancel_cancels_a_running_job(gateway):
    body = job("cancelled", error={"type": "cancelled", "message": "Cancelled by request.", "operation_index": None},
               message="Cancelled by request.")  # fmt: skip
    gateway.on("DELETE", JOB_PATH, (200, body))

    result = invoke("cancel", JOB_ID, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    assert result.stdout == f"Job {JOB_ID} cancelled. Cancelled by request.\n"
    assert [r.method for r in gateway.requests] == ["DELETE"]


def test_cancel_of_a_job_that_had_ended_exits_2_naming_its_status(gateway):
    finished = {"code": "job_finished", "message": f"Job {JOB_ID} has already ended (completed).",
                "details": {"job_status": "completed"}}  # fmt: skip
    gateway.on("DELETE", JOB_PATH, (409, {"error": finished}))

    result = invoke("cancel", JOB_ID, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert f"Job {JOB_ID} had already ended: it is completed. Nothing was cancelled." in result.stderr


def test_cancel_of_an_unknown_job_exits_2(gateway):
    result = invoke("cancel", "nope", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert "No job nope at" in result.stderr and "unknown, or the job expired" in result.stderr


# harvester wait


def tagged(body, tag):
    return 200, body, {"ETag": f'"{tag}"'}


def test_wait_follows_a_job_to_its_end_and_writes_its_output_like_fetch(gateway, tmp_path):
    gateway.on("GET", JOB_PATH, tagged(job("processing"), "t1"))
    gateway.on("GET", f"{JOB_PATH}?wait=30", tagged(job("processing", done=1), "t2"), tagged(COMPLETED, "t3"))
    gateway.serve_result(JOB_ID, OUTPUT_TABLE)
    output = tmp_path / "out.jsonl"

    result = invoke("wait", JOB_ID, "--output", output, "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.OK, result.output
    assert [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()] == OUTPUT
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert (manifest["job_id"], manifest["source"], manifest["dataset"], manifest["rows_out"]) == (JOB_ID, None, None, 2)
    # The same waiting as run's: one plain look, then waits naming the last body seen.
    looks = gateway.seen("GET", JOB_PATH)
    assert [r.path for r in looks] == [JOB_PATH, f"{JOB_PATH}?wait=30", f"{JOB_PATH}?wait=30"]
    assert [r.headers.get("If-None-Match") for r in looks] == [None, '"t1"', '"t2"']
    summary = json.loads(result.stdout)
    assert (summary["outcome"], summary["exit_code"], summary["output"]) == ("completed", 0, str(output))
    assert "processing: 1/2 operations" in result.stderr


@pytest.mark.parametrize(
    "answers, code",
    [
        ([FAILED], ExitCode.JOB_FAILED),
        ([job("cancelled", error={"type": "cancelled", "message": "Cancelled.", "operation_index": None})],
         ExitCode.CANCELLED),
        ([job("processing")], ExitCode.TIMEOUT),
    ],
    ids=["failed", "cancelled", "timeout"],
)  # fmt: skip
def test_wait_exits_as_run_does_and_writes_nothing_unless_completed(gateway, tmp_path, answers, code):
    gateway.on("GET", JOB_PATH, *[(200, body) for body in answers])
    output = tmp_path / "out.csv"

    result = invoke("wait", JOB_ID, "-o", output, "--gateway", gateway.url, "--timeout", "0.5",
                    "--poll-interval", "0.05")  # fmt: skip

    assert result.exit_code == code, result.output
    assert list(tmp_path.iterdir()) == []


def test_wait_for_an_unknown_job_exits_2_and_for_an_unreachable_gateway_4(gateway, closed_url):
    unknown = invoke("wait", "nope", "--gateway", gateway.url)
    unreachable = invoke("wait", JOB_ID, "--gateway", closed_url, "--timeout", "0.3", "--poll-interval", "0.1")

    assert unknown.exit_code == ExitCode.USAGE and "not found" in unknown.stderr
    assert unreachable.exit_code == ExitCode.UNREACHABLE


def test_wait_without_output_says_how_to_fetch_the_result(gateway):
    gateway.on("GET", JOB_PATH, (200, COMPLETED))

    result = invoke("wait", JOB_ID, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    assert f"harvester fetch {JOB_ID} --output PATH --gateway {gateway.url}" in result.stderr


# run without --output


def test_run_without_output_says_the_result_stays_on_the_gateway_and_how_to_fetch_it(gateway, source):
    run_job(gateway, COMPLETED)

    result = invoke("run", source, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    assert (
        f"The result of job {JOB_ID} stays on the gateway until it expires (JOB_TTL_SECONDS on the gateway, "
        f"a day by default): harvester fetch {JOB_ID} --output PATH --gateway {gateway.url}\n"
    ) in result.stderr
    assert gateway.seen("GET", f"{JOB_PATH}/result") == []  # nothing downloaded


# Ctrl-C


def interrupt(monkeypatch, method, after=0):
    """Make ``GatewayClient.<method>`` raise KeyboardInterrupt (as Ctrl-C would) from its call ``after + 1`` on."""
    original, calls = getattr(GatewayClient, method), []

    def interrupted(self, *args, **kwargs):
        calls.append(method)
        if len(calls) > after:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GatewayClient, method, interrupted)


def test_ctrl_c_while_a_run_follows_its_job_leaves_it_running_and_says_how_to_go_on(
    gateway, source, tmp_path, monkeypatch
):
    run_job(gateway, job("processing", done=1))
    interrupt(monkeypatch, "look", after=1)  # during the second look: the job is known to be processing
    output = tmp_path / "my out.csv"

    result = invoke("run", source, "--output", output, "--raw-csv", "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.INTERRUPTED
    assert "Aborted!" not in result.output
    assert result.stderr.endswith(
        f"Interrupted: job {JOB_ID} goes on at the gateway (last seen processing).\n"
        f"  Follow it and write its output: harvester wait {JOB_ID} --output '{output}' --raw-csv "
        f"--gateway {gateway.url}\n"
        f"  Cancel it: harvester cancel {JOB_ID} --gateway {gateway.url}\n"
    )
    assert gateway.seen("DELETE") == []
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


def test_ctrl_c_with_cancel_on_interrupt_cancels_the_job(gateway, source, monkeypatch):
    run_job(gateway, job("processing"))
    gateway.on("DELETE", JOB_PATH, (200, job("cancelled")))
    interrupt(monkeypatch, "look", after=1)

    result = invoke("run", source, "--cancel-on-interrupt", "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.INTERRUPTED
    assert f"Interrupted: job {JOB_ID} is cancelled (--cancel-on-interrupt).\n" in result.stderr
    assert [r.path for r in gateway.seen("DELETE")] == [JOB_PATH]


def test_ctrl_c_with_cancel_on_interrupt_after_the_job_ended_says_so(gateway, source, monkeypatch):
    run_job(gateway, job("processing"))
    finished = {"code": "job_finished", "message": "Ended.", "details": {"job_status": "failed"}}
    gateway.on("DELETE", JOB_PATH, (409, {"error": finished}))
    interrupt(monkeypatch, "look", after=1)

    result = invoke("run", source, "--cancel-on-interrupt", "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.INTERRUPTED
    assert f"Interrupted: job {JOB_ID} had already ended (failed); nothing was cancelled." in result.stderr


def test_ctrl_c_during_the_upload_submits_nothing_and_deletes_the_dataset(gateway, source, monkeypatch):
    datasets = FakeDatasets(gateway)
    interrupt(monkeypatch, "put_part")

    result = invoke("run", source, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.INTERRUPTED
    assert "Interrupted: nothing was submitted.\n" in result.stderr
    assert gateway.seen("POST", "/jobs") == []
    assert datasets.deleted == ["ds-1"]


def test_ctrl_c_while_downloading_says_how_to_fetch_the_result_and_leaves_no_partial_output(
    gateway, source, tmp_path, monkeypatch
):
    run_job(gateway, COMPLETED)
    interrupt(monkeypatch, "result")
    output = tmp_path / "out.parquet"

    result = invoke("run", source, "--output", output, "--gateway", gateway.url, "--cancel-on-interrupt")

    assert result.exit_code == ExitCode.INTERRUPTED
    assert result.stderr.endswith(
        f"Interrupted: job {JOB_ID} has completed; its output was not written. Write it with: "
        f"harvester fetch {JOB_ID} --output {output} --gateway {gateway.url}\n"
    )
    assert gateway.seen("DELETE") == []  # nothing to cancel
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


def test_ctrl_c_while_waiting_says_how_to_go_on_with_the_default_gateway_left_out(gateway, monkeypatch):
    gateway.on("GET", JOB_PATH, (200, job("started")))
    monkeypatch.setattr("harvester.harvest.DEFAULT_GATEWAY", gateway.url)  # as if it were the default one
    interrupt(monkeypatch, "look", after=1)

    result = invoke("wait", JOB_ID, "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.INTERRUPTED
    assert f"  Follow it and write its output: harvester wait {JOB_ID} --output PATH\n" in result.stderr
    assert f"  Cancel it: harvester cancel {JOB_ID}\n" in result.stderr


# Dry runs


PLAN = {
    "dry_run": True,
    "rows": 3,
    "columns": [{"name": "id", "type": "integer"}, {"name": "name", "type": "string"},
                {"name": "count", "type": "integer"}],
    "steps": [
        {"index": 0, "name": "drop_nulls", "columns": [{"name": "id", "type": "integer"},
                                                        {"name": "name", "type": "string"},
                                                        {"name": "count", "type": "integer"}]},
        {"index": 1, "name": "select_columns", "columns": [{"name": "id", "type": "integer"}]},
        {"index": 2, "name": "sample", "columns": None},
    ],
    "message": "Valid: 3 operations on 3 rows. Nothing was stored or queued.",
}  # fmt: skip


def test_dry_run_uploads_the_source_checks_the_job_prints_the_plan_and_leaves_nothing(gateway, source, tmp_path):
    datasets = FakeDatasets(gateway)
    gateway.on("POST", "/jobs?dry_run=true", (200, PLAN))
    output = tmp_path / "out.csv"

    result = invoke("run", source, "--op", "drop_nulls", "--op", 'select_columns:{"columns": ["id"]}',
                    "--op", 'sample:{"n": 1}', "--output", output, "--dry-run", "--gateway", gateway.url)  # fmt: skip

    assert result.exit_code == ExitCode.OK, result.output
    assert result.stdout == (
        f"Input: {source}, 3 rows: id integer, name string, count integer\n"
        "Step 0 drop_nulls: id integer, name string, count integer\n"
        "Step 1 select_columns: id integer\n"
        "Step 2 sample: columns depend on the data\n"
        "Valid: 3 operations on 3 rows. Nothing was stored or queued.\n"
    )
    # The real dataset went up (the checks see its real columns and types), was checked by id, and was deleted.
    assert uploaded(gateway) == [
        {"id": 1, "name": "Zoë", "count": 3},
        {"id": 2, "name": None, "count": None},
        {"id": 3, "name": "李", "count": None},
    ]
    (post,) = gateway.seen("POST", "/jobs")
    assert post.path == "/jobs?dry_run=true"
    assert post.body["dataset_id"] == "ds-1" and len(post.body["operations"]) == 3
    assert datasets.deleted == ["ds-1"]
    assert gateway.seen("GET") == []
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


def test_dry_run_json_prints_the_gateways_plan(gateway, source):
    FakeDatasets(gateway)
    gateway.on("POST", "/jobs?dry_run=true", (200, PLAN))

    result = invoke("run", source, "--dry-run", "--json", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    assert json.loads(result.stdout) == PLAN


def test_dry_run_of_a_job_the_gateway_refuses_exits_2_with_its_message(gateway, source):
    datasets = FakeDatasets(gateway)
    unknown = {"code": "unknown_column", "details": {"step": 0, "operation": "sort", "parameter": "by"},
               "message": "Step 0 (sort): The 'by' parameter of sort names column 'age', which does not exist."}
    gateway.on("POST", "/jobs?dry_run=true", (400, {"error": unknown}))  # fmt: skip

    result = invoke("run", source, "--op", 'sort:{"by": "age"}', "--dry-run", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert "400 unknown_column: Step 0 (sort): The 'by' parameter of sort names column 'age'" in result.stderr
    assert result.stdout == ""
    assert datasets.deleted == ["ds-1"]


def test_dry_run_against_a_gateway_that_does_not_know_it_cancels_the_job_it_queued(gateway, source):
    FakeDatasets(gateway)
    gateway.on("POST", "/jobs?dry_run=true", ACCEPTED)  # ?dry_run ignored: a real job
    gateway.on("DELETE", JOB_PATH, (200, job("cancelled")))

    result = invoke("run", source, "--dry-run", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.UNREACHABLE  # a gateway error, as a 5xx is
    assert f"The gateway does not know dry runs: it queued job {JOB_ID} instead (it was cancelled)" in result.stderr
    assert [r.path for r in gateway.seen("DELETE", JOB_PATH)] == [JOB_PATH]


def test_jobs_cancel_and_wait_send_the_token_and_never_show_it(gateway):
    gateway.on("GET", "/jobs", (200, {"jobs": [RUNNING], "next": None}))
    gateway.on("DELETE", JOB_PATH, (200, job("cancelled")))
    gateway.on("GET", JOB_PATH, (200, COMPLETED))
    env = {"GATEWAY_TOKEN": TOKEN}

    results = [invoke(*args, "--gateway", gateway.url, env=env) for args in (["jobs"], ["cancel", JOB_ID],
                                                                              ["wait", JOB_ID])]  # fmt: skip

    assert [r.exit_code for r in results] == [ExitCode.OK] * 3, [r.output for r in results]
    assert [(m, urlsplit(p).path, a) for m, p, a in authorizations(gateway)] == [
        ("GET", "/jobs", f"Bearer {TOKEN}"), ("DELETE", JOB_PATH, f"Bearer {TOKEN}"), ("GET", JOB_PATH, f"Bearer {TOKEN}"),
    ]  # fmt: skip
    assert not any(TOKEN in r.stdout + r.stderr for r in results)
