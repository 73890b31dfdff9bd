"""One action per rule firing: the arithmetic of N executions folded into one firing.

``params_for_executions`` gives the actions' totals; the engine's state change for a firing must be
the one the N executions make when run one after the other, as the engine did before (a deduction
floors at 0 in every execution; tags and level end as the last action left them). The reference
model below is that old per-execution loop; the engine is driven through ``RuleEngine.evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartico_stream.engine.actions import ActionKind
from smartico_stream.engine.evaluator import Evaluation, RuleEngine
from smartico_stream.engine.firing import params_for_executions, points_after
from smartico_stream.engine.rules import RuleSet, RuleSpec, compile_rule
from smartico_stream.engine.state import UserState
from smartico_stream.events.models import Payment

D = Decimal
T0 = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)

amounts = st.decimals(min_value=D("0.01"), max_value=D(10_000), places=2, allow_nan=False, allow_infinity=False)
executions = st.integers(min_value=1, max_value=1000)
tags = st.sampled_from(["vip", "new", "whale"])
action_specs = st.one_of(
    st.builds(lambda a: (ActionKind.GIVE_POINTS, {"amount": a}), amounts),
    st.builds(lambda a: (ActionKind.DEDUCT_POINTS, {"amount": a}), amounts),
    st.just((ActionKind.RESET_POINTS, {})),
    st.builds(lambda t: (ActionKind.MARK_USER, {"tag": t}), tags),
    st.builds(lambda t: (ActionKind.UNMARK_USER, {"tag": t}), tags),
    st.builds(lambda n: (ActionKind.CHANGE_LEVEL, {"level": n}), st.integers(0, 9)),
    st.builds(lambda a: (ActionKind.GIVE_BONUS, {"template_id": "b", "amount": a}), amounts),
    st.just((ActionKind.WEBHOOK, {"url": "https://example.com/hook"})),
)
balances = st.decimals(min_value=0, max_value=D(100_000), places=2, allow_nan=False, allow_infinity=False)


# -- params_for_executions ------------------------------------------------------------------------


@given(amounts, executions)
def test_the_points_of_one_firing_are_n_times_the_step_amount(amount: Decimal, n: int) -> None:
    for kind in (ActionKind.GIVE_POINTS, ActionKind.DEDUCT_POINTS):
        params = {"amount": amount}
        total = params_for_executions(kind, params, n)
        assert total == {"amount": amount * n}
        assert sum([amount] * n, D(0)) == total["amount"]  # what the executions' actions added up to
        assert params == {"amount": amount}  # the spec's params are not modified


@given(action_specs, executions)
def test_every_other_kind_keeps_its_params(spec: tuple[ActionKind, dict[str, Any]], n: int) -> None:
    kind, params = spec
    if kind not in (ActionKind.GIVE_POINTS, ActionKind.DEDUCT_POINTS):
        assert params_for_executions(kind, params, n) == params  # give_bonus's amount is per bonus


@given(action_specs)
def test_one_execution_is_the_spec_itself(spec: tuple[ActionKind, dict[str, Any]]) -> None:
    kind, params = spec
    assert params_for_executions(kind, params, 1) == params


def test_the_totals_are_exact_whatever_the_decimal_context() -> None:
    amount = D("0.1234567890123456789012345678901")  # more digits than the default 28
    exact = D(f"{1234567890123456789012345678901 * 999}E-31")  # the constructor never rounds
    assert amount * 999 != exact  # the default context rounds
    assert params_for_executions(ActionKind.GIVE_POINTS, {"amount": amount}, 999)["amount"] == exact


def test_points_after_is_exact_whatever_the_decimal_context() -> None:
    amount = D("0.1234567890123456789012345678901")
    give: list[tuple[ActionKind, dict[str, Any]]] = [(ActionKind.GIVE_POINTS, {"amount": amount})]
    deduct: list[tuple[ActionKind, dict[str, Any]]] = [(ActionKind.DEDUCT_POINTS, {"amount": amount})]
    given_points = points_after(D(0), give, 999)
    assert given_points == D(f"{1234567890123456789012345678901 * 999}E-31")
    assert points_after(given_points, deduct, 998) == amount
    assert points_after(given_points, deduct, 1000) == 0


def test_a_firing_has_at_least_one_execution() -> None:
    with pytest.raises(ValueError, match="at least one execution"):
        params_for_executions(ActionKind.GIVE_POINTS, {"amount": D(1)}, 0)


# -- the state change: the same as N executions one after the other -------------------------------


@dataclass
class Model:
    """The user's gamification state as the per-execution engine changed it."""

    points: Decimal
    tags: set[str] = field(default_factory=set)
    level: int = 0

    def run(self, specs: list[tuple[ActionKind, dict[str, Any]]], n: int) -> None:
        for _ in range(n):
            for kind, params in specs:
                if kind == ActionKind.GIVE_POINTS:
                    self.points += params["amount"]
                elif kind == ActionKind.DEDUCT_POINTS:
                    self.points = max(D(0), self.points - params["amount"])
                elif kind == ActionKind.RESET_POINTS:
                    self.points = D(0)
                elif kind == ActionKind.MARK_USER:
                    self.tags.add(params["tag"])
                elif kind == ActionKind.UNMARK_USER:
                    self.tags.discard(params["tag"])
                elif kind == ActionKind.CHANGE_LEVEL:
                    self.level = params["level"]


@settings(max_examples=300)
@given(balances, st.lists(action_specs, min_size=1, max_size=6), st.integers(1, 60) | st.just(1000))
def test_points_after_equals_n_sequential_executions(start: Decimal, specs: list[tuple[ActionKind, dict[str, Any]]],
                                                     n: int) -> None:
    model = Model(start)
    model.run(specs, n)
    assert points_after(start, specs, n) == model.points


def test_points_after_floors_each_execution_not_the_total() -> None:
    specs: list[tuple[ActionKind, dict[str, Any]]] = [
        (ActionKind.DEDUCT_POINTS, {"amount": D(10)}), (ActionKind.GIVE_POINTS, {"amount": D(4)})]
    assert points_after(D(0), specs, 3) == D(4)  # 0 -> 4 -> 0 -> 4
    assert points_after(D(25), specs, 3) == D(7)  # 25 -> 19 -> 13 -> 7
    reset_then_give: list[tuple[ActionKind, dict[str, Any]]] = [
        (ActionKind.RESET_POINTS, {}), (ActionKind.GIVE_POINTS, {"amount": D(5)})]
    assert points_after(D(100), reset_then_give, 1000) == D(5)


def _engine(specs: list[tuple[ActionKind, dict[str, Any]]]) -> RuleEngine:
    rule = compile_rule(RuleSpec.model_validate({
        "id": "r", "name": "property", "trigger": {"event": "deposit"},
        "accumulation": {"field": "event.amount", "step": 1},
        "actions": [{"action": kind.value, **params} for kind, params in specs],
    }))
    return RuleEngine(RuleSet.of([rule]))


@settings(max_examples=150, deadline=None)
@given(balances, st.sets(tags), st.integers(0, 9), st.lists(action_specs, min_size=1, max_size=6),
       st.integers(1, 40) | st.just(1000))
def test_a_firing_changes_the_state_as_its_executions_one_after_the_other(
        start: Decimal, start_tags: set[str], start_level: int, specs: list[tuple[ActionKind, dict[str, Any]]],
        n: int) -> None:
    state = UserState(brand="b1", user="u1", points=start, tags=set(start_tags), level=start_level)
    out = Evaluation()
    _engine(specs).evaluate(state, Payment(type="deposit", brand_id="b1", user_id="u1", event_id="d1", event_time=T0,
                                           amount=D(n), currency="EUR"), out)
    model = Model(start, set(start_tags), start_level)
    model.run(specs, n)
    assert (state.points, state.tags, state.level) == (model.points, model.tags, model.level)
    # one action per spec, each standing for the n executions, with ids by action index
    assert [(a.action_id, a.action, a.executions) for a in out.actions] == [
        (f"b1/d1/r/{i}", kind, n) for i, (kind, _) in enumerate(specs)]
    for action, (kind, params) in zip(out.actions, specs, strict=True):
        assert action.params == params_for_executions(kind, params, n)
