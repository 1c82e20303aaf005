"""The Celery app. ``celery -A workers worker`` finds it here.

All settings come from ``celeryconfig.py``; :func:`make_app` lets the gateway
build a client of the same app with its own broker and backend URLs (from its
config) without a second source of Celery settings.
"""

from celery import Celery

#: The name the task is registered and sent under.
RUN_JOB = "datajobs.run_job"


def make_app(**overrides):
    """Return a Celery app configured from ``celeryconfig``, then ``overrides``."""
    app = Celery("datajobs")
    app.config_from_object("celeryconfig")
    app.conf.update(overrides)
    return app


app = make_app()
