"""The job store on fakeredis: keys, TTLs, attempts, finishing."""

import json

import fakeredis
import pytest

from workers.jobstore import JobStore, idempotency_key, is_job_id, key_for, new_job_id

TTL = 3600


@pytest.fixture
def store():
    return JobStore(fakeredis.FakeRedis(), TTL)


def test_keys_share_one_prefix():
    assert key_for("abc") == "datajobs:job:abc"
    assert key_for("abc", "input") == "datajobs:job:abc:input"


@pytest.mark.parametrize("text,ok", [(new_job_id(), True), ("not-an-id", False), ("", False), (None, False),
                                     ("6F0C1A8E-2D5B-4B3E-9A51-0C1D2E3F4A5B", False)])
def test_is_job_id_accepts_only_canonical_uuids(text, ok):
    assert is_job_id(text) is ok


def test_create_then_get_round_trips_and_everything_expires(store):
    job_id = new_job_id()
    ops = [{"name": "limit", "params": {"n": 1}}]
    store.create(job_id, ops, json.dumps([{"a": 1}, {"a": 2}]), rows=2)
    record = store.get(job_id)
    assert record["operations"] == ops and record["operations_total"] == 1 and record["rows_in"] == 2
    assert record["created_at"].endswith("Z")
    assert json.loads(store.load_input(job_id)) == [{"a": 1}, {"a": 2}]
    for key in [key_for(job_id), key_for(job_id, "input")]:
        assert 0 < store.redis.ttl(key) <= TTL


def test_unknown_job_is_none(store):
    assert store.get(new_job_id()) is None


def test_attempts_count_and_started_at_is_the_first_start(store):
    job_id = new_job_id()
    store.create(job_id, [], "[]", rows=0)
    assert store.mark_started(job_id) == 1
    first = store.get(job_id)["started_at"]
    assert store.mark_started(job_id) == 2
    assert store.get(job_id)["started_at"] == first
    assert store.get(job_id)["attempts"] == 2


def test_complete_stores_output_and_drops_input(store):
    job_id = new_job_id()
    store.create(job_id, [], "[1]", rows=1)
    assert store.complete(job_id, "[2]", {"output_items": 1})
    assert store.load_input(job_id) is None
    assert store.get(job_id)["summary"] == {"output_items": 1}
    assert store.get(job_id)["outcome"] == "completed"
    assert store.load_output(job_id) == b"[2]"
    assert store.get(job_id)["finished_at"]
    assert 0 < store.redis.ttl(key_for(job_id, "output")) <= TTL


def test_fail_records_the_error(store):
    job_id = new_job_id()
    store.create(job_id, [], "[]", rows=0)
    error = {"type": "x", "message": "y", "operation_index": 0}
    store.fail(job_id, error)
    assert store.get(job_id)["error"] == error
    assert store.load_input(job_id) is None


def test_delete_removes_every_key(store):
    job_id = new_job_id()
    store.create(job_id, [], "[]", rows=0)
    store.delete(job_id)
    assert store.redis.keys("*") == []


def test_a_job_ends_once_whoever_ends_it_first_wins(store):
    job_id = new_job_id()
    store.create(job_id, [], "[1]", rows=1)
    assert store.cancel(job_id)
    assert not store.complete(job_id, "[2]", {})  # the worker finishing later changes nothing
    assert not store.fail(job_id, {"type": "x", "message": "y", "operation_index": None})
    assert not store.cancel(job_id)
    record = store.get(job_id)
    assert record["outcome"] == "cancelled" and record["error"]["type"] == "cancelled"
    assert store.load_output(job_id) is None
    assert store.is_finished(job_id)


def test_ending_an_unknown_job_writes_nothing(store):
    assert not store.complete(new_job_id(), "[]", {})
    assert store.redis.keys("*") == []


def test_is_finished_only_once_ended(store):
    job_id = new_job_id()
    store.create(job_id, [], "[]", rows=0)
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
