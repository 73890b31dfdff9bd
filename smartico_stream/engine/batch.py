"""The pipeline's Engine for one batch: evaluates rules on preloaded user states and collects what
the batch changes (states, actions, history) for the store to commit in one transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from smartico_stream.engine.actions import Action
from smartico_stream.engine.base import ALREADY_APPLIED, Outcome
from smartico_stream.engine.evaluator import Evaluation, HistoryEntry, RuleEngine
from smartico_stream.engine.payments import PaymentDedup
from smartico_stream.engine.state import UserState
from smartico_stream.events.models import CanonicalEvent
from smartico_stream.events.raw import PartitionId, UserKey
from smartico_stream.tracebacks import detached


@dataclass
class BatchEngine:
    """Applies each user's events to preloaded states and collects what changed. ``payments``
    skips money events the user's state remembers as applied (None: no such check)."""

    rules: RuleEngine
    states: Mapping[UserKey, UserState]
    payments: PaymentDedup | None = field(default_factory=PaymentDedup)
    touched: dict[UserKey, UserState] = field(default_factory=dict)
    actions: list[tuple[PartitionId, Action]] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)

    def apply_user_events(self, user: UserKey, events: Sequence[CanonicalEvent]) -> list[tuple[int, Outcome]]:
        state = self.states[user]
        self.touched[user] = state
        errors: list[tuple[int, Outcome]] = []
        payments = self.payments
        for index, event in enumerate(events):
            # Before the aggregates and the rules: a repeated deposit changes neither.
            if payments is not None and payments.seen_before(state, event):
                errors.append((index, ALREADY_APPLIED))
                continue
            out = Evaluation()
            try:
                self.rules.evaluate(state, event, out)
            except Exception as exc:  # noqa: BLE001 - reported per event; the caller redoes the batch without it
                errors.append((index, detached(exc)))
                continue
            source = event.source
            partition = (source.topic, source.partition or 0) if source is not None else ("", 0)
            self.actions.extend((partition, action) for action in out.actions)
            self.history.extend(out.history)
        return errors
