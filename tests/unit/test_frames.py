"""Records <-> frames: the JSON a user gets back."""

import json

import pandas as pd

from workers.frames import columns_of, frame_to_json, records_to_frame


def roundtrip(records):
    return json.loads(frame_to_json(records_to_frame(records)))


def test_columns_are_the_union_in_order_of_appearance():
    assert columns_of([{"b": 1}, {"a": 2, "b": 3}, {"c": 4}]) == ["b", "a", "c"]


def test_missing_keys_become_null_and_integers_stay_integers():
    out = roundtrip([{"a": 1, "b": "x"}, {"b": "y"}, {"a": 3, "b": None}])
    assert out == [{"a": 1, "b": "x"}, {"a": None, "b": "y"}, {"a": 3, "b": None}]
    assert isinstance(out[0]["a"], int)


def test_floats_nan_and_infinity_become_valid_json():
    text = frame_to_json(pd.DataFrame({"x": [1.5, float("nan"), float("inf")]}))
    assert json.loads(text) == [{"x": 1.5}, {"x": None}, {"x": None}]
    assert "NaN" not in text and "Infinity" not in text


def test_datetimes_are_iso_8601():
    df = pd.DataFrame({"t": pd.to_datetime(["2024-01-02T03:04:05.678", None], format="ISO8601")})
    assert json.loads(frame_to_json(df)) == [{"t": "2024-01-02T03:04:05.678"}, {"t": None}]


def test_unicode_and_nested_values_and_order_survive():
    records = [{"s": "Café 😀", "n": {"k": [1, 2]}}, {"s": "ﬁ", "n": None}]
    assert roundtrip(records) == records


def test_empty_dataset():
    assert roundtrip([]) == []


def test_a_chunk_is_compressed_only_when_it_is_big_enough_to_gain_from_it_and_reads_back_either_way():
    import pyarrow as pa

    from workers.frames import COMPRESS_FROM_BYTES, decode, encode

    small = pa.table({"name": ["test"]})
    big = pa.table({"text": ["the same words again and again"] * 20_000})
    assert small.nbytes < COMPRESS_FROM_BYTES <= big.nbytes
    assert encode(small).size > small.nbytes  # as it is, framing and all
    assert encode(big).size < big.nbytes / 4  # lz4
    assert decode(encode(small)).equals(small) and decode(encode(big)).equals(big)
