"""Rule evaluation: one user's state plus one event gives state changes, actions and history.

Pure and deterministic: no clock (rules run on event time), no I/O. The order for each event:
fold the event into the user's aggregates, then run the rules it can fire in priority order, each
seeing the effects (points, tags, level) of the rules before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from smartico_stream.engine.accumulation import accrue, step_for_currency
from smartico_stream.engine.actions import Action, ActionKind, action_id
from smartico_stream.engine.firing import params_for_executions, points_after
from smartico_stream.engine.rules import Rule, RuleSet
from smartico_stream.engine.state import ZERO, RuleProgress, UserState, apply_event
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


class RuleEngine:
    """Evaluates a rule set; holds no per-user state of its own."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules

    def evaluate(self, state: UserState, event: CanonicalEvent, out: Evaluation) -> None:
        """Apply ``event`` to ``state`` (mutated in place) and append actions and history to ``out``."""
        apply_event(state, event)
        for rule in self.rules.for_event(event.type):
            _run_rule(rule, state, event, out)


def _run_rule(rule: Rule, state: UserState, event: CanonicalEvent, out: Evaluation) -> None:
    spec = rule.spec
    at = event.event_time
    progress = state.rules.get(rule.id)
    qualification = spec.qualification
    if qualification is not None and event.type == qualification.event:
        qualifies = rule.qualification_condition
        if qualifies is None:  # compile_rule compiles one for every rule with a qualification
            raise RuntimeError(f"rule {rule.id}: its qualification condition was not compiled")
        if qualifies(state, event, at):
            progress = progress or state.progress(rule.id)
            _qualify(rule, progress, at)
            out.history.append(_entry(state, event, rule, QUALIFIED, progress=progress))
            return  # the qualifying event itself never counts as progress
    if event.type != spec.trigger.event:
        return
    if not rule.trigger_condition(state, event, at):
        return
    if rule.window is not None and not rule.window.is_active(at):
        return
    if not rule.segment(state, None, at):
        return
    if spec.once_in_lifetime and progress is not None and progress.executions > 0:
        return
    if qualification is not None:
        if progress is None or progress.qualified_at is None:
            return  # never qualified (or used up its iterations): progress does not count
        if at < progress.qualified_at:
            return  # happened before the qualification (arrived later, from another topic)
        if not progress.is_qualified(at):
            out.history.append(_entry(state, event, rule, QUALIFICATION_EXPIRED, progress=progress,
                                      reason="qualification period ended before the requirement was met"))
            _void_qualification(progress)
            return
    if not state.is_active:
        out.history.append(_entry(state, event, rule, SKIPPED, progress=progress,
                                  reason=f"account status {state.account_status} is not ACTIVE"))
        return
    progress = progress or state.progress(rule.id)
    executions = _executions(rule, state, event, progress, out)
    if executions == 0:
        return
    if spec.once_in_lifetime:
        executions = 1
    if qualification is not None and qualification.iterations is not None:
        executions = min(executions, qualification.iterations - progress.iterations)
    progress.executions += executions
    entry = _entry(state, event, rule, EXECUTED, progress=progress, executions=executions)
    if qualification is not None:
        progress.iterations += executions
        if qualification.iterations is not None and progress.iterations >= qualification.iterations:
            _void_qualification(progress)  # used up: the user must qualify again
    # One firing: each action once, standing for all the executions (amounts totalled over them).
    specs = [(action_spec.action, action_spec.params) for action_spec in spec.actions]
    for index, (kind, params) in enumerate(specs):
        out.actions.append(
            Action(
                action_id=action_id(state.brand, event.event_id, rule.id, index),
                rule_id=rule.id,
                action=kind,
                params=params_for_executions(kind, params, executions),
                brand=state.brand,
                user=state.user,
                event_id=event.event_id,
                event_type=event.type,
                event_time=at,
                executions=executions,
            )
        )
    _apply_effects(state, specs, executions)
    out.history.append(entry)


def _executions(rule: Rule, state: UserState, event: CanonicalEvent, progress: RuleProgress, out: Evaluation) -> int:
    accumulation = rule.spec.accumulation
    if accumulation is None:
        return 1
    amount: Decimal | int | None
    if accumulation.field is None:
        amount = Decimal(1)
        step = accumulation.step
    else:
        amount = getattr(event, accumulation.field.removeprefix("event."), None)
        currency = state.currency_for(event)
        step = accumulation.step if accumulation.steps is None else step_for_currency(accumulation.steps, currency)
        if step is None:
            out.history.append(_entry(state, event, rule, SKIPPED, progress=progress,
                                      reason=f"no accumulation step for currency {currency or 'unknown'}"))
            return 0
        if amount is None or amount < 0:
            return 0  # a missing or negative value (e.g. a balance) adds nothing to accumulate
    if step is None:  # the rule schema requires a step when there are no per-currency steps
        raise RuntimeError(f"rule {rule.id}: accumulation has no step")
    accrual = accrue(progress.remainder, Decimal(amount), step, accumulation.max_executions_per_event)
    progress.remainder = accrual.remainder
    return accrual.executions


def _qualify(rule: Rule, progress: RuleProgress, at: datetime) -> None:
    if not progress.is_qualified(at):
        progress.remainder = ZERO  # progress of a lapsed qualification is void
    progress.qualified_at = at
    progress.qualified_until = at + rule.qualification_period if rule.qualification_period else None
    progress.iterations = 0


def _void_qualification(progress: RuleProgress) -> None:
    progress.qualified_at = None
    progress.qualified_until = None
    progress.remainder = ZERO


def _apply_effects(state: UserState, specs: list[tuple[ActionKind, dict[str, Any]]], executions: int) -> None:
    """The state after ``executions`` executions, each running ``specs`` in order: the same as
    running them one execution after the other, as the engine did before one action per firing."""
    # ActionSpec validated the params per kind: "amount" is a positive Decimal, "level" an int.
    moves_points = False
    for kind, params in specs:
        if kind in _POINTS_KINDS:
            moves_points = True
        elif kind == ActionKind.MARK_USER:
            state.tags.add(str(params["tag"]))
        elif kind == ActionKind.UNMARK_USER:
            state.tags.discard(str(params["tag"]))
        elif kind == ActionKind.CHANGE_LEVEL:
            state.level = int(params["level"])
    # Tags and level end as the last action touching them left them, however often the executions
    # repeat: one pass is enough. Points add up, and a deduction floors at 0 in each execution, so
    # their N-fold effect is composed exactly (firing.points_after), not taken from the totals.
    if moves_points:
        state.points = points_after(state.points, specs, executions)


_POINTS_KINDS = frozenset({ActionKind.GIVE_POINTS, ActionKind.DEDUCT_POINTS, ActionKind.RESET_POINTS})


def _entry(state: UserState, event: CanonicalEvent, rule: Rule, outcome: str, *, progress: RuleProgress | None,
           executions: int = 0, reason: str | None = None) -> HistoryEntry:
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
