"""Audience queries over the store: the exact count by brand, and the fixed audience of a run."""

from __future__ import annotations

from datetime import datetime

from smartico_stream.engine.rules import Rule
from smartico_stream.engine.scheduled.audience import AudienceCounter, document_selector
from smartico_stream.engine.scheduled.spec import ScheduledRule
from smartico_stream.events.raw import UserKey
from smartico_stream.store.scheduled import ScheduleStore


async def _excluded(store: ScheduleStore, rule: Rule | ScheduledRule, at: datetime) -> frozenset[UserKey]:
    if isinstance(rule, ScheduledRule) and rule.not_executed_within is not None:
        return frozenset(await store.executed_since(rule.id, at - rule.not_executed_within))
    return frozenset()


async def count_audience(store: ScheduleStore, rule: Rule | ScheduledRule, at: datetime,
                         brand: str | None = None) -> AudienceCounter:
    """How many stored users (of ``brand``) the rule selects at ``at``, by brand."""
    counter = AudienceCounter(document_selector(rule, at, await _excluded(store, rule, at)))
    async for rows in store.stream_documents(brand):
        counter.add(rows)
    return counter


async def fix_audience(store: ScheduleStore, rule: ScheduledRule, at: datetime) -> list[UserKey]:
    """The users a run of ``rule`` at ``at`` executes for, in (brand, user) order."""
    selects = document_selector(rule, at, await _excluded(store, rule, at))
    return [(brand, user) async for rows in store.stream_documents() for brand, user, document in rows
            if selects(brand, user, document)]
