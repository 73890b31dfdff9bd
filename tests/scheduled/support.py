"""Helpers of the scheduled-rule tests: a manual clock, rules from YAML text, seeded users."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import yaml

from smartico_stream.engine.scheduled.spec import ScheduledRule, ScheduledRuleSpec, compile_scheduled
from smartico_stream.engine.state import UserState
from smartico_stream.store.base import BatchWrite
from smartico_stream.store.sql import SqlStore

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


class ManualClock:
    """The scheduler's clock in tests: time moves only when the test says so."""

    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> datetime:
        self.at += timedelta(**delta)
        return self.at


def scheduled_rule(text: str | None = None, **fields: Any) -> ScheduledRule:
    base: dict[str, Any] = {
        "id": "weekly-points", "name": "Points for depositors", "segment": "user.deposit_count > 0",
        "schedule": {"type": "now"}, "speed": 60,
        "actions": [{"action": "give_points", "amount": 10}, {"action": "mark_user", "tag": "got-weekly"}],
    }
    if text is not None:
        base = yaml.safe_load(text)
    base.update(fields)
    return compile_scheduled(ScheduledRuleSpec.model_validate(base))


def user(brand: str, user_id: str, **fields: Any) -> UserState:
    state = UserState(brand=brand, user=user_id)
    for name, value in fields.items():
        setattr(state, name, Decimal(value) if name == "points" else value)
    return state


async def seed(store: SqlStore, users: list[UserState]) -> None:
    for start in range(0, len(users), 2000):
        await store.commit(BatchWrite(users=users[start : start + 2000]))
