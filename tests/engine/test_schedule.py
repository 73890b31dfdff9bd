"""Activity period, weekdays, active hours, time zones and durations of automation rules.

Every example in docs/rule-timing.md has a test here; the "Restrict Active Hours" table of the
specification has one test per row, with the specification's own dates (03.03.2025).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from smartico_stream.engine.schedule import ActiveHours, ActivityWindow, Weekday, parse_duration
from tests.support.common import REPO

MALTA = ZoneInfo("Europe/Malta")


def local(text: str, tz: str = "UTC") -> datetime:
    """An aware datetime from an ISO wall time in ``tz`` (never in a DST gap or overlap here)."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def minutes(begin: datetime, end: datetime) -> Iterator[datetime]:
    at = begin
    while at < end:
        yield at
        at += timedelta(minutes=1)


def switches(window: ActivityWindow, begin: datetime, end: datetime) -> list[tuple[datetime, bool]]:
    """Each minute in [begin, end) (UTC steps) at which is_active changes, with the new value.

    The first entry is ``begin`` with its value; times are reported in the window's zone.
    """
    changes: list[tuple[datetime, bool]] = []
    for at in minutes(begin.astimezone(UTC), end.astimezone(UTC)):
        active = window.is_active(at)
        if not changes or changes[-1][1] != active:
            changes.append((at.astimezone(window.tz), active))
    return changes


def wall(changes: list[tuple[datetime, bool]]) -> list[tuple[str, bool]]:
    return [(at.strftime("%Y-%m-%d %H:%M"), active) for at, active in changes]


ZONES = pytest.mark.parametrize("tz", ["UTC", "Europe/Malta"])


# -- the specification's "Restrict Active Hours" table -----------------------------------------------


@ZONES
def test_start_date_earlier_than_active_hours_start(tz: str) -> None:
    # Start 03.03.2025 08:00, active hours 09:00-18:00 -> the rule starts 09:00, 03.03.2025.
    window = ActivityWindow.build(tz=tz, start="2025-03-03T08:00", active_hours=("09:00", "18:00"))
    assert not window.is_active(local("2025-03-03T08:30", tz))
    assert window.is_active(local("2025-03-03T09:00", tz))
    assert not window.is_active(local("2025-03-02T10:00", tz))  # inside the hours, before the start
    changes = switches(window, local("2025-03-02T00:00", tz), local("2025-03-04T00:00", tz))
    assert wall(changes) == [("2025-03-02 00:00", False), ("2025-03-03 09:00", True), ("2025-03-03 18:00", False)]


@ZONES
def test_start_date_later_than_active_hours_start(tz: str) -> None:
    # Start 03.03.2025 10:00, active hours 09:00-18:00 -> the rule starts 10:00, 03.03.2025.
    window = ActivityWindow.build(tz=tz, start="2025-03-03T10:00", active_hours=("09:00", "18:00"))
    assert not window.is_active(local("2025-03-03T09:30", tz))
    assert window.is_active(local("2025-03-03T10:00", tz))
    assert not window.is_active(local("2025-03-02T12:00", tz))  # inside the hours, before the start
    changes = switches(window, local("2025-03-03T00:00", tz), local("2025-03-04T00:00", tz))
    assert wall(changes) == [("2025-03-03 00:00", False), ("2025-03-03 10:00", True), ("2025-03-03 18:00", False)]


@ZONES
def test_end_date_earlier_than_active_hours_end(tz: str) -> None:
    # End 03.03.2025 18:00, active hours 09:00-19:00 -> the rule stops 18:00, 03.03.2025.
    window = ActivityWindow.build(tz=tz, end="2025-03-03T18:00", active_hours=("09:00", "19:00"))
    assert window.is_active(local("2025-03-03T17:59:59", tz))
    assert not window.is_active(local("2025-03-03T18:00", tz))
    assert not window.is_active(local("2025-03-03T18:30", tz))  # inside the hours, after the end
    assert window.is_active(local("2025-03-02T12:00", tz))  # no start: active on earlier days
    changes = switches(window, local("2025-03-03T00:00", tz), local("2025-03-05T00:00", tz))
    assert wall(changes) == [("2025-03-03 00:00", False), ("2025-03-03 09:00", True), ("2025-03-03 18:00", False)]


@ZONES
def test_end_date_later_than_active_hours_end(tz: str) -> None:
    # End 03.03.2025 18:00, active hours 09:00-16:00 -> the rule stops 16:00, 03.03.2025.
    window = ActivityWindow.build(tz=tz, end="2025-03-03T18:00", active_hours=("09:00", "16:00"))
    assert window.is_active(local("2025-03-03T15:59", tz))
    assert not window.is_active(local("2025-03-03T16:00", tz))
    assert not window.is_active(local("2025-03-03T17:00", tz))
    assert window.is_active(local("2025-03-02T12:00", tz))  # no start: active on earlier days
    changes = switches(window, local("2025-03-03T00:00", tz), local("2025-03-05T00:00", tz))
    assert wall(changes) == [("2025-03-03 00:00", False), ("2025-03-03 09:00", True), ("2025-03-03 16:00", False)]


# -- active hours and weekdays --------------------------------------------------------------------


def test_only_active_hours_run_every_day() -> None:
    window = ActivityWindow.build(active_hours=("09:00", "18:00"))
    for day in range(3, 10):  # Monday 03.03.2025 to Sunday 09.03.2025
        assert not window.is_active(utc(f"2025-03-{day:02d}T08:59:59"))
        assert window.is_active(utc(f"2025-03-{day:02d}T09:00"))
        assert window.is_active(utc(f"2025-03-{day:02d}T17:59:59.999999"))
        assert not window.is_active(utc(f"2025-03-{day:02d}T18:00"))


def test_saturday_and_sunday_from_10_until_18() -> None:
    window = ActivityWindow.build(weekdays=["Saturday", "Sunday"], active_hours=("10:00", "18:00"))
    assert utc("2025-03-08T00:00").weekday() == Weekday.SAT
    assert not window.is_active(utc("2025-03-07T12:00"))  # Friday
    assert not window.is_active(utc("2025-03-08T09:59"))
    assert window.is_active(utc("2025-03-08T10:00"))  # Saturday
    assert window.is_active(utc("2025-03-08T17:59"))
    assert not window.is_active(utc("2025-03-08T18:00"))
    assert window.is_active(utc("2025-03-09T12:00"))  # Sunday
    assert not window.is_active(utc("2025-03-10T12:00"))  # Monday


def test_weekdays_without_hours_are_whole_days() -> None:
    window = ActivityWindow.build(weekdays=["sat"])
    assert not window.is_active(utc("2025-03-07T23:59:59.999999"))
    assert window.is_active(utc("2025-03-08T00:00"))
    assert window.is_active(utc("2025-03-08T23:59:59"))
    assert not window.is_active(utc("2025-03-09T00:00"))


def test_active_hours_past_midnight() -> None:
    window = ActivityWindow.build(active_hours=("22:00", "02:00"))
    assert not window.is_active(utc("2025-03-03T21:59"))
    assert window.is_active(utc("2025-03-03T22:00"))
    assert window.is_active(utc("2025-03-04T00:00"))
    assert window.is_active(utc("2025-03-04T01:59"))
    assert not window.is_active(utc("2025-03-04T02:00"))
    assert not window.is_active(utc("2025-03-04T12:00"))


def test_past_midnight_hours_with_weekdays_use_the_events_local_calendar_day() -> None:
    # Friday 22:00-02:00: the hours after midnight fall on Saturday, which is not selected.
    window = ActivityWindow.build(weekdays=["fri"], active_hours=("22:00", "02:00"))
    assert window.is_active(utc("2025-03-07T23:30"))  # Friday night
    assert not window.is_active(utc("2025-03-08T01:00"))  # Saturday early morning
    assert window.is_active(utc("2025-03-07T01:00"))  # Friday early morning (Thursday night)
    # To keep Friday night going until 02:00 on Saturday, select Saturday too; Saturday 22:00-24:00
    # is then active as well.
    both = ActivityWindow.build(weekdays=["fri", "sat"], active_hours=("22:00", "02:00"))
    assert both.is_active(utc("2025-03-08T01:00"))
    assert both.is_active(utc("2025-03-08T23:00"))


def test_active_hours_until_midnight_with_24_00() -> None:
    window = ActivityWindow.build(active_hours=("18:00", "24:00"))
    assert window.hours == ActiveHours(time(18), time(0))
    assert not window.is_active(utc("2025-03-03T17:59"))
    assert window.is_active(utc("2025-03-03T23:59:59"))
    assert not window.is_active(utc("2025-03-04T00:00"))


# -- activity period shapes -----------------------------------------------------------------------


def test_start_without_end_runs_from_the_start_on() -> None:
    window = ActivityWindow.build(start="2025-03-03T08:00")
    assert not window.is_active(utc("2025-03-03T07:59:59"))
    assert window.is_active(utc("2025-03-03T08:00"))
    assert window.is_active(utc("2099-12-31T23:59"))


def test_end_without_start_is_active_immediately_until_the_end() -> None:
    window = ActivityWindow.build(end="2025-03-03T18:00")
    assert window.is_active(utc("2000-01-01T00:00"))
    assert window.is_active(utc("2025-03-03T17:59:59.999999"))
    assert not window.is_active(utc("2025-03-03T18:00"))


def test_start_and_end_is_a_half_open_period() -> None:
    window = ActivityWindow.build(start="2025-03-03T08:00", end="2025-03-05T18:00")
    assert not window.is_active(utc("2025-03-03T07:59"))
    assert window.is_active(utc("2025-03-03T08:00"))
    assert window.is_active(utc("2025-03-04T03:00"))
    assert not window.is_active(utc("2025-03-05T18:00"))


def test_no_start_and_no_end_runs_until_stopped() -> None:
    window = ActivityWindow.build()
    assert window == ActivityWindow(tz=ZoneInfo("UTC"))
    assert window.is_active(utc("1970-01-01T00:00"))
    assert window.is_active(utc("2099-12-31T23:59"))


def test_date_only_end_is_midnight_at_the_start_of_that_day() -> None:
    window = ActivityWindow.build(start="2025-03-03", end="2025-03-04")  # all of 3 March
    assert window.is_active(utc("2025-03-03T00:00"))
    assert window.is_active(utc("2025-03-03T23:59:59"))
    assert not window.is_active(utc("2025-03-04T00:00"))


def test_start_and_end_accept_a_space_and_datetime_values() -> None:
    by_text = ActivityWindow.build(tz="Europe/Malta", start="2025-03-03 08:00", end="2025-03-04 08:00")
    by_value = ActivityWindow.build(tz="Europe/Malta", start=datetime(2025, 3, 3, 8), end=datetime(2025, 3, 4, 8))
    assert by_text == by_value
    assert by_text.start == datetime(2025, 3, 3, 8, tzinfo=MALTA)


# -- time zones -----------------------------------------------------------------------------------


def test_start_and_hours_are_local_times_in_the_rules_zone() -> None:
    # Malta is UTC+1 in March (before the 30th): 09:00-18:00 local is 08:00-17:00 UTC.
    window = ActivityWindow.build(tz="Europe/Malta", start="2025-03-03T08:00", active_hours=("09:00", "18:00"))
    assert window.start == datetime(2025, 3, 3, 7, tzinfo=UTC)
    assert not window.is_active(utc("2025-03-03T07:59"))  # 08:59 in Malta
    assert window.is_active(utc("2025-03-03T08:00"))  # 09:00 in Malta
    assert window.is_active(utc("2025-03-03T16:59"))  # 17:59 in Malta
    assert not window.is_active(utc("2025-03-03T17:00"))  # 18:00 in Malta


def test_events_in_utc_or_local_time_are_the_same_instant() -> None:
    window = ActivityWindow.build(tz="Europe/Malta", active_hours=("09:00", "18:00"))
    assert window.is_active(utc("2025-03-03T08:30"))
    assert window.is_active(local("2025-03-03T09:30", "Europe/Malta"))
    assert window.is_active(local("2025-03-03T03:30", "America/New_York"))
    assert window.is_active(datetime(2025, 3, 3, 10, 30, tzinfo=timezone(timedelta(hours=2))))


def test_weekdays_follow_the_rules_zone_not_utc() -> None:
    window = ActivityWindow.build(tz="Europe/Malta", weekdays=["sat"])
    assert window.is_active(utc("2025-03-07T23:30"))  # Friday in UTC, Saturday 00:30 in Malta
    assert not window.is_active(utc("2025-03-08T23:30"))  # Saturday in UTC, Sunday 00:30 in Malta


def test_aware_start_and_end_keep_their_instant() -> None:
    window = ActivityWindow.build(tz="Europe/Malta", start="2025-03-03T08:00Z", end="2025-03-03T12:00+01:00")
    assert window.start == datetime(2025, 3, 3, 9, tzinfo=MALTA)
    assert window.end == datetime(2025, 3, 3, 12, tzinfo=MALTA)
    assert not window.is_active(utc("2025-03-03T07:59"))
    assert window.is_active(utc("2025-03-03T08:00"))
    assert not window.is_active(utc("2025-03-03T11:00"))


def test_dst_day_active_hours_follow_the_local_clock() -> None:
    # Europe/Malta moves from UTC+1 to UTC+2 at 01:00 UTC on 30.03.2025 (02:00 -> 03:00 local).
    window = ActivityWindow.build(tz="Europe/Malta", active_hours=("09:00", "18:00"))
    assert wall(switches(window, utc("2025-03-29T00:00"), utc("2025-03-31T00:00"))) == [
        ("2025-03-29 01:00", False),
        ("2025-03-29 09:00", True),
        ("2025-03-29 18:00", False),
        ("2025-03-30 09:00", True),
        ("2025-03-30 18:00", False),
    ]
    assert window.is_active(utc("2025-03-29T08:00")) and not window.is_active(utc("2025-03-29T07:00"))
    assert window.is_active(utc("2025-03-30T07:00")) and not window.is_active(utc("2025-03-30T06:59"))


def test_dst_day_hours_across_the_jump_are_shorter() -> None:
    window = ActivityWindow.build(tz="Europe/Malta", active_hours=("02:00", "04:00"))
    assert not window.is_active(utc("2025-03-30T00:59"))  # 01:59 UTC+1
    assert window.is_active(utc("2025-03-30T01:00"))  # 03:00 UTC+2: 02:00-02:59 never happened
    assert window.is_active(utc("2025-03-30T01:59"))  # 03:59 UTC+2
    assert not window.is_active(utc("2025-03-30T02:00"))  # 04:00 UTC+2: one hour in all
    skipped = ActivityWindow.build(tz="Europe/Malta", active_hours=("02:15", "02:45"))
    assert wall(switches(skipped, utc("2025-03-29T22:00"), utc("2025-03-30T22:00"))) == [("2025-03-29 23:00", False)]


def test_fall_back_day_hours_in_the_repeated_hour_are_longer() -> None:
    # 26.10.2025: 03:00 UTC+2 -> 02:00 UTC+1, so 02:00-02:59 happens twice.
    window = ActivityWindow.build(tz="Europe/Malta", active_hours=("02:00", "03:00"))
    assert not window.is_active(utc("2025-10-25T23:59"))  # 01:59 UTC+2
    assert window.is_active(utc("2025-10-26T00:00"))  # 02:00 UTC+2
    assert window.is_active(utc("2025-10-26T01:59"))  # 02:59 UTC+1
    assert not window.is_active(utc("2025-10-26T02:00"))  # 03:00 UTC+1: two hours in all


def test_start_in_the_skipped_hour_starts_when_the_clocks_jump() -> None:
    window = ActivityWindow.build(tz="Europe/Malta", start="2025-03-30T02:30")
    assert window.start == datetime(2025, 3, 30, 1, tzinfo=UTC)  # 03:00 UTC+2
    assert not window.is_active(utc("2025-03-30T00:59:59.999999"))  # 01:59:59 UTC+1
    assert window.is_active(utc("2025-03-30T01:00"))


def test_start_and_end_in_the_repeated_hour_mean_the_first_occurrence() -> None:
    start = ActivityWindow.build(tz="Europe/Malta", start="2025-10-26T02:30")
    assert start.start is not None
    assert start.start.astimezone(UTC) == datetime(2025, 10, 26, 0, 30, tzinfo=UTC)  # 02:30 UTC+2
    assert start.start.replace(tzinfo=None) == datetime(2025, 10, 26, 2, 30)
    assert not start.is_active(utc("2025-10-26T00:29"))
    assert start.is_active(utc("2025-10-26T00:30"))
    assert start.is_active(utc("2025-10-26T01:15"))  # 02:15 UTC+1: once started, stays started
    end = ActivityWindow.build(tz="Europe/Malta", end="2025-10-26T02:30")
    assert end.end is not None and end.end.astimezone(UTC) == datetime(2025, 10, 26, 0, 30, tzinfo=UTC)
    assert end.is_active(utc("2025-10-26T00:29"))
    assert not end.is_active(utc("2025-10-26T00:30"))
    assert not end.is_active(utc("2025-10-26T01:15"))  # 02:15 UTC+1: once ended, stays ended


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tz": "Mars/Olympus"}, r"unknown time zone 'Mars/Olympus'; expected an IANA name"),
        ({"tz": ""}, "unknown time zone"),
        ({"tz": "../../etc/passwd"}, "unknown time zone"),
        ({"weekdays": ["sat", "fun"]}, r"unknown weekday 'fun'; expected one of mon, tue, .*, sunday"),
        ({"weekdays": [7]}, r"weekday number must be 0 \(Monday\) to 6 \(Sunday\)"),
        ({"weekdays": "sat"}, r"weekdays must be a list of day names"),
        ({"active_hours": ("25:00", "18:00")}, r"invalid active hours start '25:00': out of range"),
        ({"active_hours": ("09:00", "18:60")}, r"invalid active hours end '18:60': out of range"),
        ({"active_hours": ("24:00", "06:00")}, r"invalid active hours start '24:00': out of range"),
        ({"active_hours": ("9am", "6pm")}, r"expected HH:MM or HH:MM:SS \(24-hour clock\)"),
        ({"active_hours": ("09:00", "09:00")}, r"use no active_hours"),
        ({"active_hours": ("00:00", "24:00")}, r"use no active_hours"),
        ({"active_hours": "09:00-18:00"}, r"active_hours must be a \(start, end\) pair"),
        ({"start": "2025-03-03T10:00", "end": "2025-03-03T10:00"}, r"end .* must be after its start"),
        ({"start": "2025-03-04", "end": "2025-03-03"}, r"end .* must be after its start"),
        ({"start": "03.03.2025 08:00"}, r"invalid start '03.03.2025 08:00': expected an ISO 8601 date-time"),
        ({"end": "tomorrow"}, r"invalid end 'tomorrow'"),
    ],
)
def test_build_rejects_bad_configuration(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ActivityWindow.build(**kwargs)  # type: ignore[arg-type]


def test_naive_event_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ActivityWindow.build().is_active(datetime(2025, 3, 3, 9))


def test_windows_compare_start_and_end_as_instants() -> None:
    # The two 02:30s of the fall-back night in Malta: same wall time, different instants.
    first = ActivityWindow(tz=MALTA, start=utc("2025-10-26T00:30"))
    second = ActivityWindow(tz=MALTA, start=utc("2025-10-26T01:30"))
    assert first.start is not None and second.start is not None
    assert first.start.replace(tzinfo=None) == second.start.replace(tzinfo=None)
    assert first != second
    assert first == ActivityWindow.build(tz="Europe/Malta", start="2025-10-26T02:30")
    assert second == ActivityWindow.build(tz="Europe/Malta", start="2025-10-26T02:30+01:00")
    assert len({first, second, ActivityWindow(tz=MALTA, start=utc("2025-10-26T00:30"))}) == 2
    assert not first.is_active(utc("2025-10-26T00:29")) and first.is_active(utc("2025-10-26T00:30"))
    assert not second.is_active(utc("2025-10-26T01:29")) and second.is_active(utc("2025-10-26T01:30"))


def test_constructor_makes_naive_start_and_end_aware_and_validates() -> None:
    window = ActivityWindow(tz=MALTA, start=datetime(2025, 3, 3, 8), weekdays=frozenset({Weekday.SAT}))
    assert window.start == datetime(2025, 3, 3, 8, tzinfo=MALTA)
    assert window.start.tzinfo is MALTA
    with pytest.raises(ValueError, match="must be after"):
        ActivityWindow(tz=MALTA, start=datetime(2025, 3, 3, 8), end=datetime(2025, 3, 3, 7))
    with pytest.raises(ValueError, match="use no active_hours"):
        ActiveHours(time(9), time(9))
    with pytest.raises(ValueError, match="without a zone"):
        ActiveHours(time(9, tzinfo=UTC), time(18))


@pytest.mark.parametrize(
    ("text", "day"),
    [("mon", Weekday.MON), ("Tue", Weekday.TUE), ("WEDNESDAY", Weekday.WED), (" thursday ", Weekday.THU),
     ("fri", Weekday.FRI), ("Saturday", Weekday.SAT), ("sun", Weekday.SUN), (0, Weekday.MON), (6, Weekday.SUN)],
)
def test_weekday_names(text: str | int, day: Weekday) -> None:
    assert Weekday.parse(text) is day


def test_weekdays_build_accepts_names_and_numbers() -> None:
    assert ActivityWindow.build(weekdays=["sat", 6, "Saturday"]).weekdays == frozenset({Weekday.SAT, Weekday.SUN})


# -- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("2w3d", timedelta(days=17)),
        ("1w2d3h4m5s", timedelta(days=9, hours=3, minutes=4, seconds=5)),
        (" 24H ", timedelta(hours=24)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected whole numbers with units"),
        ("30", "expected whole numbers with units"),
        ("1.5h", "expected whole numbers with units"),
        ("30m1h", "largest first"),
        ("1h1h", "expected whole numbers with units"),
        ("1h 30m", "expected whole numbers with units"),
        ("-5m", "expected whole numbers with units"),
        ("5 minutes", "expected whole numbers with units"),
        ("1ms", "expected whole numbers with units"),
        ("0m", "must be greater than zero"),
        ("99999999999w", "too large"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


# -- properties -----------------------------------------------------------------------------------

PROPERTY_ZONES = [
    "UTC",
    "Europe/Malta",
    "America/New_York",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "Pacific/Chatham",  # UTC+12:45 / +13:45
]
DAY_US = 86_400_000_000

any_wall = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2026, 12, 31)).map(
    lambda d: d.replace(second=0, microsecond=0)
)


@functools.cache
def transitions(zone: str) -> tuple[datetime, ...]:
    """The instants (UTC, to the minute) at which ``zone`` changes its UTC offset in 2024-2026."""
    tz = ZoneInfo(zone)
    found = []
    day = datetime(2024, 1, 1, tzinfo=UTC)
    while day.year < 2027:
        after = day + timedelta(days=1)
        if day.astimezone(tz).utcoffset() != after.astimezone(tz).utcoffset():
            at = day
            while at.astimezone(tz).utcoffset() == day.astimezone(tz).utcoffset():
                at += timedelta(minutes=1)
            found.append(at)
        day = after
    return tuple(found)


def walls(zone: str) -> st.SearchStrategy[datetime]:
    """Naive wall times in ``zone``: anywhere, or within 90 minutes of a DST change (both sides)."""
    near = [
        wall_time
        for at in transitions(zone)
        for wall_time in ((at - timedelta(minutes=1)).astimezone(ZoneInfo(zone)), at.astimezone(ZoneInfo(zone)))
    ]
    if not near:
        return any_wall
    nudge = st.integers(min_value=-90, max_value=90).map(lambda m: timedelta(minutes=m))
    close = st.tuples(st.sampled_from(near), nudge).map(lambda p: p[0].replace(tzinfo=None) + p[1])
    return any_wall | close


def brute_resolve(wall_time: datetime, tz: ZoneInfo) -> datetime:
    """The first minute (UTC) at which the local clock in ``tz`` reads ``wall_time`` or later,
    by scanning minute by minute (every transition in these zones is on a whole minute)."""
    naive_utc = wall_time.replace(tzinfo=UTC)
    offsets = [tz.utcoffset(wall_time + timedelta(days=d)) for d in (-1, 0, 1)]
    begin = naive_utc - max(o for o in offsets if o is not None) - timedelta(hours=1)
    end = naive_utc - min(o for o in offsets if o is not None) + timedelta(hours=1)
    for at in minutes(begin, end):
        if at.astimezone(tz).replace(tzinfo=None) >= wall_time:
            return at
    raise AssertionError("scan range too small")


def bound(tz: ZoneInfo, value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return brute_resolve(value, tz)


@st.composite
def windows_and_instants(draw: st.DrawFn) -> tuple[ActivityWindow, datetime, tuple[datetime | None, datetime | None]]:
    zone = draw(st.sampled_from(PROPERTY_ZONES))
    tz = ZoneInfo(zone)
    aware = st.booleans()
    start = draw(st.none() | walls(zone))
    end = draw(st.none() | walls(zone))
    if start is not None and draw(aware):
        start = start.replace(tzinfo=UTC)
    if end is not None and draw(aware):
        end = end.replace(tzinfo=UTC)
    start_at, end_at = bound(tz, start), bound(tz, end)
    assume(start_at is None or end_at is None or end_at > start_at)
    weekdays = draw(st.frozensets(st.sampled_from(list(Weekday))))
    hours = None
    if draw(st.booleans()):
        clock = st.times().map(lambda t: t.replace(microsecond=0)) | st.times().map(
            lambda t: t.replace(second=0, microsecond=0)
        )
        begin, finish = draw(clock), draw(clock)
        assume(begin != finish)
        hours = ActiveHours(begin, finish)
    window = ActivityWindow(tz=tz, start=start, end=end, weekdays=weekdays, hours=hours)
    # Instants anywhere, near the start or end, or exactly on an active-hours boundary.
    kind = draw(st.sampled_from(["anywhere", "period edge", "hours edge"]))
    edges = [x for x in (start_at, end_at) if x is not None]
    if kind == "period edge" and edges:
        near = st.timedeltas(min_value=timedelta(hours=-2), max_value=timedelta(hours=2))
        at = draw(st.sampled_from(edges)) + draw(near)
    elif kind == "hours edge" and hours is not None:
        day = draw(st.dates(min_value=date(2024, 1, 1), max_value=date(2026, 12, 31)))
        clock_time = draw(st.sampled_from([hours.start, hours.end]))
        at = datetime.combine(day, clock_time).replace(tzinfo=tz, fold=draw(st.sampled_from([0, 1])))
        at += draw(st.sampled_from([timedelta(0), timedelta(microseconds=-1), timedelta(microseconds=1)]))
    else:
        at = draw(
            st.datetimes(min_value=datetime(2023, 12, 1), max_value=datetime(2027, 1, 31), timezones=st.just(UTC))
        )
    return window, at, (start_at, end_at)


def brute_is_active(window: ActivityWindow, at: datetime, start_at: datetime | None, end_at: datetime | None) -> bool:
    instant = at.astimezone(UTC)
    local_time = at.astimezone(window.tz)
    in_period = (start_at is None or instant >= start_at) and (end_at is None or instant < end_at)
    weekday = (local_time.date().toordinal() + 6) % 7  # 0001-01-01 was a Monday
    on_day = not window.weekdays or weekday in {int(d) for d in window.weekdays}
    in_hours = True
    if window.hours is not None:
        def us(t: time) -> int:
            return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond

        a, b, t = us(window.hours.start), us(window.hours.end), us(local_time.time())
        in_hours = (t - a) % DAY_US < (b - a) % DAY_US
    return in_period and on_day and in_hours


@settings(max_examples=400)
@given(windows_and_instants())
def test_is_active_is_the_intersection_of_the_four_predicates(
    case: tuple[ActivityWindow, datetime, tuple[datetime | None, datetime | None]],
) -> None:
    window, at, (start_at, end_at) = case
    assert (window.start is None) == (start_at is None)
    if window.start is not None:
        assert window.start.astimezone(UTC) == start_at
    if window.end is not None:
        assert window.end.astimezone(UTC) == end_at
    assert window.is_active(at) == brute_is_active(window, at, start_at, end_at)


@given(windows_and_instants(), st.sampled_from([*PROPERTY_ZONES, "Pacific/Kiritimati", "Etc/GMT+12"]))
def test_is_active_does_not_depend_on_the_zone_the_instant_is_given_in(
    case: tuple[ActivityWindow, datetime, tuple[datetime | None, datetime | None]], zone: str
) -> None:
    window, at, _ = case
    expected = window.is_active(at)
    assert window.is_active(at.astimezone(ZoneInfo(zone))) == expected
    assert window.is_active(at.astimezone(window.tz)) == expected
    assert window.is_active(at.astimezone(timezone(timedelta(hours=-3, minutes=-30)))) == expected


@given(st.data())
def test_naive_start_resolves_to_the_first_moment_the_clock_shows_it(data: st.DataObject) -> None:
    zone = data.draw(st.sampled_from(PROPERTY_ZONES))
    wall_time = data.draw(walls(zone))
    tz = ZoneInfo(zone)
    window = ActivityWindow(tz=tz, start=wall_time)
    assert window.start is not None
    assert window.start.astimezone(UTC) == brute_resolve(wall_time, tz)


DST_ZONES = [zone for zone in PROPERTY_ZONES if transitions(zone)]


@given(st.data())
def test_a_naive_start_or_end_switches_the_rule_exactly_once(data: st.DataObject) -> None:
    # Even when the wall time is skipped or repeated by a DST change: once started, a rule stays
    # started, and once ended it stays ended.
    zone = data.draw(st.sampled_from(DST_ZONES))
    tz = ZoneInfo(zone)
    wall_time = data.draw(walls(zone))
    around = st.timedeltas(min_value=timedelta(hours=-3), max_value=timedelta(hours=3))
    base = brute_resolve(wall_time, tz)
    first, second = sorted(base + data.draw(around) for _ in range(2))
    started = ActivityWindow(tz=tz, start=wall_time)
    ended = ActivityWindow(tz=tz, end=wall_time)
    assert started.is_active(first) <= started.is_active(second)
    assert ended.is_active(first) >= ended.is_active(second)
    assert started.is_active(first) != ended.is_active(first)


def test_a_day_is_24_hours_even_across_a_dst_change() -> None:
    day = parse_duration("1d")
    assert day == timedelta(hours=24)
    qualified = local("2025-03-29T12:00", "Europe/Malta")
    assert (qualified.astimezone(UTC) + day).astimezone(MALTA) == local("2025-03-30T13:00", "Europe/Malta")


# -- the documentation ----------------------------------------------------------------------------


def test_every_test_named_in_rule_timing_doc_exists() -> None:
    root = REPO
    text = (root / "docs" / "rule-timing.md").read_text(encoding="utf-8")
    named = re.findall(r"<!-- test: (tests/[\w./]+)::(\w+) -->", text)
    assert len(named) >= 30
    for path, name in named:
        source = (root / path).read_text(encoding="utf-8")
        assert re.search(rf"^def {name}\(", source, re.MULTILINE), f"{path}::{name} named in the doc does not exist"
