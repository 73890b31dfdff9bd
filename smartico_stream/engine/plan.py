"""Rule plans: each rule compiled, per event type that can reach it, into one step that does only
what that rule needs for that type.

Written as one function, a rule's semantics ask for every event whether it qualifies, whether it
triggers, whether there is a condition, a window, a segment, a lifetime limit, an accumulation and
in which currency. Most of those answers are fixed once the rule and the event type are known. A
plan asks them once, at load, and keeps a closure per (event type, rule) holding only the checks
that can change per event: constant-true conditions dropped, the accumulation field, the steps per
currency and the action specs resolved. An event pays for the rules it can fire and for nothing
else of them.

Every rule's semantics live here, once: the behaviour tests of tests/engine/ run through
:class:`~smartico_stream.engine.evaluator.RuleEngine`, which runs these steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from smartico_stream.engine.accumulation import accrue, step_lookup
from smartico_stream.engine.actions import Action, ActionKind, action_id
from smartico_stream.engine.conditions import ALWAYS, Condition
from smartico_stream.engine.firing import params_for_executions
from smartico_stream.engine.outcomes import (
    EXECUTED,
    QUALIFICATION_EXPIRED,
    QUALIFIED,
    SKIPPED,
    FiringEffects,
    history_entry,
    qualify,
    void_qualification,
)
from smartico_stream.engine.rules import Rule, RuleSet
from smartico_stream.engine.state import UserState
from smartico_stream.events.models import CanonicalEvent

__all__ = ["RulePlan", "Step", "compile_plan"]

Step = Callable[[UserState, CanonicalEvent, Any], None]
"""One rule's work for one event: ``step(state, event, evaluation)``, appending to the evaluation."""


@dataclass(frozen=True, slots=True)
class RulePlan:
    """The steps each event type runs, in the rules' priority order."""

    steps_by_type: Mapping[str, tuple[Step, ...]]

    def steps_for(self, event_type: str) -> tuple[Step, ...]:
        """The steps an event of ``event_type`` runs (none: no rule can fire on it)."""
        return self.steps_by_type.get(event_type, ())


def compile_plan(rules: RuleSet) -> RulePlan:
    """One step per rule for each event type that can trigger or qualify it."""
    steps: dict[str, list[Step]] = {}
    for rule in rules.rules:
        trigger_type = rule.spec.trigger.event.value
        qualification = rule.spec.qualification
        qualify_type = qualification.event.value if qualification is not None else None
        trigger = _trigger_step(rule)
        if qualify_type is not None:
            then = trigger if qualify_type == trigger_type else None
            steps.setdefault(qualify_type, []).append(_qualify_step(rule, then))
        if qualify_type != trigger_type:
            steps.setdefault(trigger_type, []).append(trigger)
    return RulePlan({event_type: tuple(found) for event_type, found in steps.items()})


def _check(condition: Condition) -> Callable[[Any, Any, Any], bool] | None:
    """The condition's closure, or None when it always holds (nothing to evaluate)."""
    return None if condition is ALWAYS or not condition.text.strip() else condition.evaluate


def _qualify_step(rule: Rule, then: Step | None) -> Step:
    qualifies = rule.qualification_condition
    if qualifies is None:  # compile_rule compiles one for every rule with a qualification
        raise RuntimeError(f"rule {rule.id}: its qualification condition was not compiled")
    check = qualifies.evaluate
    rule_id = rule.id

    def step(state: UserState, event: CanonicalEvent, out: Any) -> None:
        at = event.event_time
        if check(state, event, at):
            progress = state.progress(rule_id)
            qualify(rule, progress, at)
            out.history.append(history_entry(state, event, rule, QUALIFIED, progress=progress))
            return  # the qualifying event itself never counts as progress
        if then is not None:
            then(state, event, out)

    return step


def _trigger_step(rule: Rule) -> Step:
    spec = rule.spec
    rule_id = rule.id
    condition = _check(rule.trigger_condition)
    segment = _check(rule.segment)
    window = rule.window.is_active if rule.window is not None else None
    once = spec.once_in_lifetime
    qualification = spec.qualification
    iterations = qualification.iterations if qualification is not None else None
    executions_of = _executions_function(rule)
    specs: list[tuple[ActionKind, dict[str, Any]]] = [(a.action, a.params) for a in spec.actions]
    effects = FiringEffects.of(specs)

    def step(state: UserState, event: CanonicalEvent, out: Any) -> None:
        at = event.event_time
        if condition is not None and not condition(state, event, at):
            return
        if window is not None and not window(at):
            return
        if segment is not None and not segment(state, None, at):
            return
        progress = state.rules.get(rule_id)
        if once and progress is not None and progress.executions > 0:
            return
        if qualification is not None:
            if progress is None or progress.qualified_at is None:
                return  # never qualified (or used up its iterations): progress does not count
            if at < progress.qualified_at:
                return  # happened before the qualification (arrived later, from another topic)
            if not progress.is_qualified(at):
                out.history.append(history_entry(state, event, rule, QUALIFICATION_EXPIRED, progress=progress,
                                                 reason="qualification period ended before the requirement was met"))
                void_qualification(progress)
                state.rule_changed()
                return
        if not state.is_active:
            out.history.append(history_entry(state, event, rule, SKIPPED, progress=progress,
                                             reason=f"account status {state.account_status} is not ACTIVE"))
            return
        progress = state.progress(rule_id)  # the accumulation below changes it even for no execution
        executions = executions_of(state, event, progress, out)
        if executions == 0:
            return
        if once:
            executions = 1
        if iterations is not None:
            executions = min(executions, iterations - progress.iterations)
        progress.executions += executions
        entry = history_entry(state, event, rule, EXECUTED, progress=progress, executions=executions)
        if qualification is not None:
            progress.iterations += executions
            if iterations is not None and progress.iterations >= iterations:
                void_qualification(progress)  # used up: the user must qualify again
        brand, event_id, event_type = state.brand, event.event_id, event.type
        for index, (kind, params) in enumerate(specs):
            out.actions.append(
                Action(
                    action_id=action_id(brand, event_id, rule_id, index),
                    rule_id=rule_id,
                    action=kind,
                    params=params_for_executions(kind, params, executions),
                    brand=brand,
                    user=state.user,
                    event_id=event_id,
                    event_type=event_type,
                    event_time=at,
                    executions=executions,
                )
            )
        effects.apply(state, executions)
        out.history.append(entry)

    return step


ExecutionsFunction = Callable[[UserState, CanonicalEvent, Any, Any], int]


def _executions_function(rule: Rule) -> ExecutionsFunction:
    """How many executions an event earns under the rule's accumulation, resolved for the rule."""
    accumulation = rule.spec.accumulation
    if accumulation is None:
        return _one_execution
    cap = accumulation.max_executions_per_event
    if accumulation.field is None:  # counting events: every event is one unit
        count_step = accumulation.step
        if count_step is None:
            raise RuntimeError(f"rule {rule.id}: accumulation has no step")
        unit = Decimal(1)

        def count(state: UserState, event: CanonicalEvent, progress: Any, out: Any) -> int:
            accrual = accrue(progress.remainder, unit, count_step, cap)
            progress.remainder = accrual.remainder
            return accrual.executions

        return count
    field_name = accumulation.field.removeprefix("event.")
    fixed_step = accumulation.step
    step_of = step_lookup(accumulation.steps) if accumulation.steps is not None else None

    def by_amount(state: UserState, event: CanonicalEvent, progress: Any, out: Any) -> int:
        amount = getattr(event, field_name, None)
        currency = state.wallet_currency or getattr(event, "currency", None)
        step = fixed_step if step_of is None else step_of(currency)
        if step is None:
            out.history.append(history_entry(state, event, rule, SKIPPED, progress=progress,
                                             reason=f"no accumulation step for currency {currency or 'unknown'}"))
            return 0
        if amount is None or amount < 0:
            return 0  # a missing or negative value (e.g. a balance) adds nothing to accumulate
        accrual = accrue(progress.remainder, Decimal(amount), step, cap)
        progress.remainder = accrual.remainder
        return accrual.executions

    return by_amount


def _one_execution(state: UserState, event: CanonicalEvent, progress: Any, out: Any) -> int:
    return 1

