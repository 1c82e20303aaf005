"""The job store on fakeredis: keys, TTLs, attempts, finishing, and the chunks a job owns."""

import os

import fakeredis
import pytest

from workers import chunks, frames
from workers.chunks import ChunkWriter
from workers.jobstore import JobStore, chunk_name, dataset_key, idempotency_key, is_job_id, key_for, new_job_id

TTL = 3600


@pytest.fixture
def store():
    return JobStore(fakeredis.FakeRedis(), TTL)


def test_keys_share_one_prefix():
    assert key_for("abc") == "datajobs:job:abc"
    assert key_for("abc", "lease") == "datajobs:job:abc:lease"
    assert dataset_key("abc") == "datajobs:dataset:abc"
    assert chunk_name("job", "abc", "input", 3) == "jobs/abc/input-00003.arrow"


@pytest.mark.parametrize("text,ok", [(new_job_id(), True), ("not-an-id", False), ("", False), (None, False),
                                     ("6F0C1A8E-2D5B-4B3E-9A51-0C1D2E3F4A5B", False)],
                         ids=["new id", "words", "empty", "none", "upper case"])
def test_is_job_id_accepts_only_canonical_uuids(text, ok):
    assert is_job_id(text) is ok


def stored(store, job_id, section, records, dataset_id=None):
    """Write ``records`` as chunks of ``job_id`` and return their reference."""
    with ChunkWriter(store.data, "job", job_id, section, 2) as writer:
        writer.write(frames.records_to_table(records))
        return {**writer.close(), "dataset_id": dataset_id}


def blobs(store):
    return sorted(k.decode() for k in store.redis.keys("datajobs:blob:*"))


def test_create_then_get_round_trips_and_everything_expires(store):
    job_id = new_job_id()
    ops = [{"name": "limit", "params": {"n": 1}}]
    ref = stored(store, job_id, "input", [{"a": 1}, {"a": 2}, {"a": 3}])
    store.create(job_id, ops, ref)
    record = store.get(job_id)
    assert record["operations"] == ops and record["operations_total"] == 1 and record["rows_in"] == 3
    assert record["created_at"].endswith("Z")
    assert record["input"] == ref and [c["rows"] for c in ref["chunks"]] == [2, 1]
    assert chunks.read_all(store.data, ref).to_pylist() == [{"a": 1}, {"a": 2}, {"a": 3}]
    for key in [key_for(job_id), *blobs(store)]:
        assert 0 < store.redis.ttl(key) <= TTL


def test_unknown_job_is_none(store):
    assert store.get(new_job_id()) is None


def test_attempts_count_and_started_at_is_the_first_start(store):
    job_id = new_job_id()
    store.create(job_id, [], stored(store, job_id, "input", []))
    assert store.mark_started(job_id) == 1
    first = store.get(job_id)["started_at"]
    assert store.mark_started(job_id) == 2
    assert store.get(job_id)["started_at"] == first
    assert store.get(job_id)["attempts"] == 2


def test_complete_stores_output_and_drops_an_inline_input(store):
    job_id = new_job_id()
    store.create(job_id, [], stored(store, job_id, "input", [{"a": 1}]))
    output = stored(store, job_id, "output", [{"a": 2}])
    assert store.complete(job_id, output, {"output_items": 1}, inline=[{"a": 2}])
    record = store.get(job_id)
    assert record["summary"] == {"output_items": 1} and record["outcome"] == "completed"
    assert record["output"] == output and record["inline"] == [{"a": 2}] and record["finished_at"]
    assert blobs(store) == ["datajobs:blob:" + output["chunks"][0]["name"]]  # the input is gone
    assert 0 < store.redis.ttl(blobs(store)[0]) <= TTL


def test_a_dataset_input_outlives_the_job(store):
    job_id = new_job_id()
    ref = stored(store, "dataset-1", "p00001", [{"a": 1}], dataset_id="dataset-1")
    store.create(job_id, [], ref)
    store.fail(job_id, {"type": "x", "message": "y", "operation_index": None})
    assert chunks.read_all(store.data, ref).num_rows == 1  # other jobs may use the dataset


def test_drop_output_frees_the_result_once(store):
    job_id = new_job_id()
    store.create(job_id, [], stored(store, job_id, "input", [{"a": 1}]))
    store.complete(job_id, stored(store, job_id, "output", [{"a": 1}]), {})
    assert store.drop_output(job_id)
    assert blobs(store) == [] and store.get(job_id)["result_deleted_at"]
    assert not store.drop_output(job_id)


def test_fail_records_the_error(store):
    job_id = new_job_id()
    store.create(job_id, [], stored(store, job_id, "input", [{"a": 1}]))
    error = {"type": "x", "message": "y", "operation_index": 0}
    store.fail(job_id, error)
    assert store.get(job_id)["error"] == error
    assert blobs(store) == []


def test_delete_removes_every_key(store):
    job_id = new_job_id()
    store.create(job_id, [], stored(store, job_id, "input", [{"a": 1}]))
    store.delete(job_id)
    assert store.redis.keys("*") == [b"datajobs:metrics"]  # only the figures of GET /metrics, no job's


def test_a_job_ends_once_whoever_ends_it_first_wins(store):
    job_id = new_job_id()
    store.create(job_id, [], stored(store, job_id, "input", [{"a": 1}]))
    assert store.cancel(job_id)
    assert not store.complete(job_id, {"chunks": [], "rows": 0}, {})  # the worker finishing later changes nothing
    assert not store.fail(job_id, {"type": "x", "message": "y", "operation_index": None})
    assert not store.cancel(job_id)
    record = store.get(job_id)
    assert record["outcome"] == "cancelled" and record["error"]["type"] == "cancelled"
    assert "output" not in record
    assert store.is_finished(job_id)


def test_ending_an_unknown_job_writes_nothing(store):
    assert not store.complete(new_job_id(), {"chunks": [], "rows": 0}, {})
    assert store.redis.keys("*") == []


def test_is_finished_only_once_ended(store):
    job_id = new_job_id()
    store.create(job_id, [], stored(store, job_id, "input", []))
    assert not store.is_finished(job_id)
    store.fail(job_id, {"type": "x", "message": "y", "operation_index": None})
    assert store.is_finished(job_id)


def test_an_idempotency_key_is_claimed_once_per_owner(store):
    assert store.claim_idempotency_key("alice", "k1", "digest-a", "job-1") is None
    assert store.claim_idempotency_key("alice", "k1", "digest-b", "job-2") == ("job-1", "digest-a")
    assert store.claim_idempotency_key("bob", "k1", "digest-b", "job-3") is None  # keys are per owner
    store.release_idempotency_key("alice", "k1")
    assert store.claim_idempotency_key("alice", "k1", "digest-c", "job-4") is None
    assert 0 < store.redis.ttl(idempotency_key("alice", "k1")) <= TTL


def test_a_lease_has_one_holder_until_dropped_or_expired(store):
    job_id = new_job_id()
    assert store.take_lease(job_id, "a", 5)
    assert not store.take_lease(job_id, "b", 5)
    assert 0 < store.lease_left(job_id) <= 5
    assert store.renew_lease(job_id, "a", 5) and not store.renew_lease(job_id, "b", 5)
    store.drop_lease(job_id, "b")  # not b's to drop
    assert not store.take_lease(job_id, "b", 5)
    store.drop_lease(job_id, "a")
    assert store.lease_left(job_id) == 0
    assert store.take_lease(job_id, "b", 5)


# --- a lease held by a dead process of the same worker is taken over at once -------------------------

#: A pid no process can have (above Linux's largest pid_max, 2**22).
NO_SUCH_PID = 2**22 + 1


@pytest.mark.parametrize(
    "holder, taken",
    [
        (f"celery@here:{NO_SUCH_PID}:a", True),  # this worker's process, dead: taken over at once
        (f"celery@there:{NO_SUCH_PID}:a", False),  # another worker's: it may be alive on its own host
        (f"celery@here:{os.getpid()}:a", False),  # this worker's process, alive
    ],
    ids=["dead here", "elsewhere", "alive here"],
)
def test_a_lease_of_a_dead_process_of_this_worker_is_taken_over_and_no_other(holder, taken):
    from workers import tasks
    from workers.jobstore import RUNNING_INDEX

    store = JobStore(fakeredis.FakeRedis(), 60)
    assert store.take_lease("j", holder, 5)
    assert tasks._take_from_the_dead(store, "j", "celery@here:1:b", "lease", "celery@here") is taken
    assert store.lease_holder("j") == ("celery@here:1:b" if taken else holder)
    running = [entry.decode().rsplit(" ", 1)[1] for entry in store.redis.zrange(RUNNING_INDEX, 0, -1)]
    assert running == (["celery@here:1:b"] if taken else [holder])
