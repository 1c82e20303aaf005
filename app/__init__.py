"""The datajobs gateway: a Flask app that accepts jobs and reports on them.

Start it with ``flask --app app run`` (development) or
``gunicorn "app:create_app()"`` (production).
"""

import logging

from flask import Flask

from workers import jobstore, settings
from workers.celery import make_app as make_celery


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    redis_client = app.config.get("REDIS") or jobstore.connect(app.config["REDIS_URL"])
    app.extensions["jobstore"] = jobstore.JobStore(redis_client, app.config["JOB_TTL_SECONDS"])
    app.extensions["celery"] = app.config.get("CELERY") or make_celery(
        broker_url=settings.broker_url(app.config),
        result_backend=settings.result_backend(app.config),
        result_expires=app.config["JOB_TTL_SECONDS"],
    )

    from app import errors, health, jobs, operations

    errors.init_app(app)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(operations.bp)
    app.register_blueprint(health.bp)
    return app
