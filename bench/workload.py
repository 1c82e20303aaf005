"""What the benchmarks run: the datasets, the pipeline, and the same pipeline in hand-written pandas.

:data:`OPERATIONS` is sent as it is to datajobs and to the naive app; the naive
app and the plain-pandas baseline run it with :func:`apply`, which maps each
operation name to a few lines of ordinary pandas (:data:`PANDAS_STEPS`). The
parameters turn off what the hand-written steps do not do (whitespace
collapsing, Unicode normalisation), so all three compute the same rows.

Two datasets: :func:`make_records` (records in memory, for the latency and
in-memory pipeline benchmarks) and :func:`write_csv` (a CSV file of any size,
written batch by batch, for the scale benchmark).
"""

import operator
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import requests

#: The one-record job of the latency benchmark, and its one cheap operation.
LATENCY_DATASET = [{"name": "test"}]
LATENCY_OPERATIONS = ["drop_nulls"]

#: The five-step pipeline, as datajobs operations (each one is in ``GET /operations``): three row-local
#: steps (text, nulls, a filter: datajobs runs them chunk by chunk over its worker processes) and two
#: global ones (deduplicate, sort: every row in one process), as a cleaning job mixes them.
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

#: :data:`OPERATIONS` in words, for the reports.
PIPELINE_TEXT = (
    "normalize_text (name: strip, lowercase) → drop_nulls → deduplicate (name, city) → filter_rows (score gt 50) "
    "→ sort (score, descending)"
)


def check_operations(gateway_url):
    """Refuse to run when a step of :data:`OPERATIONS` is not in the gateway's ``GET /operations``."""
    names = {op["name"] for op in requests.get(f"{gateway_url}/operations", timeout=10).json()["operations"]}
    missing = [step["name"] for step in OPERATIONS if step["name"] not in names]
    if missing:
        raise SystemExit(f"bench: the gateway has no operation(s) {missing}; update bench/workload.py")


CITIES = ["Paris", "Lyon", "Berlin", "Madrid", "Rome", "Oslo", "Porto", "Ghent"]
#: Cells read as null from a CSV: datajobs' list (the harvester's and the gateway's), so every reader agrees.
CSV_NULLS = ["", "NaN", "nan"]


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


# --- the scale dataset: a CSV file of any size -------------------------------------

#: Columns of :func:`write_csv`: text with duplicates hidden by case and padding, numbers, booleans, nulls.
CSV_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("email", pa.string()),
        ("city", pa.string()),
        ("score", pa.float64()),
        ("quantity", pa.int64()),
        ("active", pa.bool_()),
        ("comment", pa.string()),
    ]
)
#: Words of the free-text ``comment`` column; some carry a comma or quotes, which the CSV must quote.
WORDS = (
    "order shipped late again, great price; box damaged would buy again refund asked colour faded fast "
    'delivery, thanks "as described" too small'
).split()
DOMAINS = ["example.com", "mail.test", "post.example", "inbox.test"]
#: Rows generated and written at a time: memory holds one batch, whatever the file's size.
CSV_BATCH_ROWS = 200_000


def write_csv(path, rows, seed=0):
    """Write ``rows`` rows of :data:`CSV_SCHEMA` to ``path``, :data:`CSV_BATCH_ROWS` at a time; return its size in bytes.

    The same file for the same ``rows`` and ``seed`` (about 100 bytes a row). As in
    :func:`make_records`, names repeat with varied case and padding (one person in
    ten rows), so normalising them makes duplicates; about 2 % of cities, 5 % of
    scores and 5 % of comments are null.
    """
    rng = np.random.default_rng(seed)
    pool = max(1, rows // 10)
    options = pacsv.WriteOptions(quoting_style="needed")
    with pacsv.CSVWriter(str(path), CSV_SCHEMA, write_options=options) as writer:
        for start in range(0, rows, CSV_BATCH_ROWS):
            writer.write_table(_csv_batch(rng, start, min(CSV_BATCH_ROWS, rows - start), pool))
    return os.path.getsize(path)


def _csv_batch(rng, start, n, pool):
    """Rows ``start`` to ``start + n`` of :func:`write_csv`, built with pyarrow compute (no Python loop per row)."""
    def pick(values, index):
        return pc.take(pa.array(values), pa.array(index))

    def nulls(array, share):
        return pc.if_else(pa.array(rng.random(n) < share), pa.scalar(None, array.type), array)

    number = pc.utf8_lpad(pc.cast(pa.array(rng.integers(0, pool, n)), pa.string()), 6, "0")
    base = pc.binary_join_element_wise("user ", number, "")  # "user 000123"
    style = rng.integers(0, 3, n)
    styled = pc.if_else(pa.array(style == 1), pc.utf8_upper(base), pc.if_else(pa.array(style == 2), pc.utf8_title(base), base))
    pad = pick(["", " ", "  "], rng.integers(0, 3, n))
    name = pc.binary_join_element_wise(pad, styled, pad, "")
    email = pc.binary_join_element_wise(pc.replace_substring(base, " ", "."), pick(DOMAINS, rng.integers(0, len(DOMAINS), n)), "@")
    city = nulls(pick(CITIES, rng.integers(0, len(CITIES), n)), 0.02)
    score = pa.array(np.round(rng.uniform(0, 100, n), 2), mask=rng.random(n) < 0.05)
    quantity = pa.array(rng.integers(1, 1000, n))
    active = pa.array(rng.random(n) < 0.5)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 8, n))]).astype(np.int32)
    words = pick(WORDS, rng.integers(0, len(WORDS), int(offsets[-1])))
    comment = nulls(pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), words), " "), 0.05)
    ids = pa.array(np.arange(start, start + n, dtype=np.int64))
    return pa.Table.from_arrays([ids, name, email, city, score, quantity, active, comment], schema=CSV_SCHEMA)


def read_csv(path):
    """The CSV of :func:`write_csv` in plain pandas, with datajobs' null cells (:data:`CSV_NULLS`)."""
    return pd.read_csv(path, keep_default_na=False, na_values=CSV_NULLS)


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
