"""The job store on fakeredis: keys, TTLs, attempts, finishing."""

import json

import fakeredis
import pytest

from workers.jobstore import JobStore, is_job_id, key_for, new_job_id

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
    store.complete(job_id, "[2]")
    assert store.load_input(job_id) is None
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
