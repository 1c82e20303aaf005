"""The built-in operations. Each is pure: it returns a new frame and never mutates its input.

The first docstring line of each is its catalogue description; the parameter
schemas are the API contract (see the README's operations table).

Every operation also runs on a zero-row frame of object columns: the gateway
dry-runs a pipeline on one to find unknown columns and bad parameters before
it accepts a job. Operations that change rows return a fresh RangeIndex.

Error messages name parameters and columns but never echo cell values: a
failed job's error is shown to people who may not be allowed to see the data.
"""

import bisect
import datetime
import functools
import html
import math
import operator as op
import re
import unicodedata

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api import types as pdt

from workers.errors import ParameterError
from workers.limits import check_output_rows
from workers.operations.registry import operation, require_columns

COLUMN_LIST = {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True}
OPTIONAL_COLUMN_LIST = {**COLUMN_LIST, "type": ["array", "null"]}
COLUMN_NAME = {"type": "string", "minLength": 1}
SCALAR = {"type": ["string", "number", "boolean"]}
CHUNK_INDEX = "chunk_index"


# --- columns -----------------------------------------------------------------


@operation({"columns": {**COLUMN_LIST, "description": "Columns to keep, in this order."}}, row_local=True)
def select_columns(df, columns):
    """Keep only the named columns, in the given order."""
    require_columns(df, columns, "columns")
    return df[list(columns)]


@operation({"columns": {**COLUMN_LIST, "description": "Columns to remove."}}, row_local=True)
def drop_columns(df, columns):
    """Remove the named columns."""
    require_columns(df, columns, "columns")
    return df.drop(columns=list(columns))


@operation(
    {
        "mapping": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": COLUMN_NAME,
            "description": "Old column name -> new column name. Columns not named keep their name.",
        }
    },
    row_local=True,
)
def rename_columns(df, mapping):
    """Rename columns."""
    require_columns(df, list(mapping), "mapping")
    renamed = [mapping.get(c, c) for c in df.columns]
    for old, new in mapping.items():
        if renamed.count(new) > 1:
            if new in df.columns and new not in mapping:
                raise ParameterError(
                    "mapping", f"renames {old!r} to {new!r}, which is already a column. Drop or rename it first."
                )
            raise ParameterError("mapping", f"renames more than one column to {new!r}.")
    return df.rename(columns=dict(mapping))


@operation(
    {
        "name": {**COLUMN_NAME, "description": "Name of the new column; it must not exist yet."},
        "value": {
            "type": ["string", "number", "boolean", "null"],
            "description": "The value every row gets.",
        },
    },
    row_local=True,
)
def add_column(df, name, value):
    """Add a column holding the same value in every row."""
    _require_new_column(df, name, "name")
    if value is None:
        # A null column has no type; object keeps None instead of pandas' float NaN.
        column = pd.Series([None] * len(df), index=df.index, dtype=object)
    else:
        column = pd.Series(value, index=df.index)
    return _with_columns(df, {name: column})


def _with_columns(df, columns):
    """``df.assign(**columns)`` without keyword arguments, so a column may be named ``self``."""
    out = df.copy(deep=False)
    for name, values in columns.items():
        out[name] = values
    return out


def _require_new_column(df, name, parameter):
    if name in df.columns:
        raise ParameterError(parameter, f"names column {name!r}, which already exists. Choose a new name.")


# --- nulls ---------------------------------------------------------------------


@operation(
    {
        "columns": {**OPTIONAL_COLUMN_LIST, "description": "Columns to look for nulls in; null means all columns."},
        "how": {
            "enum": ["any", "all"],
            "description": "Drop a row when any of the columns is null, or only when all of them are.",
        },
    },
    row_local=True,
)
def drop_nulls(df, columns=None, how="any"):
    """Remove rows that have nulls."""
    if columns is not None:
        require_columns(df, columns, "columns")
        columns = list(columns)
    return df.dropna(subset=columns, how=how).reset_index(drop=True)


@operation(
    {
        "value": {
            "type": ["string", "number", "boolean", "null"],
            "description": "Value that replaces nulls in every column. Give this or 'values'.",
        },
        "values": {
            "type": ["object", "null"],
            "minProperties": 1,
            "additionalProperties": SCALAR,
            "description": "Column -> value that replaces nulls in that column. Give this or 'value'. "
            "A column whose type cannot hold its value (text in a number column, say) becomes a mixed column.",
        },
    },
    row_local=True,
)
def fill_nulls(df, value=None, values=None):
    """Replace nulls with a value."""
    if value is None and values is None:
        raise ParameterError("value", "is required unless 'values' is given.")
    if value is not None and values is not None:
        raise ParameterError("values", "cannot be given together with 'value'.")
    if values is None:
        values = {column: value for column in df.columns}
    else:
        require_columns(df, list(values), "values")
    filled = {column: _fill_column(df[column], fill) for column, fill in values.items()}
    return _with_columns(df, filled)


def _fill_column(series, value):
    """Fill the nulls of ``series`` keeping its dtype when it can hold ``value``."""
    if not series.isna().any():
        return series
    dtype = series.dtype
    if pdt.is_bool_dtype(dtype):
        fits = isinstance(value, bool)
    elif pdt.is_integer_dtype(dtype):
        if _is_number(value) and not float(value).is_integer():
            return series.astype("float64").fillna(value)
        fits = _is_number(value)
    elif pdt.is_float_dtype(dtype):
        fits = _is_number(value)
    elif isinstance(dtype, pd.StringDtype):
        fits = isinstance(value, str)
    else:
        fits = dtype == object
    if fits:
        try:
            return series.fillna(value)
        except (TypeError, ValueError):  # e.g. an integer too large for Int64
            pass
    # Change the dtype ourselves: pandas 3 warns (and will raise) when fillna has to do it.
    return series.astype(object).fillna(value)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- rows ----------------------------------------------------------------------


@operation(
    {
        "columns": {
            **OPTIONAL_COLUMN_LIST,
            "description": "Columns that must all be equal for rows to be duplicates; null means all columns.",
        },
        "keep": {"enum": ["first", "last"], "description": "Which of the duplicate rows to keep."},
    }
)
def deduplicate(df, columns=None, keep="first"):
    """Remove duplicate rows."""
    if columns is not None:
        require_columns(df, columns, "columns")
        columns = list(columns)
    return df.drop_duplicates(subset=columns, keep=keep).reset_index(drop=True)


_COMPARISONS = {"eq": op.eq, "ne": op.ne, "gt": op.gt, "ge": op.ge, "lt": op.lt, "le": op.le}
_TEXT_MATCHES = ("contains", "startswith", "endswith", "regex")
_NULL_CHECKS = ("is_null", "not_null")
FILTER_OPERATORS = [*_COMPARISONS, "in", "not_in", *_TEXT_MATCHES, *_NULL_CHECKS]

#: The regex operator's syntax, for the catalogue (GET /operations) and the README. Patterns run on RE2
#: (pyarrow.compute's regex kernels), which never backtracks: time linear in the text, whatever the pattern.
REGEX_SYNTAX = (
    "A regex is RE2's syntax, searched anywhere in the text, in time linear in its length. RE2 has no "
    "backreferences (\\1), lookahead or lookbehind ((?=, (?!, (?<=, (?<!), possessive quantifiers (a++) or "
    "atomic groups ((?>): a pattern using them is refused at submission (400 invalid_parameter). \\d, \\w, \\s "
    "and \\b are ASCII only (\\pL is any letter, \\p{Nd} any digit); $ matches only at the very end of the text "
    "(\\z; \\Z is refused); {,n} is literal text (write {0,n}); counts go up to 1000, nested ones multiplied. "
    "With case_sensitive false, case is folded as Unicode's simple case folding does (İ and ı are not i)."
)
_REGEX_REASON_CHARS = 120  # RE2 quotes the rest of the pattern after some errors ("missing ]: [a-z..."): cut it

_COLUMN_KINDS = {"number": "numbers", "boolean": "booleans", "text": "text", "datetime": "dates"}
_VALUE_KINDS = {"number": "a number", "boolean": "a boolean", "text": "a string"}


@operation(
    {
        "column": {**COLUMN_NAME, "description": "Column to test."},
        "operator": {
            "enum": FILTER_OPERATORS,
            "description": "How to compare the column with 'value'. A null cell matches only is_null and the "
            "negations ne and not_in (which keep exactly the rows eq and in drop). gt/ge/lt/le compare numbers "
            "numerically, text in code point order and dates as dates.",
        },
        "value": {
            "type": ["string", "number", "boolean", "array", "null"],
            "items": SCALAR,
            "description": "What to compare with: a list for in/not_in, a string for contains/startswith/"
            "endswith/regex, a single value otherwise. Leave it out for is_null/not_null. " + REGEX_SYNTAX,
        },
        "case_sensitive": {
            "type": "boolean",
            "description": "false makes eq, ne, in, not_in and the text operators ignore case.",
        },
    },
    row_local=True,
)
def filter_rows(df, column, operator, value=None, case_sensitive=True):
    """Keep the rows whose value in a column passes a test."""
    require_columns(df, column, "column")
    _check_filter_value(operator, value, case_sensitive)
    series = df[column]
    if operator in _NULL_CHECKS:
        mask = series.isna().to_numpy(dtype=bool)
        if operator == "not_null":
            mask = ~mask
    elif operator in _TEXT_MATCHES:
        mask = _text_mask(series, column, operator, value, case_sensitive)
    elif operator in ("in", "not_in"):
        values = [_comparable(series, column, item) for item in value]
        if not case_sensitive:
            series, values = _fold(series), [_fold_value(item) for item in values]
        mask = _mask_where_present(series, column, operator, lambda present: present.isin(values))
        if operator == "not_in":
            mask = ~mask
    else:
        value = _comparable(series, column, value)
        # ne is computed as "not eq", so it keeps the null cells, like pandas' s != value.
        compare = _COMPARISONS["eq" if operator == "ne" else operator]
        if not case_sensitive and operator in ("eq", "ne"):
            series, value = _fold(series), _fold_value(value)
        mask = _mask_where_present(series, column, operator, lambda present: compare(present, value))
        if operator == "ne":
            mask = ~mask
    return df[mask].reset_index(drop=True)


def _check_filter_value(operator, value, case_sensitive):
    if operator in _NULL_CHECKS:
        if value is not None:
            raise ParameterError("value", f"is not used by operator {operator!r}; leave it out.")
        return
    if value is None:
        hint = " (use is_null to find nulls)" if operator in ("eq", "ne") else ""
        raise ParameterError("value", f"is required by operator {operator!r}{hint}.")
    if operator in ("in", "not_in"):
        if not isinstance(value, list):
            raise ParameterError("value", f"must be a list for operator {operator!r}.")
    elif operator in _TEXT_MATCHES:
        if not isinstance(value, str):
            raise ParameterError("value", f"must be a string for operator {operator!r}.")
        if operator == "regex":
            _check_regex(value, case_sensitive)
    elif isinstance(value, list):
        raise ParameterError("value", f"must be a single value, not a list, for operator {operator!r}.")


def _column_kind(series):
    """What a typed column holds; None for object columns, which are compared value by value."""
    dtype = series.dtype
    if pdt.is_bool_dtype(dtype):
        return "boolean"
    if pdt.is_numeric_dtype(dtype):
        return "number"
    if isinstance(dtype, pd.StringDtype):
        return "text"
    if pdt.is_datetime64_any_dtype(dtype):
        return "datetime"
    return None


def _value_kind(value):
    if isinstance(value, bool):
        return "boolean"
    return "number" if _is_number(value) else "text"


def _comparable(series, column, value):
    """``value`` ready to compare with ``series``; ParameterError when the kinds cannot meet."""
    kind = _column_kind(series)
    if kind == "datetime" and isinstance(value, str):
        try:
            stamp = pd.Timestamp(value)
        except ValueError:
            stamp = pd.NaT
        if stamp is pd.NaT:
            raise ParameterError("value", f"must be a date to compare with column {column!r}, which holds dates.")
        return stamp
    if kind is not None and kind != _value_kind(value):
        raise ParameterError(
            "value",
            f"cannot be compared with column {column!r}: the column holds {_COLUMN_KINDS[kind]} "
            f"and the value is {_VALUE_KINDS[_value_kind(value)]}.",
        )
    return value


def _mask_where_present(series, column, operator, test):
    """Boolean array: ``test`` on the non-null cells, False on the null ones."""
    present = series.notna().to_numpy(dtype=bool)
    mask = np.zeros(len(series), dtype=bool)
    try:
        mask[present] = np.asarray(test(series[present]), dtype=bool)
    except TypeError:
        raise ParameterError(
            "value", f"cannot be compared with the values of column {column!r} using {operator}."
        ) from None
    return mask


def _fold(series):
    return pd.Series([_fold_value(v) for v in series.tolist()], index=series.index, dtype=object)


def _fold_value(value):
    return value.casefold() if isinstance(value, str) else value


def _text_mask(series, column, operator, value, case_sensitive):
    kind = _column_kind(series)
    if kind not in (None, "text"):
        raise ParameterError(
            "column", f"names column {column!r}, which holds {_COLUMN_KINDS[kind]}; {operator} needs text."
        )
    if operator == "regex":
        return _regex_mask(series, kind, value, case_sensitive)
    needle = value if case_sensitive else value.casefold()
    method = {"contains": str.__contains__, "startswith": str.startswith, "endswith": str.endswith}[operator]

    def matches(text):
        return method(text if case_sensitive else text.casefold(), needle)

    # Non-text cells (nulls, numbers in a mixed column) never match.
    return np.array([isinstance(v, str) and matches(v) for v in series.tolist()], dtype=bool)


def _check_regex(pattern, case_sensitive):
    """ParameterError unless RE2 compiles ``pattern``, with RE2's reason: the gateway's check and the worker's."""
    try:
        # One cell, as pyarrow compiles the pattern only when there is text to match.
        pc.match_substring_regex(pa.array([""], pa.string()), pattern, ignore_case=not case_sensitive)
    except pa.ArrowInvalid as exc:
        reason = str(exc).removeprefix("Invalid regular expression: ")
        if len(reason) > _REGEX_REASON_CHARS:
            reason = reason[:_REGEX_REASON_CHARS] + "…"
        raise ParameterError(
            "value",
            f"is not a valid regular expression in RE2's syntax ({reason}). RE2 has no backreferences, "
            "lookahead, lookbehind, possessive quantifiers or atomic groups (GET /operations describes the syntax).",
        ) from None


def _regex_mask(series, kind, pattern, case_sensitive):
    """Boolean array: whether RE2 finds ``pattern`` in each text cell; null and non-text cells never match.

    The whole column goes through one C++ call (``pyarrow.compute``'s RE2), not a
    Python loop, and RE2 runs in time linear in each text whatever the pattern.
    """
    if kind == "text":
        text = pa.array(series.array)  # no copy: pandas keeps text columns as Arrow arrays
    else:
        text = pa.array([v if isinstance(v, str) else None for v in series.tolist()], pa.large_string())
    found = pc.match_substring_regex(text, pattern, ignore_case=not case_sensitive).fill_null(False)
    return np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)


@operation(
    {
        "by": {
            "type": ["string", "array"],
            "items": {"type": "string"},
            "minItems": 1,
            "uniqueItems": True,
            "description": "Column, or list of columns, to sort by; later ones break ties.",
        },
        "ascending": {
            "type": ["boolean", "array"],
            "items": {"type": "boolean"},
            "minItems": 1,
            "description": "Sort direction: one for all columns, or a list with one per column in 'by'.",
        },
    }
)
def sort(df, by, ascending=True):
    """Sort rows by one or more columns, nulls last, keeping the order of ties."""
    require_columns(df, by, "by")
    by = [by] if isinstance(by, str) else list(by)
    if isinstance(ascending, list):
        if len(ascending) != len(by):
            raise ParameterError(
                "ascending", f"has {len(ascending)} item(s) but 'by' names {len(by)} column(s); give one per column."
            )
        ascending = list(ascending)
    try:
        ordered = df.sort_values(by=by, ascending=ascending, kind="stable", na_position="last")
    except TypeError:
        raise ParameterError("by", "names a column whose values cannot be ordered (they mix types).") from None
    return ordered.reset_index(drop=True)


@operation({"n": {"type": "integer", "minimum": 0, "description": "How many rows to keep."}})
def limit(df, n):
    """Keep the first n rows."""
    return df.iloc[: int(n)].reset_index(drop=True)


@operation(
    {
        "n": {"type": ["integer", "null"], "minimum": 0, "description": "How many rows to draw (all if fewer)."},
        "frac": {"type": ["number", "null"], "minimum": 0, "maximum": 1, "description": "Share of rows to draw."},
        "seed": {
            "type": ["integer", "null"],
            "minimum": 0,
            "maximum": 2**32 - 1,
            "description": "Seed for a repeatable draw; null draws differently each time.",
        },
    }
)
def sample(df, n=None, frac=None, seed=None):
    """Draw random rows without replacement, in random order; give n or frac."""
    if n is None and frac is None:
        raise ParameterError("n", "is required unless 'frac' is given.")
    if n is not None and frac is not None:
        raise ParameterError("frac", "cannot be given together with 'n'.")
    seed = None if seed is None else int(seed)
    if n is not None:
        drawn = df.sample(n=min(int(n), len(df)), random_state=seed)
    else:
        drawn = df.sample(frac=frac, random_state=seed)
    return drawn.reset_index(drop=True)


# --- text ------------------------------------------------------------------------

# One character class, repeated: each character is read once (a run is never given back: nothing follows it).
_WHITESPACE = re.compile(r"\s+")
# Tags that separate words: "a<br>b" is two words, "Caf<b>é</b>" is one.
_HTML_BLOCKS = {
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "figure",
    "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre",
    "section", "table", "td", "th", "tr", "ul",
}  # fmt: skip

# strip_html gives exactly what these two substitutions, one after the other, gave:
#
#   re.sub(r"<!--.*?-->|<(script|style)\b[^>]*>.*?</\1\s*>", " ", text, flags=re.DOTALL | re.IGNORECASE)
#   re.sub(r"""</?([A-Za-z][A-Za-z0-9]*)(?:"[^"]*"|'[^']*'|[^'">])*>|<![^>]*>|<\?[^>]*>""", block_or_not, text)
#
# but in time linear in the text. Python's re tries a pattern again at every "<", and where the end it looks
# for (a "-->", a closing tag, a ">" outside quotes) never comes, each try reads to the end of the text;
# the tag pattern also tries every way to split "<aaaa" into a name and attributes. "<!--" * k, "<style" * k
# or "<a" * k took hours at a million characters. Here each "<" is looked at once and each end is looked up
# (str.find, a list of closing tags, a memo of where a tag that reaches a quote or ">" ends); re still reads
# names and whole tags, with quantifiers that never give back (*+, ++), so case, "\b" and "\s" keep the
# meaning Python's re gives them (RE2's \b and \s are ASCII, and it has no backreference for </\1>).
_HIDDEN_START = re.compile(r"<(?:!--|(?i:s))")  # where a comment, <script or <style may begin
_HIDDEN_NAME = re.compile(r"(script|style)\b", re.IGNORECASE)
_HIDDEN_CLOSE = re.compile(r"</(script|style)\s*+>", re.IGNORECASE)
_TAG_START = re.compile(r"<[/!?A-Za-z]")
_TAG_NAME = re.compile(r"/?+([A-Za-z][A-Za-z0-9]*+)")  # the name is the whole run of letters and digits
_WHOLE_TAG = re.compile(r"""</?+([A-Za-z][A-Za-z0-9]*+)(?:"[^"]*+"|'[^']*+'|[^'">]++)*+>""")  # never gives back
_TAG_EVENT = re.compile(r"['\">]")  # what changes the course of a tag after its name
# A decimal character reference: html.unescape reads it with int(), which refuses more than 4,300 digits.
_LONG_DECIMAL_REF = re.compile(r"&#([0-9]{8,}+)")
_BEYOND_UNICODE = "1114112"  # 0x110000: html.unescape turns a reference past U+10FFFF into U+FFFD


def _strip_html(text):
    if "<" in text:
        text = _drop_tags(_drop_hidden(text))
    if "&#" in text:
        text = _LONG_DECIMAL_REF.sub(_shorten_reference, text)
    # Unescape last, so "&lt;b&gt;" in the source stays visible as "<b>".
    return html.unescape(text)


def _shorten_reference(match):
    """``&#<8 digits or more>`` as a number html.unescape reads to the same character, in at most 7 digits."""
    digits = match.group(1).lstrip("0") or "0"
    return "&#" + (digits if len(digits) < 8 else _BEYOND_UNICODE)


def _drop_hidden(text):
    """``text`` with each comment, ``<script>`` and ``<style>`` element (their content too) replaced by a space."""
    pieces, kept, at = [], 0, 0
    comment_end, tag_end, closes = _Finder(text, "-->"), _Finder(text, ">"), None
    while (found := _HIDDEN_START.search(text, at)) is not None:
        start, end = found.start(), -1
        if text.startswith("!--", start + 1):
            close = comment_end.find(start + 4)
            end = -1 if close < 0 else close + 3
        elif (name := _HIDDEN_NAME.match(text, start + 1)) is not None:
            opened = tag_end.find(name.end())
            if opened >= 0:
                closes = closes or _ClosingTags(text)
                end = closes.first(name.group(1), opened + 1)
        if end < 0:
            at = start + 1
        else:
            pieces += (text[kept:start], " ")
            kept = at = end
    return "".join(pieces) + text[kept:] if pieces else text


def _drop_tags(text):
    """``text`` without its tags: a space for a tag that separates words (``<br>``, ``</p>``...), else nothing."""
    pieces, kept, at = [], 0, 0
    declaration_end, tag_ends = _Finder(text, ">"), None
    while (found := _TAG_START.search(text, at)) is not None:
        start, name = found.start(), ""
        if text[start + 1] in "!?":  # <!DOCTYPE ...>, <?xml ...?>: to the next ">", quotes or not
            end = declaration_end.find(start + 2)
        elif tag_ends is None and (match := _WHOLE_TAG.match(text, start)) is not None:
            end, name = match.end() - 1, match.group(1)  # tags read so far all ended: each is read once
        elif (match := _TAG_NAME.match(text, start + 1)) is not None:
            # A tag that does not end (a quote left open, no ">"): its reading ran to the end of the text, and
            # so would the next one's. From here on the ends are looked up.
            tag_ends = tag_ends or _TagEnds(text)
            end, name = tag_ends.after(match.end()), match.group(1)
        else:
            end = -1  # "</" with no name
        if end < 0:
            at = start + 1
        else:
            pieces += (text[kept:start], " " if name.lower() in _HTML_BLOCKS else "")
            kept = at = end + 1
    return "".join(pieces) + text[kept:] if pieces else text


class _Finder:
    """``text.find(needle, start)`` for starts that grow: the text is read once, not once per start."""

    def __init__(self, text, needle):
        self.text, self.needle = text, needle
        self.since, self.found = None, -1

    def find(self, start):
        # The last search, from ``since``, found the first needle at ``found`` (or none): it is the first from
        # any start in between too.
        if self.since is None or start < self.since or start > self.found >= 0:
            self.since, self.found = start, self.text.find(self.needle, start)
        return self.found


class _ClosingTags:
    """Every ``</script>`` and ``</style>`` of a text, by the name they close, in order (their ends)."""

    def __init__(self, text):
        self.starts, self.ends = {}, {}
        for match in _HIDDEN_CLOSE.finditer(text):  # closing tags cannot overlap: finditer finds them all
            key = _lowered(match.group(1))
            self.starts.setdefault(key, []).append(match.start())
            self.ends.setdefault(key, []).append(match.end())

    def first(self, name, start):
        """The end of the first closing tag from ``start`` on that closes ``name``, or -1."""
        key = _lowered(name)
        starts = self.starts.get(key, ())
        i = bisect.bisect_left(starts, start)
        return self.ends[key][i] if i < len(starts) else -1


@functools.lru_cache(maxsize=512)  # a few hundred spellings at most: S or s or ſ, and so on
def _lowered(name):
    r"""The key under which re's case-blind backreference (``</\1`` above) takes two names as equal.

    re compares each character's lowercase, Unicode's one-character mapping; ``str.lower`` gives
    the same but for "İ", whose lowercase is "i" and a combining dot: the first is re's.
    """
    return "".join(c.lower()[0] for c in name)


class _TagEnds:
    """Where a tag whose name ends at a given position ends: its first ``>`` outside quotes, or -1.

    After its name a tag reads one way only: a quote skips to the next of the same quote,
    ``>`` ends it, and a quote never closed or no ``>`` at all fails it. What follows a
    quote or ``>`` read outside quotes does not depend on where the tag began, so each is
    read once for every tag that reaches it (``ends``).
    """

    def __init__(self, text):
        self.text = text
        self.events = [m.start() for m in _TAG_EVENT.finditer(text)]
        self.ends = [None] * len(self.events)  # by event: where a tag reaching it outside quotes ends

    def after(self, position):
        text, events, ends = self.text, self.events, self.ends
        path, end, count = [], -1, len(events)
        i = bisect.bisect_left(events, position)
        while i < count:
            if ends[i] is not None:
                end = ends[i]
                break
            path.append(i)
            char = text[events[i]]
            if char == ">":
                end = events[i]
                break
            # On past the closing quote (none: the tag fails). A quote is read outside quotes once,
            # so each stretch between two of the same quotes is walked once.
            i += 1
            while i < count and text[events[i]] != char:
                i += 1
            i += 1
        for i in path:
            ends[i] = end
        return end


def _remove_accents(text):
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


@operation(
    {
        "columns": {**COLUMN_LIST, "description": "Text columns to clean; non-text cells are left as they are."},
        "lowercase": {"type": "boolean", "description": "Lowercase the text."},
        "strip": {"type": "boolean", "description": "Remove leading and trailing whitespace."},
        "collapse_whitespace": {
            "type": "boolean",
            "description": "Turn each run of whitespace (including newlines) into one space.",
        },
        "unicode_form": {
            "enum": ["NFC", "NFKC", "NFD", "NFKD", None],
            "description": "Unicode normalization form to apply; null leaves the form as it is.",
        },
        "strip_html": {"type": "boolean", "description": "Remove HTML tags, comments and scripts; decode entities."},
        "remove_accents": {
            "type": "boolean",
            "description": "Remove accents and other combining marks (NFKD, drop marks, then 'unicode_form').",
        },
    },
    row_local=True,
)
def normalize_text(
    df,
    columns,
    lowercase=False,
    strip=True,
    collapse_whitespace=True,
    unicode_form="NFKC",
    strip_html=False,
    remove_accents=False,
):
    """Clean up text: Unicode form, HTML, accents, case and whitespace."""
    require_columns(df, columns, "columns")

    def clean(text):
        if strip_html:
            text = _strip_html(text)
        if remove_accents:
            text = _remove_accents(text)
        if unicode_form is not None:
            text = unicodedata.normalize(unicode_form, text)
        if lowercase:
            text = text.lower()
        if collapse_whitespace:
            text = _WHITESPACE.sub(" ", text)
        if strip:
            text = text.strip()
        return text

    cleaned = {}
    for column in columns:
        series = df[column]
        kind = _column_kind(series)
        if kind not in (None, "text"):
            continue  # numbers, booleans and dates hold no text
        if kind == "text" and not strip_html:
            # Text columns are Arrow arrays: clean them with pyarrow.compute where that gives Python's result.
            # Only lowercasing and Unicode forms can tell ASCII from other text; without them every cell can go.
            every_cell = not (lowercase or unicode_form is not None or remove_accents)
            cleaned[column] = _clean_text_column(series, clean, lowercase, collapse_whitespace, strip, every_cell)
            continue
        values = [clean(v) if isinstance(v, str) else v for v in series.tolist()]
        cleaned[column] = _like(series, values)
    return _with_columns(df, cleaned)


#: Every character Python's ``str.isspace``, ``str.strip()`` and ``re``'s ``\s`` take for whitespace, in a
#: character class RE2 reads exactly (RE2's own ``\s`` is ASCII only, and misses ``\v`` and ``\x1c``-``\x1f``).
#: (Written out: finding them takes a tenth of a second at import; a unit test checks the list.)
_PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_PY_WHITESPACE_RUN = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in _PY_WHITESPACE) + "]+"


def _clean_text_column(series, clean, lowercase, collapse_whitespace, strip, every_cell):
    """:func:`normalize_text` of one text column with ``pyarrow.compute``: the same text as ``clean`` on each cell.

    Which cells go through pyarrow: all of them when ``every_cell`` (only whitespace
    to handle, with Python's own set of whitespace characters); else the ASCII ones,
    for which lowercasing is ASCII lowercasing and every Unicode form is the text
    itself. The others (``é``, ``İ``, ``ﬁ``...) go through ``clean``, one by one.
    """
    text = pa.array(series.array)  # no copy: pandas keeps text columns as Arrow arrays
    if isinstance(text, pa.ChunkedArray):
        text = text.chunk(0) if text.num_chunks == 1 else text.combine_chunks()
    fast = text
    if lowercase:
        fast = pc.ascii_lower(fast)
    if collapse_whitespace:
        fast = pc.replace_substring_regex(fast, _PY_WHITESPACE_RUN, " ")
    if strip:
        fast = pc.utf8_trim(fast, characters=_PY_WHITESPACE)
    if not every_cell:
        slow = pc.invert(pc.string_is_ascii(text)).fill_null(False)
        if pc.any(slow).as_py():
            values = [clean(v) for v in pc.filter(text, slow).to_pylist()]
            fast = pc.replace_with_mask(fast, slow, pa.array(values, fast.type))
    return pd.Series(pd.array(fast, dtype=series.dtype), index=series.index)


def _like(series, values):
    """A Series of ``values`` on ``series``' index: text dtype if ``series`` had it, else object."""
    dtype = series.dtype if isinstance(series.dtype, pd.StringDtype) else object
    return pd.Series(values, index=series.index, dtype=dtype)


def _is_null(value):
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


@operation(
    {
        "column": {**COLUMN_NAME, "description": "Text column to split."},
        "size": {"type": "integer", "minimum": 1, "description": "Most characters in a piece."},
        "overlap": {
            "type": "integer",
            "minimum": 0,
            "description": "Characters each piece repeats from the end of the one before; less than 'size'.",
        },
        "into": {
            "type": ["string", "null"],
            "minLength": 1,
            "description": "New column for the pieces, keeping 'column' as it is; null puts them in 'column'.",
        },
    },
    row_local=True,
)
def chunk_text(df, column, size, overlap=0, into=None):
    """Split text into overlapping pieces of at most size characters, one row per piece."""
    require_columns(df, column, "column")
    size, overlap = int(size), int(overlap)
    if overlap >= size:
        raise ParameterError("overlap", f"must be less than 'size' ({size}). Got {overlap} instead.")
    if CHUNK_INDEX in df.columns:
        raise ParameterError(
            "column", f"cannot be chunked here: the frame already has a {CHUNK_INDEX!r} column. Rename it first."
        )
    target = column if into is None else into
    if target == CHUNK_INDEX:
        raise ParameterError("into", f"cannot be {CHUNK_INDEX!r}: that column numbers the pieces.")
    if target != column:
        _require_new_column(df, target, "into")

    source = df[column]
    step = size - overlap
    # How many rows this makes, counted from the texts' lengths alone, before any piece exists: a job over
    # MAX_OUTPUT_ROWS is refused here, not once the pieces have filled the memory. A null or empty text stays
    # one row (piece null or ""), so no source row disappears.
    lengths = _text_lengths(source)
    counts = np.where(lengths > size, -((size - lengths) // step) + 1, 1).astype(np.int64)
    check_output_rows(int(counts.sum()))
    pieces = [[v] if _is_null(v) else _split(str(v), size, step) for v in source.tolist()]
    out = df.iloc[np.repeat(np.arange(len(df)), counts)].reset_index(drop=True)
    flat = [piece for row in pieces for piece in row]
    dtype = object if source.dtype == object else "str"
    # Each piece's number within its row: its position, less the position of its row's first piece.
    numbers = np.arange(len(out), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return _with_columns(out, {target: pd.Series(flat, index=out.index, dtype=dtype), CHUNK_INDEX: numbers})


def _text_lengths(series):
    """Characters in each value's text (0 for a null), as int64: vectorised for a text column."""
    if isinstance(series.dtype, pd.StringDtype):
        return series.str.len().fillna(0).to_numpy(dtype=np.int64)
    # Any other column (mixed, numbers): non-text values are split as their text form.
    return np.fromiter(
        (0 if _is_null(v) else len(v if isinstance(v, str) else str(v)) for v in series.tolist()),
        dtype=np.int64,
        count=len(series),
    )


def _split(text, size, step):
    """Pieces of ``text``: piece k is text[k*step : k*step+size]; the last one reaches the end."""
    pieces, start = [], 0
    while True:
        pieces.append(text[start : start + size])
        if start + size >= len(text):
            return pieces
        start += step


@operation(
    {
        "column": {**COLUMN_NAME, "description": "Text column to measure."},
        "into": {**COLUMN_NAME, "description": "New column for the lengths; it must not exist yet."},
    },
    row_local=True,
)
def text_length(df, column, into):
    """Add a column with the number of characters of each text."""
    require_columns(df, column, "column")
    _require_new_column(df, into, "into")
    kind = _column_kind(df[column])
    if kind not in (None, "text"):
        raise ParameterError(
            "column", f"names column {column!r}, which holds {_COLUMN_KINDS[kind]}; text_length needs text."
        )
    # In a mixed column, non-text values count the characters of their text form; nulls stay null.
    lengths = [None if _is_null(v) else len(v if isinstance(v, str) else str(v)) for v in df[column].tolist()]
    return _with_columns(df, {into: pd.Series(pd.array(lengths, dtype="Int64"), index=df.index)})


# --- types -----------------------------------------------------------------------

_TRUE_TEXT = {"true", "yes", "1"}
_FALSE_TEXT = {"false", "no", "0"}
_INT64_RANGE = range(-(2**63), 2**63)


# What int and float read from text, checked with str methods, no regex (a pattern for it,
# [+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?, tries every split of a run of digits: hours at a
# million "1"s and an "x"). ASCII digits only: int() and float() would also read "١٢" and "1_000".


def _is_integer_text(text):
    """Whether ``text`` is ``[+-]?[0-9]+``."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    return digits.isascii() and digits.isdigit()


def _is_decimal_text(text):
    r"""Whether ``text`` is ``[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?``: 12, -1.5, .5, 5., 1e-3."""
    if not text.isascii():
        return False
    mantissa, exponent_mark, exponent = text.lower().partition("e")
    if exponent_mark and not _is_integer_text(exponent):
        return False
    if mantissa[:1] in ("+", "-"):
        mantissa = mantissa[1:]
    whole, _, fraction = mantissa.partition(".")
    return bool(whole or fraction) and (not whole or whole.isdigit()) and (not fraction or fraction.isdigit())


def _as_float(value):
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
    elif isinstance(value, str) and _is_decimal_text(value.strip()):
        number = float(value.strip())
    else:
        raise ValueError
    if not math.isfinite(number):  # JSON has no inf
        raise ValueError
    return number


def _as_int(value):
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        number = int(value)
    elif isinstance(value, str) and _is_integer_text(value.strip()):
        number = int(value.strip())  # exact, even past float precision
    else:
        number = _as_float(value)
        if not number.is_integer():
            raise ValueError
        number = int(number)
    if number not in _INT64_RANGE:
        raise ValueError
    return number


def _as_bool(value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE_TEXT:
            return True
        if text in _FALSE_TEXT:
            return False
    raise ValueError


_CASTS = {
    # type -> (dtype of the result, converter of one non-null value, what a good value looks like)
    "int": ("Int64", _as_int, "whole numbers"),
    "float": ("float64", _as_float, "finite numbers"),
    "bool": ("boolean", _as_bool, "true/false, yes/no or 1/0"),
}


@operation(
    {
        "types": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {"enum": ["int", "float", "str", "bool", "datetime"]},
            "description": "Column -> type. int allows nulls; bool reads true/false, yes/no and 1/0 in any case; "
            "datetime reads ISO 8601 text: values with a UTC offset become UTC, values without stay naive "
            "(unless the column mixes both: then all are UTC). Blank text becomes null, except for str.",
        },
        "errors": {
            "enum": ["raise", "coerce"],
            "description": "What a value that cannot be converted does: fail the step, or become null.",
        },
    },
    row_local=True,
)
def cast_types(df, types, errors="raise"):
    """Convert columns to int, float, str, bool or datetime."""
    require_columns(df, list(types), "types")
    cast = {}
    for column, kind in types.items():
        series = df[column]
        if kind == "str":
            cast[column] = series.astype("str")  # pandas 3 keeps nulls as nulls here
            continue
        series = _blanks_as_nulls(series)
        if kind == "datetime":
            result, wanted = _to_datetime(series), "ISO 8601 dates"
        else:
            dtype, convert, wanted = _CASTS[kind]
            result = _fast_cast(series, kind)
            if result is None:
                result = _cast_each(series, convert, dtype)
        bad = series.notna().to_numpy(dtype=bool) & result.isna().to_numpy(dtype=bool)
        if errors == "raise" and bad.any():
            raise ParameterError(
                "types",
                f"cannot cast column {column!r} to {kind}: {int(bad.sum())} value(s) are not {wanted} "
                f"(the first at row {int(np.argmax(bad))}). Use errors='coerce' to turn them into nulls.",
            )
        cast[column] = result
    return _with_columns(df, cast)


def _blanks_as_nulls(series):
    """``series`` with empty or all-whitespace text as null: a blank CSV cell is a missing number, not a bad one."""
    if _column_kind(series) not in (None, "text"):
        return series
    blank = np.array([isinstance(v, str) and not v.strip() for v in series.tolist()], dtype=bool)
    return series.where(~blank) if blank.any() else series


def _fast_cast(series, kind):
    """Vectorised cast when the column's dtype already fits ``kind``; None otherwise."""
    dtype = series.dtype
    if pdt.is_bool_dtype(dtype):
        return series.astype({"int": "Int64", "float": "float64", "bool": "boolean"}[kind])
    if pdt.is_integer_dtype(dtype) and kind in ("int", "float"):
        return series.astype("Int64" if kind == "int" else "float64")
    if pdt.is_float_dtype(dtype) and kind == "float":
        values = series.astype("float64")
        return values.where(np.isfinite(values))
    return None


def _cast_each(series, convert, dtype):
    """Convert value by value; a value ``convert`` rejects becomes null."""
    values = []
    for value, missing in zip(series.tolist(), series.isna().tolist()):
        try:
            values.append(None if missing else convert(value))
        except (ValueError, TypeError, OverflowError):
            values.append(None)
    if dtype == "float64":
        return pd.Series(np.array([np.nan if v is None else v for v in values], dtype="float64"), index=series.index)
    return pd.Series(pd.array(values, dtype=dtype), index=series.index)


def _to_datetime(series):
    if pdt.is_datetime64_any_dtype(series.dtype):
        return series
    # Only text and date objects are dates; numbers are not read as epochs.
    readable = [
        v.strip() if isinstance(v, str) else v if isinstance(v, (datetime.date, np.datetime64)) else None
        for v in series.tolist()
    ]
    readable = pd.Series(readable, index=series.index, dtype=object)
    try:
        parsed = pd.to_datetime(readable, format="ISO8601", errors="coerce")
    except ValueError:  # mixed UTC offsets, or offsets and naive values: bring them all to UTC
        parsed = pd.to_datetime(readable, format="ISO8601", errors="coerce", utc=True)
    if parsed.dt.tz is not None:
        parsed = parsed.dt.tz_convert("UTC")
    return parsed
