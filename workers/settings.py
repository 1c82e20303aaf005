"""The settings table: every knob of datajobs, its environment variable and default.

This is the one place settings are declared. ``celeryconfig.py``, the gateway's
``create_app`` and the harvester read them from here; the README's settings
table is checked against :data:`SETTINGS` by ``tests/unit/test_readme.py``.
"""

import os
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Setting:
    name: str  # also the environment variable
    default: Any
    help: str
    cast: Callable[[str], Any] = str


SETTINGS = {
    s.name: s
    for s in [
        Setting("REDIS_URL", "redis://127.0.0.1:6379/0", "Redis used as Celery broker, result backend and job store."),
        Setting("CELERY_BROKER_URL", None, "Broker URL, when it is not `REDIS_URL`."),
        Setting("CELERY_RESULT_BACKEND", None, "Result backend URL, when it is not `REDIS_URL`."),
        Setting("JOB_TTL_SECONDS", 86400, "How long job records, datasets, results and Celery results are kept.", int),
        Setting("MAX_CONTENT_LENGTH", 64 * 1024 * 1024, "Largest accepted request body in bytes (413 above it).", int),
        Setting("HEALTH_PING_TIMEOUT", 1.0, "Seconds `GET /health` waits for workers to answer a ping.", float),
        Setting("GATEWAY_URL", "http://127.0.0.1:5000", "Gateway the harvester talks to (`--gateway` overrides)."),
    ]
}


def get(name, environ=None):
    """Return setting ``name``: its environment variable if set and not empty, else its default."""
    setting = SETTINGS[name]
    raw = (os.environ if environ is None else environ).get(name)
    if raw in (None, ""):
        return setting.default
    return setting.cast(raw)


def broker_url(environ=None):
    return get("CELERY_BROKER_URL", environ) or get("REDIS_URL", environ)


def result_backend(environ=None):
    return get("CELERY_RESULT_BACKEND", environ) or get("REDIS_URL", environ)
