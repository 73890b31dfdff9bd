"""The audience of a rule: the users its segment and extra conditions select, on the state of users
at one instant ("the exact number of users included in the segment, based on the state of users on
the current date"). Pure: the caller streams the stored users through it.

Counting a million users is dominated by decoding their states: :meth:`UserState.from_json` builds
every one of ~60 fields (about 15 us a user here). :func:`state_decoder` builds a view holding only
the fields the rule's conditions read, typed exactly as ``from_json`` types them (about 1.5 us), and
conditions read a view as they read a state (``getattr``). ``tests/scheduled/test_audience.py``
checks that the two always select the same users.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import MISSING, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from smartico_stream.engine.conditions import ALWAYS
from smartico_stream.engine.rules import Rule
from smartico_stream.engine.scheduled.spec import ScheduledRule
from smartico_stream.engine.state import (
    _DATETIME_FIELDS,
    _DECIMAL_MAP_FIELDS,
    _OPTIONAL_DECIMAL_FIELDS,
    UserState,
)
from smartico_stream.events.models import AccountStatus
from smartico_stream.events.raw import UserKey

__all__ = ["AudienceCounter", "conditions_of", "document_selector", "selector", "state_decoder"]


def selector(rule: Rule | ScheduledRule, excluded: frozenset[UserKey] = frozenset()) -> Callable[[UserState, datetime],
                                                                                              bool]:
    """The audience test of a real-time rule (its segment) or a scheduled rule (segment, extra
    conditions, and not one of ``excluded``: the users ``not_executed_within`` leaves out)."""
    if isinstance(rule, ScheduledRule):
        def scheduled(state: UserState, at: datetime) -> bool:
            return rule.selects(state, at) and (not excluded or (state.brand, state.user) not in excluded)
        return scheduled
    segment = rule.segment

    def real_time(state: UserState, at: datetime) -> bool:
        return segment(state, None, at)
    return real_time


DocumentTest = Callable[[str, str, bytes], bool]


def document_selector(rule: Rule | ScheduledRule, at: datetime,
                      excluded: frozenset[UserKey] = frozenset()) -> DocumentTest:
    """The audience test on a stored row ``(brand, user, state document)`` at ``at``: the same
    answer as :func:`selector` on the decoded state, decoding only what the conditions read."""
    tests = [c.evaluate for c in conditions_of(rule) if c is not ALWAYS]
    decode = state_decoder(set().union(*(c.fields for c in conditions_of(rule))))

    def selects(brand: str, user: str, document: bytes) -> bool:
        if excluded and (brand, user) in excluded:
            return False
        if not tests:
            return True
        view = decode(document)
        for test in tests:  # noqa: SIM110 - a plain loop: all() over a generator costs a frame per user
            if not test(view, None, at):
                return False
        return True

    return selects


class AudienceCounter:
    """Counts, by brand, the stored rows an audience test takes."""

    def __init__(self, selects: DocumentTest) -> None:
        self._selects = selects
        self.by_brand: Counter[str] = Counter()
        self.seen = 0

    def add(self, rows: Iterable[tuple[str, str, bytes]]) -> None:
        selects = self._selects
        counts = self.by_brand
        for brand, user, document in rows:
            self.seen += 1
            if selects(brand, user, document):
                counts[brand] += 1

    @property
    def total(self) -> int:
        return sum(self.by_brand.values())


def conditions_of(rule: Rule | ScheduledRule) -> tuple[Any, ...]:
    """The compiled conditions that decide a rule's audience."""
    if isinstance(rule, ScheduledRule):
        return (rule.segment, *rule.conditions)
    return (rule.segment,)


class _View:
    """The fields of one user state that some conditions read (see :func:`state_decoder`)."""


def _datetime(value: Any) -> Any:
    return datetime.fromisoformat(value) if value else None


def _decimal_map(value: Any) -> dict[str, Decimal]:
    return {k: Decimal(v) for k, v in (value or {}).items()}


def _converter(name: str) -> Callable[[Any], Any]:
    if name in _DATETIME_FIELDS:
        return _datetime
    if name in _DECIMAL_MAP_FIELDS:
        return _decimal_map
    if name in _OPTIONAL_DECIMAL_FIELDS or name == "points":
        return Decimal
    if name == "tags":
        return set
    return lambda value: value


_DEFAULTS: dict[str, Callable[[], Any]] = {
    f.name: (f.default_factory if f.default_factory is not MISSING else (lambda d=f.default: d))  # type: ignore[misc]
    for f in fields(UserState)
}


def state_decoder(field_names: Iterable[str]) -> Callable[[bytes], Any]:
    """A decoder of stored state documents into views holding ``field_names`` (``user.*``, as in
    :attr:`Condition.fields`), plus ``brand`` and ``user``; each typed as :meth:`UserState.from_json`
    types it, absent ones at the dataclass default."""
    names = {"brand", "user"} | {name.split(".")[1] for name in field_names if name.startswith("user.")}
    active = "is_active" in names
    names.discard("is_active")
    if active:
        names.add("account_status")
    plan = [(name, _converter(name), _DEFAULTS[name]) for name in sorted(names) if name in _DEFAULTS]
    loads = orjson.loads
    active_values = (None, AccountStatus.ACTIVE)

    def decode(raw: bytes) -> Any:
        document = loads(raw)
        view = _View()
        values = view.__dict__
        for name, convert, default in plan:
            value = document.get(name)
            values[name] = default() if value is None else convert(value)
        if active:
            values["is_active"] = values["account_status"] in active_values
        return view

    return decode
