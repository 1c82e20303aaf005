"""The CSV formula guard: one rule, for the harvester's CSV writer and the gateway's CSV download.

Spreadsheets run a cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return as a formula (CSV injection). A text cell starting with one of
those is written with a leading ``'`` (OWASP's advice), unless the whole cell is
a plain decimal number such as ``-12.5``, which spreadsheets read as a number.

This module needs nothing but the standard library (pyarrow only for
:func:`neutralise_array`, imported there), so the gateway can use it without
loading the harvester's HTTP client.
"""

import re

#: First characters that make a spreadsheet read a text cell as a formula (OWASP: CSV injection).
FORMULA_CHARS = frozenset("=+-@\t\r")
#: Text a spreadsheet reads as a plain number, not a formula ("-12.5", "+3", ".5", "1e5", "-1.5E-3").
PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# The same two tests as RE2 patterns, for pyarrow.compute (linear time, whole column at once).
_STARTS_LIKE_FORMULA = "^[=+\\-@\t\r]"
_WHOLE_PLAIN_NUMBER = f"^(?:{PLAIN_NUMBER.pattern})$"


def neutralise_formula(text):
    """Return ``text`` with a ``'`` in front if a spreadsheet would read it as a formula, else ``text``.

    ``"=SUM(A1)"`` -> ``"'=SUM(A1)"``, ``"-12.5"`` -> ``"-12.5"``.
    """
    if text[:1] in FORMULA_CHARS and not PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def neutralise_array(array):
    """Apply :func:`neutralise_formula` to every cell of a pyarrow string array; return ``(array, changed)``.

    Nulls stay null; ``changed`` counts the cells that got a ``'``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(array) == 0:
        return array, 0
    formula = pc.and_(
        pc.match_substring_regex(array, _STARTS_LIKE_FORMULA),
        pc.invert(pc.match_substring_regex(array, _WHOLE_PLAIN_NUMBER)),
    )
    changed = pc.sum(formula).as_py() or 0
    if not changed:
        return array, 0
    quoted = pc.binary_join_element_wise(pa.scalar("'", array.type), array, pa.scalar("", array.type))
    return pc.if_else(pc.fill_null(formula, False), quoted, array), changed
