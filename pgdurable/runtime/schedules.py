"""Next fire time of a 5-field cron expression in a time zone, for WAIT_SCHEDULE nodes (design §2, §4).

Pure: no clock (`after` is given), no randomness; the only input besides the arguments is the time-zone
database that `zoneinfo` reads. Matching follows Vixie cron: Sunday is 0 or 7; when day-of-month and day-of-week
are both restricted (neither starts with `*`) a day matching either fires, otherwise both must match; across
daylight-saving changes a job at a fixed time (minute and hour fields not starting with `*`) fires once — at
the first of two repeated wall-clock times, or at the end of a skipped interval — while a wildcard job fires at
every wall-clock time that exists.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from pgdurable.dsl.cron import check_cron
from pgdurable.errors import PgdurableError

__all__ = ["ScheduleError", "next_fire"]

_UTC: Final = timezone.utc
_SECOND: Final = timedelta(seconds=1)
_OFFSET_HORIZON: Final = timedelta(hours=27)  # longer than any UTC-offset change on record (24 h) plus DST
_OFFSET_STEP: Final = timedelta(minutes=15)
_FIELD_SEPARATOR: Final = re.compile(r"[ \t\n\r\f\v]+")
_DAY_NAMES: Final = {name: number for number, name in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}


class ScheduleError(PgdurableError, ValueError):
    """A schedule cannot be computed: an unknown time zone, or an expression that never fires."""


def next_fire(cron_expr: str, after: datetime, tz: str = "UTC") -> datetime:
    """The first instant strictly after `after` at which `cron_expr` fires in time zone `tz`, in UTC.

    Raises `pgdurable.dsl.cron.CronError` for an invalid expression and `ScheduleError` for an unknown time
    zone or an expression that matches no date (such as `0 0 31 2 *`).

    >>> next_fire("*/15 * * * *", datetime(2024, 6, 15, 12, 7, 30, tzinfo=timezone.utc)).isoformat()
    '2024-06-15T12:15:00+00:00'
    >>> next_fire("0 9 * * MON-FRI", datetime(2024, 6, 15, 12, 0, tzinfo=timezone.utc), "Europe/Berlin").isoformat()
    '2024-06-17T07:00:00+00:00'
    """
    check_cron(cron_expr)
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("after must be an aware datetime")
    fields = _FIELD_SEPARATOR.split(cron_expr.strip(" \t\n\r\f\v"))  # as check_cron splits them
    zone = _zone(tz)
    wildcard = fields[0].startswith("*") or fields[1].startswith("*")
    after = after.astimezone(_UTC)
    best: datetime | None = None
    for local in _local_matches(fields, _scan_start(after, zone)):
        primary, secondary = _instants(local, zone, wildcard)
        for instant in (primary, secondary):
            if instant is not None and instant > after and (best is None or instant < best):
                best = instant
        if primary is not None and primary > after:
            break  # later wall-clock matches map to later instants (repeated hours only to later ones)
    if best is None:
        raise ScheduleError(f"cron expression '{cron_expr}' matches no date")
    return best


def _zone(name: str) -> tzinfo:
    if name == "UTC":
        return _UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone '{name}'") from None


def _scan_start(after: datetime, zone: tzinfo) -> datetime:
    """The wall-clock time from which to look for matches.

    Normally the wall-clock reading of `after`; earlier when the clock is about to be set back, because the
    second pass through a repeated hour then holds instants after `after` with wall-clock readings before it.
    """
    offset = _offset(after, zone)
    lowest = offset
    probe = after
    while probe < after + _OFFSET_HORIZON:
        probe += _OFFSET_STEP
        lowest = min(lowest, _offset(probe, zone))
    local = (after + offset).replace(tzinfo=None)
    return local - (offset - lowest)


def _offset(instant: datetime, zone: tzinfo) -> timedelta:
    return instant.astimezone(zone).utcoffset() or timedelta(0)


def _local_matches(fields: list[str], start: datetime) -> Iterator[datetime]:
    """Naive wall-clock times matching the expression, strictly after `start`, in increasing order."""
    start = start.replace(second=0, microsecond=0)
    day_of_month, day_of_week = fields[2], fields[4]
    fields = [*fields[:4], _weekdays(day_of_week)]
    if day_of_month.startswith("*") or day_of_week.startswith("*"):
        yield from _croniter_matches(fields, start)
        return
    # Both restricted: a day matching either fires (the union of the two single-field schedules).
    yield from _merge(
        _croniter_matches([*fields[:4], "*"], start),
        _croniter_matches([*fields[:2], "*", fields[3], fields[4]], start),
    )


def _weekdays(text: str) -> str:
    """The day-of-week field as an explicit list of 0-6 (croniter reads `7-7` as every day and `7/2` as even days).

    `*` is 0-7, a step after a single value runs to 7, and 7 is Sunday, as in Vixie cron.
    """
    days: set[int] = set()
    for item in text.split(","):
        span, _, step = item.partition("/")
        low_text, _, high_text = span.partition("-")
        low = 0 if span == "*" else _weekday(low_text)
        high = _weekday(high_text) if high_text else (7 if span == "*" or step else low)
        days.update(day % 7 for day in range(low, high + 1, int(step or 1)))
    return ",".join(str(day) for day in sorted(days))


def _weekday(text: str) -> int:
    return _DAY_NAMES[text.upper()] if text.upper() in _DAY_NAMES else int(text)


def _croniter_matches(fields: list[str], start: datetime) -> Iterator[datetime]:
    iterator = croniter(" ".join(fields), start, day_or=False)
    while True:
        try:
            match: datetime = iterator.get_next(datetime)
        except CroniterBadDateError:
            return
        yield match


def _merge(left: Iterator[datetime], right: Iterator[datetime]) -> Iterator[datetime]:
    """Merge two increasing streams into one increasing stream without duplicates."""
    last: datetime | None = None
    for value in heapq.merge(left, right):
        if value != last:
            yield value
        last = value


def _instants(local: datetime, zone: tzinfo, wildcard: bool) -> tuple[datetime | None, datetime | None]:
    """The instants at which wall-clock time `local` fires: a primary one, and a second for a repeated time.

    A repeated time (the clock was set back) fires at its first occurrence, and a wildcard job at both. A
    skipped time (the clock was set forward) fires a fixed-time job when the skipped interval ends, and a
    wildcard job not at all.
    """
    earlier = local.replace(tzinfo=zone, fold=0).astimezone(_UTC)
    later = local.replace(tzinfo=zone, fold=1).astimezone(_UTC)
    if earlier.astimezone(zone).replace(tzinfo=None) != local:  # skipped: no such wall-clock time
        return (None if wildcard else _transition(later, earlier, zone)), None
    if earlier == later:
        return earlier, None
    first, second = min(earlier, later), max(earlier, later)
    return first, (second if wildcard else None)


def _transition(low: datetime, high: datetime, zone: tzinfo) -> datetime:
    """The first whole second in (low, high] with a UTC offset other than low's (the end of a skipped interval)."""
    low, high = min(low, high), max(low, high)
    before = _offset(low, zone)
    while high - low > _SECOND:
        middle = low + timedelta(seconds=(high - low) // _SECOND // 2)
        if _offset(middle, zone) == before:
            low = middle
        else:
            high = middle
    return high
