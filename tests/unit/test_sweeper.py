"""The sweeper in the workers: overdue joins sent again, jobs never sent sent, chunks of expired owners removed."""

import fakeredis
import kombu.exceptions
import pytest

from app import jobs
from workers import frames, tasks
from workers.celery import RUN_JOB
from workers.chunks import ChunkWriter
from workers.datastore import FileSystemDataStore
from workers.jobstore import UNSENT_INDEX, JobStore, key_for, new_job_id


@pytest.fixture
def store(tmp_path):
    return JobStore(fakeredis.FakeRedis(), 3600, FileSystemDataStore(f"file://{tmp_path}"))


def write_chunks(store, kind, owner_id, rows=3):
    with ChunkWriter(store.data, kind, owner_id, "c", 2) as writer:
        writer.write(frames.records_to_table([{"n": i} for i in range(rows)]))
        return {**writer.close(), "dataset_id": None}


def fanned_out_job(store, segment=0):
    job_id = new_job_id()
    ref = write_chunks(store, "job", job_id)
    store.create(job_id, ["drop_nulls"], ref)
    store.begin_fanout(job_id, segment, ref, {})
    return job_id


def test_an_overdue_join_is_sent_again_and_stays_due_until_it_starts(store, monkeypatch):
    monkeypatch.setattr(tasks, "JOIN_OVERDUE_SECONDS", 0)
    job_id = fanned_out_job(store)
    store.mark_joinable(job_id, 0)
    sent = []
    assert tasks.sweep(store, lambda *args: sent.append(args)) == 1
    assert sent == [(job_id, 0)]
    assert store.overdue_joins(0) == [(job_id, 0)]  # sent again next time, should this one be lost too
    store.joined(job_id, 0)
    assert tasks.sweep(store, sent.append) == 0


def test_a_join_not_yet_overdue_is_left_alone(store):
    job_id = fanned_out_job(store)
    store.mark_joinable(job_id, 0)
    assert tasks.sweep(store, pytest.fail) == 0


def test_joins_of_ended_or_moved_on_jobs_are_dropped_not_sent(store, monkeypatch):
    monkeypatch.setattr(tasks, "JOIN_OVERDUE_SECONDS", 0)
    ended, moved = fanned_out_job(store), fanned_out_job(store, segment=2)
    store.cancel(ended)
    store.mark_joinable(ended, 0)
    store.mark_joinable(moved, 0)  # the record says segment 2 is the current one
    assert tasks.sweep(store, pytest.fail) == 0
    assert store.overdue_joins(0) == []


def test_chunks_outliving_their_record_are_removed_from_a_directory(store, tmp_path, monkeypatch):
    live = fanned_out_job(store)
    gone = new_job_id()
    write_chunks(store, "job", gone)  # no record: expired
    write_chunks(store, "dataset", "d1")  # likewise
    assert tasks.sweep_chunks(store) == 0  # too young: it may be an upload being written
    monkeypatch.setattr(tasks, "ORPHAN_CHUNK_SECONDS", 0)
    assert tasks.sweep_chunks(store) == 2
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == [live]
    assert not list((tmp_path / "datasets").iterdir())


# --- orphans: jobs recorded whose gateway died before sending their message -----------------

JOB = {"dataset": [{"id": 2}, {"id": 1}], "operations": ["drop_nulls"]}


def recorded_job(store, orphan_seconds=0):
    """A job recorded as a gateway records it, with no message sent: what a gateway that died leaves."""
    job_id = new_job_id()
    store.create(job_id, ["drop_nulls"], write_chunks(store, "job", job_id), orphan_seconds=orphan_seconds)
    return job_id


def test_a_job_never_sent_is_sent_once_it_is_due_and_only_once(store):
    job_id = recorded_job(store)
    sent = []
    assert tasks.sweep_orphans(store, sent.append) == 1
    assert sent == [job_id]
    assert tasks.sweep_orphans(store, pytest.fail) == 0  # its message is on the queue now


def test_a_job_recorded_within_orphan_seconds_is_left_to_its_gateway(store):
    recorded_job(store, orphan_seconds=60)
    recorded_job(store, orphan_seconds=None)  # ORPHAN_SECONDS, 60 by default
    assert tasks.sweep_orphans(store, pytest.fail) == 0


def test_listed_jobs_that_a_worker_started_or_that_ended_or_expired_are_dropped_not_sent(store):
    started, ended, expired = recorded_job(store), recorded_job(store), recorded_job(store)
    store.mark_started(started)  # the gateway sent it, then died before saying so
    store.cancel(ended)
    store.redis.delete(key_for(expired))
    assert tasks.sweep_orphans(store, pytest.fail) == 0
    assert store.unsent() == []


def test_a_gateway_lists_a_job_until_its_message_is_sent(client, redis, queued):
    response = client.post("/jobs", json=JOB)
    assert response.status_code == 202 and queued() == 1
    assert not redis.exists(UNSENT_INDEX)  # sent, so nothing for the sweeper


def test_a_job_the_broker_refused_is_not_left_for_the_sweeper(client, redis, celery, monkeypatch):
    def refuse(*args, **kwargs):
        raise kombu.exceptions.OperationalError("broker down")

    monkeypatch.setattr(celery, "send_task", refuse)
    assert client.post("/jobs", json=JOB).status_code == 503
    # No record, and nothing listed: the client was told it failed.
    assert redis.keys("datajobs:job:*") == [] and not redis.exists(UNSENT_INDEX)


class GatewayDied(BaseException):
    """What ``os._exit`` does to the request, without ending the test run."""


def test_a_gateway_dying_before_the_send_leaves_a_job_the_sweeper_sends(app, client, redis, celery, queued,
                                                                          monkeypatch):
    monkeypatch.setitem(app.config, "TEST_DIE_BEFORE_SEND", True)
    monkeypatch.setitem(app.config, "ORPHAN_SECONDS", 0.0)
    monkeypatch.setattr(jobs.os, "_exit", lambda code: (_ for _ in ()).throw(GatewayDied(code)))
    with pytest.raises(GatewayDied):
        client.post("/jobs", json=JOB)
    assert queued() == 0
    store = app.extensions["jobstore"]
    [job_id] = store.unsent()
    assert store.get(job_id)["rows_in"] == 2
    sent = tasks.sweep_orphans(store, lambda job: celery.send_task(RUN_JOB, args=[job], task_id=job))
    assert sent == 1 and queued() == 1
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "started"  # queued, as if sent at first
