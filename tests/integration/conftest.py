"""Real parts: a Redis, a `celery -A workers worker` process and the gateway under gunicorn.

The Redis is ``TEST_REDIS_URL`` if set; else database 15 of the Redis at
127.0.0.1:6379 when one answers (flushed first: keep nothing there); else a
``redis-server`` started on a free port; else the embedded fakeredis server.
"""

import os

import pytest
import redis

import localstack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def redis_url():
    with localstack.any_redis(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")) as (url, how):
        print(f"\nintegration: {how}")
        redis.Redis.from_url(url).flushdb()
        yield url


@pytest.fixture(scope="session")
def gateway(redis_url, tmp_path_factory):
    """Base URL of a gateway with one worker process (concurrency 1) behind it, both real processes."""
    log_dir = tmp_path_factory.mktemp("logs")
    with localstack.stack(redis_url, workers=1, concurrency=1, log_dir=log_dir) as url:
        yield url
