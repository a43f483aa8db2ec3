"""Cron next-fire times: the shared validation vectors, Vixie cron's day rules, Sunday as 0 or 7, time zones and
daylight-saving changes, and a brute-force comparison over random expressions."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgdurable.dsl.cron import CronError
from pgdurable.runtime.schedules import ScheduleError, next_fire

UTC = timezone.utc
BERLIN = "Europe/Berlin"
VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parents[2] / "data" / "cron_vectors.json").read_text(encoding="utf-8")
)


def at(text: str) -> datetime:
    """An aware UTC instant from `YYYY-MM-DD HH:MM[:SS]`."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def fires(expr: str, after: str, count: int, tz: str = "UTC") -> list[str]:
    """The next `count` fire times after `after`, as UTC `YYYY-MM-DD HH:MM` texts."""
    out: list[str] = []
    instant = at(after)
    for _ in range(count):
        instant = next_fire(expr, instant, tz)
        out.append(instant.strftime("%Y-%m-%d %H:%M"))
    return out


class TestVectors:
    @pytest.mark.parametrize("vector", [v for v in VECTORS if v["error"] is not None], ids=lambda v: repr(v["expr"]))
    def test_invalid_expressions_raise_the_shared_message(self, vector: dict[str, Any]) -> None:
        with pytest.raises(CronError) as caught:
            next_fire(vector["expr"], at("2024-06-15 12:00"))
        assert str(caught.value) == vector["error"]

    @pytest.mark.parametrize("vector", [v for v in VECTORS if v["error"] is None], ids=lambda v: repr(v["expr"]))
    def test_valid_expressions_fire_later(self, vector: dict[str, Any]) -> None:
        after = at("2024-06-15 12:00")
        fire = next_fire(vector["expr"], after)
        assert fire > after
        assert fire.tzinfo is UTC
        assert fire.second == fire.microsecond == 0


class TestUtc:
    def test_strictly_after(self) -> None:
        assert next_fire("* * * * *", at("2024-06-15 12:00:00")) == at("2024-06-15 12:01")
        assert next_fire("* * * * *", at("2024-06-15 11:59:59.999999")) == at("2024-06-15 12:00")
        assert next_fire("0 12 * * *", at("2024-06-15 12:00:00.000001")) == at("2024-06-16 12:00")

    def test_steps_ranges_lists_and_names(self) -> None:
        assert fires("*/15 * * * *", "2024-06-15 12:07", 3) == [
            "2024-06-15 12:15",
            "2024-06-15 12:30",
            "2024-06-15 12:45",
        ]
        assert fires("5/20 * * * *", "2024-06-15 12:00", 3) == [
            "2024-06-15 12:05",
            "2024-06-15 12:25",
            "2024-06-15 12:45",
        ]
        assert fires("0-30/10 9 * * *", "2024-06-15 09:05", 3) == [
            "2024-06-15 09:10",
            "2024-06-15 09:20",
            "2024-06-15 09:30",
        ]
        assert fires("0 0,12 * * *", "2024-06-15 06:00", 2) == ["2024-06-15 12:00", "2024-06-16 00:00"]
        assert fires("0 0 1 jan-mar/2 *", "2024-06-15 00:00", 2) == ["2025-01-01 00:00", "2025-03-01 00:00"]

    def test_weekdays(self) -> None:
        # 2024-06-15 is a Saturday.
        assert fires("0 9 * * MON-FRI", "2024-06-15 12:00", 2) == ["2024-06-17 09:00", "2024-06-18 09:00"]
        assert fires("0 9 * * 1-5", "2024-06-15 12:00", 1) == ["2024-06-17 09:00"]  # Monday, not Sunday (§4)

    @pytest.mark.parametrize("sunday", ["0", "7", "SUN", "sun", "0,7", "7-7", "7/2", "*/7", "0-0", "7-7/3"])
    def test_sunday_is_0_or_7(self, sunday: str) -> None:
        assert fires(f"0 0 * * {sunday}", "2024-06-15 00:00", 2) == ["2024-06-16 00:00", "2024-06-23 00:00"]

    @pytest.mark.parametrize(
        ("field", "days"),
        [
            ("*/2", "SuTuThSa"),
            ("*/3", "SuWeSa"),
            ("5/2", "SuFr"),  # 5-7/2: Friday and Sunday
            ("mon-fri/2", "MoWeFr"),
            ("1-7", "SuMoTuWeThFrSa"),
            ("0-7/7", "Su"),
            ("6-7", "SuSa"),
            ("SAT,sun", "SuSa"),
        ],
    )
    def test_weekday_fields(self, field: str, days: str) -> None:
        fired = {next_fire(f"0 0 * * {field}", at(f"2024-06-{day:02d} 12:00")) for day in range(15, 22)}
        assert "".join(sorted({f.strftime("%a")[:2] for f in fired}, key="SuMoTuWeThFrSa".index)) == days

    def test_a_range_ending_at_7_includes_sunday(self) -> None:
        assert fires("0 0 * * 5-7", "2024-06-13 00:00", 4) == [
            "2024-06-14 00:00",
            "2024-06-15 00:00",
            "2024-06-16 00:00",
            "2024-06-21 00:00",
        ]

    def test_day_of_month_or_day_of_week_when_both_are_restricted(self) -> None:
        # The 13th, or any Friday.
        assert fires("0 0 13 * 5", "2024-06-01 00:00", 4) == [
            "2024-06-07 00:00",
            "2024-06-13 00:00",
            "2024-06-14 00:00",
            "2024-06-21 00:00",
        ]
        assert fires("0 0 1-31 * 1", "2024-06-01 00:00", 2) == ["2024-06-02 00:00", "2024-06-03 00:00"]

    def test_a_field_starting_with_a_star_makes_both_necessary(self) -> None:
        # Vixie cron: `*/2` counts as a star, so only odd days that are Mondays fire.
        assert fires("0 0 */2 * 1", "2024-06-01 00:00", 3) == [
            "2024-06-03 00:00",
            "2024-06-17 00:00",
            "2024-07-01 00:00",
        ]
        assert fires("0 0 13 * *", "2024-06-01 00:00", 1) == ["2024-06-13 00:00"]
        assert fires("0 0 * * */7", "2024-06-10 00:00", 1) == ["2024-06-16 00:00"]

    def test_rollovers_and_leap_days(self) -> None:
        assert fires("0 0 1 1 *", "2024-12-31 23:59", 1) == ["2025-01-01 00:00"]
        assert fires("0 0 29 2 *", "2024-03-01 00:00", 2) == ["2028-02-29 00:00", "2032-02-29 00:00"]
        assert fires("0 0 31 * *", "2024-04-01 00:00", 1) == ["2024-05-31 00:00"]

    def test_a_date_that_never_exists_is_an_error(self) -> None:
        with pytest.raises(ScheduleError, match=r"^cron expression '0 0 31 2 \*' matches no date$"):
            next_fire("0 0 31 2 *", at("2024-01-01 00:00"))
        # ...unless the day of week can fire instead.
        assert fires("0 0 31 2 MON", "2024-01-01 00:00", 1) == ["2024-02-05 00:00"]

    def test_after_in_another_zone(self) -> None:
        after = datetime(2024, 6, 15, 14, 7, tzinfo=timezone(timedelta(hours=2)))
        assert next_fire("*/15 * * * *", after) == at("2024-06-15 12:15")

    def test_naive_after_is_refused(self) -> None:
        with pytest.raises(ValueError, match="aware"):
            next_fire("* * * * *", datetime(2024, 6, 15))

    @pytest.mark.parametrize("tz", ["Mars/Olympus", "", "../etc/passwd", "Europe/"])
    def test_unknown_time_zone(self, tz: str) -> None:
        with pytest.raises(ScheduleError, match="unknown time zone"):
            next_fire("* * * * *", at("2024-06-15 12:00"), tz)


class TestTimeZones:
    def test_wall_clock_of_the_zone(self) -> None:
        assert fires("0 9 * * *", "2024-06-15 12:00", 1, BERLIN) == ["2024-06-16 07:00"]  # CEST
        assert fires("0 9 * * *", "2024-01-15 12:00", 1, BERLIN) == ["2024-01-16 08:00"]  # CET
        assert fires("0 9 * * *", "2024-06-15 12:00", 1, "America/New_York") == ["2024-06-15 13:00"]  # EDT

    def test_the_day_is_the_zones_day(self) -> None:
        # 2024-06-16 23:30 UTC is already Monday 01:30 in Berlin.
        assert fires("30 1 * * MON", "2024-06-16 20:00", 1, BERLIN) == ["2024-06-16 23:30"]

    # Berlin, spring: on 2024-03-31 at 01:00 UTC the clock jumps from 02:00 to 03:00 (CET to CEST).

    def test_spring_fixed_time_in_the_gap_fires_when_the_gap_ends(self) -> None:
        assert fires("30 2 * * *", "2024-03-30 12:00", 3, BERLIN) == [
            "2024-03-31 01:00",
            "2024-04-01 00:30",
            "2024-04-02 00:30",
        ]

    def test_spring_several_fixed_times_in_the_gap_fire_once(self) -> None:
        assert fires("0,20,40 2 * * *", "2024-03-30 12:00", 2, BERLIN) == ["2024-03-31 01:00", "2024-04-01 00:00"]

    def test_spring_wildcard_skips_the_gap(self) -> None:
        assert fires("30 * * * *", "2024-03-30 23:50", 3, BERLIN) == [
            "2024-03-31 00:30",
            "2024-03-31 01:30",
            "2024-03-31 02:30",
        ]
        assert fires("*/20 * * * *", "2024-03-31 00:30", 3, BERLIN) == [
            "2024-03-31 00:40",
            "2024-03-31 01:00",
            "2024-03-31 01:20",
        ]

    # Berlin, autumn: on 2024-10-27 at 01:00 UTC the clock goes back from 03:00 to 02:00 (CEST to CET).

    def test_autumn_fixed_time_fires_once_at_the_first_pass(self) -> None:
        assert fires("30 2 * * *", "2024-10-26 12:00", 2, BERLIN) == ["2024-10-27 00:30", "2024-10-28 01:30"]

    def test_autumn_fixed_time_after_the_first_pass_waits_for_the_next_day(self) -> None:
        assert fires("30 2 * * *", "2024-10-27 00:45", 1, BERLIN) == ["2024-10-28 01:30"]

    def test_autumn_wildcard_fires_in_both_passes(self) -> None:
        assert fires("30 * * * *", "2024-10-26 23:10", 4, BERLIN) == [
            "2024-10-26 23:30",
            "2024-10-27 00:30",
            "2024-10-27 01:30",
            "2024-10-27 02:30",
        ]
        assert fires("* 2 * * *", "2024-10-27 00:58", 3, BERLIN) == [
            "2024-10-27 00:59",
            "2024-10-27 01:00",
            "2024-10-27 01:01",
        ]

    def test_autumn_wildcard_from_late_in_the_first_pass(self) -> None:
        # 00:45 UTC reads 02:45 CEST; the next quarter hour on the clock is 02:00 CET, at 01:00 UTC.
        assert fires("*/15 * * * *", "2024-10-27 00:45", 2, BERLIN) == ["2024-10-27 01:00", "2024-10-27 01:15"]

    def test_a_skipped_day(self) -> None:
        # Samoa skipped 2011-12-30: midnight of the missing day fires with the next existing instant.
        assert fires("0 0 * * *", "2011-12-28 12:00", 3, "Pacific/Apia") == [
            "2011-12-29 10:00",
            "2011-12-30 10:00",
            "2011-12-31 10:00",
        ]


# ---------------------------------------------------------------------------------------------------------------
# Brute force: every minute is checked against the fields
# ---------------------------------------------------------------------------------------------------------------


def field(values: list[int] | None, star: str = "*") -> str:
    return star if values is None else ",".join(map(str, sorted(set(values))))


@st.composite
def expressions(draw: st.DrawFn, *, fixed_minutes: bool = False) -> tuple[str, dict[str, Any]]:
    minute_step = draw(st.sampled_from([1, 7, 15, 20]))
    minutes = draw(st.lists(st.integers(0, 59), min_size=1, max_size=3)) if fixed_minutes else None
    hours = draw(st.none() | st.lists(st.integers(0, 23), min_size=1, max_size=4))
    days = draw(st.none() | st.lists(st.integers(1, 31), min_size=1, max_size=6))
    weekdays = draw(st.none() | st.lists(st.integers(0, 7), min_size=1, max_size=3))
    expr = f"{field(minutes, f'*/{minute_step}')} {field(hours)} {field(days)} * {field(weekdays)}"
    return expr, {"step": minute_step, "minutes": minutes, "hours": hours, "days": days, "weekdays": weekdays}


def matches(local: datetime, spec: dict[str, Any]) -> bool:
    if spec["minutes"] is not None and local.minute not in spec["minutes"]:
        return False
    if spec["minutes"] is None and local.minute % spec["step"]:
        return False
    if spec["hours"] is not None and local.hour not in spec["hours"]:
        return False
    weekday = (local.weekday() + 1) % 7  # Sunday = 0
    day_ok = spec["days"] is None or local.day in spec["days"]
    weekday_ok = spec["weekdays"] is None or weekday in {w % 7 for w in spec["weekdays"]}
    if spec["days"] is not None and spec["weekdays"] is not None:
        return day_ok or weekday_ok
    return day_ok and weekday_ok


def brute_force(after: datetime, spec: dict[str, Any], tz: str) -> datetime | None:
    """The first minute after `after` whose wall-clock reading in `tz` matches, within 45 days."""
    zone = ZoneInfo(tz)
    minute = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    horizon = after + timedelta(days=45)
    while minute < horizon:
        if matches(minute.astimezone(zone).replace(tzinfo=None), spec):
            return minute
        minute += timedelta(minutes=1)
    return None  # a rare schedule: nothing to compare within the horizon


NEAR_DST = st.datetimes(min_value=datetime(2024, 3, 29), max_value=datetime(2024, 4, 1)) | st.datetimes(
    min_value=datetime(2024, 10, 25), max_value=datetime(2024, 10, 28)
)


@settings(max_examples=60, deadline=None)
@given(expressions(), NEAR_DST, st.sampled_from(["UTC", BERLIN]))
def test_wildcard_minute_expressions_match_brute_force(
    case: tuple[str, dict[str, Any]], naive_after: datetime, tz: str
) -> None:
    # A wildcard job fires at every instant whose wall-clock reading matches (both passes of a repeated hour,
    # none in a skipped one), so a minute-by-minute walk over UTC is the specification.
    expr, spec = case
    after = naive_after.replace(tzinfo=UTC)
    expected = brute_force(after, spec, tz)
    if expected is not None:
        assert next_fire(expr, after, tz) == expected


@settings(max_examples=60, deadline=None)
@given(expressions(fixed_minutes=True), st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
def test_fixed_minute_expressions_in_utc_match_brute_force(
    case: tuple[str, dict[str, Any]], naive_after: datetime
) -> None:
    expr, spec = case
    after = naive_after.replace(tzinfo=UTC)
    expected = brute_force(after, spec, "UTC")
    if expected is not None:
        assert next_fire(expr, after) == expected
