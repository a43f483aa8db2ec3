"""Truthiness of a condition node's result, for IF and while-loop conditions (reference §6.8).

Pure: no I/O, no clock. Mirrors pg_durable's `evaluate_condition`/`is_truthy`, including Rust's rules for
trimming whitespace and parsing a float from a string.
"""

from __future__ import annotations

import re
from typing import Final

from pgdurable.runtime.results import JsonNumber, JsonValue, parse_json

__all__ = ["is_truthy"]

# Unicode White_Space, which Rust's str::trim strips (Python's str.strip also strips U+001C..U+001F).
_WHITE_SPACE: Final = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
# What Rust's `str::parse::<f64>` accepts once lowercased: ASCII digits only, no underscores, no spaces.
_RUST_FLOAT: Final = re.compile(r"[+-]?(?:inf|infinity|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)")


def is_truthy(result_text: str) -> bool:
    """Whether a condition's result text counts as true.

    1. JSON with a `rows` array: no rows is false; else the first column of the first row decides (a row
       without columns falls through to rule 2).
    2. Other JSON: the whole value decides.
    3. Not JSON: the text decides, as a string.

    >>> [is_truthy(t) for t in ('{"rows":[{"ok":false}],"row_count":1}', '{"rows":[],"row_count":0}', "[0]")]
    [False, False, True]
    >>> [is_truthy(t) for t in ('"0.00"', "yes", " F ", "NaN", "inf", "", "maybe")]
    [False, True, False, True, True, False, True]
    """
    try:
        parsed = parse_json(result_text)
    except ValueError:
        return _truthy(result_text)
    if isinstance(parsed, dict):
        rows = parsed.get("rows")
        if isinstance(rows, list):
            if not rows:
                return False
            first = rows[0]
            if isinstance(first, dict) and first:
                return _truthy(next(iter(first.values())))
    return _truthy(parsed)


def _truthy(value: JsonValue) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, JsonNumber):
        return value.as_float() != 0.0
    if isinstance(value, str):
        return _truthy_string(value)
    if value is None:
        return False
    return len(value) > 0


def _truthy_string(text: str) -> bool:
    lowered = text.strip(_WHITE_SPACE).lower()
    if not lowered:
        return False
    if lowered in ("true", "t", "yes"):
        return True
    if lowered in ("false", "f", "no"):
        return False
    if _RUST_FLOAT.fullmatch(lowered):
        return float(lowered) != 0.0  # NaN != 0.0, so "NaN" is true
    return True
