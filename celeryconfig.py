"""Celery configuration: the only place Celery settings live.

Values come from the settings table in ``workers/settings.py`` (environment
variables with defaults). The worker and the gateway both load this module.
"""

from workers import settings

broker_url = settings.broker_url()
result_backend = settings.result_backend()

# JSON only, on the wire and in the backend: a message in any other serialization is refused,
# so nobody who can write to Redis can make a worker run code.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# A job's state goes started -> processing -> completed/failed. A job reads "processing" from its first
# progress report, which the task writes after it has counted the delivery in the job record: so a job
# seen processing has had this attempt counted, whatever kills its process next. Celery's own STARTED
# (written before the task runs: a read and a write more per job) would come before that count.
task_track_started = False
# Ack after the task returns, and give the message back if the worker process dies,
# so a job that was running when its worker was killed runs again.
task_acks_late = True
task_reject_on_worker_lost = True
# One job reserved per worker process at a time: long jobs do not hold others hostage.
worker_prefetch_multiplier = 1
# Task events (sent, received, started, succeeded, failed) for a monitor such as Flower
# (`celery -A workers flower`), which builds its view of every task from them: without
# these, it sees the workers but no task. They are JSON (event_serializer) and go over
# Redis pub/sub, so they are dropped, not stored, while nobody listens; both the
# gateway (which sends the jobs: task-sent) and the workers load this module.
worker_send_task_events = True
task_send_sent_event = True

# Time limits. The soft limit raises inside the job, which then ends failed (time_limit);
# the hard limit kills a worker process stuck where the soft one cannot reach (a C loop).
# A job still unacknowledged after the visibility timeout is handed to another worker,
# so the hard limit must come first or a long job would run twice in parallel: the
# worker refuses to start otherwise (workers/celery.py).
task_soft_time_limit = settings.get("JOB_SOFT_TIME_LIMIT")
task_time_limit = settings.get("JOB_HARD_TIME_LIMIT")
broker_transport_options = {
    "visibility_timeout": settings.get("BROKER_VISIBILITY_TIMEOUT"),
    # Every worker looks for messages whose worker vanished (a host gone, a SIGKILLed
    # worker) every few seconds; kombu's default is every 100 s (10 s x a throttle of 10).
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
}

# Redis outages. The worker reconnects to the broker by itself however long Redis is gone
# (Celery's default gives up after 100 tries, about 50 minutes, and the worker exits).
broker_connection_max_retries = None
# A job running when the broker connection drops goes on, and is acknowledged once Redis is
# back; True would cancel it and run it again (Celery 6 makes True the default: pin it).
worker_cancel_long_running_tasks_on_connection_loss = False
# A task's writes to the result backend (progress, its result) wait out a short outage,
# ~30 s with exponential backoff, instead of failing the job: by default only the final
# SET is retried, not the GET before it, nor update_state.
result_backend_always_retry = True
result_backend_max_retries = 30
result_backend_base_sleep_between_retries_ms = 100
result_backend_max_sleep_between_retries_ms = 2000

# A worker process whose resident memory passed WORKER_MAX_MEMORY_MB is replaced by a fresh one once the task
# it runs has ended (Celery checks after each task; it never stops a task half way: the kernel's OOM killer
# and JOB_MAX_ATTEMPTS deal with one that outgrows the machine). Celery counts KiB; None is no cap.
worker_max_memory_per_child = settings.get("WORKER_MAX_MEMORY_MB") * 1024 or None

result_expires = settings.get("JOB_TTL_SECONDS")
task_default_queue = "datajobs"
broker_connection_retry_on_startup = True
imports = ("workers.tasks",)
