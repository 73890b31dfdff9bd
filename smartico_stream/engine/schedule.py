"""When a real-time automation rule is active: activity period, weekdays and active hours.

A rule has a time zone (an IANA name, ``"UTC"`` by default). Whether it is active is decided on the
*event's* time (never the clock of the machine processing it), converted to the rule's zone. An
:class:`ActivityWindow` is active at an instant iff all of these hold:

1. no start, or the instant is at or after the start;
2. no end, or the instant is before the end (the end is exclusive);
3. no weekdays, or the local calendar day of the instant is one of them;
4. no active hours, or the local time of day is within them (``[start, end)``, wrapping past
   midnight when ``start > end``).

Wall times given without an offset are local times in the rule's zone. On the day clocks go forward
a wall time can be missing; on the day they go back one can occur twice. A start or end given as such
a wall time means *the first moment the rule's local clock shows that time or later*: the moment of
the jump for a missing time, the first occurrence for a repeated one. Active hours are compared with
the local clock reading as it is, so a 02:00-04:00 window lasts one hour on the spring-forward day
and three on the fall-back day.

All functions here are pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from enum import IntEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["ActiveHours", "ActivityWindow", "Weekday", "parse_duration"]


class Weekday(IntEnum):
    """Days of the week, numbered like :meth:`datetime.weekday` (Monday is 0)."""

    MON = 0
    TUE = 1
    WED = 2
    THU = 3
    FRI = 4
    SAT = 5
    SUN = 6

    @classmethod
    def parse(cls, value: str | int) -> Weekday:
        """A weekday from ``"mon"``..``"sun"``, ``"monday"``..``"sunday"`` (any case) or 0..6.

        :raises ValueError: for anything else, listing the valid names.
        """
        if isinstance(value, Weekday):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value <= 6:
                return cls(value)
            raise ValueError(f"weekday number must be 0 (Monday) to 6 (Sunday), got {value}")
        if isinstance(value, str):
            found = _WEEKDAY_NAMES.get(value.strip().lower())
            if found is not None:
                return found
            raise ValueError(f"unknown weekday {value!r}; expected one of {', '.join(_WEEKDAY_LIST)}")
        raise TypeError(f"weekday must be a name or a number, got {type(value).__name__}")


_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAY_NAMES: dict[str, Weekday] = {
    **{name[:3]: Weekday(i) for i, name in enumerate(_FULL_NAMES)},
    **{name: Weekday(i) for i, name in enumerate(_FULL_NAMES)},
}
_WEEKDAY_LIST = [name[:3] for name in _FULL_NAMES] + list(_FULL_NAMES)


@dataclass(frozen=True, slots=True)
class ActiveHours:
    """A daily time-of-day window ``[start, end)`` in the rule's local time.

    ``start > end`` wraps past midnight (``22:00-02:00`` is 22:00 to 02:00 the next morning).
    ``start == end`` is refused as ambiguous: to be active all day, set no active hours.
    """

    start: time
    end: time

    def __post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if not isinstance(value, time):
                raise TypeError(f"active hours {name} must be a datetime.time, got {type(value).__name__}")
            if value.tzinfo is not None:
                raise ValueError(f"active hours {name} must be a local time without a zone (the rule's zone applies)")
        if self.start == self.end:
            raise ValueError(
                f"active hours start and end are both {self.start.isoformat()}; "
                "to be active all day, use no active_hours"
            )

    @property
    def wraps(self) -> bool:
        """True when the window runs past midnight (``start > end``)."""
        return self.start > self.end

    def contains(self, local: time) -> bool:
        """Whether the local time of day ``local`` is within ``[start, end)``."""
        local = local.replace(tzinfo=None, fold=0)
        if self.wraps:
            return local >= self.start or local < self.end
        return self.start <= local < self.end

    @classmethod
    def parse(cls, start: str | time, end: str | time) -> ActiveHours:
        """Active hours from ``"HH:MM"`` or ``"HH:MM:SS"`` (24-hour) texts or :class:`time` values.

        ``end`` may be ``"24:00"``, meaning midnight at the end of the day (``"18:00"``-``"24:00"``
        is the evening until midnight).

        :raises ValueError: for malformed or out-of-range times, or ``start == end``.
        """
        return cls(_parse_clock("start", start, allow_24=False), _parse_clock("end", end, allow_24=True))


_CLOCK = re.compile(r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?", re.ASCII)


def _parse_clock(name: str, value: str | time, *, allow_24: bool) -> time:
    if isinstance(value, time):
        return value
    if not isinstance(value, str):
        raise TypeError(f"active hours {name} must be a string like '09:00', got {type(value).__name__}")
    text = value.strip()
    match = _CLOCK.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid active hours {name} {value!r}: expected HH:MM or HH:MM:SS (24-hour clock)")
    hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
    if allow_24 and (hour, minute, second) == (24, 0, 0):
        return time(0, 0)
    if hour > 23 or minute > 59 or second > 59:
        limit = "00:00 to 23:59:59" + (", or 24:00" if allow_24 else "")
        raise ValueError(f"invalid active hours {name} {value!r}: out of range ({limit})")
    return time(hour, minute, second)


@dataclass(frozen=True, slots=True)
class ActivityWindow:
    """When a rule is active: an optional period, optional weekdays and optional daily hours.

    ``start`` and ``end`` may be naive (a local wall time in ``tz``) or aware; both are stored as
    aware datetimes in ``tz``. A naive wall time that is missing or repeated because of a DST change
    resolves to the first moment the local clock shows that time or later. ``end`` is exclusive.
    Use :meth:`build` to construct one from configuration values.
    """

    tz: ZoneInfo
    start: datetime | None = None
    end: datetime | None = None
    weekdays: frozenset[Weekday] = frozenset()
    hours: ActiveHours | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tz, tzinfo):
            raise TypeError(f"tz must be a ZoneInfo, got {type(self.tz).__name__}")
        start = None if self.start is None else _to_zone(self.start, self.tz)
        end = None if self.end is None else _to_zone(self.end, self.tz)
        if start is not None and end is not None and _utc(end) <= _utc(start):
            raise ValueError(f"activity period end {end.isoformat()} must be after its start {start.isoformat()}")
        if self.hours is not None and not isinstance(self.hours, ActiveHours):
            raise TypeError(f"hours must be ActiveHours, got {type(self.hours).__name__}")
        weekdays = frozenset(Weekday.parse(d) for d in self.weekdays)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "weekdays", weekdays)

    def __eq__(self, other: object) -> bool:
        # Compare start and end as instants: Python compares two datetimes of the same zone by
        # wall time alone, so the two 02:30s of a fall-back night would otherwise look equal.
        if not isinstance(other, ActivityWindow):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[object, ...]:
        return (
            self.tz,
            None if self.start is None else _utc(self.start),
            None if self.end is None else _utc(self.end),
            self.weekdays,
            self.hours,
        )

    def is_active(self, at: datetime) -> bool:
        """Whether the rule is active at the instant ``at`` (an aware datetime, in any zone).

        Weekdays and hours are judged on ``at`` converted to the rule's zone: a window that wraps
        past midnight belongs, for the weekday check, to the local calendar day of the event.

        :raises ValueError: if ``at`` is naive.
        """
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("at must be a timezone-aware datetime (event time)")
        instant = _utc(at)
        if self.start is not None and instant < _utc(self.start):
            return False
        if self.end is not None and instant >= _utc(self.end):
            return False
        local = at.astimezone(self.tz)
        if self.weekdays and Weekday(local.weekday()) not in self.weekdays:
            return False
        return self.hours is None or self.hours.contains(local.time())

    @classmethod
    def build(
        cls,
        tz: str | ZoneInfo = "UTC",
        start: str | datetime | None = None,
        end: str | datetime | None = None,
        weekdays: Iterable[str | int] = (),
        active_hours: tuple[str | time, str | time] | None = None,
    ) -> ActivityWindow:
        """A validated window from configuration values.

        :param tz: IANA time zone name of the rule, such as ``"Europe/Malta"``.
        :param start: ISO 8601 date-time (``"2025-03-03T08:00"`` or ``"2025-03-03 08:00"``); without an
            offset it is a wall time in ``tz``. A bare date means 00:00 of that day.
        :param end: like ``start``; exclusive.
        :param weekdays: names (``"sat"``, ``"Saturday"``) or numbers (0 = Monday); empty = every day.
        :param active_hours: ``(start, end)`` as ``"HH:MM"`` texts; see :meth:`ActiveHours.parse`.
        :raises ValueError: with a message naming the bad value.
        """
        zone = _zone(tz)
        if isinstance(weekdays, str):
            raise ValueError(
                f"weekdays must be a list of day names such as ['sat', 'sun'], got the string {weekdays!r}"
            )
        days = frozenset(Weekday.parse(d) for d in weekdays)
        hours = None if active_hours is None else _parse_hours(active_hours)
        return cls(
            tz=zone,
            start=_parse_datetime("start", start),
            end=_parse_datetime("end", end),
            weekdays=days,
            hours=hours,
        )


def _parse_hours(active_hours: tuple[str | time, str | time]) -> ActiveHours:
    if isinstance(active_hours, str) or len(active_hours) != 2:
        raise ValueError(f"active_hours must be a (start, end) pair such as ('09:00', '18:00'), got {active_hours!r}")
    return ActiveHours.parse(active_hours[0], active_hours[1])


def _zone(tz: str | ZoneInfo) -> ZoneInfo:
    if isinstance(tz, ZoneInfo):
        return tz
    if not isinstance(tz, str):
        raise TypeError(f"tz must be an IANA time zone name, got {type(tz).__name__}")
    try:
        return ZoneInfo(tz.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {tz!r}; expected an IANA name such as 'UTC' or 'Europe/Malta'"
        ) from None


def _parse_datetime(name: str, value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{name} must be an ISO 8601 date-time string or a datetime, got {type(value).__name__}")
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"invalid {name} {value!r}: expected an ISO 8601 date-time such as '2025-03-03T08:00' "
            "(local time in the rule's zone) or '2025-03-03T08:00+01:00'"
        ) from None


def _utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC)


def _to_zone(dt: datetime, tz: tzinfo) -> datetime:
    """``dt`` as an aware datetime in ``tz``; a naive ``dt`` is a wall time in ``tz``."""
    if dt.tzinfo is not None and dt.utcoffset() is not None:
        return dt.astimezone(tz)
    return _resolve_wall_time(dt.replace(tzinfo=None), tz).astimezone(tz)


def _resolve_wall_time(wall: datetime, tz: tzinfo) -> datetime:
    """The first instant (in UTC) at which the local clock in ``tz`` shows ``wall`` or later.

    That is ``wall`` itself when it exists once, its first occurrence when a fall-back makes it
    occur twice, and the moment of the jump when a spring-forward skips it.
    """
    first = wall.replace(tzinfo=tz, fold=0)
    if _utc(first).astimezone(tz).replace(tzinfo=None) == wall:
        # It exists; fold=0 is the earlier of two occurrences when there are two.
        return _utc(first)
    # Skipped: fold=1 maps with the offset after the jump (an instant before it), fold=0 with the
    # offset before (an instant after it). Find the jump between them, to the microsecond.
    lo = _utc(wall.replace(tzinfo=tz, fold=1))
    hi = _utc(first)
    if lo > hi:
        lo, hi = hi, lo
    before = lo.astimezone(tz).utcoffset()
    while hi - lo > timedelta(microseconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi


_DURATION = re.compile(
    r"(?:(?P<w>[0-9]+)w)?(?:(?P<d>[0-9]+)d)?(?:(?P<h>[0-9]+)h)?(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?",
    re.ASCII | re.IGNORECASE,
)
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(text: str) -> timedelta:
    """A positive duration from text such as ``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``, ``"2w"``.

    Units may be combined, largest first and each at most once, without spaces: ``"1h30m"``,
    ``"1d12h"``, ``"2w3d"``. Whole numbers only (write ``"1h30m"``, not ``"1.5h"``). Case and
    surrounding spaces are ignored.

    :raises ValueError: for anything else, or a zero or too large duration.
    """
    if not isinstance(text, str):
        raise TypeError(f"duration must be a string such as '30m', got {type(text).__name__}")
    stripped = text.strip()
    match = _DURATION.fullmatch(stripped)
    if not stripped or match is None:
        raise ValueError(
            f"invalid duration {text!r}: expected whole numbers with units w, d, h, m, s, "
            "largest first, e.g. '90s', '30m', '24h', '7d', '2w' or '1h30m'"
        )
    parts = {_UNITS[unit]: int(value) for unit, value in match.groupdict().items() if value is not None}
    try:
        duration = timedelta(**parts)
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: too large") from None
    if duration <= timedelta(0):
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return duration
