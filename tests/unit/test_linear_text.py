"""Text work is linear: user patterns run on RE2, and none of ours backtracks.

On a cell of ``MAX_STRING_LENGTH`` characters, a backtracking engine would take
hours on the worst patterns (a user's ``(a+)+$``, our old float check and HTML
patterns); here each one runs in a forked process that must answer within 30 s,
and gives the rows or text it gave before. RE2's syntax is checked at
submission: a pattern it cannot run is a 400 before anything is stored.
"""

import math
import multiprocessing
import re

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers import frames
from workers.errors import ParameterError
from workers.operations import REGISTRY
from workers.settings import SETTINGS

N = SETTINGS["MAX_STRING_LENGTH"].default
#: The million-character cases run in a forked process each, so they are integration tests (they start one).
forked = pytest.mark.integration
TIMEOUT = 30  # seconds; each case takes about one, a backtracking engine would take hours


def finishes(case):
    """``case()``, run in a forked process that must answer within ``TIMEOUT`` seconds."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_answer, args=(send, case), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(TIMEOUT):
            pytest.fail(f"still running after {TIMEOUT} s")
        done, value = receive.recv()
    finally:
        child.kill()  # it has answered, or it is stuck
        child.join()
    assert done, value
    return value


def _answer(send, case):
    try:
        send.send((True, case()))
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        send.send((False, f"{type(exc).__name__}: {exc}"))


def text_frame(cells):
    """A frame as the worker reads a stored chunk: pandas text, Arrow-backed."""
    return frames.table_to_frame(pa.table({"t": pa.array(cells, pa.large_string()), "id": range(len(cells))}))


def object_frame(cells):
    """The same cells in a column of Python objects (a column that mixes kinds is one)."""
    return pd.DataFrame({"t": pd.Series(cells, dtype=object), "id": range(len(cells))})


def run(name, df, /, **params):
    op = REGISTRY[name]
    op.validate(params)
    return op(df, **params)


def regex_ids(df, pattern, case_sensitive=True):
    out = run("filter_rows", df, column="t", operator="regex", value=pattern, case_sensitive=case_sensitive)
    return out["id"].tolist()


# --- the worst cells, at MAX_STRING_LENGTH -----------------------------------------------------------------------

#: Patterns a backtracking engine takes exponential (or polynomial) time on, when the text nearly matches.
REDOS = {"(a+)+$": [1], "^(a|aa)+$": [1], "(a|a)*b": [], "(.*a){12}$": [1], "^(a+)+[^a]$": [0], "^(\\w+\\s?)*$": [1]}


@pytest.mark.parametrize("frame", [text_frame, object_frame])
@forked
def test_catastrophic_user_patterns_on_a_million_characters_finish_and_select_the_right_rows(frame):
    def case():
        df = frame(["a" * (N - 1) + "!", "a" * N, None])
        return {p: (regex_ids(df, p), regex_ids(df, p.replace("a", "A"), case_sensitive=False)) for p in REDOS}

    assert finishes(case) == {p: (ids, ids) for p, ids in REDOS.items()}


@forked
def test_casting_a_million_digits_and_an_x_finishes():
    def case():
        cells = ["1" * (N - 1) + "x", "1" * N, "1" * (N - 2) + ".5", "+" + "1" * 4000, " -1.5e3 ", "12", "x" * N]
        df = object_frame(cells)
        floats = run("cast_types", df, types={"t": "float"}, errors="coerce")["t"].tolist()
        ints = run("cast_types", df, types={"t": "int"}, errors="coerce")["t"].tolist()
        return [None if pd.isna(v) else v for v in floats], [None if pd.isna(v) else v for v in ints]

    # A number past float's range is no finite number: null, as before.
    assert finishes(case) == ([None, None, None, None, -1500.0, 12.0, None], [None, None, None, None, -1500, 12, None])


#: Cells the old HTML patterns took hours on at this length (the long reference made html.unescape fail:
#: int() reads at most 4,300 digits), and what strip_html makes of them.
HTML_CELLS = {
    "<": ("<" * N, "<" * N),
    "<!--": ("<!--" * (N // 4), "<!--" * (N // 4)),
    "<style": ("<style" * (N // 6), "<style" * (N // 6)),
    "<script>": ("<script>" * (N // 8), ""),
    "<a": ("<a" * (N // 2), "<a" * (N // 2)),
    "<a + a run": ("<" + "a" * (N - 1), "<" + "a" * (N - 1)),
    "quotes in a tag": ('<a "' + "'\"" * (N // 2 - 2), '<a "' + "'\"" * (N // 2 - 2)),
    "unclosed quotes": ('<a"\'' * (N // 4), '<a"\'' * (N // 4)),
    "a closing tag's spaces": ("<script></script" + " " * (N - 16), "</script" + " " * (N - 16)),
    "a long reference": ("&#" + "1" * (N - 2), "\ufffd"),
}


@pytest.mark.parametrize("name", HTML_CELLS)
@forked
def test_stripping_html_from_a_million_characters_finishes(name):
    cell, want = HTML_CELLS[name]

    def case():
        out = run("normalize_text", object_frame([cell]), columns=["t"], strip_html=True, strip=False,
                  collapse_whitespace=False, unicode_form=None)  # fmt: skip
        return out["t"].tolist() == [want]

    assert finishes(case)


@forked
def test_collapsing_a_million_whitespace_characters_finishes():
    def case():
        cells = ["\u3000 \x85" * (N // 3) + "é", " x" * (N // 2)]
        return run("normalize_text", object_frame(cells), columns=["t"])["t"].tolist()

    assert finishes(case) == ["é", " ".join(["x"] * (N // 2))]


# --- the same rows as Python's re, for patterns both read alike --------------------------------------------------

#: Atoms whose meaning is the same in RE2 and in Python's re, case folded or not.
ATOMS = ["a", "b", "A", "é", "É", "ß", "σ", "Σ", "k", "x", " ", "-", ".", "[ab]", "[^a]", "[a-cé]", "[A-C]", r"\.",
         "[0-9]"]  # fmt: skip
REPEATS = ["*", "+", "?", "{1,2}", "{2}", "*?", "+?"]
PATTERNS = st.recursive(
    st.sampled_from(ATOMS),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(REPEATS)).map(lambda t: f"(?:{t[0]}){t[1]}"),
        st.lists(inner, min_size=2, max_size=3).map("".join),
        st.lists(inner, min_size=2, max_size=3).map(lambda parts: "(" + "|".join(parts) + ")"),
    ),
    max_leaves=6,
)
ANCHORED = st.tuples(st.sampled_from(["", "^"]), PATTERNS, st.sampled_from(["", "$"])).map("".join)
# No "\n": Python's $ also matches before a final newline, RE2's only at the end (test below).
CELLS = st.lists(st.none() | st.text(alphabet="abAB éÉßẞσςΣkKx-.19", max_size=8), max_size=12)


@settings(max_examples=150, deadline=None)
@given(pattern=ANCHORED, cells=CELLS, case_sensitive=st.booleans())
def test_regex_selects_the_rows_pythons_re_selected(pattern, cells, case_sensitive):
    flags = 0 if case_sensitive else re.IGNORECASE
    want = [i for i, v in enumerate(cells) if v is not None and re.search(pattern, v, flags)]
    assert regex_ids(text_frame(cells), pattern, case_sensitive) == want
    mixed = [7 if v == "1" else v for v in cells]  # numbers in a mixed column never match
    assert regex_ids(object_frame(mixed), pattern, case_sensitive) == [i for i in want if mixed[i] != 7]


def test_where_re2_reads_a_pattern_otherwise_it_is_as_documented():
    df = text_frame(["Zoë", "Zoe", "a\n", "a{,2}", "x\ny"])
    assert regex_ids(df, r"^\w+$") == [1]  # \w is ASCII
    assert regex_ids(df, r"^\pL+$") == [0, 1]  # \pL is any letter
    assert regex_ids(df, "a$") == []  # $ is the very end, not before a final newline
    assert regex_ids(df, "(?m)a$") == [2]
    assert regex_ids(df, "a{,2}") == [3]  # literal text
    assert regex_ids(df, "x.y") == [] and regex_ids(df, "(?s)x.y") == [4]


def test_casting_reads_the_numbers_it_read_before():
    old_float = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
    old_int = re.compile(r"[+-]?[0-9]+")

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.text(alphabet="0123456789+-.eE x_١", max_size=8) | st.text(max_size=4), max_size=40))
    def check(cells):
        df = object_frame(cells)
        floats = run("cast_types", df, types={"t": "float"}, errors="coerce")["t"].tolist()
        ints = run("cast_types", df, types={"t": "int"}, errors="coerce")["t"].tolist()
        for cell, got_float, got_int in zip(cells, floats, ints):
            text = cell.strip()
            want_float = float(text) if text and old_float.fullmatch(text) else None
            if want_float is not None and not math.isfinite(want_float):
                want_float = None
            assert (None if pd.isna(got_float) else got_float) == want_float, cell
            want_int = int(text) if text and old_int.fullmatch(text) else None
            if want_int is None and want_float is not None and want_float.is_integer():
                want_int = int(want_float)
            if want_int is not None and not -(2**63) <= want_int < 2**63:
                want_int = None
            assert (None if pd.isna(got_int) else got_int) == want_int, cell

    check()


# --- checked at submission ---------------------------------------------------------------------------------------

REFUSED = {
    r"(a)\1": r"invalid escape sequence: \1",
    "(?=a)": "invalid perl operator: (?=",
    "(?!a)": "invalid perl operator: (?!",
    "(?<=a)b": "invalid perl operator: (?<=",
    "(?<!a)b": "invalid perl operator: (?<!",
    "a++": "bad repetition operator: ++",
    "(?>a)": "invalid perl operator: (?>",
    "(?P<x>a)(?P=x)": "invalid perl operator: (?P",
    r"a\Z": r"invalid escape sequence: \Z",
    "a{1001}": "invalid repetition size: {1001}",
    "([a-z": "missing ]: [a-z",
}


@pytest.mark.parametrize("pattern", REFUSED)
def test_a_pattern_re2_cannot_run_is_400_naming_step_and_value_with_re2s_reason(client, redis, queued, pattern):
    body = {
        "dataset": [{"t": "aa"}],
        "operations": ["drop_nulls", {"name": "filter_rows", "params": {"column": "t", "operator": "regex",
                                                                        "value": pattern}}],
    }  # fmt: skip
    response = client.post("/jobs", json=body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_parameter"
    assert error["details"] == {"step": 1, "operation": "filter_rows", "parameter": "value"}
    assert error["message"].startswith("Step 1 (filter_rows): The 'value' parameter of filter_rows is not a valid ")
    assert f"({REFUSED[pattern]})" in error["message"]
    assert queued() == 0 and redis.keys("*") == []


def test_the_worker_refuses_the_same_patterns_and_quotes_little_of_them():
    with pytest.raises(ParameterError, match=re.escape("(invalid perl operator: (?<=)")):
        regex_ids(text_frame(["ab"]), "(?<=a)b")
    with pytest.raises(ParameterError) as info:
        regex_ids(text_frame(["ab"]), "[" + "a" * 5000, case_sensitive=False)
    assert len(info.value.message) < 400


def test_the_catalogue_describes_re2s_syntax(client):
    catalogue = client.get("/operations").get_json()["operations"]
    value = next(op for op in catalogue if op["name"] == "filter_rows")["parameters"]["properties"]["value"]
    for words in ("RE2", "backreferences", "lookahead", "possessive", "atomic", "ASCII only", r"\pL", "very end"):
        assert words in value["description"], words
    described = client.get("/openapi.json").get_data(as_text=True)
    assert "RE2's syntax" in described
