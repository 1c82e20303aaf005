"""The harvester's HTTP client and commands against the real gateway, served on 127.0.0.1 in a thread.

The gateway is the ``app`` of tests/conftest.py (``create_app`` over fakeredis, Celery's in-memory
transport) served by werkzeug in a thread, so the harvester's own HTTP client talks to the real routes:
what it uploads is what the gateway stored, the job bodies it reads are the gateway's.

In front of the app, :class:`Faults` records every request as it went over the wire (method, path,
headers, body) and, per scripted rule, answers a canned error, drops the connection, loses the
gateway's answer, cuts a streamed answer short or sends it late, as a gateway in trouble would;
whatever no rule answers goes to the app (and is recorded with its status and headers). No worker
runs: each job moves along a script of steps (:func:`processing`, :func:`completed`, :func:`failed`,
:func:`CANCELLED`), one step each time a look at it (``GET /jobs/<id>``) reaches the app, written
with the job store's methods a worker uses.
"""

import collections
import dataclasses
import functools
import hashlib
import io
import json
import os
import re
import runpy
import socket
import sys
import threading
import time
import types
import uuid
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from werkzeug.datastructures import EnvironHeaders
from werkzeug.serving import WSGIRequestHandler, make_server

from harvester import upload
from harvester.cli import ExitCode, main
from harvester.client import GatewayClient
from harvester.errors import GatewayError, GatewayUnreachable, JobNotFound, JobTimeout, ServerError, Unauthorized
from harvester.transport import make_retry
from workers import chunks, frames
from workers.status import PROGRESS

ARROW = "application/vnd.apache.arrow.stream"
#: Paths of any job, and of any job's result (the ids are the gateway's own, made as jobs are submitted).
A_JOB = re.compile(r"/jobs/[0-9a-f-]{36}")
A_RESULT = re.compile(r"/jobs/[0-9a-f-]{36}/result")
A_COMMIT = re.compile(r"/datasets/[0-9a-f-]{36}/commit")
WORKER = "celery@host-1"


@dataclasses.dataclass
class Request:
    """One request as the gateway got it, and (when the app answered it) the answer's status and headers."""

    method: str
    path: str  # with the query string
    headers: dict
    body: object  # parsed JSON for a JSON body, else the raw bytes (b"" for none)
    status: int = None
    answer: dict = None


#: Answers a rule can give besides a canned ``(status, body[, headers])``.
PASS = "pass"  # the gateway answers
DROP = "drop"  # the connection closes before the gateway sees the request, as a gateway process that died
LOSE = "lose"  # the gateway handles the request; its answer is lost with the connection


@dataclasses.dataclass
class Cut:
    """The gateway's streamed answer, cut in the middle of its piece ``piece`` (0 first): a connection lost
    mid-body. An Arrow result comes a stored chunk a piece."""

    piece: int


@dataclasses.dataclass
class Late:
    """The gateway's answer, sent ``seconds`` late: a slow network, or a busy gateway."""

    seconds: float


class Faults:
    """WSGI middleware before the gateway: records every request and answers it by the first rule it
    matches, else hands it to ``app`` (``before(request)`` first)."""

    def __init__(self, app, before):
        self.app, self.before = app, before
        self.requests = []
        self.rules = []  # [method, path, answers, forever]
        self.lock = threading.Lock()

    def on(self, method, path, *answers, forever=False):
        """Answer the next requests ``method path`` with ``answers`` in turn, then let the gateway answer
        (``forever``: the last answer repeats). ``path`` is a regular expression for the path, or text: the
        path, or the path and its query when it holds ``?``."""
        self.rules.append([method, path, list(answers), forever])

    def _answer(self, request):
        path = urlsplit(request.path).path
        for rule in self.rules:
            method, pattern, answers, forever = rule
            if method != request.method or not answers:
                continue
            if isinstance(pattern, re.Pattern):
                matched = pattern.fullmatch(path)
            else:
                matched = pattern == (request.path if "?" in pattern else path)
            if matched:
                return answers[0] if forever and len(answers) == 1 else answers.pop(0)
        return PASS

    def __call__(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(raw)
        headers = dict(EnvironHeaders(environ))
        query = environ.get("QUERY_STRING")
        path = environ["PATH_INFO"] + (f"?{query}" if query else "")
        is_json = raw and headers.get("Content-Type", "").startswith("application/json")
        request = Request(environ["REQUEST_METHOD"], path, headers, json.loads(raw) if is_json else raw)
        with self.lock:
            self.requests.append(request)
            answer = self._answer(request)
        if callable(answer):
            answer = answer(request, environ)
        if answer == DROP:
            _drop(environ)
        if isinstance(answer, tuple):
            return _canned(start_response, *answer)

        def recording(status, headers, exc_info=None):
            request.status, request.answer = int(status.split()[0]), dict(headers)
            return start_response(status, headers, exc_info)

        self.before(request)
        body = self.app(environ, recording)
        if isinstance(answer, Late):
            time.sleep(answer.seconds)
        if answer == LOSE:
            _close(body, iter(body))
            _drop(environ)
        if isinstance(answer, Cut):
            return _cut(body, answer.piece, environ)
        return body


def _canned(start_response, status, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {}), "Content-Length": str(len(data))}
    start_response(f"{status} {HTTPStatus(status).phrase}", list(headers.items()))
    return [data]


def _drop(environ):
    """Close the request's connection without (more of) an answer."""
    environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
    raise ConnectionResetError("dropped by the test")  # werkzeug takes it as a connection gone


def _close(body, pieces):
    for _ in pieces:
        pass
    if hasattr(body, "close"):
        body.close()


def _cut(body, piece, environ):
    try:
        for index, data in enumerate(body):
            if index == piece:
                yield data[: len(data) // 2]
                _drop(environ)
            yield data
    finally:
        if hasattr(body, "close"):
            body.close()


class _Handler(WSGIRequestHandler):
    def setup(self):
        super().setup()
        # Headers and body go out in two writes: without this, each answer waits out a delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log(self, *args):  # werkzeug's line per request: the test's output is the harvester's
        pass


class Gateway:
    """The real gateway app served on 127.0.0.1 behind :class:`Faults`; its jobs move along :meth:`runs`."""

    def __init__(self, app, complete_job):
        self.app, self.complete_job = app, complete_job
        self.store, self.datasets = app.extensions["jobstore"], app.extensions["datasets"]
        self.celery = app.extensions["celery"]
        self.faults = Faults(app, self._look)
        self.on, self.requests = self.faults.on, self.faults.requests
        self._script, self._steps = [], {}
        self.server = make_server("127.0.0.1", 0, self.faults, threaded=True, request_handler=_Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()

    # Jobs

    def runs(self, *steps):
        """Each job submitted takes ``steps`` in turn, one each time a look at it reaches the gateway."""
        self._script = list(steps)

    def _look(self, request):
        path = urlsplit(request.path).path
        if request.method == "GET" and A_JOB.fullmatch(path):
            job_id = path.rsplit("/", 1)[1]
            steps = self._steps.setdefault(job_id, list(self._script))
            if steps and self.store.get(job_id) is not None:
                steps.pop(0)(self, job_id)

    def apply(self, job_id, *steps):
        """Move ``job_id`` along ``steps`` now."""
        for step in steps:
            step(self, job_id)

    def submit(self, operations=("drop_nulls",), dataset=None, token=None, **body):
        """A job of the gateway's (not through the wire); its id."""
        body = {"dataset": [{"id": 1}] if dataset is None else dataset, "operations": list(operations), **body}
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        answer = self.app.test_client().post("/jobs", json=body, headers=headers)
        assert answer.status_code == 202, answer.get_json()
        return answer.get_json()["job_id"]

    def body(self, job_id, token=None):
        """The gateway's ``GET /jobs/<id>`` body."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.app.test_client().get(f"/jobs/{job_id}", headers=headers).get_json()

    @property
    def job_id(self):
        """The job the last submission over the wire made (or found)."""
        posts = [r for r in self.seen("POST", "/jobs") if r.answer and "Location" in r.answer]
        return posts[-1].answer["Location"].rsplit("/", 1)[1]

    # Datasets

    @property
    def dataset_id(self):
        """The dataset the last ``POST /datasets`` over the wire made."""
        created = [r for r in self.seen("POST", "/datasets") if r.status == 201]
        return created[-1].answer["Location"].rsplit("/", 1)[1]

    def stored(self, dataset_id=None):
        """The table of a committed dataset (the last one made over the wire when None), as the gateway keeps it."""
        record = self.datasets.get(dataset_id or self.dataset_id)
        return chunks.read_all(self.store.data, record["ref"])

    def stored_rows(self, dataset_id=None):
        """The rows of :meth:`stored`, as JSON values: what a worker reads."""
        return json.loads(frames.table_to_json(self.stored(dataset_id)))

    def sent_rows(self):
        """The rows of the last dataset as they went over the wire: the last PUT of each part, parts in order."""
        dataset = f"/datasets/{self.dataset_id}/parts/"
        parts = {int(r.path.rsplit("/", 1)[1]): r.body for r in self.seen("PUT") if r.path.startswith(dataset)}
        tables = [ipc.open_stream(pa.py_buffer(parts[n])).read_all() for n in sorted(parts)]
        return pa.concat_tables(tables).to_pylist()

    def seen(self, method=None, path=None):
        """The requests received, of ``method`` (and whose path, query left out, matches ``path``)."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (path is None or re.fullmatch(path, urlsplit(r.path).path))
        ]


# Steps of a job, as a worker would take them: each a function of (gateway, job id).

QUEUED = lambda gateway, job_id: None  # noqa: E731 - nothing happens: the job waits for a worker


def _start(gateway, job_id):
    if gateway.store.get(job_id).get("started_at") is None:
        gateway.store.mark_started(job_id, WORKER)


def processing(done=0, current=None, chunks_done=0, chunks_total=0, phase="running"):
    """The job runs: ``done`` operations done, and how far the current one is."""

    def step(gateway, job_id):
        _start(gateway, job_id)
        meta = {"operations_done": done, "operations_total": gateway.store.get(job_id)["operations_total"],
                "current_operation": current, "phase": phase, "chunks_done": chunks_done,
                "chunks_total": chunks_total}  # fmt: skip
        gateway.celery.backend.store_result(job_id, meta, PROGRESS)
        gateway.store.notify(job_id)

    return step


def completed(records=None, chunk_rows=None, deleted=False):
    """The job completes with ``records`` (:data:`OUTPUT`) as its result, stored in chunks of ``chunk_rows``;
    ``deleted``: its result deleted at once (``DELETE /jobs/<id>/result``)."""
    records = OUTPUT if records is None else records

    def step(gateway, job_id):
        _start(gateway, job_id)
        record = gateway.store.get(job_id)
        rows_in, rows_out = record["rows_in"], len(records)
        operations = [
            {"name": op["name"], "rows_in": rows_in if i == 0 else rows_out, "rows_out": rows_out, "seconds": 0.002}
            for i, op in enumerate(record["operations"])
        ]
        summary = {"processed_items": rows_in, "output_items": rows_out, "operations_applied": len(operations),
                   "operations": operations, "workers": [WORKER]}  # fmt: skip
        gateway.complete_job(job_id, records, summary, chunk_rows=chunk_rows)
        if deleted:
            gateway.store.drop_output(job_id)

    return step


def failed(index=1, message="Step 1 (limit) failed: boom.", kind="operation_failed"):
    def step(gateway, job_id):
        _start(gateway, job_id)
        gateway.store.fail(job_id, {"type": kind, "message": message, "operation_index": index})

    return step


def CANCELLED(gateway, job_id):  # noqa: N802 - a step like QUEUED
    gateway.store.cancel(job_id)


OUTPUT = [{"id": 1, "name": "Zoë", "count": 3, "note": None}, {"id": 3, "name": "李", "count": None, "note": "late key"}]
UNAVAILABLE = (503, {"error": {"code": "backend_unavailable", "message": "Redis is down.", "details": {}}})
TOKEN, OTHER_TOKEN = "s3cret-Tok.en_42", "another-token"


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch):
    monkeypatch.delenv("GATEWAY_TOKEN", raising=False)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    """The CLI's own client, with tiny backoffs: its retries run out in milliseconds, not seconds."""
    monkeypatch.setattr("harvester.transport.make_retry", functools.partial(make_retry, backoff_factor=0.001))


@pytest.fixture
def gateway(app, complete_job):
    with Gateway(app, complete_job) as served:
        yield served


@pytest.fixture
def secured(gateway, app):
    """The gateway with ``API_TOKENS`` set: :data:`TOKEN` and :data:`OTHER_TOKEN`."""
    app.config["API_TOKENS"] = (TOKEN, OTHER_TOKEN)
    return gateway


@pytest.fixture
def closed_url():
    """URL of a port on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def fast_client(url, token=None):
    return GatewayClient(url, retry=make_retry(backoff_factor=0.001), token=token)


def arrow_part(records):
    sink = pa.BufferOutputStream()
    table = pa.Table.from_pylist(records)
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


# The client


def test_submit_is_retried_after_503_with_one_idempotency_key(gateway, queued):
    gateway.on("POST", "/jobs", UNAVAILABLE, UNAVAILABLE)

    answer = fast_client(gateway.url).submit([{"a": 1}], ["drop_nulls"])

    assert answer["status"] == "started" and gateway.store.get(answer["job_id"])["rows_in"] == 1
    posts = gateway.seen("POST")
    assert len(posts) == 3
    assert posts[0].body == {"dataset": [{"a": 1}], "operations": ["drop_nulls"]}
    keys = {post.headers["Idempotency-Key"] for post in posts}
    assert len(keys) == 1 and len(keys.pop()) == 36  # the same uuid4 on every try
    assert queued() == 1


def test_submit_waits_out_a_full_quota_past_the_retries_of_urllib3_with_one_idempotency_key(gateway, queued):
    started = time.monotonic()
    full = (429, {"error": {"code": "too_many_jobs", "message": "quota", "details": {"limit": 1}}},
            {"Retry-After": "0"})  # fmt: skip
    gateway.on("POST", "/jobs", *[full] * 7)  # more 429s than urllib3's retries

    answer = fast_client(gateway.url).submit([{"a": 1}], ["drop_nulls"], deadline=time.monotonic() + 10)

    assert time.monotonic() - started < 4  # "Retry-After: 0" is honoured, not read as none given (5 s)
    assert gateway.store.get(answer["job_id"]) is not None
    posts = gateway.seen("POST")
    assert len(posts) == 8
    assert len({post.headers["Idempotency-Key"] for post in posts}) == 1
    assert queued() == 1


def test_a_full_quota_is_an_error_at_the_deadline(secured, app, queued):
    app.config["MAX_ACTIVE_JOBS_PER_TOKEN"] = 1
    secured.submit(token=TOKEN)  # the token's one active job
    started = time.monotonic()

    with pytest.raises(GatewayError) as caught:
        fast_client(secured.url, token=TOKEN).submit([{"a": 1}], ["drop_nulls"], deadline=started + 0.3)

    assert (caught.value.status, caught.value.code) == (429, "too_many_jobs")
    assert time.monotonic() - started < 2  # the gateway's Retry-After (5 s) was cut to the deadline
    assert len(secured.seen("POST", "/jobs")) == 2  # one try, one more at the deadline
    assert queued() == 1


def test_submit_by_dataset_id(gateway):
    client = fast_client(gateway.url)
    dataset_id = client.create_dataset()["dataset_id"]
    client.put_part(dataset_id, 1, arrow_part([{"a": 1}, {"a": None}]))
    client.commit_dataset(dataset_id)

    answer = client.submit(dataset_id, ["drop_nulls"])

    assert gateway.seen("POST", "/jobs")[0].body == {"dataset_id": dataset_id, "operations": ["drop_nulls"]}
    assert gateway.store.get(answer["job_id"])["dataset_id"] == dataset_id


def test_a_4xx_is_not_retried(gateway, queued):
    with pytest.raises(GatewayError) as caught:
        fast_client(gateway.url).submit([{"a": 1}], ["nope"])

    assert (caught.value.status, caught.value.code) == (400, "unknown_operation")
    assert "unknown operation 'nope'" in caught.value.message
    assert len(gateway.requests) == 1
    assert queued() == 0


def test_closed_port_is_unreachable(closed_url):
    started = time.monotonic()

    with pytest.raises(GatewayUnreachable, match="POST .*/jobs"):
        fast_client(closed_url).submit([], [])

    assert time.monotonic() - started < 2


def test_503_for_ever_is_unreachable_with_the_gateways_reason(gateway):
    gateway.on("GET", "/health", UNAVAILABLE, forever=True)

    with pytest.raises(GatewayUnreachable, match="Redis is down"):
        fast_client(gateway.url).health()

    assert len(gateway.requests) == 5  # the first try and 4 retries


def test_retry_after_is_honoured_but_never_past_the_deadline(gateway):
    gateway.on("GET", "/operations", (503, {}, {"Retry-After": "60"}), forever=True)
    started = time.monotonic()

    with pytest.raises(GatewayUnreachable):
        fast_client(gateway.url).operations(deadline=started + 0.5)

    assert time.monotonic() - started < 2
    assert len(gateway.requests) == 2  # one try, one after sleeping until the deadline


@pytest.mark.parametrize("job_id", ["nope", "3f2c5a0e-8d8a-4b6f-9c1e-2d3a4b5c6d7e"], ids=["not an id", "unknown"])
def test_unknown_job_is_job_not_found(gateway, job_id):
    with pytest.raises(JobNotFound):
        fast_client(gateway.url).job(job_id)


def test_a_commit_retried_after_its_answer_was_lost_finds_the_dataset_ready(gateway):
    client = fast_client(gateway.url)
    dataset_id = client.create_dataset()["dataset_id"]
    client.put_part(dataset_id, 1, arrow_part([{"a": 1}, {"a": 2}]))
    gateway.on("POST", f"/datasets/{dataset_id}/commit", LOSE)  # committed, but the answer never came

    described = client.commit_dataset(dataset_id)

    assert (described["status"], described["rows"]) == ("ready", 2)
    assert [r.status for r in gateway.seen("POST", f"/datasets/{dataset_id}/commit")] == [200, 409]


def test_wait_reports_each_change_and_rides_out_a_gateway_hiccup(gateway):
    job_id = gateway.submit(["drop_nulls", "drop_nulls"])
    gateway.runs(QUEUED, processing(1), processing(1), processing(1, chunks_done=1, chunks_total=2), completed())
    oops = (500, {"error": {"code": "internal_error", "message": "Oops.", "details": {}}})
    gateway.on("GET", A_JOB, PASS, PASS, PASS, PASS, oops)
    changes = []

    final = fast_client(gateway.url).wait(
        job_id, poll_interval=0.01, max_wait=0, deadline=time.monotonic() + 5,
        on_change=lambda j: changes.append(j["status"]),
    )  # fmt: skip

    assert final["data"]["output_items"] == 2
    assert changes == ["started", "processing", "processing", "completed"]  # a new chunk done is a change


def test_wait_waits_at_the_gateway_for_each_change(gateway):
    job_id = gateway.submit(["drop_nulls", "drop_nulls"])
    gateway.runs(QUEUED, processing(1), completed())

    started = time.monotonic()

    final = fast_client(gateway.url).wait(job_id, poll_interval=60, max_wait=20, deadline=started + 30)

    assert final["status"] == "completed"
    assert time.monotonic() - started < 5  # no poll interval: each wait answered at the change
    looks = gateway.seen("GET", A_JOB)
    assert [urlsplit(r.path).query for r in looks] == ["", "wait=20", "wait=20"]
    assert [r.headers.get("If-None-Match") for r in looks] == [None, *[r.answer["ETag"] for r in looks[:-1]]]


def test_wait_polls_again_after_the_retries_run_out(gateway):
    job_id = gateway.submit()
    gateway.runs(completed())
    gateway.on("GET", A_JOB, *[UNAVAILABLE] * 5)

    final = fast_client(gateway.url).wait(job_id, poll_interval=0.01, deadline=time.monotonic() + 5)

    assert final["status"] == "completed"
    assert len(gateway.requests) == 6  # 5 tries (all 503) in the first poll, then the second poll


def test_wait_gives_up_at_the_deadline(gateway):
    job_id = gateway.submit(["drop_nulls", "drop_nulls"])
    gateway.runs(processing(1))

    with pytest.raises(JobTimeout) as caught:
        fast_client(gateway.url).wait(job_id, poll_interval=0.05, deadline=time.monotonic() + 0.3)

    assert caught.value.job["status"] == "processing"


# The commands


def invoke(*args, env=None):
    return CliRunner().invoke(main, list(map(str, args)), env=env)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,name,count\n1,Zoë,3\n2,,\n3,李,\n", encoding="utf-8")
    return str(path)


#: The rows of :func:`source`, as the gateway should store them: blanks as null, ints as ints.
SOURCE_ROWS = [{"id": 1, "name": "Zoë", "count": 3}, {"id": 2, "name": None, "count": None},
               {"id": 3, "name": "李", "count": None}]  # fmt: skip
TWO_STEPS = ["--op", "drop_nulls", "--op", 'limit:{"n": 2}']


@pytest.fixture
def ops_file(tmp_path):
    path = tmp_path / "ops.json"
    path.write_text(json.dumps(["drop_nulls"]))
    return str(path)


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_run_uploads_submits_polls_downloads_and_writes_output_and_manifest(gateway, source, ops_file, tmp_path):
    gateway.runs(QUEUED, processing(1), completed())
    output = tmp_path / "out.csv"

    result = invoke(
        "run", source, "--operations", ops_file, "--op", 'limit:{"n": 2}', "--output", output,
        "--gateway", gateway.url, "--poll-interval", "0.01",
    )  # fmt: skip

    assert result.exit_code == ExitCode.OK, result.output
    # What the gateway stored, from one part of Arrow: blanks as null, ints as ints.
    dataset_id, job_id = gateway.dataset_id, gateway.job_id
    assert gateway.stored_rows() == SOURCE_ROWS
    assert [r.path for r in gateway.seen("PUT")] == [f"/datasets/{dataset_id}/parts/1"]
    # What was submitted: the dataset by id, the file's operations before --op.
    body = gateway.seen("POST", "/jobs")[0].body
    assert body == {"dataset_id": dataset_id, "operations": ["drop_nulls", {"name": "limit", "params": {"n": 2}}]}
    # What was written, from the Arrow result: the gateway's CSV (text quoted, nulls empty).
    assert output.read_text(encoding="utf-8") == '"id","name","count","note"\n1,"Zoë",3,\n3,"李",,"late key"\n'
    manifest = json.loads((tmp_path / "out.csv.manifest.json").read_text())
    job = gateway.body(job_id)
    assert manifest["job_id"] == job_id
    assert manifest["source"] == source
    assert manifest["source_sha256"] == sha256(source)
    assert manifest["gateway"] == gateway.url
    described = gateway.app.test_client().get(f"/datasets/{dataset_id}").get_json()
    assert manifest["dataset"]["dataset_id"] == dataset_id
    assert (manifest["dataset"]["parts"], manifest["dataset"]["rows"]) == (1, 3)
    assert manifest["dataset"]["bytes"] == described["bytes"]
    assert manifest["operations"] == body["operations"]
    assert (manifest["rows_in"], manifest["rows_out"]) == (3, 2)
    assert [s["name"] for s in manifest["operation_stats"]] == ["drop_nulls", "limit"]
    assert manifest["workers"] == [WORKER]
    assert manifest["output"] == {
        "path": str(output), "format": "csv", "rows": 2, "bytes": output.stat().st_size, "sha256": sha256(output),
        "neutralise_formulas": True, "cells_neutralised": 0,
    }  # fmt: skip
    assert manifest["timings"]["job"] == {key: job[key] for key in ("created_at", "started_at", "finished_at")}
    assert manifest["timings"]["submitted_at"].endswith("+00:00")
    assert manifest["timings"]["seconds"] >= 0
    assert manifest["harvester_version"]
    # What the user saw on stderr: one line per phase, the job id, progress, the summary.
    assert "Uploaded 3 records from" in result.stderr and f"as dataset {dataset_id} (1 part" in result.stderr
    assert f"Submitted job {job_id}" in result.stderr
    assert "processing: 1/2 operations" in result.stderr
    assert "Wrote 2 records to" in result.stderr
    assert "3 rows in -> 2 rows out" in result.stderr
    assert "drop_nulls" in result.stderr and f"Output: {output}" in result.stderr
    assert result.stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["in.csv", "ops.json", "out.csv", "out.csv.manifest.json"]


def test_json_prints_one_object_on_stdout(gateway, source):
    gateway.runs(completed())

    result = invoke("run", source, "--op", "drop_nulls", "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.OK, result.output
    summary = json.loads(result.stdout)
    assert summary["outcome"] == "completed"
    assert (summary["job_id"], summary["dataset_id"]) == (gateway.job_id, gateway.dataset_id)
    assert (summary["rows_in"], summary["rows_out"]) == (3, 2)
    assert summary["operations"][0] == {"name": "drop_nulls", "rows_in": 3, "rows_out": 2, "seconds": 0.002}
    assert summary["output"] is None  # no --output: nothing written
    assert not gateway.seen("GET", A_RESULT)  # ...nor downloaded


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
    gateway.runs(completed())
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
    gateway.runs(completed())
    # The gateway dies on part 3 more times than the transport retries (1 + 4): the upload carries on from part 3.
    gateway.on("PUT", re.compile(r"/datasets/[\w-]+/parts/3"), *[DROP] * 7)

    result = invoke("run", source, "--gateway", gateway.url, "--poll-interval", "0.01", "--json")

    assert result.exit_code == ExitCode.OK, result.output
    puts = [int(r.path.rsplit("/", 1)[1]) for r in gateway.seen("PUT")]
    parts = max(puts)
    assert parts >= 5
    # Part 3 went 8 times, every other part once (each of them in any order: two PUTs are in flight at once).
    assert collections.Counter(puts) == {n: 8 if n == 3 else 1 for n in range(1, parts + 1)}
    assert f"Uploading part 3 of dataset {gateway.dataset_id} failed" in result.stderr
    assert gateway.stored_rows() == rows
    summary = json.loads(result.stdout)
    assert summary["rows_in"] == 1000
    assert all(len(r.body) < 2048 * 2 for r in gateway.seen("PUT"))


def test_two_parts_are_in_flight_at_once_each_on_a_connection_of_its_own(gateway, tmp_path, monkeypatch):
    monkeypatch.setattr("harvester.upload.PART_BYTES", 2048)
    source = tmp_path / "in.jsonl"
    rows = [{"id": i, "text": f"row {i} " + "x" * (i % 50)} for i in range(1000)]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    gateway.runs(completed())
    both = threading.Barrier(2, timeout=10)  # broken, failing the run, unless parts 1 and 2 are sent together
    sessions = set()
    put_part = GatewayClient.put_part

    def put_together(client, dataset_id, number, body, **kwargs):
        sessions.add(id(client.session))
        if number <= 2:
            both.wait()
        return put_part(client, dataset_id, number, body, **kwargs)

    monkeypatch.setattr(GatewayClient, "put_part", put_together)

    result = invoke("run", source, "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.OK, result.output
    assert len(sessions) == upload.PUTS_IN_FLIGHT == 2
    assert gateway.stored_rows() == rows


def test_a_csv_column_that_stops_fitting_its_type_is_uploaded_again_from_part_1(gateway, tmp_path, monkeypatch):
    monkeypatch.setattr("harvester.sources.CSV_BLOCK_BYTES", 4096)
    monkeypatch.setattr("harvester.sources.CSV_SAMPLE_BYTES", 4096)
    monkeypatch.setattr("harvester.upload.PART_BYTES", 4096)
    source = tmp_path / "in.csv"
    source.write_text("n,label\n" + "".join(f"{i},row {i}\n" for i in range(2000)) + "2.5,late\n")
    gateway.runs(completed())

    result = invoke("run", source, "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.OK, result.output
    assert "CSV column 'n' holds '2.5', which is not int64: reading it as double; uploading again from part 1" in (
        result.stderr
    )
    puts = [int(r.path.rsplit("/", 1)[1]) for r in gateway.seen("PUT")]
    assert puts.count(1) == 2  # part 1 went twice: ints, then floats
    table = gateway.stored()
    assert pa.types.is_floating(table.schema.field("n").type)
    assert table.column("n").to_pylist() == [float(i) for i in range(2000)] + [2.5]


def test_a_download_that_breaks_goes_on_from_the_rows_written(gateway, source, tmp_path):
    rows = [{"id": i, "name": f"n{i}"} for i in range(10)]
    gateway.runs(completed(rows, chunk_rows=2))  # 5 chunks: the stream comes in 5 pieces
    gateway.on("GET", A_RESULT, Cut(2), Cut(1))  # lost in its 3rd piece, then in the 2nd of the rest
    output = tmp_path / "out.jsonl"

    result = invoke("run", source, "--output", output, "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.OK, result.output
    offsets = [parse_qs(urlsplit(r.path).query)["offset"][0] for r in gateway.seen("GET", A_RESULT)]
    assert offsets == ["0", "4", "6"]  # each time from the rows written
    assert "Download of job" in result.stderr and "resuming there" in result.stderr
    assert [json.loads(line) for line in output.read_text().splitlines()] == rows


def test_a_result_that_cannot_be_downloaded_leaves_no_output_at_all(gateway, source, tmp_path):
    gateway.runs(completed(deleted=True))  # deleted before the harvester downloads it
    output = tmp_path / "out.parquet"

    result = invoke("run", source, "--output", output, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert "410 result_deleted" in result.stderr
    assert f"harvester fetch {gateway.job_id} --output {output}" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.csv"]  # no output, no manifest, no temporary file


def test_an_existing_output_is_kept_unless_forced(gateway, source, tmp_path):
    gateway.runs(completed())
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
    gateway.runs(processing(), failed(1, "Step 1 (limit) failed: boom."))
    output = tmp_path / "out.jsonl"

    result = invoke(
        "run", source, *TWO_STEPS, "--output", output, "--gateway", gateway.url, "--poll-interval", "0.01", "--json",
    )  # fmt: skip

    assert result.exit_code == ExitCode.JOB_FAILED
    assert "failed" in result.stderr
    assert "at operation 1 (limit): operation_failed: Step 1 (limit) failed: boom." in result.stderr
    assert json.loads(result.stdout)["error"]["operation_index"] == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


def test_refused_job_exits_2_with_the_gateways_code_and_writes_nothing(gateway, source, tmp_path, queued):
    result = invoke("run", source, "--op", "nope", "--output", tmp_path / "out.json", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert "unknown_operation" in result.stderr and "unknown operation 'nope'" in result.stderr
    assert len(gateway.seen("POST", "/jobs")) == 1
    assert queued() == 0
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


def test_a_part_the_gateway_refuses_exits_2_before_any_job(gateway, source, queued):
    mismatch = {"code": "schema_mismatch", "message": "Part 2 does not fit.", "details": {"part": 2, "column": "a"}}
    gateway.on("POST", A_COMMIT, (400, {"error": mismatch}))

    result = invoke("run", source, "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.USAGE
    assert "400 schema_mismatch: Part 2 does not fit." in result.stderr
    summary = json.loads(result.stdout)
    assert summary["error"]["details"] == {"part": 2, "column": "a"}
    assert (summary["job_id"], summary["dataset_id"]) == (None, gateway.dataset_id)
    assert not gateway.seen("POST", "/jobs") and queued() == 0


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
    if content is not None:
        (tmp_path / name).write_text(content)

    result = invoke("run", tmp_path / name, "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.USAGE
    assert complaint in result.stderr
    assert json.loads(result.stdout)["job_id"] is None
    assert not gateway.seen("PUT") and not gateway.seen("POST", "/jobs")


def test_source_url_is_fetched(gateway):
    gateway.on("GET", "/data/in.jsonl", (200, b'{"a": 1}\n{"a": 2}\n'))
    gateway.runs(completed())

    result = invoke("run", f"{gateway.url}/data/in.jsonl", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    assert gateway.stored_rows() == [{"a": 1}, {"a": 2}]


def test_a_source_urls_credentials_and_signature_reach_no_log_summary_or_manifest(gateway, tmp_path):
    query = "X-Amz-Signature=SIGNED&X-Amz-Credential=KEYID"
    gateway.on("GET", "/data/in.jsonl", (200, b'{"a": 1}\n'))
    gateway.runs(completed())
    output = tmp_path / "out.jsonl"
    host = gateway.url.split("://", 1)[1]
    source = f"http://alice:PASSWORD@{host}/data/in.jsonl?{query}"

    result = invoke("run", source, "--output", str(output), "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.OK, result.output
    assert [r.path for r in gateway.seen("GET", "/data/in.jsonl")] == [f"/data/in.jsonl?{query}"]  # as given
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
    gateway.runs(completed())

    result = invoke("run", f"{gateway.url}/data/in.parquet", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    # Nested values go as JSON text, marked so the gateway reads them back as values.
    assert gateway.sent_rows() == [{"a": 1, "tags": '["x"]'}, {"a": 2, "tags": "[]"}, {"a": 3, "tags": None}]
    assert gateway.stored_rows() == [{"a": 1, "tags": ["x"]}, {"a": 2, "tags": []}, {"a": 3, "tags": None}]


def test_job_still_running_at_the_deadline_exits_3(gateway, source):
    gateway.runs(processing(1))
    started = time.monotonic()

    result = invoke("run", source, *TWO_STEPS, "--gateway", gateway.url, "--timeout", "0.5", "--poll-interval", "0.1",
                    "--max-wait", "0", "--json")  # fmt: skip

    assert result.exit_code == ExitCode.TIMEOUT
    assert 0.5 <= time.monotonic() - started < 2.5
    assert "timed out" in result.stderr and "1/2 operations" in result.stderr
    assert json.loads(result.stdout)["outcome"] == "timeout"


def test_a_wait_the_gateway_answers_at_its_end_just_before_the_deadline_still_exits_3(gateway):
    job_id = gateway.submit(["drop_nulls", "drop_nulls"])
    gateway.runs(processing(1))
    gateway.on("GET", A_JOB, PASS, Late(0.2), forever=True)  # the first look at once, every wait a little late

    result = invoke("wait", job_id, "--gateway", gateway.url, "--timeout", "0.6", "--json")

    assert result.exit_code == ExitCode.TIMEOUT, result.stderr
    assert json.loads(result.stdout)["outcome"] == "timeout"


def test_unreachable_gateway_exits_4_at_the_deadline(closed_url, source, monkeypatch):
    monkeypatch.setattr("harvester.transport.make_retry", make_retry)  # urllib3's own backoff, as users get it
    started = time.monotonic()

    result = invoke("run", source, "--gateway", closed_url, "--timeout", "1", "--poll-interval", "0.2")

    assert result.exit_code == ExitCode.UNREACHABLE
    assert 1 <= time.monotonic() - started < 3
    # One short line per retry, urllib3's backoff in it; never urllib3's repr of its Retry and exception.
    assert re.search(r"WARNING gateway unreachable, retrying now \(1 of 4\)\n", result.stderr)
    assert re.search(r"WARNING gateway unreachable, retrying in 1\.0 s \(2 of 4\)\n", result.stderr)
    assert "Retry(" not in result.stderr and "NewConnectionError" not in result.stderr
    assert "No job: gateway unreachable" in result.stderr


def test_gateway_lost_while_polling_is_retried_then_exits_4(gateway, source):
    gateway.runs(processing())
    gateway.on("GET", A_JOB, PASS, UNAVAILABLE, forever=True)

    result = invoke("run", source, "--gateway", gateway.url, "--timeout", "0.5", "--poll-interval", "0.1")

    assert result.exit_code == ExitCode.UNREACHABLE
    assert "gateway answered 503, retrying" in result.stderr
    # "N of 4": the 4 retries the policy allows after each request's first attempt, all of them made.
    assert re.search(r"retrying now \(4 of 4\)\n", result.stderr) and "(5 of" not in result.stderr
    assert "kept answering 503 (backend_unavailable: Redis is down.)" in result.stderr
    assert re.search(rf"Job {gateway.job_id}: gateway unreachable after 0\.\d s, last seen processing", result.stderr)


def test_503_on_submit_is_retried_and_logged(gateway, source, queued):
    gateway.runs(completed())
    gateway.on("POST", "/jobs", UNAVAILABLE)

    result = invoke("run", source, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    assert re.search(r"WARNING gateway answered 503, retrying now \(1 of 4\)\n", result.stderr)
    assert len(gateway.seen("POST", "/jobs")) == 2
    assert queued() == 1


def test_gateway_defaults_to_the_environment(gateway):
    result = invoke("operations", "--json", env={"GATEWAY_URL": gateway.url})

    assert result.exit_code == ExitCode.OK, result.output
    assert json.loads(result.stdout) == gateway.app.test_client().get("/operations").get_json()


def test_operations_lists_the_catalogue(gateway):
    result = invoke("operations", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK
    listed = result.stdout.split("\n\n") if "\n\n" in result.stdout else None
    assert "limit\n    Keep the first n rows.\n    n  required  integer" in result.stdout, listed
    names = [line for line in result.stdout.splitlines() if line and not line.startswith(" ")]
    assert names == [op["name"] for op in gateway.app.test_client().get("/operations").get_json()["operations"]]


def test_status_shows_a_failed_job_with_its_message_once_and_exits_1(gateway):
    job_id = gateway.submit(["drop_nulls", "drop_nulls"])
    gateway.apply(job_id, failed(1, "Step 1 (limit) failed: boom."))

    result = invoke("status", job_id, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.JOB_FAILED
    assert f"Job {job_id}: failed" in result.stdout
    assert "Error at operation 1: operation_failed: Step 1 (limit) failed: boom." in result.stdout
    assert result.stdout.count("boom") == 1


@pytest.mark.parametrize(
    "step, code",
    [(QUEUED, ExitCode.OK), (processing(1), ExitCode.OK), (completed(), ExitCode.OK),
     (CANCELLED, ExitCode.CANCELLED)],
    ids=["queued", "processing", "completed", "cancelled"],
)  # fmt: skip
def test_status_exits_with_the_jobs_code_and_says_each_message_once(gateway, step, code):
    job_id = gateway.submit(["drop_nulls", "drop_nulls"])
    gateway.apply(job_id, step)
    body = gateway.body(job_id)

    result = invoke("status", job_id, "--gateway", gateway.url)
    as_json = invoke("status", job_id, "--gateway", gateway.url, "--json")

    assert result.exit_code == code, result.output
    assert as_json.exit_code == code and json.loads(as_json.stdout) == body
    assert result.stdout.count(body["message"]) == 1


def test_status_shows_how_far_a_running_job_got(gateway):
    job_id = gateway.submit(["drop_nulls", "drop_nulls"])
    gateway.apply(job_id, processing(1, current="limit", chunks_done=3, chunks_total=8))

    result = invoke("status", job_id, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK
    assert "Progress: 1/2 operations, running limit, 3/8 chunks (running)" in result.stdout


def test_status_of_an_unknown_job_exits_2(gateway):
    result = invoke("status", "nope", "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.USAGE
    assert "No job nope" in result.stderr
    assert result.stdout == ""


def test_python_dash_m_harvester(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["harvester", "--version"])

    with pytest.raises(SystemExit) as exited:
        runpy.run_module("harvester", run_name="__main__")  # what `python -m harvester` runs, in this process

    assert exited.value.code == 0
    assert "harvester, version" in capsys.readouterr().out


# harvester fetch


def test_fetch_writes_the_result_of_a_finished_job_with_its_manifest(gateway, tmp_path):
    job_id = gateway.submit()
    gateway.apply(job_id, completed())
    output = tmp_path / "out.parquet"

    result = invoke("fetch", job_id, "--output", output, "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.OK, result.output
    assert pq.read_table(output).to_pylist() == OUTPUT
    manifest = json.loads((tmp_path / "out.parquet.manifest.json").read_text())
    assert (manifest["job_id"], manifest["source"], manifest["dataset"]) == (job_id, None, None)
    assert manifest["output"]["sha256"] == sha256(output) and manifest["output"]["rows"] == 2
    assert json.loads(result.stdout)["output"] == str(output)


@pytest.mark.parametrize(
    "step, code, complaint",
    [
        (None, ExitCode.USAGE, "No job with id"),
        (processing(1), ExitCode.USAGE, "has not finished: it is processing"),
        (failed(), ExitCode.JOB_FAILED, "failed"),
        (CANCELLED, ExitCode.CANCELLED, "was cancelled"),
    ],
    ids=["unknown", "processing", "failed", "cancelled"],
)
def test_fetch_of_a_job_without_a_result_writes_nothing(gateway, tmp_path, step, code, complaint):
    job_id = str(uuid.uuid4())  # no such job
    if step is not None:
        job_id = gateway.submit(["drop_nulls", "drop_nulls"])
        gateway.apply(job_id, step)
    output = tmp_path / "out.csv"

    result = invoke("fetch", job_id, "-o", output, "--gateway", gateway.url)

    assert result.exit_code == code
    assert complaint in result.stderr
    assert not gateway.seen("GET", A_RESULT)
    assert list(tmp_path.iterdir()) == []


def test_fetch_of_a_result_the_gateway_does_not_have_yet_exits_2(gateway, tmp_path):
    job_id = gateway.submit()
    gateway.apply(job_id, completed())
    early = {"code": "job_not_finished", "message": "Job has no result.", "details": {}}
    gateway.on("GET", A_RESULT, (409, {"error": early}))  # as when the record and Celery disagree for a moment

    result = invoke("fetch", job_id, "-o", tmp_path / "out.csv", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert "409 job_not_finished" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_fetch_needs_an_output_and_keeps_an_existing_one(gateway, tmp_path):
    job_id = gateway.submit()
    (tmp_path / "out.csv").write_text("kept")

    missing = invoke("fetch", job_id, "--gateway", gateway.url)
    existing = invoke("fetch", job_id, "-o", tmp_path / "out.csv", "--gateway", gateway.url)

    assert (missing.exit_code, existing.exit_code) == (ExitCode.USAGE, ExitCode.USAGE)
    assert "Missing option '--output'" in missing.stderr and "Pass --force" in existing.stderr
    assert gateway.requests == [] and (tmp_path / "out.csv").read_text() == "kept"


# Tokens


def authorizations(gateway):
    return [(r.method, r.path, r.headers.get("Authorization")) for r in gateway.requests]


def test_token_goes_with_every_gateway_request_but_not_to_the_source_and_is_never_shown(secured, tmp_path):
    secured.on("GET", "/data/in.jsonl", (200, b'{"a": 1}\n'))
    secured.runs(processing(), completed())
    output = tmp_path / "out.csv"

    result = invoke(
        "run", f"{secured.url}/data/in.jsonl", "--output", str(output), "--gateway", secured.url,
        "--token", TOKEN, "--poll-interval", "0.01", "--json",
    )  # fmt: skip

    assert result.exit_code == ExitCode.OK, result.output
    sent = authorizations(secured)
    assert sent[0] == ("GET", "/data/in.jsonl", None)  # the source is not the gateway: no token
    dataset, job = f"/datasets/{secured.dataset_id}", f"/jobs/{secured.job_id}"
    assert [(method, urlsplit(path).path) for method, path, _ in sent[1:]] == [
        ("POST", "/datasets"), ("PUT", f"{dataset}/parts/1"), ("POST", f"{dataset}/commit"),
        ("POST", "/jobs"), ("GET", job), ("GET", job), ("GET", f"{job}/result"),
    ]  # fmt: skip
    assert {auth for _, _, auth in sent[1:]} == {f"Bearer {TOKEN}"}
    assert all(r.status < 300 for r in secured.requests[1:])  # the gateway took the token every time
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


def test_gateway_that_needs_a_token_says_how_to_give_one(secured):
    result = invoke("operations", "--gateway", secured.url)

    assert result.exit_code == ExitCode.USAGE
    assert "The gateway needs a token: pass --token or set $GATEWAY_TOKEN (This gateway needs a valid token" in (
        result.stderr
    )
    assert [(r.method, r.path, r.headers.get("Authorization"), r.status) for r in secured.requests] == [
        ("GET", "/operations", None, 401)
    ]


def test_token_from_the_environment_for_operations_and_status(secured):
    job_id = secured.submit(token=TOKEN)
    secured.apply(job_id, completed())
    env = {"GATEWAY_TOKEN": f"{TOKEN}\n"}  # surrounding whitespace, as an env file may leave, is dropped

    listed = invoke("operations", "--gateway", secured.url, env=env)
    shown = invoke("status", job_id, "--gateway", secured.url, env=env)

    assert (listed.exit_code, shown.exit_code) == (ExitCode.OK, ExitCode.OK), listed.output + shown.output
    assert [auth for _, _, auth in authorizations(secured)] == [f"Bearer {TOKEN}"] * 2
    assert TOKEN not in listed.output + shown.output


def test_unknown_job_with_a_token_may_belong_to_another_token(secured):
    job_id = secured.submit(token=OTHER_TOKEN)

    result = invoke("status", job_id, "--gateway", secured.url, "--token", TOKEN)

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


def test_client_raises_unauthorized_for_a_401(secured):
    job_id = secured.submit(token=TOKEN)

    with pytest.raises(Unauthorized, match="refused the token"):
        fast_client(secured.url, token="not-a-token-of-this-gateway").job(job_id)


# Cancelled jobs


def test_cancelled_job_exits_5_and_writes_nothing(gateway, source, tmp_path):
    gateway.runs(processing(1), CANCELLED)

    result = invoke(
        "run", source, *TWO_STEPS, "--output", str(tmp_path / "out.csv"), "--gateway", gateway.url,
        "--poll-interval", "0.01", "--json",
    )  # fmt: skip

    assert result.exit_code == ExitCode.CANCELLED == 5
    assert f"Job {gateway.job_id} was cancelled in " in result.stderr
    assert "The job was cancelled by request." in result.stderr
    summary = json.loads(result.stdout)
    assert (summary["outcome"], summary["status"], summary["exit_code"]) == ("cancelled", "cancelled", 5)
    assert summary["error"]["type"] == "cancelled"
    assert summary["output"] is None and summary["manifest"] is None
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]  # no output, no manifest


# Idempotent submissions


def test_replayed_submission_answered_200_is_followed_like_a_new_job(gateway, source, tmp_path, queued):
    # The first POST makes the job but its answer is lost with the connection; its retry, same key, gets that job.
    gateway.runs(completed())
    gateway.on("POST", "/jobs", LOSE)
    output = tmp_path / "out.jsonl"

    result = invoke("run", source, "--output", str(output), "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.OK, result.output
    posts = gateway.seen("POST", "/jobs")
    assert len(posts) == 2 and posts[0].headers["Idempotency-Key"] == posts[1].headers["Idempotency-Key"]
    assert [post.status for post in posts] == [202, 200]
    assert queued() == 1  # one job
    assert "The gateway already had this submission" in result.stderr
    assert f"Submitted job {gateway.job_id}" in result.stderr
    assert [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()] == OUTPUT


def test_client_returns_a_replayed_job_even_when_it_is_already_done(gateway):
    client = fast_client(gateway.url)
    job_id = client.submit([{"a": 1}], ["drop_nulls"], idempotency_key="k-1")["job_id"]
    gateway.apply(job_id, completed())

    answer = client.submit([{"a": 1}], ["drop_nulls"], idempotency_key="k-1")

    assert (answer["job_id"], answer["status"]) == (job_id, "completed")
    assert [(post.headers["Idempotency-Key"], post.status) for post in gateway.seen("POST")] == [("k-1", 202),
                                                                                                 ("k-1", 200)]


def test_submit_answer_without_a_job_id_is_a_server_error(gateway):
    gateway.on("POST", "/jobs", (200, {"status": "completed"}))

    with pytest.raises(ServerError, match="without a job_id"):
        fast_client(gateway.url).submit([{"a": 1}], [])


def test_reused_idempotency_key_exits_2_and_says_nothing_was_submitted(gateway, source, tmp_path, monkeypatch,
                                                                       queued):  # fmt: skip
    key = "7d1f3c52-5b0e-4f55-8d0a-2b6f0c9e1a44"
    fast_client(gateway.url).submit([{"other": 1}], ["drop_nulls"], idempotency_key=key)  # another body, same key
    monkeypatch.setattr("harvester.harvest.uuid", types.SimpleNamespace(uuid4=lambda: key))

    result = invoke("run", source, "--output", str(tmp_path / "out.csv"), "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.USAGE
    assert "409 idempotency_key_reused: This Idempotency-Key was used for a different request body" in result.stderr
    assert "nothing was submitted. Run again to submit with a new key." in result.stderr
    assert json.loads(result.stdout)["outcome"] == "rejected"
    assert len(gateway.seen("POST", "/jobs")) == 2  # the first job's, and the refused one
    assert queued() == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


# Outages while polling


def test_polling_rides_out_an_outage_and_writes_the_output(gateway, source, tmp_path):
    down = (503, UNAVAILABLE[1], {"Retry-After": "0"})
    gateway.runs(processing(), processing(1), completed())
    gateway.on(
        "GET",
        A_JOB,
        PASS,
        *[down] * 5,  # every try of one poll: that poll fails, the next comes a poll interval later
        DROP,
        DROP,  # the gateway's process is gone...
        (503, UNAVAILABLE[1], {"Retry-After": "1"}),  # ...and back, asking for a second
    )
    output = tmp_path / "out.jsonl"
    started = time.monotonic()

    result = invoke(
        "run", source, *TWO_STEPS, "--output", str(output), "--gateway", gateway.url,
        "--poll-interval", "0.05", "--timeout", "30", "--json",
    )  # fmt: skip

    assert result.exit_code == ExitCode.OK, result.output
    assert 1 <= time.monotonic() - started < 10  # Retry-After: 1 was honoured, the deadline was not waited for
    assert len(gateway.seen("GET", A_JOB)) == 1 + 5 + 3 + 1 + 1  # then the job moved on at each look that got in
    assert "gateway answered 503, retrying" in result.stderr
    assert f"Following job {gateway.job_id} failed" in result.stderr and "kept answering 503" in result.stderr
    assert "gateway dropped the connection, retrying" in result.stderr  # the gateway's process gone
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
    gateway.runs(completed(FORMULA_ROWS))
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


@pytest.fixture
def at(monkeypatch):
    """``at(moment)``: the job store's clock reads ``moment`` (ISO 8601 text) from now on."""

    def set_clock(moment):
        monkeypatch.setattr("workers.jobstore.utcnow", lambda: moment)

    return set_clock


@pytest.fixture
def three_jobs(gateway, at):
    """A job running since 10:00:01, one that ran 09:00:00.5 to 09:04:05.5 on 1,500 rows, one cancelled while
    queued at 08:00:02: ``{"running", "done", "cancelled"}`` ids, made on 2026-12-03 in the order of their hours."""
    at("2026-12-03T08:00:00.000Z")
    cancelled = gateway.submit(["drop_nulls", "drop_nulls"])
    at("2026-12-03T08:00:02.000Z")
    gateway.apply(cancelled, CANCELLED)
    at("2026-12-03T09:00:00.000Z")
    done = gateway.submit(["drop_nulls", "drop_nulls"], dataset=[{"id": i} for i in range(1500)])
    at("2026-12-03T09:00:00.500Z")
    gateway.apply(done, processing())
    at("2026-12-03T09:04:05.500Z")
    gateway.apply(done, completed())
    at("2026-12-03T10:00:00.000Z")
    running = gateway.submit(["drop_nulls", "drop_nulls"])
    at("2026-12-03T10:00:01.000Z")
    gateway.apply(running, processing(1, current="limit", chunks_done=3, chunks_total=8))
    return {"running": running, "done": done, "cancelled": cancelled}


def test_jobs_prints_a_table_of_the_callers_jobs(gateway, three_jobs):
    result = invoke("jobs", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    head, running, done, cancelled = result.stdout.splitlines()
    assert head.split() == ["JOB", "STATUS", "PROGRESS", "ROWS", "IN", "ROWS", "OUT", "CREATED", "(UTC)", "DURATION"]
    assert running.startswith(three_jobs["running"] + "  processing  1/2 ops, 3/8 chunks")
    assert " 2026-12-03 10:00:00 " in running
    assert done.split()[:8] == [three_jobs["done"], "completed", "2/2", "ops,", "1/1", "chunks", "1,500", "2"]
    # (The running job's duration runs to the real now, so the column's width depends on the time of day.)
    assert done.split()[-6:] == ["2026-12-03", "09:00:00", "4", "min", "05", "s"]
    assert cancelled.split()[4:] == ["-", "-", "2026-12-03", "08:00:00", "2.0", "s"]  # never started
    assert [r.path for r in gateway.seen("GET", "/jobs")] == ["/jobs?limit=20"]


def test_jobs_json_filters_by_status_and_follows_the_next_page_up_to_the_limit(gateway, three_jobs, at, monkeypatch):
    at("2026-12-03T11:00:00.000Z")
    newer = gateway.submit()
    gateway.apply(newer, processing())
    at("2026-12-03T12:00:00.000Z")
    queued_one = gateway.submit()  # the newest, not in the statuses asked for; the cancelled one is past the limit
    # The gateway reads one index entry per request: each page is short (a filtered one empty) and names the next.
    monkeypatch.setattr("app.jobs.MAX_SCANNED", 1)

    result = invoke("jobs", "--status", "processing,completed", "--status", "cancelled", "--limit", "3",
                    "--json", "--gateway", gateway.url)  # fmt: skip

    assert result.exit_code == ExitCode.OK, result.output
    listed = json.loads(result.stdout)["jobs"]
    assert [job["job_id"] for job in listed] == [newer, three_jobs["running"], three_jobs["done"]]
    assert listed[2]["data"]["data"] is None  # listed without its rows
    queries = [parse_qs(urlsplit(r.path).query) for r in gateway.seen("GET", "/jobs")]
    statuses = ["processing", "completed", "cancelled"]
    assert [(query["status"], query["limit"], "cursor" in query) for query in queries] == [
        (statuses, ["3"], False), (statuses, ["3"], True), (statuses, ["2"], True), (statuses, ["1"], True),
    ]  # fmt: skip
    assert queued_one not in result.stdout


def test_jobs_without_any_says_so(gateway):
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
        ((400, {"error": {"code": "invalid_parameter", "message": "The 'limit' parameter must be at most 10.",
                          "details": {"parameter": "limit"}}}), "400 invalid_parameter: The 'limit' parameter"),
        ((405, {"error": {"code": "method_not_allowed", "message": "Not allowed.", "details": {}}}),
         "does not list jobs (GET /jobs): it is older than this harvester"),
    ],
    ids=["refused", "old gateway"],
)  # fmt: skip
def test_jobs_the_gateway_refuses_exits_2_with_its_reason(gateway, answer, complaint):
    gateway.on("GET", "/jobs", answer)  # a gateway with a lower limit, or one from before GET /jobs

    result = invoke("jobs", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert complaint in result.stderr and result.stdout == ""


# harvester cancel


def test_cancel_cancels_a_running_job(gateway):
    job_id = gateway.submit()
    gateway.apply(job_id, processing())

    result = invoke("cancel", job_id, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    assert result.stdout == f"Job {job_id} cancelled. The job was cancelled by request.\n"
    assert [r.method for r in gateway.requests] == ["DELETE"]
    assert gateway.body(job_id)["status"] == "cancelled"


def test_cancel_of_a_job_that_had_ended_exits_2_naming_its_status(gateway):
    job_id = gateway.submit()
    gateway.apply(job_id, completed())

    result = invoke("cancel", job_id, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert f"Job {job_id} had already ended: it is completed. Nothing was cancelled." in result.stderr
    assert gateway.body(job_id)["status"] == "completed"


def test_cancel_of_an_unknown_job_exits_2(gateway):
    result = invoke("cancel", "nope", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert "No job nope at" in result.stderr and "unknown, or the job expired" in result.stderr


# harvester wait


def test_wait_follows_a_job_to_its_end_and_writes_its_output_like_fetch(gateway, tmp_path):
    job_id = gateway.submit(["drop_nulls", "drop_nulls"])
    gateway.runs(processing(), processing(1), completed())
    output = tmp_path / "out.jsonl"

    result = invoke("wait", job_id, "--output", output, "--gateway", gateway.url, "--json")

    assert result.exit_code == ExitCode.OK, result.output
    assert [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()] == OUTPUT
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert (manifest["job_id"], manifest["source"], manifest["dataset"], manifest["rows_out"]) == (job_id, None, None, 2)
    # The same waiting as run's: one plain look, then waits naming the last body seen.
    looks = gateway.seen("GET", A_JOB)
    path = f"/jobs/{job_id}"
    assert [r.path for r in looks] == [path, f"{path}?wait=30", f"{path}?wait=30"]
    assert [r.headers.get("If-None-Match") for r in looks] == [None, looks[0].answer["ETag"], looks[1].answer["ETag"]]
    summary = json.loads(result.stdout)
    assert (summary["outcome"], summary["exit_code"], summary["output"]) == ("completed", 0, str(output))
    assert "processing: 1/2 operations" in result.stderr


@pytest.mark.parametrize(
    "step, code",
    [(failed(), ExitCode.JOB_FAILED), (CANCELLED, ExitCode.CANCELLED), (processing(), ExitCode.TIMEOUT)],
    ids=["failed", "cancelled", "timeout"],
)
def test_wait_exits_as_run_does_and_writes_nothing_unless_completed(gateway, tmp_path, step, code):
    job_id = gateway.submit(["drop_nulls", "drop_nulls"])
    gateway.runs(step)
    output = tmp_path / "out.csv"

    result = invoke("wait", job_id, "-o", output, "--gateway", gateway.url, "--timeout", "0.3",
                    "--poll-interval", "0.05")  # fmt: skip

    assert result.exit_code == code, result.output
    assert list(tmp_path.iterdir()) == []


def test_wait_for_an_unknown_job_exits_2_and_for_an_unreachable_gateway_4(gateway, closed_url):
    unknown = invoke("wait", "nope", "--gateway", gateway.url)
    unreachable = invoke("wait", str(uuid.uuid4()), "--gateway", closed_url, "--timeout", "0.3",
                         "--poll-interval", "0.1")  # fmt: skip

    assert unknown.exit_code == ExitCode.USAGE and "not found" in unknown.stderr
    assert unreachable.exit_code == ExitCode.UNREACHABLE


def test_wait_without_output_says_how_to_fetch_the_result(gateway):
    job_id = gateway.submit()
    gateway.apply(job_id, completed())

    result = invoke("wait", job_id, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    assert f"harvester fetch {job_id} --output PATH --gateway {gateway.url}" in result.stderr


# run without --output


def test_run_without_output_says_the_result_stays_on_the_gateway_and_how_to_fetch_it(gateway, source):
    gateway.runs(completed())

    result = invoke("run", source, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    job_id = gateway.job_id
    assert (
        f"The result of job {job_id} stays on the gateway until it expires (JOB_TTL_SECONDS on the gateway, "
        f"a day by default): harvester fetch {job_id} --output PATH --gateway {gateway.url}\n"
    ) in result.stderr
    assert gateway.seen("GET", A_RESULT) == []  # nothing downloaded


# Ctrl-C


def interrupt(monkeypatch, method, after=0, then=None):
    """Make ``GatewayClient.<method>`` raise KeyboardInterrupt (as Ctrl-C would) from its call ``after + 1`` on,
    calling ``then()`` first."""
    original, calls = getattr(GatewayClient, method), []

    def interrupted(self, *args, **kwargs):
        calls.append(method)
        if len(calls) > after:
            if then is not None:
                then()
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GatewayClient, method, interrupted)


def test_ctrl_c_while_a_run_follows_its_job_leaves_it_running_and_says_how_to_go_on(
    gateway, source, tmp_path, monkeypatch
):
    gateway.runs(processing(1))
    interrupt(monkeypatch, "look", after=1)  # during the second look: the job is known to be processing
    output = tmp_path / "my out.csv"

    result = invoke("run", source, *TWO_STEPS, "--output", output, "--raw-csv", "--gateway", gateway.url,
                    "--poll-interval", "0.01")  # fmt: skip

    assert result.exit_code == ExitCode.INTERRUPTED
    assert "Aborted!" not in result.output
    job_id = gateway.job_id
    assert result.stderr.endswith(
        f"Interrupted: job {job_id} goes on at the gateway (last seen processing).\n"
        f"  Follow it and write its output: harvester wait {job_id} --output '{output}' --raw-csv "
        f"--gateway {gateway.url}\n"
        f"  Cancel it: harvester cancel {job_id} --gateway {gateway.url}\n"
    )
    assert gateway.seen("DELETE") == []
    assert gateway.body(job_id)["status"] == "processing"
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


def test_ctrl_c_with_cancel_on_interrupt_cancels_the_job(gateway, source, monkeypatch):
    gateway.runs(processing())
    interrupt(monkeypatch, "look", after=1)

    result = invoke("run", source, "--cancel-on-interrupt", "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.INTERRUPTED
    job_id = gateway.job_id
    assert f"Interrupted: job {job_id} is cancelled (--cancel-on-interrupt).\n" in result.stderr
    assert [r.path for r in gateway.seen("DELETE")] == [f"/jobs/{job_id}"]
    assert gateway.body(job_id)["status"] == "cancelled"


def test_ctrl_c_with_cancel_on_interrupt_after_the_job_ended_says_so(gateway, source, monkeypatch):
    gateway.runs(processing())
    # The job fails just as Ctrl-C comes: the cancel finds it ended.
    interrupt(monkeypatch, "look", after=1, then=lambda: gateway.apply(gateway.job_id, failed()))

    result = invoke("run", source, "--cancel-on-interrupt", "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.INTERRUPTED
    assert f"Interrupted: job {gateway.job_id} had already ended (failed); nothing was cancelled." in result.stderr
    assert [r.status for r in gateway.seen("DELETE")] == [409]


def test_ctrl_c_during_the_upload_submits_nothing_and_deletes_the_dataset(gateway, source, monkeypatch, queued):
    interrupt(monkeypatch, "put_part")

    result = invoke("run", source, "--gateway", gateway.url)

    assert result.exit_code == ExitCode.INTERRUPTED
    assert "Interrupted: nothing was submitted.\n" in result.stderr
    assert gateway.seen("POST", "/jobs") == [] and queued() == 0
    dataset_id = gateway.dataset_id
    assert [(r.path, r.status) for r in gateway.seen("DELETE")] == [(f"/datasets/{dataset_id}", 204)]
    assert gateway.datasets.get(dataset_id) is None


def test_ctrl_c_while_downloading_says_how_to_fetch_the_result_and_leaves_no_partial_output(
    gateway, source, tmp_path, monkeypatch
):
    gateway.runs(completed())
    interrupt(monkeypatch, "result")
    output = tmp_path / "out.parquet"

    result = invoke("run", source, "--output", output, "--gateway", gateway.url, "--cancel-on-interrupt")

    assert result.exit_code == ExitCode.INTERRUPTED
    job_id = gateway.job_id
    assert result.stderr.endswith(
        f"Interrupted: job {job_id} has completed; its output was not written. Write it with: "
        f"harvester fetch {job_id} --output {output} --gateway {gateway.url}\n"
    )
    assert gateway.seen("DELETE") == []  # nothing to cancel
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


def test_ctrl_c_while_waiting_says_how_to_go_on_with_the_default_gateway_left_out(gateway, monkeypatch):
    job_id = gateway.submit()
    monkeypatch.setattr("harvester.harvest.DEFAULT_GATEWAY", gateway.url)  # as if it were the default one
    interrupt(monkeypatch, "look", after=1)

    result = invoke("wait", job_id, "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.INTERRUPTED
    assert f"  Follow it and write its output: harvester wait {job_id} --output PATH\n" in result.stderr
    assert f"  Cancel it: harvester cancel {job_id}\n" in result.stderr


def test_ctrl_c_while_waiting_with_cancel_on_interrupt_cancels_the_job(gateway, monkeypatch):
    job_id = gateway.submit(["drop_nulls"])
    gateway.runs(processing())
    interrupt(monkeypatch, "look", after=1)

    result = invoke("wait", job_id, "--cancel-on-interrupt", "--gateway", gateway.url, "--poll-interval", "0.01")

    assert result.exit_code == ExitCode.INTERRUPTED
    assert result.stderr.endswith(f"Interrupted: job {job_id} is cancelled (--cancel-on-interrupt).\n")
    assert [r.path for r in gateway.seen("DELETE")] == [f"/jobs/{job_id}"]
    assert gateway.body(job_id)["status"] == "cancelled"


# Dry runs


def test_dry_run_uploads_the_source_checks_the_job_prints_the_plan_and_leaves_nothing(gateway, source, tmp_path,
                                                                                      queued):  # fmt: skip
    output = tmp_path / "out.csv"

    result = invoke("run", source, "--op", "drop_nulls", "--op", 'select_columns:{"columns": ["id"]}',
                    "--op", 'sample:{"n": 1}', "--output", output, "--dry-run", "--gateway", gateway.url)  # fmt: skip

    assert result.exit_code == ExitCode.OK, result.output
    assert result.stdout == (
        f"Input: {source}, 3 rows: id integer, name string, count integer\n"
        "Step 0 drop_nulls: id integer, name string, count integer\n"
        "Step 1 select_columns: id integer\n"
        "Step 2 sample: id integer\n"
        "Valid: 3 rows, 3 operations; nothing was stored or queued.\n"
    )
    # The real dataset went up (the checks see its real columns and types), was checked by id, and was deleted.
    assert gateway.sent_rows() == SOURCE_ROWS
    dataset_id = gateway.dataset_id
    (post,) = gateway.seen("POST", "/jobs")
    assert post.path == "/jobs?dry_run=true"
    assert post.body["dataset_id"] == dataset_id and len(post.body["operations"]) == 3
    assert gateway.datasets.get(dataset_id) is None
    assert gateway.seen("GET") == [] and queued() == 0
    assert list(tmp_path.iterdir()) == [tmp_path / "in.csv"]


def test_dry_run_json_prints_the_gateways_plan(gateway, source):
    result = invoke("run", source, "--op", "drop_nulls", "--dry-run", "--json", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.OK, result.output
    plan = json.loads(result.stdout)
    assert plan == {
        "dry_run": True,
        "rows": 3,
        "columns": [{"name": "id", "type": "integer"}, {"name": "name", "type": "string"},
                    {"name": "count", "type": "integer"}],
        "steps": [{"index": 0, "name": "drop_nulls", "columns": plan["columns"]}],
        "message": "Valid: 3 rows, 1 operations; nothing was stored or queued.",
    }  # fmt: skip


def test_dry_run_of_a_job_the_gateway_refuses_exits_2_with_its_message(gateway, source):
    result = invoke("run", source, "--op", 'sort:{"by": "age"}', "--dry-run", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.USAGE
    assert "400 unknown_column: Step 0 (sort): " in result.stderr and "'age'" in result.stderr
    assert result.stdout == ""
    assert gateway.datasets.get(gateway.dataset_id) is None


def test_dry_run_against_a_gateway_that_does_not_know_it_cancels_the_job_it_queued(gateway, source, queued):
    def ignore_the_query(request, environ):  # as a gateway from before dry runs: ?dry_run=true means nothing
        environ["QUERY_STRING"] = ""
        return PASS

    gateway.on("POST", "/jobs?dry_run=true", ignore_the_query)

    result = invoke("run", source, "--dry-run", "--gateway", gateway.url)

    assert result.exit_code == ExitCode.UNREACHABLE  # a gateway error, as a 5xx is
    job_id = gateway.job_id
    assert f"The gateway does not know dry runs: it queued job {job_id} instead (it was cancelled)" in result.stderr
    assert [(r.path, r.status) for r in gateway.seen("DELETE", A_JOB)] == [(f"/jobs/{job_id}", 200)]
    assert gateway.body(job_id)["status"] == "cancelled" and queued() == 1  # a worker would skip it


def test_jobs_cancel_and_wait_send_the_token_and_never_show_it(secured):
    running, done = secured.submit(token=TOKEN), secured.submit(token=TOKEN)
    secured.apply(running, processing())
    secured.apply(done, completed())
    env = {"GATEWAY_TOKEN": TOKEN}

    results = [invoke(*args, "--gateway", secured.url, env=env) for args in (["jobs"], ["cancel", running],
                                                                              ["wait", done])]  # fmt: skip

    assert [r.exit_code for r in results] == [ExitCode.OK] * 3, [r.output for r in results]
    assert [(r.method, urlsplit(r.path).path, r.headers.get("Authorization"), r.status) for r in secured.requests] == [
        ("GET", "/jobs", f"Bearer {TOKEN}", 200), ("DELETE", f"/jobs/{running}", f"Bearer {TOKEN}", 200),
        ("GET", f"/jobs/{done}", f"Bearer {TOKEN}", 200),
    ]  # fmt: skip
    assert not any(TOKEN in r.stdout + r.stderr for r in results)
