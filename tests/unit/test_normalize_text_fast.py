"""normalize_text on text columns goes through pyarrow.compute: it must give exactly what the per-value path gives.

The per-value path (``clean`` on each ``str``, as object columns still run) is
the reference; random strings mix ASCII, Python's Unicode whitespace (which
RE2's ``\\s`` and pyarrow's ``utf8_trim_whitespace`` do not all take) and letters
whose lowercase or normal forms differ between Python and utf8proc.
"""

import sys

import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from workers import frames
from workers.operations import REGISTRY
from workers.operations.builtins import _PY_WHITESPACE

#: Python whitespace, including what only Python counts (\x1c-\x1f, \x85, \u2028...), and look-alikes that are not.
WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2007\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_WHITESPACE = "\u200b\u180e\ufeff\x00\x7f"
TRICKY = "AZaz09İıΣσςẞßﬁǅÅÉéè\u0301\u0327Ωω𝐀<>&;"
ALPHABET = st.sampled_from(list(WHITESPACE + NOT_WHITESPACE + TRICKY)) | st.characters(codec="utf-8")
CELLS = st.lists(st.none() | st.text(alphabet=ALPHABET, max_size=12), max_size=30)
PARAMS = st.fixed_dictionaries(
    {
        "lowercase": st.booleans(),
        "strip": st.booleans(),
        "collapse_whitespace": st.booleans(),
        "unicode_form": st.sampled_from([None, "NFC", "NFKC", "NFD", "NFKD"]),
        "remove_accents": st.booleans(),
    }
)


def _text_frame(cells):
    """A frame as the worker reads a stored chunk: the column is pandas text (Arrow-backed)."""
    return frames.table_to_frame(pa.table({"t": pa.array(cells, pa.large_string()), "n": range(len(cells))}))


def _object_frame(cells):
    """The same cells in an object column: normalize_text cleans each ``str`` in Python (the reference)."""
    return pd.DataFrame({"t": pd.Series(cells, dtype=object), "n": range(len(cells))})


@settings(max_examples=300, deadline=None)
@given(cells=CELLS, params=PARAMS)
def test_text_columns_clean_as_each_value_does(cells, params):
    op = REGISTRY["normalize_text"]
    fast = op(_text_frame(cells), columns=["t"], **params)
    reference = op(_object_frame(cells), columns=["t"], **params)
    assert isinstance(fast["t"].dtype, pd.StringDtype)
    got = [None if pd.isna(v) else v for v in fast["t"].tolist()]
    want = [None if v is None else v for v in reference["t"].tolist()]
    assert got == want
    assert fast["n"].tolist() == list(range(len(cells)))


def test_python_whitespace_and_case_rules_are_kept():
    op = REGISTRY["normalize_text"]
    cells = ["\x1c a\u2028\u2028B \x85", "ΟΔΟΣ  ", " İstanbul\x0b", "\u200bx\u200b", "  plain  ASCII ", None, ""]
    for params in ({"lowercase": True}, {"lowercase": False, "unicode_form": None}, {"strip": False}):
        fast = op(_text_frame(cells), columns=["t"], **params)["t"].tolist()
        reference = op(_object_frame(cells), columns=["t"], **params)["t"].tolist()
        assert [None if pd.isna(v) else v for v in fast] == reference


def test_the_whitespace_list_is_pythons():
    assert _PY_WHITESPACE == "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
