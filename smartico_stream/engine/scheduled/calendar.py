"""When a scheduled automation rule runs: its schedule, and the arithmetic of its next run.

A schedule is one of

- ``daily``: every day at ``at`` (``"HH:MM"`` or ``"HH:MM:SS"``);
- ``weekdays``: at ``at`` on the given ``weekdays`` (``[mon, fri]``);
- ``days_of_month``: at ``at`` on the given ``days`` (1..31 and ``last``). A day the month lacks
  (the 31st in April, the 29th in February of a common year) is skipped by default
  (``missing_day: skip``, as cron does); with ``missing_day: last_day`` it runs on the month's last
  day instead. ``last`` is always the month's last day (28, 29, 30 or 31). Two days that fall on the
  same date in a month (``[30, last]`` in April) run once;
- ``once``: one time, at the instant ``at`` (a date-time);
- ``now``: one time, as soon as the scheduler sees the rule (then the rule is executed);
- ``cron``: a custom schedule, a five-field cron expression (``"0 9 * * 1-5"``; croniter's syntax,
  ``L`` for the last day of the month included), read on the rule's local clock.

Each may have a ``start`` and an ``end`` (both, one or neither: neither runs until stopped); a run
instant is at or after the start and before the end (exclusive, as for real-time rules).

Times are wall times in the rule's zone. On the day clocks go forward, a wall time that does not
exist runs once, at the moment of the jump (02:30 in Europe/Malta on the last Sunday of March runs
at 03:00 CEST, 01:00 UTC); on the day they go back, a wall time that occurs twice runs once, at its
first occurrence. Several wall times inside a skipped hour (a cron every 15 minutes) fall on the
same instant and make one run. This is :mod:`smartico_stream.engine.schedule`'s rule for a start
or end given as a wall time ("the first moment the local clock shows that time or later").

All functions here are pure.
"""

from __future__ import annotations

import calendar as _calendar
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from smartico_stream.engine.schedule import Weekday, _resolve_wall_time, _zone

__all__ = ["LAST", "MissingDay", "ScheduleSpec", "next_run_after", "runs_between"]

LAST = "last"
# How far ahead a schedule is searched before it is declared to never run again (a cron such as
# "0 0 30 2 *", February 30th, has no instant at all).
_HORIZON = timedelta(days=366 * 30)


class MissingDay(StrEnum):
    SKIP = "skip"
    LAST_DAY = "last_day"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _clock(value: str | time) -> time:
    if isinstance(value, time):
        return value
    text = str(value).strip()
    try:
        parsed = time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"invalid time {value!r}: expected HH:MM or HH:MM:SS, e.g. '09:00'") from None
    if parsed.tzinfo is not None:
        raise ValueError(f"time {value!r} has an offset; times are local to the rule's timezone")
    return parsed


class ScheduleSpec(_Spec):
    """A scheduled rule's ``schedule``, as written in YAML (see the module notes)."""

    type: Literal["daily", "weekdays", "days_of_month", "once", "now", "cron"]
    at: str | None = Field(default=None, description="HH:MM for daily/weekdays/days_of_month; a date-time for once")
    weekdays: list[str | int] = Field(default_factory=list)
    days: list[Annotated[int, Field(ge=1, le=31)] | Literal["last"]] = Field(default_factory=list)
    missing_day: MissingDay = MissingDay.SKIP
    cron: str | None = None
    start: datetime | None = Field(default=None, description="wall time in the rule's zone, or with an offset")
    end: datetime | None = Field(default=None, description="exclusive")

    @field_validator("weekdays")
    @classmethod
    def _weekday_names(cls, value: list[str | int]) -> list[str | int]:
        for day in value:
            Weekday.parse(day)
        return value

    @model_validator(mode="after")
    def _fields_of_type(self) -> ScheduleSpec:
        needs: dict[str, set[str]] = {
            "daily": {"at"}, "weekdays": {"at", "weekdays"}, "days_of_month": {"at", "days"},
            "once": {"at"}, "now": set(), "cron": {"cron"},
        }
        given = {name for name in ("at", "weekdays", "days", "cron") if getattr(self, name)}
        missing = sorted(needs[self.type] - given)
        if missing:
            raise ValueError(f"a {self.type} schedule needs {', '.join(missing)}")
        extra = sorted(given - needs[self.type])
        if extra:
            raise ValueError(f"a {self.type} schedule does not take {', '.join(extra)}")
        if "missing_day" in self.model_fields_set and self.type != "days_of_month":
            raise ValueError("missing_day applies to days_of_month schedules only")
        if self.type in ("daily", "weekdays", "days_of_month"):
            _clock(self.at or "")
        if self.type == "once":
            try:
                datetime.fromisoformat(str(self.at).strip())
            except ValueError:
                raise ValueError(
                    f"invalid at {self.at!r}: a once schedule takes a date-time such as '2025-03-03T09:00'"
                ) from None
        if self.type == "cron" and (not croniter.is_valid(str(self.cron)) or len(str(self.cron).split()) != 5):
            raise ValueError(f"invalid cron expression {self.cron!r}: expected five fields, e.g. '0 9 * * 1-5'")
        if self.start is not None and self.end is not None and _naive_key(self.start) >= _naive_key(self.end):
            raise ValueError("start must be before end")
        return self


def _naive_key(moment: datetime) -> datetime:
    # Only for the start < end check at validation time, when the zone is not known here.
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _instant(moment: datetime, zone: ZoneInfo) -> datetime:
    """``moment`` in UTC; a naive one is a wall time in ``zone`` (missing: the jump; repeated: the first)."""
    if moment.tzinfo is not None and moment.utcoffset() is not None:
        return moment.astimezone(UTC)
    return _resolve_wall_time(moment, zone)


def _walls(spec: ScheduleSpec, zone: ZoneInfo, from_wall: datetime) -> Iterator[datetime]:
    """Candidate wall times (naive, local to ``zone``) at or after ``from_wall``, ascending."""
    if spec.type in ("daily", "weekdays"):
        at = _clock(spec.at or "")
        days = frozenset(Weekday.parse(d) for d in spec.weekdays)
        day = from_wall.date()
        while True:
            if not days or Weekday(day.weekday()) in days:
                wall = datetime.combine(day, at)
                if wall >= from_wall:
                    yield wall
            day += timedelta(days=1)
    elif spec.type == "days_of_month":
        at = _clock(spec.at or "")
        year, month = from_wall.year, from_wall.month
        while True:
            for day_of_month in month_days(spec, year, month):
                wall = datetime.combine(date(year, month, day_of_month), at)
                if wall >= from_wall:
                    yield wall
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    elif spec.type == "cron":
        # croniter walks naive wall times; each is resolved to an instant by the caller. Started a
        # microsecond before from_wall so that from_wall itself can match.
        walker = croniter(str(spec.cron), from_wall - timedelta(microseconds=1))
        while True:
            try:
                yield walker.get_next(datetime)
            except CroniterBadDateError:  # no date matches within croniter's own search bound
                return


def month_days(spec: ScheduleSpec, year: int, month: int) -> list[int]:
    """The days of ``month`` a ``days_of_month`` schedule runs on, ascending, without repeats."""
    length = _calendar.monthrange(year, month)[1]
    found: set[int] = set()
    for day in spec.days:
        if day == LAST:
            found.add(length)
        elif isinstance(day, int) and day <= length:
            found.add(day)
        elif spec.missing_day == MissingDay.LAST_DAY:
            found.add(length)
    return sorted(found)


def next_run_after(spec: ScheduleSpec, tz: str | ZoneInfo, after: datetime, *, ran: bool = False) -> datetime | None:
    """The first run instant (UTC) strictly after ``after``, or ``None`` if the schedule never runs
    again.

    ``ran`` says whether a one-time schedule (``once``, ``now``) has run already: ``now`` runs at
    ``after`` itself (at once) unless it has; ``once`` runs at its instant if that is after
    ``after`` and it has not run.

    :raises ValueError: if ``after`` is naive.
    """
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("after must be a timezone-aware datetime")
    zone = _zone(tz)
    after = after.astimezone(UTC)
    start = None if spec.start is None else _instant(spec.start, zone)
    end = None if spec.end is None else _instant(spec.end, zone)
    if spec.type in ("once", "now"):
        if ran:
            return None
        if spec.type == "now":
            moment = after if start is None or after >= start else start
        else:
            moment = _instant(datetime.fromisoformat(str(spec.at).strip()), zone)
            if moment <= after or (start is not None and moment < start):
                return None
        return moment if end is None or moment < end else None
    floor = after if start is None or start <= after else start - timedelta(microseconds=1)
    # Wall times a little before the floor's own can resolve after it (a skipped hour resolves to
    # the jump): start the walk three hours earlier and let the instant test decide.
    from_wall = floor.astimezone(zone).replace(tzinfo=None) - timedelta(hours=3)
    limit = floor + _HORIZON
    for wall in _walls(spec, zone, from_wall):
        moment = _resolve_wall_time(wall, zone)
        if moment <= floor:
            continue
        if (end is not None and moment >= end) or moment > limit:
            return None
        return moment
    return None  # pragma: no cover - the walks are endless


def runs_between(spec: ScheduleSpec, tz: str | ZoneInfo, after: datetime, until: datetime,
                 *, ran: bool = False) -> list[datetime]:
    """Every run instant in ``(after, until]``, ascending (for a timeline such as ``simulate``'s)."""
    found: list[datetime] = []
    moment = next_run_after(spec, tz, after, ran=ran)
    while moment is not None and moment <= until:
        found.append(moment)
        if spec.type in ("once", "now"):
            break
        moment = next_run_after(spec, tz, moment)
    return found
