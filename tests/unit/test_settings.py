"""Settings and the Celery configuration built from them."""

import importlib

import pytest

import celeryconfig
from workers import settings


def test_redis_url_is_broker_and_backend_unless_overridden():
    env = {"REDIS_URL": "redis://example:6379/2"}
    assert settings.broker_url(env) == settings.result_backend(env) == "redis://example:6379/2"
    env.update(CELERY_BROKER_URL="redis://b:1/0", CELERY_RESULT_BACKEND="redis://r:1/0")
    assert (settings.broker_url(env), settings.result_backend(env)) == ("redis://b:1/0", "redis://r:1/0")


def test_defaults_and_casting():
    assert settings.get("REDIS_URL", {}) == "redis://127.0.0.1:6379/0"
    assert settings.get("JOB_TTL_SECONDS", {"JOB_TTL_SECONDS": "60"}) == 60
    assert settings.get("JOB_TTL_SECONDS", {"JOB_TTL_SECONDS": ""}) == 86400
    with pytest.raises(ValueError):
        settings.get("MAX_CONTENT_LENGTH", {"MAX_CONTENT_LENGTH": "lots"})


def test_celery_speaks_json_only():
    assert celeryconfig.task_serializer == celeryconfig.result_serializer == "json"
    assert celeryconfig.accept_content == celeryconfig.result_accept_content == ["json"]


def test_celery_keeps_jobs_through_worker_deaths():
    assert celeryconfig.task_acks_late and celeryconfig.task_reject_on_worker_lost
    # No STARTED from Celery before the task runs: "processing" is the job's first progress report,
    # written once the delivery is counted (tests/faults/test_worker_death.py).
    assert not celeryconfig.task_track_started
    assert celeryconfig.worker_prefetch_multiplier == 1


def test_celery_results_live_as_long_as_job_records(monkeypatch):
    monkeypatch.setenv("JOB_TTL_SECONDS", "123")
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6379/4")
    config = importlib.reload(celeryconfig)
    try:
        assert config.result_expires == 123
        assert config.broker_url == config.result_backend == "redis://elsewhere:6379/4"
    finally:
        monkeypatch.undo()
        importlib.reload(celeryconfig)
