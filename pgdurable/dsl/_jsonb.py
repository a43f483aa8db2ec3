"""Compact JSON text in PostgreSQL jsonb's canonical form, for the jsonb arguments of the HTTP builders.

jsonb stores object keys shortest first, then bytewise, and prints numbers as `numeric` does; rendering the
same way here keeps the Python DSL byte-identical to `df.http(..., headers => '...'::jsonb)`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from pgdurable.errors import GraphError

__all__ = ["parse", "render", "to_text"]


def parse(text: str, what: str) -> Any:
    """Parse JSON text as jsonb input would, keeping numbers exact (as `Decimal`)."""
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        raise GraphError(f"{what} must be valid JSON: {error}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def render(value: Any) -> str:
    """Render a JSON-compatible Python value as jsonb would print it, but compact.

    >>> render({"bb": 1, "a": [True, None, 1.5e20], "c": "x"})
    '{"a":[true,null,150000000000000000000],"c":"x","bb":1}'
    """
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"JSON numbers must be finite, got {value}")
        return format(value.copy_abs() if value.is_zero() else value, "f")  # numeric has no -0
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"JSON numbers must be finite, got {value!r}")
        return render(Decimal(repr(value)))
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("strings may not contain NUL (\\u0000)")
        return to_text(value)
    if isinstance(value, Mapping):
        keys = sorted(value, key=_jsonb_key_order)
        return "{" + ",".join(f"{to_text(k)}:{render(value[k])}" for k in keys) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(render(item) for item in value) + "]"
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def to_text(text: str) -> str:
    """A JSON string literal, escaped exactly as PostgreSQL's `to_json(text)` escapes it."""
    return json.dumps(text, ensure_ascii=False)


def _jsonb_key_order(key: object) -> tuple[int, bytes]:
    if not isinstance(key, str):
        raise TypeError(f"JSON object keys must be strings, got {type(key).__name__}")
    raw = key.encode("utf-8")
    return (len(raw), raw)
