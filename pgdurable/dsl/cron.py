"""Validation of 5-field cron expressions for WAIT_SCHEDULE nodes.

Pure: it only checks the text. The SQL builder `df.wait_for_schedule` applies the same rules with the same
messages; `tests/data/cron_vectors.json` holds the shared vectors. Computing fire times is the runtime's job.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

__all__ = ["CronError", "check_cron"]


class _Field(NamedTuple):
    name: str
    low: int
    high: int
    names: dict[str, int]


_MONTHS: Final = {
    m: i + 1 for i, m in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"])
}
_DAYS: Final = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}

_FIELDS: Final = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day-of-month", 1, 31, {}),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 0, 7, _DAYS),
)

_SPACE: Final = re.compile(r"[ \t\n\r\f\v]+")
_ITEM: Final = re.compile(r"^(?:(\*)|([0-9A-Za-z]+)(?:-([0-9A-Za-z]+))?)(?:/(.*))?$")


class CronError(ValueError):
    """The detail of why a cron expression is invalid (without the expression itself)."""


def check_cron(expr: str) -> None:
    """Raise `CronError` with a one-line detail if `expr` is not a valid 5-field cron expression.

    >>> check_cron("*/5 9-17 * * MON-FRI")
    >>> check_cron("61 * * * *")
    Traceback (most recent call last):
    ...
    pgdurable.dsl.cron.CronError: minute value '61' is out of range 0-59
    """
    fields = [field for field in _SPACE.split(expr) if field]
    if len(fields) != len(_FIELDS):
        raise CronError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}")
    for text, field in zip(fields, _FIELDS, strict=True):
        for item in text.split(","):
            _check_item(item, field)


def _check_item(item: str, field: _Field) -> None:
    match = _ITEM.match(item)
    if match is None:
        raise CronError(f"{field.name} item '{item}' is not a number, name, range or step")
    star, start, end, step = match.groups()
    if step is not None and not (step.isascii() and step.isdigit() and int(step) >= 1):
        raise CronError(f"{field.name} step '{step}' must be a positive integer")
    if star is not None:
        return
    low = _value(start, field)
    if end is not None and low > _value(end, field):
        raise CronError(f"{field.name} range '{start}-{end}' is reversed")


def _value(token: str, field: _Field) -> int:
    if token.isascii() and token.isdigit():
        number = int(token)
    elif token.upper() in field.names:
        return field.names[token.upper()]
    else:
        raise CronError(f"{field.name} item '{token}' is not a number, name, range or step")
    if not field.low <= number <= field.high:
        raise CronError(f"{field.name} value '{token}' is out of range {field.low}-{field.high}")
    return number
