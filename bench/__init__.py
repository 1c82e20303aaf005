"""`make bench`: datajobs measured beside a naive Flask+Celery app and plain pandas (see ``bench/run.py``)."""
