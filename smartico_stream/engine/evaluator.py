"""Rule evaluation: one user's state plus one event gives state changes, actions and history.

Pure and deterministic: no clock (rules run on event time), no I/O. The order for each event:
fold the event into the user's aggregates, then run the steps of the rules the event can fire
(:mod:`smartico_stream.engine.plan`), in priority order, each seeing the effects (points, tags,
level) of the rules before it.
"""

from __future__ import annotations

from smartico_stream.engine.outcomes import (
    EXECUTED,
    QUALIFICATION_EXPIRED,
    QUALIFIED,
    SKIPPED,
    Evaluation,
    HistoryEntry,
)
from smartico_stream.engine.plan import compile_plan
from smartico_stream.engine.rules import RuleSet
from smartico_stream.engine.state import UserState, apply_event
from smartico_stream.events.models import CanonicalEvent

__all__ = ["EXECUTED", "QUALIFICATION_EXPIRED", "QUALIFIED", "SKIPPED", "Evaluation", "HistoryEntry", "RuleEngine"]


class RuleEngine:
    """Evaluates a rule set, compiled into a plan per event type; holds no per-user state."""

    def __init__(self, rules: RuleSet) -> None:
        self._rules = rules
        self._plan = compile_plan(rules)

    @property
    def rules(self) -> RuleSet:
        """The rule set in effect. Assigning one (a reload, a rule stopped or started) compiles its
        plan; do it between two batches."""
        return self._rules

    @rules.setter
    def rules(self, rules: RuleSet) -> None:
        self._plan = compile_plan(rules)
        self._rules = rules

    def evaluate(self, state: UserState, event: CanonicalEvent, out: Evaluation) -> None:
        """Apply ``event`` to ``state`` (mutated in place) and append actions and history to ``out``."""
        apply_event(state, event)
        for step in self._plan.steps_for(event.type):
            step(state, event, out)
