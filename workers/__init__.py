"""datajobs workers: the Celery app, its task, the operations catalogue and the job store.

`celery -A workers worker` finds the app in :mod:`workers.celery`. This package
never imports Flask, and importing it does not build the Celery app, so the
gateway and the harvester can use the light modules (`status`, `errors`,
`settings`, `operations`) without paying for it.
"""
