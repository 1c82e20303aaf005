"""The worker's watcher (``workers/tasks.py``): one thread per process renews what it runs and watches for cancels."""

import threading
import time

import fakeredis
import pytest

from workers import tasks
from workers.jobstore import JobStore, key_for, new_job_id

TTL = 3600


@pytest.fixture
def store():
    return JobStore(fakeredis.FakeRedis(), TTL)


def running_job(store):
    """A recorded job whose lease a holder has taken, as a delivery's has: ``(job_id, holder)``."""
    job_id, holder = new_job_id(), f"worker@host:1:{new_job_id()}"
    store.create(job_id, [], {"chunks": [], "schema": "", "rows": 0, "bytes": 0, "dataset_id": None})
    assert store.take_lease(job_id, holder, tasks.LEASE_SECONDS)
    return job_id, holder


def watchers():
    return [thread for thread in threading.enumerate() if thread.name == "datajobs-watcher"]


def until(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_one_thread_watches_every_job_a_process_runs(store):
    watcher, before = tasks._Watcher(), len(watchers())
    for _ in range(5):
        job_id, holder = running_job(store)
        with watcher.watch(store, job_id, holder, "lease") as cancelled:
            assert not cancelled.is_set()
    assert len(watchers()) == before + 1


def test_a_cancel_is_seen_and_the_lease_is_renewed_meanwhile(store):
    watcher = tasks._Watcher()
    job_id, holder = running_job(store)
    with watcher.watch(store, job_id, holder, "lease") as cancelled:
        store.redis.pexpire(key_for(job_id, "lease"), 1500)  # as if taken a while ago
        assert until(lambda: store.lease_left(job_id) > 2), "the lease was not renewed"
        assert not cancelled.is_set()
        store.cancel(job_id)
        assert until(cancelled.is_set), "the cancel was not seen"


def test_a_step_that_runs_on_past_the_grace_after_a_cancel_has_its_process_killed(store, monkeypatch):
    monkeypatch.setenv("CANCEL_GRACE_SECONDS", "0.3")
    killed = []
    monkeypatch.setattr(tasks.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    watcher = tasks._Watcher()
    on_time, holder = running_job(store)
    with watcher.watch(store, on_time, holder, "lease") as cancelled:
        store.cancel(on_time)
        assert until(cancelled.is_set)
    time.sleep(0.6)  # the body stopped within the grace: nobody is killed
    assert killed == []

    overrun, holder = running_job(store)
    with watcher.watch(store, overrun, holder, "lease"):
        store.cancel(overrun)
        assert until(lambda: killed, 3), "a step overrunning the grace was not stopped"
    assert killed == [(tasks.os.getpid(), tasks.signal.SIGKILL)]
