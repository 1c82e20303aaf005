"""Datasets in and out of pandas: JSON records <-> DataFrame.

Records are what the API speaks (a JSON array of objects); frames are what
operations take. The conversions keep what a user would expect: integer columns
stay integers even when some rows lack a value, NaN becomes null, datetimes are
written as ISO 8601 text, and row order is kept.
"""

import pandas as pd


def columns_of(records):
    """Return the union of the records' keys, in order of first appearance."""
    seen = {}
    for record in records:
        seen.update(dict.fromkeys(record))
    return list(seen)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def records_to_frame(records):
    """Build a frame from a list of JSON objects (missing keys become nulls).

    A column whose values are all integers or null becomes nullable ``Int64``
    instead of pandas' float64, so ``3`` comes back as ``3``, not ``3.0``.
    """
    df = pd.DataFrame.from_records(records, columns=columns_of(records))
    for column in df.columns:
        if df[column].dtype.kind == "f" and df[column].isna().any():
            values = (record.get(column) for record in records)
            if all(v is None or _is_int(v) for v in values):
                df[column] = df[column].astype("Int64")
    return df


def empty_frame(columns):
    """A zero-row frame with these columns: what the gateway dry-runs a pipeline on."""
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})


def frame_to_json(df):
    """Serialise a frame as a JSON array of records (text), nulls for NaN/NA, ISO 8601 datetimes."""
    return df.to_json(orient="records", date_format="iso", date_unit="ms", force_ascii=False)
