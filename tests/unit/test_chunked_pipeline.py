"""A pipeline run over chunks gives what it gives in one process, row order included (hypothesis).

The chunked run is put together from the pieces the Celery tasks use
(``runner.fans_out``, ``runner.run_chunk`` for each chunk of a row-local
segment, ``chunks.join``, ``runner.run_whole`` for the rest), over random
datasets, random pipelines and several ``CHUNK_ROWS``; the reference is
``pipeline.run`` over the whole frame at once.
"""

import json

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers import chunks, frames, pipeline, runner
from workers.chunks import ChunkWriter
from workers.datastore import RedisDataStore
from workers.errors import StepFailed

TEXT = st.one_of(st.none(), st.text(alphabet="aAb é=\t", max_size=6))


@st.composite
def records(draw):
    count = draw(st.integers(0, 25))
    return [
        {
            "id": i,
            "n": draw(st.one_of(st.none(), st.integers(-5, 60))),
            "x": draw(st.one_of(st.none(), st.floats(-10, 10, allow_nan=False))),
            "s": draw(TEXT),
            "b": draw(st.one_of(st.none(), st.booleans())),
        }
        for i in range(count)
    ]


STEPS = st.sampled_from(
    [
        {"name": "filter_rows", "params": {"column": "n", "operator": "ge", "value": 20}},
        {"name": "filter_rows", "params": {"column": "s", "operator": "contains", "value": "a", "case_sensitive": False}},
        {"name": "filter_rows", "params": {"column": "s", "operator": "is_null"}},
        {"name": "filter_rows", "params": {"column": "b", "operator": "eq", "value": True}},
        {"name": "drop_nulls", "params": {"columns": ["s"]}},
        "drop_nulls",
        {"name": "fill_nulls", "params": {"values": {"n": 0}}},
        {"name": "fill_nulls", "params": {"values": {"n": 2.5}}},
        {"name": "fill_nulls", "params": {"values": {"s": "z", "x": 1.5}}},
        {"name": "normalize_text", "params": {"columns": ["s"], "lowercase": True, "remove_accents": True}},
        {"name": "text_length", "params": {"column": "s", "into": "len_s"}},
        {"name": "chunk_text", "params": {"column": "s", "size": 2, "into": "piece"}},
        {"name": "cast_types", "params": {"types": {"n": "float", "b": "str"}}},
        {"name": "cast_types", "params": {"types": {"s": "int"}, "errors": "coerce"}},
        {"name": "add_column", "params": {"name": "c", "value": "k"}},
        {"name": "rename_columns", "params": {"mapping": {"x": "y"}}},
        {"name": "select_columns", "params": {"columns": ["id", "s", "n"]}},
        {"name": "drop_columns", "params": {"columns": ["b"]}},
        {"name": "deduplicate", "params": {"columns": ["s"]}},
        {"name": "deduplicate", "params": {"columns": ["b"], "keep": "last"}},
        {"name": "sort", "params": {"by": ["n", "id"], "ascending": [False, True]}},
        {"name": "sort", "params": {"by": "s"}},
        {"name": "limit", "params": {"n": 7}},
        {"name": "sample", "params": {"n": 5, "seed": 3}},
    ]
)


def one_process(table, steps):
    out, _ = pipeline.run(frames.table_to_frame(table), steps)
    return json.loads(frames.frame_to_json(out))


def in_chunks(table, steps, chunk_rows):
    data = RedisDataStore(fakeredis.FakeRedis(), 3600)
    with ChunkWriter(data, "job", "j", "input", chunk_rows, mixed_as_json=True) as writer:
        writer.write(table)
        ref = writer.close()
    stats = {}
    for segment in pipeline.segments(steps):
        if runner.fans_out(segment, ref):
            parts = [runner.run_chunk(data, "j", segment, ref, i, chunk_rows) for i in range(len(ref["chunks"]))]
            ref = chunks.join([part["ref"] for part in parts])
        else:
            ref, kept = runner.run_whole(data, "j", segment, ref, chunk_rows, stats)
            # What a job keeps in memory for its inline result reads as what it stored.
            assert frames.table_to_json(kept) == frames.table_to_json(chunks.read_all(data, ref))
    return json.loads(frames.table_to_json(chunks.read_all(data, ref)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=records(), operations=st.lists(STEPS, max_size=5), chunk_rows=st.sampled_from([1, 2, 3, 7, 1000]))
def test_a_pipeline_over_chunks_gives_what_it_gives_in_one_process(rows, operations, chunk_rows):
    steps = pipeline.parse_steps(operations)
    table = frames.records_to_table(rows, ["id", "n", "x", "s", "b"])
    try:
        expected = one_process(table, steps)
    except StepFailed:
        # The same data fails over chunks too (which chunk fails first may differ, so not the same message).
        with pytest.raises(StepFailed):
            in_chunks(table, steps, chunk_rows)
        return
    assert in_chunks(table, steps, chunk_rows) == expected


def test_a_row_local_run_over_several_chunks_fans_out():
    steps = pipeline.parse_steps(["drop_nulls", "deduplicate", "drop_nulls"])
    plan = pipeline.segments(steps)
    assert [(s.row_local, [step.name for step in s.steps]) for s in plan] == [
        (True, ["drop_nulls"]), (False, ["deduplicate"]), (True, ["drop_nulls"]),
    ]
    two = {"chunks": [{}, {}]}
    assert runner.fans_out(plan[0], two) and not runner.fans_out(plan[1], two)
    assert not runner.fans_out(plan[0], {"chunks": [{}]})
