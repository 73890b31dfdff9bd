"""A small real engine: per-user event counts and money totals.

It stands in for the rule engine until that lands, and stays useful for the demo and for tests of
ordering: it records the last event applied for each user.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from smartico_stream.engine.base import UserKey
from smartico_stream.events.models import CanonicalEvent, CasinoWin, Payment, SportBetOpen, SportBetSettled


@dataclass
class UserTotals:
    events: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    # (event type, currency or "") -> sum of the event's main amount
    amounts: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    last_event_id: str | None = None
    last_event_time: datetime | None = None


def main_amount(event: CanonicalEvent) -> Decimal | None:
    """The money an event moves, by kind (stake for bets, win for wins, amount for payments)."""
    if isinstance(event, Payment):
        return event.amount
    if isinstance(event, CasinoWin):
        return event.win_amount
    if isinstance(event, SportBetSettled):
        return event.payout
    if isinstance(event, SportBetOpen):
        return event.stake
    return getattr(event, "bet_amount", None)


class UserTotalsEngine:
    """Keeps :class:`UserTotals` per (brand, user) in memory."""

    def __init__(self) -> None:
        self.users: dict[UserKey, UserTotals] = {}
        self.applied = 0

    def apply_user_events(self, user: UserKey, events: Sequence[CanonicalEvent]) -> list[tuple[int, Exception]]:
        totals = self.users.setdefault(user, UserTotals())
        for event in events:
            totals.events += 1
            totals.by_type[event.type] += 1
            amount = main_amount(event)
            if amount is not None:
                slot = (event.type, getattr(event, "currency", None) or "")
                totals.amounts[slot] = totals.amounts.get(slot, Decimal(0)) + amount
            totals.last_event_id = event.event_id
            totals.last_event_time = event.event_time
        self.applied += len(events)
        return []
