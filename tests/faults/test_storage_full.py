"""A full store (Redis at ``maxmemory``) is a clear ``507 storage_full``, and nothing half-written stays behind."""

import os

import pytest
import redis
import requests

import localstack

from tests.faults.conftest import SERIAL_CHUNK_ROWS, idle, pids, sleep_step, wait_for

pytestmark = pytest.mark.integration

CHUNK_ROWS = SERIAL_CHUNK_ROWS


@pytest.fixture(scope="module")
def stack(start_stack):
    # A stack of its own, not a shared one: a full Redis can refuse a Celery acknowledgement that comes at a
    # bad moment (the wait below narrows the window, nothing closes it), and Celery then stops the whole
    # worker ("Unrecoverable error"). That must not take the next modules' worker with it.
    return start_stack(workers=1, concurrency=1, CHUNK_ROWS=str(CHUNK_ROWS))


@pytest.fixture
def client(stack):
    # Idle first: a worker's acknowledgement is a Redis write too, and Celery stops the whole worker
    # ("Unrecoverable error") when a full Redis refuses it, so no test fills the store under a task.
    idle(stack)
    client = redis.Redis.from_url(stack.redis_url)
    yield client
    client.config_set("maxmemory", 0)


def incompressible_csv(rows):
    return "id,blob\n" + "".join(f"{i},{os.urandom(48).hex()}\n" for i in range(rows))


def limit_to(client, room):
    """Let Redis hold ``room`` more bytes than it holds now."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + room)


def test_an_upload_larger_than_the_room_left_is_507_and_writes_nothing(stack, client):
    limit_to(client, 200_000)
    before = client.dbsize()
    response = requests.post(f"{stack.url}/datasets", data=incompressible_csv(5000),
                             headers={"Content-Type": "text/csv"}, timeout=30)
    assert response.status_code == 507
    assert response.json()["error"]["code"] == "storage_full"
    assert client.dbsize() == before


def test_an_upload_that_fills_the_store_half_way_leaves_no_chunk_behind(stack, client):
    limit_to(client, 300_000)
    before = client.dbsize()
    chunks_before = set(client.scan_iter("datajobs:blob:*"))  # other modules' jobs share this Redis
    # Sent without a Content-Length, so only the chunks, as they are written, tell the store is full.
    body = incompressible_csv(20 * CHUNK_ROWS).encode()
    response = requests.post(f"{stack.url}/datasets", data=iter([body]), headers={"Content-Type": "text/csv"},
                             timeout=30)
    assert response.status_code == 507
    assert client.dbsize() == before
    assert set(client.scan_iter("datajobs:blob:*")) == chunks_before


def test_an_inline_job_when_the_store_is_full_is_507_and_queues_nothing(stack, client):
    limit_to(client, 10_000)
    rows = [{"id": i, "blob": os.urandom(48).hex()} for i in range(3000)]
    response = requests.post(f"{stack.url}/jobs", json={"dataset": rows, "operations": []}, timeout=30)
    assert response.status_code == 507
    assert client.llen("datajobs") == 0


def test_after_room_is_made_uploads_work_again(stack, client):
    limit_to(client, 10_000)
    client.config_set("maxmemory", 0)
    response = requests.post(f"{stack.url}/datasets", data=incompressible_csv(100),
                             headers={"Content-Type": "text/csv"}, timeout=30)
    assert response.status_code == 201


# --- jobs: in the gateway, a refused write leaves no job; in the worker, the job ends failed -----------------


def upload(stack, rows):
    response = requests.post(f"{stack.url}/datasets", data=incompressible_csv(rows),
                             headers={"Content-Type": "text/csv"}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["dataset_id"]


def submit(url, dataset, **body):
    """POST a job on ``dataset`` (records, or ``dataset_id=``); return its id."""
    payload = {"dataset": dataset, **body} if dataset else body
    response = requests.post(f"{url}/jobs", json=payload, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def job_blobs(client, job_id):
    return list(client.scan_iter(f"datajobs:blob:jobs/{job_id}/*"))


def test_a_job_whose_output_does_not_fit_fails_storage_full_and_keeps_none_of_it(stack, client):
    dataset_id = upload(stack, 20 * CHUNK_ROWS)  # 20 chunks of about 100 kB
    limit_to(client, 500_000)  # room for the job's record, and five of its output's chunks
    operations = [{"name": "sort", "params": {"by": "id", "ascending": False}}]
    job_id = submit(stack.url, [], dataset_id=dataset_id, operations=operations)
    body = wait_for(stack.url, job_id)
    assert body["status"] == "failed", body
    assert body["error"]["type"] == "storage_full"
    assert job_blobs(client, job_id) == []  # the chunks written before the refused one were deleted

    client.config_set("maxmemory", 0)  # and once there is room, the same job completes
    again = wait_for(stack.url, submit(stack.url, [], dataset_id=dataset_id, operations=operations))
    assert again["status"] == "completed" and again["data"]["output_items"] == 20 * CHUNK_ROWS


def test_a_job_running_when_the_store_fills_fails_storage_full_once_there_is_room(stack, client, tmp_path):
    pid_file = tmp_path / "pids"
    job_id = submit(stack.url, [{"id": 1}], operations=[sleep_step(1, pid_file), "drop_nulls"])
    localstack.wait_until(lambda: pids(pid_file), 30, "the job's first step running")
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)  # full: every write that needs memory is refused from now on

    # Meanwhile the gateway reads, and refuses every write with a 507, cancelling included.
    assert requests.get(f"{stack.url}/jobs/{job_id}", timeout=10).json()["status"] == "processing"
    cancel = requests.delete(f"{stack.url}/jobs/{job_id}", timeout=10)
    assert cancel.status_code == 507 and cancel.json()["error"]["code"] == "storage_full"
    refused = requests.post(f"{stack.url}/jobs", json={"dataset": [{"id": 2}], "operations": []}, timeout=10)
    assert refused.status_code == 507 and refused.json()["error"]["code"] == "storage_full"
    # The step ends, and the worker's next write, its progress report, is refused.
    line = f"job {job_id}: failed (storage_full): the store refused a write"
    localstack.wait_until(lambda: line in stack.logs(), 30, "the worker finding the store full")

    client.config_set("maxmemory", 0)  # room again: the worker records the job's end, which it kept trying
    body = wait_for(stack.url, job_id)
    assert body["status"] == "failed" and body["error"]["type"] == "storage_full", body
    assert body["attempts"] == 1
    assert job_blobs(client, job_id) == []  # its inline input went first, to make room


@pytest.mark.parametrize("key", [None, "retry-me"], ids=["no key", "idempotency key"])
def test_a_job_whose_record_does_not_fit_is_507_and_leaves_nothing_behind(stack, client, key):
    # The inline dataset (one small chunk) fits; the record, whose operations hold a 300 kB string, does not.
    # (A write refused after the record, the key's claim or the message: tests/unit/test_full_store.py.)
    operations = [{"name": "add_column", "params": {"name": "c", "value": "x" * 300_000}}]
    body = {"dataset": [{"id": 1}], "operations": operations}
    headers = {"Idempotency-Key": key} if key else {}
    before = client.dbsize()
    limit_to(client, 100_000)
    response = requests.post(f"{stack.url}/jobs", json=body, headers=headers, timeout=30)
    assert response.status_code == 507 and response.json()["error"]["code"] == "storage_full", response.text
    assert client.dbsize() == before  # no chunk, record, index entry or claim of the key
    assert client.llen("datajobs") == 0

    client.config_set("maxmemory", 0)  # a retry, once there is room, creates the job: nothing stood in its way
    again = requests.post(f"{stack.url}/jobs", json=body, headers=headers, timeout=30)
    assert again.status_code == 202, again.text
    assert wait_for(stack.url, again.json()["job_id"])["status"] == "completed"


def test_on_a_full_store_a_dataset_can_be_deleted_to_make_room_and_nothing_is_half_deleted(stack, client):
    dataset_id = upload(stack, 2 * CHUNK_ROWS)
    done = wait_for(stack.url, submit(stack.url, [], dataset_id=dataset_id, operations=[]))
    assert done["status"] == "completed", done
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    # Freeing a result marks its job's record, a write: refused whole, the result kept as it was.
    result = requests.delete(f"{stack.url}/jobs/{done['job_id']}/result", timeout=10)
    assert result.status_code == 507 and result.json()["error"]["code"] == "storage_full"
    # Deleting a dataset needs no room (what the 507's message advises): its chunks go.
    dataset = requests.delete(f"{stack.url}/datasets/{dataset_id}", timeout=10)
    assert dataset.status_code == 204, dataset.text
    assert list(client.scan_iter(f"datajobs:blob:datasets/{dataset_id}/*")) == []
    client.config_set("maxmemory", 0)
    kept = requests.get(f"{stack.url}/jobs/{done['job_id']}/result", timeout=10)
    assert kept.status_code == 200 and kept.headers["X-Result-Rows"] == str(2 * CHUNK_ROWS)
