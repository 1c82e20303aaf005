"""A full store (Redis at ``maxmemory``) is a clear ``507 storage_full``, and nothing half-written stays behind."""

import os

import pytest
import redis
import requests

from tests.faults.conftest import SERIAL_CHUNK_ROWS

pytestmark = pytest.mark.integration

CHUNK_ROWS = SERIAL_CHUNK_ROWS


@pytest.fixture(scope="module")
def stack(shared_stack):
    return shared_stack("serial")  # CHUNK_ROWS = SERIAL_CHUNK_ROWS


@pytest.fixture
def client(stack):
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
