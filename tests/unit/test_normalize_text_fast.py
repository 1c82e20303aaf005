"""normalize_text on text columns goes through pyarrow.compute: it must give exactly what the per-value path gives.

The per-value path (``clean`` on each ``str``, as object columns still run) is
the reference; random strings mix ASCII, Python's Unicode whitespace (which
RE2's ``\\s`` and pyarrow's ``utf8_trim_whitespace`` do not all take) and letters
whose lowercase or normal forms differ between Python and utf8proc.

``strip_html`` no longer runs the two backtracking patterns it used to (quadratic
or worse on one long cell): they are kept here as its reference, and random
markup, worst cases included, must come out exactly as they made it.
"""

import html
import re
import sys

import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from workers import frames
from workers.operations import REGISTRY
from workers.operations.builtins import _HTML_BLOCKS, _PY_WHITESPACE, _lowered

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


# --- strip_html ----------------------------------------------------------------------------------------------------

#: What strip_html ran before, as Python's re ran it: the reference.
OLD_HIDDEN = re.compile(r"<!--.*?-->|<(script|style)\b[^>]*>.*?</\1\s*>", re.DOTALL | re.IGNORECASE)
OLD_TAG = re.compile(r"""</?([A-Za-z][A-Za-z0-9]*)(?:"[^"]*"|'[^']*'|[^'">])*>|<![^>]*>|<\?[^>]*>""")


def old_strip_html(text):
    text = OLD_HIDDEN.sub(" ", text)
    text = OLD_TAG.sub(lambda m: " " if (m.group(1) or "").lower() in _HTML_BLOCKS else "", text)
    return html.unescape(text)


#: Pieces of markup, broken ones too, and the characters re's case-blind "script"/"style" and \b and \s read
#: in their Unicode sense (ſ folds to s, İ and ı to i; é is a letter, U+0301 is not, U+3000 is space).
MARKUP = [
    "<", ">", "!", "-", "--", "<!--", "-->", "/", "</", "<!", "<?", "=", '"', "'", " ", "\u3000", "\n", "\t",
    "script", "SCRIPT", "Style", "ſcript", "scrİpt", "scrıpt", "stYle", "scripts", "br", "BR", "p", "a", "x1",
    "&", "&amp;", "&#65;", "&#x41;", "&#0000000065;", "&#99999999;", "é", "\u0301", "_", "1", "\u212a",
]
HTML_TEXT = st.lists(st.sampled_from(MARKUP) | st.text(alphabet=ALPHABET, max_size=2), max_size=24).map("".join)


def _strip_only(cells):
    """normalize_text with strip_html and nothing else, on an object column (each value in Python)."""
    out = REGISTRY["normalize_text"](
        _object_frame(cells), columns=["t"], strip_html=True, strip=False, collapse_whitespace=False, unicode_form=None
    )
    return out["t"].tolist()


@settings(max_examples=250, deadline=None)
@given(cells=st.lists(st.none() | HTML_TEXT, min_size=1, max_size=12))
def test_strip_html_gives_what_the_backtracking_patterns_gave(cells):
    assert _strip_only(cells) == [None if v is None else old_strip_html(v) for v in cells]


#: The cells that made the old patterns slow (quadratic or worse: hours at MAX_STRING_LENGTH), small enough
#: here for the reference to run; tests/unit/test_linear_text.py runs them at full length.
SLOW_FOR_RE = [
    "<!--" * 250, "<script>" * 125, "<style" * 170, "<STYLE>" * 140, "<a" * 500, "<" + "a" * 1000, '<a"' * 330,
    "<a'" * 330, "<a\"'" * 250, "<a " + "'\"" * 500, '<a x="1" ' * 110, "<script>" + "</script " * 110, "<!" * 500,
    "<?" * 500, "<script></script" + " " * 1000 + "x", "</script>" * 110 + "<script>", "&#" + "0" * 5000 + "65;",
    "&#" + "1" * 5000,
]


def test_the_cells_that_were_slow_come_out_as_they_did():
    for cell in SLOW_FOR_RE:
        try:
            want = old_strip_html(cell)
        except ValueError:  # html.unescape: int() of more than 4,300 digits; a reference past U+10FFFF is U+FFFD
            want = old_strip_html(cell.replace("1" * 5000, "1114112").replace("0" * 5000, ""))
        assert _strip_only([cell]) == [want], cell[:20]


def test_names_compare_as_res_case_blind_backreference_does():
    # Every character re takes for a letter of "script" or "style" when it ignores case, and every pair of them:
    # the key strip_html files closing tags under is equal exactly when re's \1 would take one for the other.
    letters = set(re.findall("(?i)[scriptyle]", "".join(map(chr, range(0xD800)))))
    assert {"ſ", "İ", "ı"} <= letters
    for a in letters:
        for b in letters:
            same = re.fullmatch("(.)\x00\\1", f"{a}\x00{b}", re.IGNORECASE) is not None
            assert (_lowered(a) == _lowered(b)) is same, (a, b)
