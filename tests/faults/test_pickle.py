"""Nothing on the wire can run code: JSON only for tasks and results, and no parameter reaches eval or a shell.

- A pickle-serialized task message, pushed straight onto the queue the worker
  consumes, is refused by the worker and never unpickled (its unpickling would
  create a file).
- The task messages the gateway sends and the results the worker stores are JSON.
- No module of the gateway or the workers calls eval, exec, compile,
  ``DataFrame.query``/``eval``, a shell, subprocess, or pickle/marshal (static check).
- Operation parameters that look like code are data: they end up as strings.
"""

import ast
import base64
import json
import pickle
import time
import uuid
from pathlib import Path

import pytest
import redis
import requests
from kombu import Connection, Exchange, Queue

import celeryconfig
import localstack
from tests.faults.conftest import sleep_step, submit, wait_for
from workers.celery import RUN_JOB

ROOT = Path(__file__).resolve().parents[2]
QUEUE = celeryconfig.task_default_queue


class CreatesFile:
    """An object whose unpickling creates ``path``: proof that someone unpickled it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def stack(shared_stack):
    # One worker process, one job at a time, FIFO: a message is consumed before any sent after it.
    return shared_stack("serial")


def publish_pickled_task(redis_url, task_id, argument):
    """Publish a Celery task message (protocol 2) for ``run_job(argument)``, serialized with pickle."""
    exchange = Exchange(QUEUE, type="direct")
    headers = {  # as celery.app.amqp.AMQP.as_task_v2 builds them
        "lang": "py",
        "task": RUN_JOB,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "(...)",
        "kwargsrepr": "{}",
        "origin": "attacker@nowhere",
        "ignore_result": False,
    }
    body = ([argument], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    with Connection(redis_url) as conn:
        conn.Producer().publish(
            body,
            serializer="pickle",
            exchange=exchange,
            routing_key=QUEUE,
            declare=[Queue(QUEUE, exchange, routing_key=QUEUE)],
            headers=headers,
            correlation_id=task_id,
            retry=True,
        )


def wait_for_log(stack, *texts, timeout=10):
    """Wait for a log line holding every one of ``texts`` (the stack's logs hold other modules' lines too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(all(text in line for text in texts) for line in stack.logs().splitlines()):
            return
        time.sleep(0.1)
    raise AssertionError(f"no line with all of {texts!r} in the logs within {timeout} s")


def test_the_pickle_payload_is_live(tmp_path):
    # Control: unpickling this payload really does create its file, so its absence below means something.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(CreatesFile(control)))
    assert control.exists()


def test_a_pickled_task_message_is_refused_and_never_unpickled(stack, tmp_path):
    marker = tmp_path / "unpickled"
    evil_id = str(uuid.uuid4())
    publish_pickled_task(stack.redis_url, evil_id, CreatesFile(marker))
    # A normal job sent after it: once it has completed, the worker has taken the pickled one too.
    response = submit(stack.url, [{"name": "add_column", "params": {"name": "ok", "value": True}}], [{"id": 1}])
    assert response.status_code == 202, response.text
    job_url = f"{stack.url}/jobs/{response.json()['job_id']}"
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        if requests.get(job_url, timeout=10).json().get("status") in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert not marker.exists(), "the worker unpickled the message"
    assert requests.get(job_url, timeout=10).json()["status"] == "completed"

    # Celery's line about it quotes the (undecoded) body, which names this test's marker file.
    wait_for_log(stack, "Refusing to deserialize untrusted content of type pickle", str(marker))
    assert not marker.exists()
    client = redis.Redis.from_url(stack.redis_url)
    # Refused and dropped: not run (no result), not left in the queue or unacknowledged to come back.
    assert client.get(f"celery-task-meta-{evil_id}") is None
    # (The normal job's own message is acknowledged just after its record says completed; one left
    # unacknowledged for good would stay so for the visibility timeout, an hour.)
    localstack.wait_until(lambda: client.llen(QUEUE) == 0 and client.hlen("unacked") == 0, 10,
                          "the queue and the unacknowledged messages emptying")
    assert stack.workers[0].poll() is None  # and the worker is still there


def test_task_messages_and_results_are_json(stack, tmp_path):
    client = redis.Redis.from_url(stack.redis_url)
    # Keep the one worker process busy, so the next job's message waits in the queue to be read.
    blocker = submit(stack.url, [sleep_step(1.5)]).json()["job_id"]
    wait_for(stack.url, blocker, statuses=("processing",), timeout=30)
    job_id = submit(stack.url, [{"name": "add_column", "params": {"name": "n", "value": 7}}]).json()["job_id"]

    raw = client.lrange(QUEUE, 0, -1)
    assert len(raw) == 1
    envelope = json.loads(raw[0])  # kombu's Redis envelope
    assert envelope["content-type"] == "application/json"
    assert envelope["headers"]["task"] == RUN_JOB and envelope["headers"]["id"] == job_id
    body = (
        base64.b64decode(envelope["body"])
        if envelope["properties"].get("body_encoding") == "base64"
        else envelope["body"]
    )
    args, kwargs, _embed = json.loads(body)
    assert args == [job_id] and kwargs == {}  # the message carries the job id only

    for done in (blocker, job_id):
        assert wait_for(stack.url, done)["status"] == "completed"
        # The job record says completed just before the task returns and Celery stores its result.
        key = f"celery-task-meta-{done}"
        localstack.wait_until(lambda: json.loads(client.get(key) or "{}").get("status") not in (None, "STARTED", "PROGRESS"),
                              10, f"Celery storing the result of {done}")
        meta = json.loads(client.get(key))  # the raw result: JSON, not pickle
        assert meta["status"] == "SUCCESS" and meta["task_id"] == done
    assert meta["result"]["output_items"] == 1


CODE = "__import__('os').system('touch {marker}')"


def test_parameters_that_look_like_code_are_plain_strings(stack, tmp_path):
    marker = tmp_path / "executed"
    code = CODE.format(marker=marker)
    dataset = [{"id": 1, "text": code}, {"id": 2, "text": "plain"}]
    operations = [
        {"name": "filter_rows", "params": {"column": "text", "operator": "eq", "value": code}},
        {"name": "add_column", "params": {"name": "note", "value": code}},
        {"name": "filter_rows", "params": {"column": "note", "operator": "contains", "value": code}},
        {"name": "add_column", "params": {"name": code, "value": "column named like code"}},
    ]
    response = submit(stack.url, operations, dataset)
    assert response.status_code == 202, response.text
    body = wait_for(stack.url, response.json()["job_id"])
    assert body["status"] == "completed", body
    assert body["data"]["data"] == [{"id": 1, "text": code, "note": code, code: "column named like code"}]
    assert not marker.exists()


# --- static check: nothing in the gateway or the workers can evaluate text ---------------------------

#: Builtins that turn text into code.
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "breakpoint"}
#: Methods that evaluate expressions (pandas' DataFrame.query/eval, pd.eval) or run a shell.
FORBIDDEN_METHODS = {
    "query",
    "eval",
    "system",
    "popen",
    "spawnl",
    "spawnlp",
    "spawnv",
    "spawnvp",
    "execv",
    "execve",
    "execvp",
    "execl",
    "execlp",
    "posix_spawn",
    "read_pickle",
    "to_pickle",
}
#: Modules that run commands or deserialize code.
FORBIDDEN_MODULES = {"subprocess", "pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "pty"}


def forbidden_uses(source, filename="<source>"):
    """``["file:line: what"]`` for every forbidden call or import in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        what = None
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                what = f"{func.id}()"
            elif isinstance(func, ast.Attribute) and func.attr in FORBIDDEN_METHODS:
                what = f".{func.attr}()"
            elif isinstance(func, ast.Attribute) and func.attr in FORBIDDEN_CALLS and _names_builtins(func.value):
                what = f"builtins.{func.attr}()"
        elif isinstance(node, ast.Import):
            hits = [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
            what = hits and f"import {', '.join(hits)}"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            what = f"from {node.module} import ..."
        if what:
            found.append(f"{filename}:{node.lineno}: {what}")
    return found


def _names_builtins(node):
    return isinstance(node, ast.Name) and node.id in ("builtins", "__builtins__")


def shipped_sources():
    return sorted(path for package in ("app", "workers") for path in (ROOT / package).rglob("*.py"))


def test_no_shipped_module_can_evaluate_text_or_run_a_shell():
    sources = shipped_sources()
    assert len(sources) >= 10 and any(p.name == "builtins.py" for p in sources)  # it does look at the code
    found = [hit for path in sources for hit in forbidden_uses(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "code that could run a parameter:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "snippet",
    [
        "eval(params['value'])",
        "exec(text)",
        "code = compile(text, '<x>', 'eval')",
        "__import__('os')",
        "builtins.eval(text)",
        'df.query(f"{column} == {value!r}")',
        "pd.eval(expression)",
        "frame.eval('a + b')",
        "os.system('ls ' + name)",
        "os.popen(command)",
        "import subprocess",
        "from subprocess import run",
        "import pickle",
        "from pickle import loads",
        "import marshal",
        "pd.read_pickle(path)",
    ],
)
def test_the_static_check_catches(snippet):
    assert forbidden_uses(snippet), f"not caught: {snippet}"


def test_the_static_check_leaves_regular_code_alone():
    assert forbidden_uses("import re\nre.compile(r'x')\ndf[mask]\njson.loads(text)\nseries.str.contains(v)") == []
