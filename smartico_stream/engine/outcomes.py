"""What evaluating rules produces, and the changes a firing makes to a user's state.

:class:`Evaluation` collects the actions and history lines of a batch; :class:`HistoryEntry` is one
line of a rule's execution history. The functions below are the state changes shared by the
real-time rule steps (:mod:`smartico_stream.engine.plan`) and scheduled runs
(:mod:`smartico_stream.engine.scheduled.execute`). Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from smartico_stream.engine.actions import Action, ActionKind
from smartico_stream.engine.firing import PointsEffect, points_effect
from smartico_stream.engine.rules import Rule
from smartico_stream.engine.state import ZERO, RuleProgress, UserState
from smartico_stream.events.models import CanonicalEvent

# History outcomes
EXECUTED = "executed"
SKIPPED = "skipped"
QUALIFIED = "qualified"
QUALIFICATION_EXPIRED = "qualification_expired"


@dataclass(slots=True)
class HistoryEntry:
    """One line of a rule's execution history for one user. Treat it as immutable (not ``frozen``
    for speed, as :class:`~smartico_stream.engine.actions.Action`)."""

    brand: str
    user: str
    rule_id: str
    event_id: str
    event_type: str
    event_time: datetime
    outcome: str
    executions: int = 0
    reason: str | None = None
    qualified_at: datetime | None = None
    qualified_until: datetime | None = None


@dataclass(slots=True)
class Evaluation:
    actions: list[Action] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)


def qualify(rule: Rule, progress: RuleProgress, at: datetime) -> None:
    if not progress.is_qualified(at):
        progress.remainder = ZERO  # progress of a lapsed qualification is void
    progress.qualified_at = at
    progress.qualified_until = at + rule.qualification_period if rule.qualification_period else None
    progress.iterations = 0


def void_qualification(progress: RuleProgress) -> None:
    progress.qualified_at = None
    progress.qualified_until = None
    progress.remainder = ZERO


@dataclass(frozen=True, slots=True)
class FiringEffects:
    """What a firing of a rule's actions does to the user's state, resolved once per rule: the
    state after ``executions`` executions, each running the actions in order, is the same as running
    them one execution after the other (as the engine did before one action per firing)."""

    marks: tuple[tuple[ActionKind, Any], ...]  # tag and level changes, in the actions' order
    points: PointsEffect | None  # one execution's effect on the points; None: it has none

    @classmethod
    def of(cls, specs: Iterable[tuple[ActionKind, Mapping[str, Any]]]) -> FiringEffects:
        """The effects of actions (kind, params) as ActionSpec validated them: "amount" a positive
        Decimal, "level" an int."""
        specs = list(specs)
        marks = tuple(
            (kind, int(params["level"]) if kind == ActionKind.CHANGE_LEVEL else str(params["tag"]))
            for kind, params in specs if kind in _MARK_KINDS
        )
        moves_points = any(kind in _POINTS_KINDS for kind, _ in specs)
        return cls(marks, points_effect(specs) if moves_points else None)

    def apply(self, state: UserState, executions: int) -> None:
        """Change ``state`` as ``executions`` executions do."""
        # Tags and level end as the last action touching them left them, however often the executions
        # repeat: one pass is enough. Points add up, and a deduction floors at 0 in each execution, so
        # their N-fold effect is composed exactly (firing.PointsEffect), not taken from the totals.
        for kind, value in self.marks:
            if kind == ActionKind.MARK_USER:
                state.tags.add(value)
            elif kind == ActionKind.UNMARK_USER:
                state.tags.discard(value)
            else:
                state.level = value
        if self.points is not None:
            state.points = self.points.repeated(executions).apply(state.points)


_POINTS_KINDS = frozenset({ActionKind.GIVE_POINTS, ActionKind.DEDUCT_POINTS, ActionKind.RESET_POINTS})
_MARK_KINDS = frozenset({ActionKind.MARK_USER, ActionKind.UNMARK_USER, ActionKind.CHANGE_LEVEL})


def history_entry(state: UserState, event: CanonicalEvent, rule: Rule, outcome: str, *,
                  progress: RuleProgress | None, executions: int = 0, reason: str | None = None) -> HistoryEntry:
    """The history line of ``rule`` for ``event``, with the progress's qualification window."""
    return HistoryEntry(
        brand=state.brand,
        user=state.user,
        rule_id=rule.id,
        event_id=event.event_id,
        event_type=event.type,
        event_time=event.event_time,
        outcome=outcome,
        executions=executions,
        reason=reason,
        qualified_at=progress.qualified_at if progress else None,
        qualified_until=progress.qualified_until if progress else None,
    )
