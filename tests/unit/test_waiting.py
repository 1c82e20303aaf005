"""Waiting on a job (``?wait=``, ``ETag``, ``If-None-Match``), through Flask's test client and fakeredis.

The wake-ups come from the job store's pub/sub channel here (fakeredis), published by the job
store; the integration tests (tests/faults/test_waiting_live.py) add the worker's progress reports.
"""

import threading
import time

import pytest

from app.waiting import JobEvents
from workers.jobstore import EVENTS_CHANNEL, job_event
from workers.status import PROGRESS

JOB = {"dataset": [{"id": 1}], "operations": ["drop_nulls"]}


def submit(client, path="/jobs", **kwargs):
    return client.post(path, json=JOB, **kwargs)


def later(seconds, action):
    """Run ``action`` in a thread after ``seconds``; return the thread."""
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()), daemon=True)
    thread.start()
    return thread


def test_a_job_body_carries_an_etag_and_until_it_ends_a_retry_after(client, complete_job):
    job_id = submit(client).get_json()["job_id"]
    queued = client.get(f"/jobs/{job_id}")
    assert queued.headers["ETag"].startswith('"') and queued.headers["Retry-After"] == "1"
    assert client.get(f"/jobs/{job_id}").headers["ETag"] == queued.headers["ETag"]  # same body, same tag
    complete_job(job_id, [{"id": 1}], {"processed_items": 1, "output_items": 1, "operations_applied": 1})
    done = client.get(f"/jobs/{job_id}")
    assert done.get_json()["status"] == "completed"
    assert done.headers["ETag"] != queued.headers["ETag"]
    assert "Retry-After" not in done.headers


def test_if_none_match_with_the_current_tag_is_304_without_a_body(client, celery):
    job_id = submit(client).get_json()["job_id"]
    tag = client.get(f"/jobs/{job_id}").headers["ETag"]
    unchanged = client.get(f"/jobs/{job_id}", headers={"If-None-Match": tag})
    assert unchanged.status_code == 304 and unchanged.data == b"" and unchanged.headers["ETag"] == tag
    assert client.get(f"/jobs/{job_id}", headers={"If-None-Match": f"W/{tag}"}).status_code == 304  # weak match
    meta = {"operations_done": 0, "operations_total": 1, "current_operation": "drop_nulls", "phase": "running",
            "chunks_done": 0, "chunks_total": 1}
    celery.backend.store_result(job_id, meta, PROGRESS)  # progress moved: the body, and its tag, changed
    changed = client.get(f"/jobs/{job_id}", headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.get_json()["status"] == "processing"
    assert changed.headers["ETag"] != tag


def test_a_wait_on_an_unchanged_job_runs_out_into_a_304(client):
    job_id = submit(client).get_json()["job_id"]
    tag = client.get(f"/jobs/{job_id}").headers["ETag"]
    started = time.monotonic()
    answer = client.get(f"/jobs/{job_id}?wait=0.3", headers={"If-None-Match": tag})
    assert answer.status_code == 304
    assert time.monotonic() - started >= 0.3  # it did wait


def test_a_wait_without_a_tag_runs_out_into_the_body_of_a_job_still_queued(client):
    job_id = submit(client).get_json()["job_id"]
    answer = client.get(f"/jobs/{job_id}?wait=0.2")
    assert answer.status_code == 200 and answer.get_json()["status"] == "started"


def test_a_waiter_is_woken_when_its_job_ends(client, complete_job):
    job_id = submit(client).get_json()["job_id"]
    tag = client.get(f"/jobs/{job_id}").headers["ETag"]
    later(0.3, lambda: complete_job(job_id, [{"id": 1}], {"processed_items": 1, "output_items": 1,
                                                          "operations_applied": 1}))
    started = time.monotonic()
    answer = client.get(f"/jobs/{job_id}?wait=30", headers={"If-None-Match": tag})
    assert answer.status_code == 200 and answer.get_json()["status"] == "completed"
    assert time.monotonic() - started < 15  # woken by the end, not by the end of its 30 s


def test_a_waiter_is_woken_by_a_cancel(client):
    job_id = submit(client).get_json()["job_id"]
    later(0.3, lambda: client.application.extensions["jobstore"].cancel(job_id))
    answer = client.get(f"/jobs/{job_id}?wait=30")
    assert answer.get_json()["status"] == "cancelled"


def test_a_post_that_waits_answers_202_when_the_job_does_not_end_in_time(client, queued):
    answer = submit(client, path="/jobs?wait=0.2")
    assert answer.status_code == 202 and answer.get_json()["status"] == "started"
    assert queued() == 1


def test_a_post_that_waits_reads_its_job_once_it_has_ended_and_not_before(client, complete_job, monkeypatch):
    import app.jobs
    from app.taskmeta import TaskMeta

    job_id = "6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b"
    monkeypatch.setattr(app.jobs, "new_job_id", lambda: job_id)
    reads, read = [], TaskMeta.read
    monkeypatch.setattr(TaskMeta, "read", lambda self, *args: reads.append(time.monotonic()) or read(self, *args))
    with client.application.extensions["job_events"].watch("another job"):
        pass  # the process's listener subscribed, as it is once a process has had its first waiter
    ending = []  # when the job's end began to be written

    def end():
        store, deadline = client.application.extensions["jobstore"], time.monotonic() + 10
        while store.get(job_id) is None and time.monotonic() < deadline:  # the submission has recorded it
            time.sleep(0.01)
        ending.append(time.monotonic())
        complete_job(job_id, [{"id": 1}], {"processed_items": 1, "output_items": 1, "operations_applied": 1})

    later(0.3, end)
    answer = submit(client, path="/jobs?wait=30")
    assert answer.status_code == 200 and answer.get_json()["status"] == "completed"
    # Watched from before its message was sent: it slept until the end, then read the job once.
    assert len(reads) == 1 and reads[0] >= ending[0]


@pytest.mark.parametrize("wait", ["0", "-1", "nan", "inf", "soon", "60.5", ""])
def test_a_bad_wait_is_400_naming_it_and_nothing_is_enqueued(client, queued, wait):
    answer = submit(client, path=f"/jobs?wait={wait}")
    assert answer.status_code == 400, answer.get_json()
    error = answer.get_json()["error"]
    assert error["code"] == "invalid_parameter" and error["details"] == {"parameter": "wait"}
    assert "MAX_WAIT_SECONDS" in error["message"]
    assert queued() == 0
    job_id = submit(client).get_json()["job_id"]
    assert client.get(f"/jobs/{job_id}?wait={wait}").status_code == 400


def test_a_wait_on_an_unknown_job_is_404_at_once(client):
    answer = client.get("/jobs/00000000-0000-4000-8000-000000000000?wait=30")
    assert answer.status_code == 404


def test_events_wake_only_the_waiters_of_their_job(redis):
    events = JobEvents(redis)
    with events.watch("a") as a, events.watch("b") as b:
        assert events.waiting == 2
        a.clear(), b.clear()  # as a waiter does before it looks: the subscription's start woke everyone
        redis.publish(EVENTS_CHANNEL, job_event("a"))
        assert a.wait(5)
        assert not b.wait(0.2)
    assert events.waiting == 0


def test_a_waiter_for_the_end_sleeps_through_progress(redis):
    events = JobEvents(redis)
    with events.watch("a", ends_only=True) as end, events.watch("a") as every:
        end.clear(), every.clear()
        redis.publish(EVENTS_CHANNEL, job_event("a"))  # progress
        assert every.wait(5)
        assert not end.wait(0.2)
        redis.publish(EVENTS_CHANNEL, job_event("a", ended=True))
        assert end.wait(5)
