"""The datajobs gateway: a Flask app that accepts jobs and reports on them.

Start it with ``flask --app app run`` (development) or
``gunicorn "app:create_app()"`` (production).
"""

from flask import Flask, request

import celeryconfig
from app import waiting
from app.taskmeta import TaskMeta
from workers import datastore, jobstore, logs, settings
from workers.datasets import DatasetStore
from workers.operations import load_modules
from workers.celery import ClientApp
from workers.celery import make_app as make_celery


def _bind_job():
    """Tag the request's log lines with the job its URL names (``POST /jobs`` binds its new job itself)."""
    job_id = (request.view_args or {}).get("job_id")
    logs.bind_job(job_id if jobstore.is_job_id(job_id) else None)


def create_app(test_config=None):
    """Build the gateway.

    Configuration: every setting's default, overlaid by its environment variable
    (``workers/settings.py``), overlaid by ``test_config``. ``test_config`` may
    also carry ``REDIS`` (a ready client, e.g. fakeredis) and ``CELERY`` (a
    ready Celery app) for tests.
    """
    app = Flask(__name__)
    app.config.from_mapping({name: settings.get(name) for name in settings.SETTINGS})
    app.config.update(test_config or {})
    app.json.sort_keys = False
    logs.setup(app.config["LOG_FORMAT"])
    app.before_request(_bind_job)
    app.teardown_request(lambda exc: logs.bind_job(None))

    load_modules(app.config["OPERATION_MODULES"])
    redis_client = app.config.get("REDIS") or jobstore.connect(app.config["REDIS_URL"])
    ttl = app.config["JOB_TTL_SECONDS"]
    data = datastore.open_store(app.config["DATA_STORE_URL"], redis_client, ttl)
    app.extensions["jobstore"] = jobstore.JobStore(redis_client, ttl, data)
    app.extensions["datasets"] = DatasetStore(redis_client, data, ttl)
    app.extensions["celery"] = app.config.get("CELERY") or make_celery(
        ClientApp,
        broker_url=settings.broker_url(app.config),
        result_backend=settings.result_backend(app.config),
        result_expires=app.config["JOB_TTL_SECONDS"],
        # A worker rides out an outage; a request must not: the gateway answers 503 at once.
        result_backend_always_retry=False,
        redis_socket_connect_timeout=1,
        redis_socket_timeout=jobstore.GATEWAY_SOCKET_TIMEOUT,
        broker_transport_options={
            **celeryconfig.broker_transport_options,
            "socket_connect_timeout": 1,
            "socket_timeout": jobstore.GATEWAY_SOCKET_TIMEOUT,
        },
    )

    backend = app.extensions["celery"].backend
    app.extensions["task_meta"] = TaskMeta(backend, app.extensions["jobstore"], settings.result_backend(app.config))
    app.extensions["job_events"] = waiting.JobEvents(redis_client)

    from app import auth, dashboard, datasets, docs, errors, health, jobs, metrics, openapi, operations, results, workers_view

    errors.init_app(app)
    auth.init_app(app)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(results.bp)
    app.register_blueprint(datasets.bp)
    app.register_blueprint(operations.bp)
    health.init_app(app)
    app.register_blueprint(workers_view.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(dashboard.bp)
    metrics.init_app(app)
    return app
