"""Fixtures shared by every test layer: ``app``, ``client``, ``redis``, ``broker``.

Gateway tests run the real Flask app with fakeredis as the job store and
Celery's in-memory transport and cache backend, so a test can count the
messages that were (or were not) enqueued and set a task's state.

Tests that start processes are marked ``integration``: every test under ``tests/faults/`` and
``tests/integration/``, and any other marked so itself. Any other test that starts one fails
(:func:`starts_no_process`), so ``pytest -m "not integration"`` starts none.
"""

import multiprocessing.process
import os
import subprocess
from pathlib import Path

import fakeredis
import pytest

import localstack
from app import create_app
from workers.celery import make_app as make_celery

QUEUE = "datajobs"

#: Folders whose every test starts real processes: marked ``integration`` (``-m "not integration"`` leaves
#: them out). A ``pytestmark`` in their conftest.py would mark nothing: only test modules' own count.
INTEGRATION_DIRS = [Path(__file__).parent / name for name in ("faults", "integration")]


@pytest.hookimpl(tryfirst=True)  # before the mark plugin's own hook deselects by ``-m``
def pytest_collection_modifyitems(items):
    for item in items:
        if any(item.path.is_relative_to(folder) for folder in INTEGRATION_DIRS):
            item.add_marker(pytest.mark.integration)


_LOG_SIZES = pytest.StashKey[dict]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    item.stash[_LOG_SIZES] = localstack.log_sizes()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report shows what the stacks' processes logged while it ran (a gateway's traceback
    behind a 500, a worker's last lines): in CI, the logs' folders are gone once the run ends."""
    report = (yield).get_result()
    if report.when == "call" and report.failed and _LOG_SIZES in item.stash:
        logged = localstack.logs_since(item.stash[_LOG_SIZES])
        if logged:
            report.sections.append(("what the stacks logged during the test", logged))


@pytest.fixture(autouse=True)
def starts_no_process(request, monkeypatch):
    """Fail a test not marked ``integration`` that starts a process (a fork, a subprocess, a pool)."""
    if request.node.get_closest_marker("integration") is not None:
        return

    def refused(*args, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid} starts a process: only tests marked integration may (pytest -m \"not "
            "integration\" starts none). Move it to tests/integration/, or mark it integration."
        )

    for owner, name in [(os, "fork"), (os, "system"), (os, "posix_spawn"), (subprocess.Popen, "_execute_child"),
                        (multiprocessing.process.BaseProcess, "start")]:  # fmt: skip
        monkeypatch.setattr(owner, name, refused)


def pytest_ignore_collect(collection_path, config):
    """With ``-m "not integration"`` those folders are not even imported: every test there would be deselected,
    and importing their modules (a browser driver, schemathesis, stacks' helpers) costs seconds."""
    if " ".join(config.getoption("markexpr", "").split()) == "not integration":
        return any(collection_path.is_relative_to(folder) for folder in INTEGRATION_DIRS) or None
    return None


@pytest.fixture
def redis():
    return fakeredis.FakeRedis()


@pytest.fixture
def celery():
    app = make_celery(broker_url="memory://", result_backend="cache+memory://")
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(QUEUE)
    return app


@pytest.fixture
def app(redis, celery):
    return create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "HEALTH_PING_TIMEOUT": 0.1})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def complete_job(app):
    """A function that ends a job ``completed`` with ``records`` as its result, as a worker would.

    ``chunk_rows``: rows per chunk of the result (``CHUNK_ROWS`` by default), so a download comes in pieces.
    """
    from workers import frames
    from workers.chunks import ChunkWriter

    def complete(job_id, records, summary, inline=True, chunk_rows=None):
        store = app.extensions["jobstore"]
        rows = chunk_rows or app.config["CHUNK_ROWS"]
        with ChunkWriter(store.data, "job", job_id, "a1-output", rows, mixed_as_json=True) as out:
            out.write(frames.records_to_table(records))
            ref = out.close()
        summary = {"columns": frames.describe_columns(frames.decode_schema(ref["schema"])), "workers": ["w1"],
                   **summary}
        return store.complete(job_id, ref, summary, records if inline else None)

    return complete


@pytest.fixture
def queued(celery):
    """A function returning how many job messages wait in the broker."""

    def count():
        with celery.connection_for_write() as conn:
            return conn.default_channel.queue_declare(QUEUE, passive=True).message_count

    return count
