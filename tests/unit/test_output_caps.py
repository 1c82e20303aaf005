"""Caps on a job's work: ``MAX_OUTPUT_ROWS`` on every step (before the rows are made where a step can tell,
after each step and over a fan-out's chunks otherwise), and ``WORKER_MAX_MEMORY_MB`` reaching Celery."""

import json
import os
import subprocess
import sys
from pathlib import Path

import fakeredis
import pandas as pd
import pytest

from workers import chunks, frames, limits, pipeline, runner, settings, tasks
from workers.chunks import ChunkWriter
from workers.datastore import RedisDataStore
from workers.errors import StepFailed
from workers.jobstore import JobStore, new_job_id
from workers.operations import builtins

ROOT = Path(__file__).resolve().parents[2]


def chunk_text(size, **params):
    return {"name": "chunk_text", "params": {"column": "t", "size": size, **params}}


def test_chunk_text_over_the_cap_is_refused_before_a_piece_is_made(monkeypatch):
    def split(*args):
        raise AssertionError("pieces were made")

    monkeypatch.setattr(builtins, "_split", split)
    # 3 rows of 1,000 characters in pieces of 1: 3,000 rows, one more than the cap.
    df = pd.DataFrame({"t": pd.Series(["x" * 1000] * 3, dtype="str")})
    steps = pipeline.parse_steps(["drop_nulls", chunk_text(1)])
    with pytest.raises(StepFailed) as failed:
        pipeline.run(df, steps, max_rows=2999)
    error = failed.value.to_json()
    assert error["type"] == "limit_exceeded" and error["operation_index"] == 1
    assert "Step 1 (chunk_text) would make 3,000 rows" in error["message"]
    assert "MAX_OUTPUT_ROWS" in error["message"] and "2,999" in error["message"]


@pytest.mark.parametrize("values", [["abcdefghij", None, "", "abc"], [12345678, None, "ab", 1.5]])
@pytest.mark.parametrize(("size", "overlap"), [(1, 0), (3, 0), (3, 2), (4, 1), (20, 5)])
def test_chunk_text_counts_exactly_the_rows_it_makes(values, size, overlap):
    # The count the cap is checked against, before the pieces, is the count of the pieces: a cap of
    # exactly that many passes, one fewer is refused.
    df = pd.DataFrame({"t": pd.Series(values, dtype="str" if isinstance(values[-1], str) else object)})
    made = len(builtins.chunk_text(df, column="t", size=size, overlap=overlap))
    with limits.output_rows(made):
        assert len(builtins.chunk_text(df, column="t", size=size, overlap=overlap)) == made
    with limits.output_rows(made - 1), pytest.raises(limits.OutputLimitExceeded) as refused:
        builtins.chunk_text(df, column="t", size=size, overlap=overlap)
    assert refused.value.rows == made


def test_chunk_text_with_no_cap_in_force_is_not_limited():
    # The gateway's dry run and direct calls run with no cap.
    assert len(builtins.chunk_text(pd.DataFrame({"t": ["x" * 50]}), column="t", size=1)) == 50


class Grows:
    """A stand-in for an extension's operation that multiplies rows without asking first."""

    name, row_local = "grow", True

    def __call__(self, df, times):
        return pd.concat([df] * times, ignore_index=True)


def test_any_step_over_the_cap_fails_after_it_ran_naming_it():
    steps = [pipeline.Step(0, Grows(), {"times": 2}), pipeline.Step(1, Grows(), {"times": 3})]
    df = pd.DataFrame({"id": range(10)})
    out, stats = pipeline.run(df, steps, max_rows=60)
    assert len(out) == 60 and [s["rows_out"] for s in stats] == [20, 60]
    with pytest.raises(StepFailed) as failed:
        pipeline.run(df, steps, max_rows=59)
    assert failed.value.type == "limit_exceeded" and failed.value.step == 1
    assert failed.value.message.startswith("Step 1 (grow) made 60 rows")


def stored(data, rows, chunk_rows):
    with ChunkWriter(data, "job", "j", "input", chunk_rows, mixed_as_json=True) as writer:
        writer.write(frames.records_to_table(rows))
        return {**writer.close(), "dataset_id": None}


def test_over_a_fan_out_the_cap_is_on_the_sum_of_the_chunks():
    data = RedisDataStore(fakeredis.FakeRedis(), 3600)
    ref = stored(data, [{"id": i, "t": "abcdef"} for i in range(4)], chunk_rows=1)
    steps = pipeline.parse_steps([chunk_text(2, into="piece")])
    segment = pipeline.segments(steps)[0]
    assert runner.fans_out(segment, ref)
    # Each chunk makes 3 rows, under a cap of 10; the four make 12.
    parts = [runner.run_chunk(data, "j", segment, ref, i, 100, max_rows=10) for i in range(4)]
    stats = {}
    for part in parts:
        runner.add_stats(stats, part["stats"])
    assert chunks.join([part["ref"] for part in parts])["rows"] == 12
    runner.check_totals(stats, segment.steps, 12)
    with pytest.raises(StepFailed) as failed:
        runner.check_totals(stats, segment.steps, 11)
    assert failed.value.type == "limit_exceeded"
    assert failed.value.message.startswith("Step 0 (chunk_text) made 12 rows over the job's chunks")


def test_a_chunk_that_grew_stores_nothing_once_the_chunks_so_far_pass_the_cap():
    store = JobStore(fakeredis.FakeRedis(), 3600)
    job_id = new_job_id()
    ref = stored(store.data, [{"id": i, "t": "abcdef"} for i in range(4)], chunk_rows=1)
    segment = pipeline.segments(pipeline.parse_steps([chunk_text(2, into="piece")]))[0]

    def run(index):
        check = tasks._sum_check(store, job_id, 0, index, segment, 10)
        result = runner.run_chunk(store.data, job_id, segment, ref, index, 100, max_rows=10, before_write=check)
        store.chunk_done(job_id, 0, index, result)
        return result

    for index in range(3):  # 9 rows so far
        run(index)
    blobs = set(store.redis.keys("datajobs:blob:*"))
    with pytest.raises(StepFailed) as failed:
        run(3)  # 3 more would make 12
    assert "made 12 rows over the job's chunks so far" in failed.value.message
    assert set(store.redis.keys("datajobs:blob:*")) == blobs  # the fourth chunk's output was never stored


def test_a_chunk_that_did_not_grow_does_not_read_the_others():
    store = JobStore(fakeredis.FakeRedis(), 3600)
    segment = pipeline.segments(pipeline.parse_steps(["drop_nulls"]))[0]
    store.chunk_results = lambda *args: pytest.fail("read the other chunks")
    tasks._sum_check(store, new_job_id(), 0, 0, segment, 1)({0: {"name": "drop_nulls", "rows_in": 5, "rows_out": 5}})


def test_the_cap_defaults_to_ten_times_max_records_and_never_below_the_input():
    assert settings.max_output_rows({}) == 10 * settings.get("MAX_RECORDS", {}) == 10_000_000
    assert settings.max_output_rows({"MAX_RECORDS": "500"}) == 5000
    assert settings.max_output_rows({"MAX_RECORDS": "500", "MAX_OUTPUT_ROWS": "7"}) == 7
    # An uploaded dataset may hold more rows than the cap (MAX_DATASET_ROWS): steps keeping them still run.
    assert tasks._output_limit({"rows_in": 5}) == settings.max_output_rows()
    assert tasks._output_limit({"rows_in": 50_000_000}) == 50_000_000


def celery_conf(**env):
    code = ("import json; from workers.celery import app; "
            "print(json.dumps(app.conf.worker_max_memory_per_child))")
    environ = {k: v for k, v in os.environ.items() if k != "WORKER_MAX_MEMORY_MB"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**environ, **env}, capture_output=True,
                            text=True, timeout=60, check=True)
    return json.loads(result.stdout)


@pytest.mark.integration  # it starts a Python: a fresh import of celeryconfig, as a worker's is
def test_worker_max_memory_mb_reaches_the_workers_celery_conf_in_kib():
    # As the worker loads it: `celery -A workers worker` configures the app from celeryconfig.py.
    assert celery_conf(WORKER_MAX_MEMORY_MB="512") == 512 * 1024
    assert celery_conf() is None  # unset: Celery's default, a process is never replaced for its memory
