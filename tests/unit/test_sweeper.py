"""The sweeper in the workers: overdue joins sent again, chunks of expired owners removed from a directory."""

import fakeredis
import pytest

from workers import frames, tasks
from workers.chunks import ChunkWriter
from workers.datastore import FileSystemDataStore
from workers.jobstore import JobStore, new_job_id


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
