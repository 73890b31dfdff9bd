"""Schedule arithmetic of scheduled rules: every option, short months, last day, leap day, DST days in
two zones, start/end combinations; properties checked against brute force."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from smartico_stream.engine.scheduled.calendar import ScheduleSpec, next_run_after, runs_between

MALTA = "Europe/Malta"
NEW_YORK = "America/New_York"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def local(zone: str, *parts: int) -> datetime:
    return datetime(*parts, tzinfo=ZoneInfo(zone)).astimezone(UTC)  # type: ignore[misc]


def spec(**fields: object) -> ScheduleSpec:
    return ScheduleSpec.model_validate(fields)


# daily, weekdays ---------------------------------------------------------------------------------


@pytest.mark.parametrize("zone", [MALTA, NEW_YORK])
def test_daily_runs_at_the_local_time_every_day(zone: str) -> None:
    runs = runs_between(spec(type="daily", at="09:00"), zone, utc(2026, 6, 1), utc(2026, 6, 4))
    assert runs == [local(zone, 2026, 6, day, 9) for day in (1, 2, 3)]


@pytest.mark.parametrize(
    ("zone", "day", "jump_utc"),
    [(MALTA, date(2026, 3, 29), utc(2026, 3, 29, 1)), (NEW_YORK, date(2026, 3, 8), utc(2026, 3, 8, 7))],
)
def test_a_missing_wall_time_runs_once_at_the_jump(zone: str, day: date, jump_utc: datetime) -> None:
    # 02:30 does not exist on the spring-forward day: one run, at the moment the clock jumps to 03:00.
    schedule = spec(type="daily", at="02:30")
    runs = runs_between(schedule, zone, utc(day.year, day.month, day.day - 1), utc(day.year, day.month, day.day + 2))
    assert runs[1] == jump_utc
    assert jump_utc.astimezone(ZoneInfo(zone)).time() == time(3, 0)
    assert len(runs) == 3
    assert runs[0].astimezone(ZoneInfo(zone)).time() == time(2, 30)
    assert runs[2].astimezone(ZoneInfo(zone)).time() == time(2, 30)


@pytest.mark.parametrize(
    ("zone", "day", "first_utc"),
    [(MALTA, date(2026, 10, 25), utc(2026, 10, 25, 0, 30)), (NEW_YORK, date(2026, 11, 1), utc(2026, 11, 1, 5, 30))],
)
def test_a_repeated_wall_time_runs_once_at_its_first_occurrence(zone: str, day: date, first_utc: datetime) -> None:
    # 01:30 (New York) / 02:30 (Malta) occurs twice on the fall-back day: one run, the first.
    at = "02:30" if zone == MALTA else "01:30"
    runs = runs_between(spec(type="daily", at=at), zone, utc(day.year, day.month, day.day),
                        utc(day.year, day.month, day.day) + timedelta(days=1))
    assert runs == [first_utc]
    # Asked from between the two occurrences, the next run is the next day's.
    assert next_run_after(spec(type="daily", at=at), zone, first_utc + timedelta(minutes=30)) == (
        first_utc + timedelta(days=1, hours=1)
    )


def test_a_cron_inside_a_skipped_hour_runs_once_and_a_repeated_hour_once() -> None:
    every_15 = spec(type="cron", cron="*/15 * * * *")
    spring = runs_between(every_15, MALTA, utc(2026, 3, 29, 0, 40), utc(2026, 3, 29, 1, 20))
    # 01:45 CET, then 02:00..02:45 (missing) and 03:00 CEST are all 01:00 UTC: one run; then 03:15.
    assert spring == [utc(2026, 3, 29, 0, 45), utc(2026, 3, 29, 1), utc(2026, 3, 29, 1, 15)]
    autumn = runs_between(every_15, MALTA, utc(2026, 10, 25, 0, 20), utc(2026, 10, 25, 2))
    # 02:30 and 02:45 CEST; the second 02:00..02:45 (CET) are repeats: next is 03:00 CET.
    assert autumn == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 0, 45), utc(2026, 10, 25, 2)]


@pytest.mark.parametrize("zone", [MALTA, NEW_YORK])
def test_weekdays(zone: str) -> None:
    # 2026-06-01 is a Monday.
    runs = runs_between(spec(type="weekdays", weekdays=["mon", "fri"], at="10:15"), zone,
                        utc(2026, 6, 1), utc(2026, 6, 15))
    assert runs == [local(zone, 2026, 6, d, 10, 15) for d in (1, 5, 8, 12)]


# days of month -------------------------------------------------------------------------------------


def test_the_31st_is_skipped_in_short_months_by_default() -> None:
    runs = runs_between(spec(type="days_of_month", days=[31], at="09:00"), "UTC", utc(2026, 1, 1), utc(2026, 8, 1))
    assert [r.date() for r in runs] == [date(2026, m, 31) for m in (1, 3, 5, 7)]


def test_the_31st_runs_on_the_last_day_when_asked() -> None:
    runs = runs_between(spec(type="days_of_month", days=[31], at="09:00", missing_day="last_day"), "UTC",
                        utc(2026, 1, 1), utc(2026, 5, 1))
    assert [r.date() for r in runs] == [date(2026, 1, 31), date(2026, 2, 28), date(2026, 3, 31), date(2026, 4, 30)]


def test_last_day_of_month_and_a_day_it_coincides_with_run_once() -> None:
    runs = runs_between(spec(type="days_of_month", days=[30, "last"], at="09:00"), MALTA,
                        utc(2026, 1, 1), utc(2026, 5, 1))
    assert [r.astimezone(ZoneInfo(MALTA)).date() for r in runs] == [
        date(2026, 1, 30), date(2026, 1, 31), date(2026, 2, 28), date(2026, 3, 30), date(2026, 3, 31),
        date(2026, 4, 30),
    ]


def test_leap_day() -> None:
    feb29 = spec(type="days_of_month", days=[29], at="00:00")
    runs = runs_between(feb29, "UTC", utc(2027, 2, 1), utc(2028, 3, 2))
    assert utc(2027, 2, 28) not in runs and utc(2028, 2, 29) in runs
    assert next_run_after(spec(type="days_of_month", days=["last"], at="12:00"), NEW_YORK, utc(2028, 2, 2)) == (
        local(NEW_YORK, 2028, 2, 29, 12)
    )
    clamped = spec(type="days_of_month", days=[29], at="00:00", missing_day="last_day")
    assert utc(2027, 2, 28) in runs_between(clamped, "UTC", utc(2027, 2, 1), utc(2027, 3, 1))


# once, now, cron -----------------------------------------------------------------------------------


def test_once_runs_at_its_instant_only() -> None:
    once = spec(type="once", at="2026-07-01T12:00")
    assert next_run_after(once, NEW_YORK, utc(2026, 1, 1)) == local(NEW_YORK, 2026, 7, 1, 12)
    assert next_run_after(once, NEW_YORK, local(NEW_YORK, 2026, 7, 1, 12)) is None
    assert next_run_after(once, NEW_YORK, utc(2026, 1, 1), ran=True) is None
    with_offset = spec(type="once", at="2026-07-01T12:00+00:00")
    assert next_run_after(with_offset, NEW_YORK, utc(2026, 1, 1)) == utc(2026, 7, 1, 12)


def test_now_runs_at_once_then_never() -> None:
    now = spec(type="now")
    assert next_run_after(now, MALTA, utc(2026, 5, 5, 5)) == utc(2026, 5, 5, 5)
    assert next_run_after(now, MALTA, utc(2026, 5, 5, 5), ran=True) is None
    waiting = spec(type="now", start="2026-06-01T00:00")
    assert next_run_after(waiting, MALTA, utc(2026, 5, 5)) == local(MALTA, 2026, 6, 1)


def test_cron_in_the_rules_zone() -> None:
    weekday_mornings = spec(type="cron", cron="0 9 * * 1-5")
    runs = runs_between(weekday_mornings, NEW_YORK, utc(2026, 6, 5), utc(2026, 6, 9))  # Fri .. Mon
    assert runs == [local(NEW_YORK, 2026, 6, 5, 9), local(NEW_YORK, 2026, 6, 8, 9)]
    last_day = spec(type="cron", cron="0 9 L * *")
    assert next_run_after(last_day, "UTC", utc(2026, 2, 1)) == utc(2026, 2, 28, 9)
    assert next_run_after(spec(type="cron", cron="0 0 30 2 *"), "UTC", utc(2026, 1, 1)) is None


# start and end ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "expected_days"),
    [
        (None, None, [1, 2, 3, 4, 5]),
        ("2026-06-03T00:00", None, [3, 4, 5]),
        (None, "2026-06-03T09:00", [1, 2]),  # end is exclusive
        ("2026-06-02T09:00", "2026-06-04T09:00:01", [2, 3, 4]),  # start inclusive
    ],
)
def test_start_and_end(start: str | None, end: str | None, expected_days: list[int]) -> None:
    schedule = spec(type="daily", at="09:00", start=start, end=end)
    runs = runs_between(schedule, MALTA, utc(2026, 6, 1), utc(2026, 6, 5, 8))
    assert runs == [local(MALTA, 2026, 6, d, 9) for d in expected_days]


def test_end_past_stops_the_schedule() -> None:
    schedule = spec(type="weekdays", weekdays=["sun"], at="09:00", end="2026-01-01T00:00")
    assert next_run_after(schedule, MALTA, utc(2026, 6, 1)) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "daily"}, "needs at"),
        ({"type": "daily", "at": "25:00"}, "invalid time"),
        ({"type": "weekdays", "at": "09:00"}, "needs weekdays"),
        ({"type": "weekdays", "at": "09:00", "weekdays": ["funday"]}, "unknown weekday"),
        ({"type": "days_of_month", "at": "09:00", "days": [32]}, "less than or equal to 31"),
        ({"type": "cron", "cron": "every day"}, "invalid cron"),
        ({"type": "once", "at": "tomorrow"}, "date-time"),
        ({"type": "now", "at": "09:00"}, "does not take at"),
        ({"type": "daily", "at": "09:00", "missing_day": "skip"}, "days_of_month schedules only"),
        ({"type": "daily", "at": "09:00", "start": "2026-02-01", "end": "2026-01-01"}, "start must be before end"),
    ],
)
def test_bad_schedules_are_refused_with_the_reason(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ScheduleSpec.model_validate(fields)


# properties ------------------------------------------------------------------------------------------

instants = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC))
zones = st.sampled_from([MALTA, NEW_YORK, "UTC", "Australia/Lord_Howe"])
clocks = st.times().map(lambda t: t.replace(microsecond=0))


@given(after=instants, zone=zones, at=clocks)
def test_daily_next_run_is_the_first_local_occurrence(after: datetime, zone: str, at: time) -> None:
    schedule = ScheduleSpec(type="daily", at=at.isoformat())
    found = next_run_after(schedule, zone, after)
    assert found is not None and after < found <= after + timedelta(hours=27)
    shown = found.astimezone(ZoneInfo(zone))
    # The local clock shows the time, or it is the moment of a jump over it.
    before_jump = (found - timedelta(microseconds=1)).astimezone(ZoneInfo(zone))
    assert shown.time() == at or before_jump.time() < at < shown.time() or shown.time() < at
    # Nothing is skipped: asking just before the run finds that same run.
    assert next_run_after(schedule, zone, found - timedelta(microseconds=1)) == found
    # A repeated wall time never runs twice: the next run is on another local day.
    following = next_run_after(schedule, zone, found)
    assert following is not None and following.astimezone(ZoneInfo(zone)).date() > shown.date()


def _brute_force_days(days: list[int | str], skip: bool, first: date, last: date) -> list[date]:
    found = []
    day = first
    while day <= last:
        length = calendar.monthrange(day.year, day.month)[1]
        wanted = {length if d == "last" else d for d in days}
        if not skip and any(isinstance(d, int) and d > length for d in days):
            wanted.add(length)
        if day.day in wanted:
            found.append(day)
        day += timedelta(days=1)
    return found


@given(
    days=st.lists(st.one_of(st.integers(1, 31), st.just("last")), min_size=1, max_size=4),
    skip=st.booleans(),
    start=st.dates(min_value=date(2024, 1, 1), max_value=date(2030, 1, 1)),
)
def test_days_of_month_matches_brute_force(days: list[int | str], skip: bool, start: date) -> None:
    schedule = ScheduleSpec(type="days_of_month", days=days, at="06:00", missing_day="skip" if skip else "last_day")
    after = datetime.combine(start, time(), tzinfo=UTC)
    until = after + timedelta(days=800)
    got = [r.date() for r in runs_between(schedule, "UTC", after, until)]
    assert got == _brute_force_days(days, skip, start, until.date() - timedelta(days=1))


@given(after=instants, zone=zones, weekdays=st.sets(st.integers(0, 6), min_size=1))
def test_weekday_runs_fall_on_the_weekdays_only(after: datetime, zone: str, weekdays: set[int]) -> None:
    schedule = ScheduleSpec(type="weekdays", weekdays=sorted(weekdays), at="12:00")
    runs = runs_between(schedule, zone, after, after + timedelta(days=21))
    assert runs and all(r.astimezone(ZoneInfo(zone)).weekday() in weekdays for r in runs)
    assert len(runs) in (3 * len(weekdays), 3 * len(weekdays) - 1, 3 * len(weekdays) + 1)
