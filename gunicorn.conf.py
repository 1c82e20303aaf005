"""Gunicorn settings for `gunicorn "app:create_app()"` run from this folder: port 5000 like `flask run`."""

bind = "127.0.0.1:5000"
workers = 2
