"""The settings table: every knob of datajobs, its environment variable and default.

This is the one place settings are declared. ``celeryconfig.py``, the gateway's
``create_app`` and the harvester read them from here; the README's settings
table is checked against :data:`SETTINGS` by ``tests/unit/test_readme.py``.
"""

import os
from dataclasses import dataclass
from typing import Any, Callable


def names(text):
    """Cast a comma-separated setting (``"a, b"``) to a tuple of its non-empty items."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


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
        # Limits on what a job may be: each is checked before anything is stored (413/400).
        Setting("MAX_CONTENT_LENGTH", 64 * 1024 * 1024, "Largest accepted request body in bytes (413 above it).", int),
        Setting("MAX_RECORDS", 1_000_000, "Most records in one job's dataset (400 above it).", int),
        Setting("MAX_OPERATIONS", 100, "Most operations in one job (400 above it).", int),
        Setting("MAX_STRING_LENGTH", 1024 * 1024, "Longest string, key or value, anywhere in a job, in characters.", int),
        Setting("MAX_JSON_DEPTH", 32, "Deepest nesting of arrays and objects in a request body.", int),
        # A limit on what a job may make, checked by the workers as it runs.
        Setting("MAX_OUTPUT_ROWS", None, "Most rows one step of a job may make, summed over its chunks (default "
                "10 × `MAX_RECORDS`; the job's input rows when it has more): a step that would make more fails the "
                "job (`limit_exceeded`).", int),
        # Datasets: uploaded files, stored in chunks by reference.
        Setting("MAX_DATASET_BYTES", 8 * 1024**3, "Largest dataset, all its parts' bodies together, in bytes "
                "(400 above it).", int),
        Setting("MAX_DATASET_ROWS", 100_000_000, "Most rows in one dataset (400 above it).", int),
        Setting("CHUNK_ROWS", 250_000, "Most rows in one stored chunk of a dataset or result: the unit of work a "
                "worker process takes.", int),
        Setting("DATA_STORE_URL", "redis", "Where chunks are stored: `redis` (the job store's Redis), "
                "`file:///shared/path` (a directory every worker host mounts) or `s3://bucket/prefix`."),
        Setting("MAX_WAIT_SECONDS", 60.0, "Longest wait `GET /jobs/<id>?wait=S` and `POST /jobs?wait=S` may ask "
                "for, in seconds.", float),
        Setting("INLINE_RESULT_ROWS", 1000, "Most result rows `GET /jobs/<id>` returns inline in `data.data`; "
                "larger results are fetched from `GET /jobs/<id>/result`.", int),
        # Who may see what.
        Setting("API_TOKENS", (), "Comma-separated bearer tokens; when set, every endpoint but `/health` and "
                "`/metrics` needs one, and a job is visible only with the token that created it.", names),
        Setting("METRICS_TOKEN", None, "Bearer token `GET /metrics` needs when set; unset, `/metrics` is open to "
                "anyone, also with `API_TOKENS` set."),
        Setting("MAX_ACTIVE_JOBS_PER_TOKEN", 100, "With `API_TOKENS` set, most jobs one token may have queued or "
                "running at once: past it, `429 too_many_jobs` with `Retry-After`; 0 for no limit.", int),
        # Running jobs: faults and limits.
        Setting("JOB_MAX_ATTEMPTS", 3, "Times a job may be started: one whose worker dies this often ends "
                "`failed` (`worker_lost`).", int),
        Setting("JOB_SOFT_TIME_LIMIT", 1800, "Seconds a job may run before it is stopped and ends `failed` "
                "(`time_limit`).", float),
        Setting("JOB_HARD_TIME_LIMIT", 1860, "Seconds after which a job's worker process is killed, for a step "
                "the soft limit cannot interrupt.", float),
        Setting("BROKER_VISIBILITY_TIMEOUT", 3600, "Seconds before a job whose worker host vanished is handed to "
                "another worker; must exceed the hard limit.", float),
        Setting("WORKER_MAX_MEMORY_MB", 0, "Resident memory, in MiB, past which a worker process is replaced once the "
                "task it runs ends (Celery's `worker_max_memory_per_child`; a task is never stopped half way); 0 for "
                "no cap.", int),
        Setting("CANCEL_GRACE_SECONDS", 10.0, "Seconds a running step may go on after a cancel before its worker "
                "process is killed.", float),
        Setting("OPERATION_MODULES", (), "Comma-separated modules whose operations are added to the catalogue "
                "(gateway and workers must agree).", names),
        Setting("LOG_FORMAT", "text", "`text`, or `json` for one JSON object per line (gateway and workers)."),
        Setting("HEARTBEAT_SECONDS", 2.0, "Seconds between two heartbeats of a worker in Redis; `GET /health` counts "
                "the workers heard from within three of them.", float),
        Setting("HEALTH_CACHE_SECONDS", 1.0, "Seconds a gateway process answers `GET /health` from the live workers "
                "it last counted before it counts them in Redis again (at once after any of its requests found Redis "
                "unreachable); `?deep=true` always counts afresh.", float),
        Setting("HEALTH_PING_TIMEOUT", 1.0, "Seconds `GET /health?deep=true` waits for workers to answer a ping.",
                float),
        Setting("SWEEP_SECONDS", 5.0, "Seconds between two sweeps of the workers' sweeper, which sends again a join "
                "overdue by twice as long, sends a job its gateway never sent (`ORPHAN_SECONDS`) and removes the "
                "chunks of expired jobs from a directory store.", float),
        Setting("ORPHAN_SECONDS", 60.0, "Seconds after its creation a job whose message its gateway never sent (the "
                "process died in between) is sent by the workers' sweeper; read by the gateway, which stamps the "
                "time on each job it records.", float),
        Setting("TEST_LOSE_JOINS", False, "Tests only: a worker does not send the join after a fanned-out segment, "
                "as if its message were lost, so the sweeper must.", lambda text: text.lower() in ("1", "true", "yes")),
        Setting("TEST_DIE_BEFORE_SEND", False, "Tests only: a gateway process exits (`os._exit`) after recording a "
                "job and before sending its message, leaving an orphan for the sweeper.",
                lambda text: text.lower() in ("1", "true", "yes")),
        # The harvester.
        Setting("GATEWAY_URL", "http://127.0.0.1:5000", "Gateway the harvester talks to (`--gateway` overrides)."),
        Setting("GATEWAY_TOKEN", None, "Bearer token the harvester sends (`--token` overrides)."),
    ]
}


def get(name, environ=None):
    """Return setting ``name``: its environment variable if set and not empty, else its default."""
    setting = SETTINGS[name]
    raw = (os.environ if environ is None else environ).get(name)
    if raw in (None, ""):
        return setting.default
    return setting.cast(raw)


def max_output_rows(environ=None):
    """``MAX_OUTPUT_ROWS``, or 10 × ``MAX_RECORDS`` when it is not set."""
    return get("MAX_OUTPUT_ROWS", environ) or 10 * get("MAX_RECORDS", environ)


def broker_url(environ=None):
    return get("CELERY_BROKER_URL", environ) or get("REDIS_URL", environ)


def result_backend(environ=None):
    return get("CELERY_RESULT_BACKEND", environ) or get("REDIS_URL", environ)
