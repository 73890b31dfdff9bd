"""Money events are never applied twice: each user's state remembers the transactions of its money
events (a digest and the event time of each) for ``dedup.payments_horizon_s`` of event time, at most
``dedup.payments_max_per_user`` of them. A repeat found there is not applied at all (no aggregate, no
rule), however long after the short dedup window it comes (the spec: "the deposit event was sent
twice - as result total deposit amount and count are not correct").

Money events are every deposit and withdrawal status the spec defines (``MONEY_EVENT_TYPES``): each
carries a transaction id of its own, and each changes an aggregate (deposit count and total, failed
deposits, withdrawals requested and completed) or triggers rules on payments. Bets and wins are
not: they are too many to remember per user for a month, and the spec's short window is what
covers them.

The memory is one ``bytes`` value in the user's state (so it commits in the batch's one store
transaction, with the aggregates it protects), 12 bytes per transaction: the 8-byte digest of brand
+ event type + transaction id (``dedup_digest``, the same key the short window uses) and the event
time in whole seconds (unsigned 32 bits). It is kept in the order the transactions were applied;
the oldest go first, once older than the horizon (measured against the event being checked) or
beyond the bound. In the stored JSON it is base64: 16 bytes per transaction, 16 kB at the default
bound of 1,000. A repeat of a transaction that already left (over a thousand newer money events of
the user, or older than the horizon) is applied again, as any repeat after the short window was
before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from smartico_stream.engine.state import PAYMENTS_PART
from smartico_stream.events.models import PAYMENT_TYPES, CanonicalEvent, EventType
from smartico_stream.pipeline.dedup import dedup_digest

if TYPE_CHECKING:
    from smartico_stream.config import DedupSettings
    from smartico_stream.engine.state import UserState

MONEY_EVENT_TYPES: frozenset[EventType] = PAYMENT_TYPES
"""deposit, deposit_failed, deposit_cancelled, withdrawal_requested, withdrawal_approved,
withdrawal_completed, withdrawal_rejected, withdrawal_cancelled."""

ENTRY_BYTES = 12  # 8-byte digest + 4-byte event time (seconds)
_MAX_TIME = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class PaymentDedup:
    """How long (event time) and how many money transactions each user's state remembers;
    ``max_per_user`` 0 remembers none (the check is off)."""

    horizon_s: float = 2_592_000.0
    max_per_user: int = 1_000

    @classmethod
    def from_settings(cls, dedup: DedupSettings) -> PaymentDedup | None:
        """The check configured by ``dedup.*``; None when dedup is off or the bound is 0."""
        if not dedup.enabled or dedup.payments_max_per_user <= 0:
            return None
        return cls(dedup.payments_horizon_s, dedup.payments_max_per_user)

    def seen_before(self, state: UserState, event: CanonicalEvent) -> bool:
        """True when ``event`` is a money event whose transaction ``state`` remembers (a repeat: do
        not apply it); otherwise remember it (if it is a money event) and return False."""
        if event.type not in MONEY_EVENT_TYPES:
            return False
        digest = dedup_digest(event.brand_id, event.type, event.event_id).to_bytes(8, "little")
        at = min(max(int(event.event_time.timestamp()), 0), _MAX_TIME)
        oldest = at - self.horizon_s
        ids = state.payment_ids
        # Drop what the horizon passed, oldest first (they are in the order they were applied).
        start = 0
        while start < len(ids) and _time_at(ids, start) < oldest:
            start += ENTRY_BYTES
        if start:
            ids = ids[start:]
        position = ids.find(digest)
        while position != -1:
            if position % ENTRY_BYTES == 0 and _time_at(ids, position) >= oldest:
                if start:
                    state.payment_ids = ids
                    state.changed |= PAYMENTS_PART
                return True
            position = ids.find(digest, position + 1)
        ids += digest + at.to_bytes(4, "little")
        excess = len(ids) - self.max_per_user * ENTRY_BYTES
        state.payment_ids = ids[excess:] if excess > 0 else ids
        state.changed |= PAYMENTS_PART
        return False


def _time_at(ids: bytes, position: int) -> int:
    return int.from_bytes(ids[position + 8 : position + ENTRY_BYTES], "little")


def remembered(state: UserState) -> list[tuple[int, int]]:
    """(digest, event time in seconds) of the transactions ``state`` remembers, oldest first."""
    ids = state.payment_ids
    return [
        (int.from_bytes(ids[p : p + 8], "little"), _time_at(ids, p)) for p in range(0, len(ids), ENTRY_BYTES)
    ]
