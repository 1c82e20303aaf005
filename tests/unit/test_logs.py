"""Log lines (``workers/logs.py``): one line per record whatever a user wrote, JSON when asked, with the job id."""

import io
import json
import logging

import pytest
from celery import Celery

from app import create_app
from workers import logs

FORMATS = ["text", "json"]
FORGED = "hello\r\n2026-11-27T20:30:00.123Z INFO fake job=x admin logged in\nINFO fake job=x admin logged in"
log = logging.getLogger("tests.unit.test_logs")


@pytest.fixture
def capture():
    """A function: set logging up in a format, into a buffer; it returns a function reading the lines so far."""
    buffer = io.StringIO()

    def start(fmt):
        logs.setup(fmt, stream=buffer)
        return lambda: buffer.getvalue().splitlines()

    yield start
    logs.bind_job(None)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == logs.HANDLER_NAME]:
        root.removeHandler(handler)


def boom(text):
    try:
        raise ValueError(text)
    except ValueError:
        log.exception("step failed")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_user_string_cannot_start_a_log_line(capture, fmt):
    lines = capture(fmt)
    log.info("value: %s", FORGED + "\x1b[31m\u2028\x85\v")
    assert len(lines()) == 1
    assert "\r" not in lines()[0] and "\u2028" not in lines()[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_traceback_stays_on_its_record_s_line(capture, fmt):
    lines = capture(fmt)
    boom(FORGED)
    assert len(lines()) == 1
    assert "Traceback (most recent call last):" in lines()[0]
    assert "ValueError: hello" in lines()[0]


def test_text_lines_read_time_level_logger_job_message(capture):
    lines = capture("text")
    log.warning("no job yet")
    logs.bind_job("job-1")
    log.info("a\r\nb")
    first, second = lines()
    assert first.endswith(" WARNING tests.unit.test_logs job=- no job yet")
    assert second.endswith(" INFO tests.unit.test_logs job=job-1 a\\r\\nb")
    assert first[:10].count("-") == 2 and first[23] == "Z" and first[10] == "T"


def test_json_lines_carry_the_fields_the_job_id_and_the_message_unchanged(capture):
    lines = capture("json")
    log.info("before")
    logs.bind_job("job-1")
    log.info("value: %s", FORGED)
    boom("bad value")
    before, forged, failed = [json.loads(line) for line in lines()]
    assert list(before) == ["time", "level", "logger", "job_id", "message"]
    assert before["job_id"] is None and before["level"] == "INFO" and before["logger"] == "tests.unit.test_logs"
    assert before["time"].endswith("Z") and before["time"][10] == "T"
    assert forged["job_id"] == "job-1" and forged["message"] == "value: " + FORGED
    assert failed["level"] == "ERROR" and failed["exc_info"].endswith("ValueError: bad value")


def test_json_lines_hold_only_their_fields_not_what_is_passed_as_extra(capture):
    lines = capture("json")
    # Celery passes a task's arguments and traceback this way.
    log.info("Task %(name)s[%(id)s] received", {"name": "t", "id": "job-2"},
             extra={"data": {"id": "job-2", "args": "['secret']", "traceback": "Traceback ..."}})
    (line,) = lines()
    assert "secret" not in line and "Traceback" not in line
    assert json.loads(line)["job_id"] == "job-2"  # Celery's own "received" line is the job's


def test_a_bound_job_is_unbound_with_none(capture):
    lines = capture("json")
    logs.bind_job("job-1")
    logs.bind_job(None)
    log.info("after")
    assert json.loads(lines()[0])["job_id"] is None


def test_the_job_id_inside_a_celery_task_is_the_task_id(capture):
    lines = capture("json")
    celery = Celery("test_logs", broker="memory://", backend="cache+memory://")

    @celery.task
    def run():
        logging.getLogger("workers.tasks").info("inside the task")

    run.apply(task_id="job-42")  # a real task request, run here
    log.info("outside the task")
    records = [json.loads(line) for line in lines()]
    inside = next(r for r in records if r["message"] == "inside the task")
    outside = next(r for r in records if r["message"] == "outside the task")
    assert inside["job_id"] == "job-42" and outside["job_id"] is None


def test_the_gateway_tags_a_request_s_lines_with_the_job_in_its_url(redis, celery, capture):
    app = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "LOG_FORMAT": "json"})
    job_id = "6f1c1e0e-8a4b-4c57-9d7e-4b1a7f0e2c11"

    @app.get("/jobs/<job_id>/probe")
    def probe(job_id):
        logging.getLogger("app.jobs").info("probed")
        return {}

    lines = capture("json")
    app.test_client().get(f"/jobs/{job_id}/probe")
    app.test_client().get("/jobs/not-a-job-id/probe")  # only an id this system could issue is bound
    log.info("after the requests")
    records = [json.loads(line) for line in lines()]
    assert [r["job_id"] for r in records] == [job_id, None, None]


def test_create_app_many_times_keeps_one_handler(redis, celery):
    for fmt in FORMATS * 2:
        create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "LOG_FORMAT": fmt})
    ours = [h for h in logging.getLogger().handlers if h.get_name() == logs.HANDLER_NAME]
    assert len(ours) == 1 and isinstance(ours[0].formatter, logs.JsonFormatter)


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="The LOG_FORMAT setting must be one of 'text', 'json'. Got 'xml' instead."):
        logs.setup("xml")
