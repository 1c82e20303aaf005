"""A store with no room, where a real Redis cannot be made to refuse just one write (``tests/faults/
test_storage_full.py`` has the rest): in the gateway, a write after the job's record; in the worker, the
write that ends the job itself.
"""

import errno

import fakeredis
import kombu.exceptions
import pytest
import redis.exceptions
from celery.exceptions import Ignore

from workers import frames, tasks
from workers.chunks import ChunkWriter
from workers.errors import JobFailed
from workers.jobstore import JobStore, new_job_id

OOM = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
JOB = {"dataset": [{"id": 1}], "operations": ["drop_nulls"]}


def refuse(exc):
    def refused(*args, **kwargs):
        raise exc

    return refused


def broker_refused():
    # What kombu raises when Redis refuses the message: its OperationalError, from Redis's error.
    try:
        raise kombu.exceptions.OperationalError(str(OOM)) from OOM
    except kombu.exceptions.OperationalError as exc:
        return exc


@pytest.mark.parametrize("where", ["claim", "message"])
def test_a_write_refused_after_the_record_is_507_and_leaves_no_job(app, client, redis, queued, monkeypatch, where):
    store = app.extensions["jobstore"]
    if where == "claim":
        monkeypatch.setattr(store, "claim_idempotency_key", refuse(OOM))
    else:
        monkeypatch.setattr(app.extensions["celery"], "send_task", refuse(broker_refused()))
    response = client.post("/jobs", json=JOB, headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 507
    assert response.get_json()["error"]["code"] == "storage_full"
    assert redis.keys("datajobs:job:*") == [] and redis.keys("datajobs:blob:*") == []
    assert redis.zcard("datajobs:unsent") == 0  # nothing for the workers' sweeper to send later
    assert redis.keys("datajobs:idempotency:*") == [] and queued() == 0
    assert client.get("/jobs").get_json()["jobs"] == []

    monkeypatch.undo()  # room again: the same request, same key, creates the job
    again = client.post("/jobs", json=JOB, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 202 and queued() == 1


# --- the worker ----------------------------------------------------------------------------------------


def test_what_counts_as_a_full_store():
    assert tasks._store_full(OOM) and tasks._store_full(broker_refused())
    assert tasks._store_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not tasks._store_full(OSError(errno.EACCES, "Permission denied"))
    try:
        raise kombu.exceptions.OperationalError("down") from redis.exceptions.ConnectionError("refused")
    except kombu.exceptions.OperationalError as exc:
        assert not tasks._store_full(exc)  # an outage, not a full store


def inline_job(store):
    job_id = new_job_id()
    with ChunkWriter(store.data, "job", job_id, "input", 10, mixed_as_json=True) as writer:
        writer.write(frames.records_to_table([{"id": 1}]))
        ref = {**writer.close(), "dataset_id": None}
    return job_id, store.create(job_id, [{"name": "drop_nulls", "params": {}}], ref)


def test_a_job_the_store_has_no_room_for_frees_its_chunks_and_ends_failed_once_its_end_is_taken(monkeypatch):
    store = JobStore(fakeredis.FakeRedis(), 3600)
    job_id, record = inline_job(store)
    store.data.put("jobs/x/s-1.arrow", b"an earlier segment's output")
    monkeypatch.setattr(tasks, "ROOM_RETRY_SECONDS", 0)
    fail, tries = store.fail, []

    def full_twice(*args):  # the end itself refused twice, as Redis refuses it until keys expire
        tries.append(args)
        if len(tries) <= 2:
            raise OOM
        return fail(*args)

    monkeypatch.setattr(store, "fail", full_twice)
    with pytest.raises(JobFailed), tasks._out_of_room(store, job_id, record, ["jobs/x/s-1.arrow"]):
        raise OOM  # a progress report, say
    assert len(tries) == 3
    assert store.get(job_id)["error"]["type"] == "storage_full"
    assert store.redis.keys("datajobs:blob:*") == []  # its input and the chunks it wrote went first


def test_a_job_that_had_ended_keeps_its_output_when_only_celerys_write_is_refused():
    store = JobStore(fakeredis.FakeRedis(), 3600)
    job_id, record = inline_job(store)
    store.data.put("jobs/x/output-1.arrow", b"its result")
    store.complete(job_id, {"chunks": [{"name": "jobs/x/output-1.arrow"}], "rows": 1}, {"output_items": 1})
    with pytest.raises(Ignore), tasks._out_of_room(store, job_id, record, ["jobs/x/output-1.arrow"]):
        raise OOM
    assert store.get(job_id)["outcome"] == "completed"
    assert store.data.get("jobs/x/output-1.arrow") == b"its result"
