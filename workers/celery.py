"""The Celery app. ``celery -A workers worker`` finds it here.

All settings come from ``celeryconfig.py``; :func:`make_app` lets the gateway
build a client of the same app with its own broker and backend URLs (from its
config) without a second source of Celery settings.
"""

from functools import cached_property

from celery import Celery, signals
from celery.exceptions import ImproperlyConfigured

from workers import logs

#: The names the tasks are registered and sent under: a job, one chunk of a segment, the join after a segment.
RUN_JOB = "datajobs.run_job"
RUN_CHUNK = "datajobs.run_chunk"
CONTINUE_JOB = "datajobs.continue_job"


class ClientApp(Celery):
    """The Celery app of a process that sends tasks and reads their states but never waits on one
    with ``AsyncResult.get()`` (the gateway).

    - One result backend for the process: ``Celery.backend`` is one per thread, so under gevent
      one per request greenlet, each opening connections of its own.
    - No result subscription per task sent: the Redis backend subscribes to every task's result
      channel on ``send_task`` for a ``.get()`` nobody will call here (the gateway's waiters share
      one subscription of their own, ``app/waiting.py``).
    """

    @cached_property
    def backend(self):
        backend = self._get_backend()
        backend.on_task_call = lambda producer, task_id: None
        return backend


def make_app(app_class=Celery, **overrides):
    """Return a Celery app (of ``app_class``) configured from ``celeryconfig``, then ``overrides``."""
    app = app_class("datajobs")
    app.config_from_object("celeryconfig")
    app.conf.update(overrides)
    return app


def check_time_limits(conf):
    """Raise ``ImproperlyConfigured`` unless soft limit < hard limit < broker visibility timeout.

    A job still running when the visibility timeout expires is handed to a
    second worker while the first goes on: the same job twice, in parallel.
    The hard limit must stop it first, and the soft limit must come before the
    hard one or jobs are killed without a chance to record why.
    """
    soft, hard = conf.task_soft_time_limit, conf.task_time_limit
    visibility = (conf.broker_transport_options or {}).get("visibility_timeout", 3600)
    problems = []
    if not (soft and hard and soft < hard):
        problems.append(
            f"JOB_SOFT_TIME_LIMIT ({soft}) must be below JOB_HARD_TIME_LIMIT ({hard}), "
            "so a job is stopped and told why before its process is killed"
        )
    if not (hard and hard < visibility):
        problems.append(
            f"JOB_HARD_TIME_LIMIT ({hard}) must be below BROKER_VISIBILITY_TIMEOUT ({visibility}), "
            "or a job still running when the timeout expires is run again by another worker at the same time"
        )
    if problems:
        raise ImproperlyConfigured("; ".join(problems) + ".")


@signals.celeryd_init.connect
def _refuse_unsafe_limits(sender=None, conf=None, **kwargs):
    # Celery logs and swallows a receiver's exceptions; SystemExit stops the worker.
    try:
        check_time_limits(conf)
    except ImproperlyConfigured as exc:
        raise SystemExit(f"datajobs worker refused to start: {exc}") from None


@signals.setup_logging.connect
def _setup_logging(loglevel=None, logfile=None, **kwargs):
    # Instead of Celery's own handlers: LOG_FORMAT lines with the job id, from every process of the worker.
    logs.setup_worker(app, loglevel, logfile)


@signals.celeryd_init.connect
def _setup_logging_early(options=None, **kwargs):
    # Before Celery's startup checks, so their warnings (running as root, say) are LOG_FORMAT lines too.
    logs.setup_worker(app, (options or {}).get("loglevel"))


app = make_app()
