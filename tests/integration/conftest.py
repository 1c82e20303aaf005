"""Real parts: a Redis, a `celery -A workers worker` process and the gateway under gunicorn.

The Redis is ``TEST_REDIS_URL`` if set; else database 15 of the Redis at
127.0.0.1:6379 when one answers (flushed first: keep nothing there); else a
``redis-server`` started on a free port; else the embedded fakeredis server.
"""

import os

import pytest
import redis

import localstack

# Every test here is marked ``integration`` by tests/conftest.py (a ``pytestmark`` here would not be).


@pytest.fixture(scope="session")
def redis_url():
    with localstack.any_redis(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")) as (url, how):
        print(f"\nintegration: {how}")
        redis.Redis.from_url(url).flushdb()
        yield url


#: Chunks of 20,000 rows, so the tests' larger datasets span several chunks.
CHUNK_ROWS = 20_000


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The directory the shared stack stores chunks in (``DATA_STORE_URL=file://...``)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def gateway(redis_url, data_dir, tmp_path_factory):
    """Base URL of a gateway with one worker process (concurrency 1) behind it, both real processes.

    Its chunks go to a directory (the ``file://`` data store, as workers on several hosts sharing a
    volume use it); the fault tests' stacks keep the default, chunks in Redis.
    """
    log_dir = tmp_path_factory.mktemp("logs")
    env = {"DATA_STORE_URL": f"file://{data_dir}", "CHUNK_ROWS": str(CHUNK_ROWS)}
    with localstack.stack(redis_url, workers=1, concurrency=1, log_dir=log_dir, extra_env=env, quick_stop=True) as url:
        yield url
