"""What the benchmarks run: the datasets, the pipeline, and the same pipeline in hand-written pandas.

:data:`OPERATIONS` is sent as it is to datajobs and to the naive app; the naive
app and the plain-pandas baseline run it with :func:`apply`, which maps each
operation name to a few lines of ordinary pandas (:data:`PANDAS_STEPS`). The
parameters turn off what the hand-written steps do not do (whitespace
collapsing, Unicode normalisation), so all three compute the same rows.
"""

import operator

import numpy as np
import pandas as pd

#: The one-record job of the latency benchmark, and its one cheap operation.
LATENCY_DATASET = [{"name": "test"}]
LATENCY_OPERATIONS = ["drop_nulls"]

#: The five-step pipeline, as datajobs operations (each one is in ``GET /operations``).
OPERATIONS = [
    {
        "name": "normalize_text",
        "params": {"columns": ["name"], "lowercase": True, "collapse_whitespace": False, "unicode_form": None},
    },
    {"name": "drop_nulls", "params": {}},
    {"name": "deduplicate", "params": {"columns": ["name", "city"]}},
    {"name": "filter_rows", "params": {"column": "score", "operator": "gt", "value": 50}},
    {"name": "sort", "params": {"by": "score", "ascending": False}},
]

CITIES = ["Paris", "Lyon", "Berlin", "Madrid", "Rome", "Oslo", "Porto", "Ghent"]


def make_records(rows, seed=0):
    """Return ``rows`` records ``{"id", "name", "city", "score", "active"}`` (the same ones for a given seed).

    Names repeat with varied case and padding, so normalising them makes
    duplicates; about 2 % of cities and 5 % of scores are null.
    """
    rng = np.random.default_rng(seed)
    pool = max(1, rows // 10)
    numbers = rng.integers(0, pool, rows)
    styles = rng.integers(0, 3, rows)
    pads = rng.integers(0, 3, rows)
    cities = rng.integers(0, len(CITIES), rows)
    city_nulls = rng.random(rows) < 0.02
    scores = np.round(rng.uniform(0, 100, rows), 2)
    score_nulls = rng.random(rows) < 0.05
    actives = rng.random(rows) < 0.5
    records = []
    for i in range(rows):
        name = f"user {int(numbers[i]):06d}"
        name = (name, name.upper(), name.title())[styles[i]]
        pad = " " * int(pads[i])
        records.append(
            {
                "id": i,
                "name": f"{pad}{name}{pad}",
                "city": None if city_nulls[i] else CITIES[cities[i]],
                "score": None if score_nulls[i] else float(scores[i]),
                "active": bool(actives[i]),
            }
        )
    return records


# --- the same steps in plain pandas ---------------------------------------------


def normalize_text(df, columns, lowercase=False, strip=True, collapse_whitespace=True, unicode_form="NFKC"):
    """str.strip and str.lower on text columns."""
    if collapse_whitespace or unicode_form is not None:
        raise ValueError("the hand-written normalize_text neither collapses whitespace nor normalises Unicode")
    df = df.copy()
    for column in columns:
        text = df[column]
        if strip:
            text = text.str.strip()
        if lowercase:
            text = text.str.lower()
        df[column] = text
    return df


def drop_nulls(df, columns=None, how="any"):
    return df.dropna(subset=columns, how=how)


def deduplicate(df, columns=None, keep="first"):
    return df.drop_duplicates(subset=columns, keep=keep)


_COMPARISONS = {"eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}


def filter_rows(df, column, operator, value=None):
    return df[_COMPARISONS[operator](df[column], value)]


def sort(df, by, ascending=True):
    return df.sort_values(by=by, ascending=ascending, kind="stable", na_position="last")


PANDAS_STEPS = {f.__name__: f for f in (normalize_text, drop_nulls, deduplicate, filter_rows, sort)}


def apply(df, operations):
    """Run ``operations`` (names or ``{"name", "params"}``, as the API takes them) with :data:`PANDAS_STEPS`."""
    for step in operations:
        name, params = (step, {}) if isinstance(step, str) else (step["name"], step.get("params") or {})
        df = PANDAS_STEPS[name](df, **params)
    return df


def run_plain(records, operations):
    """Records in, records out, in this process: the plain-pandas baseline."""
    return apply(pd.DataFrame.from_records(records), operations).to_dict(orient="records")
