"""The rule plan (engine/plan.py): which steps each event type runs. What the steps do is tested
through RuleEngine in test_rules_semantics.py and the other engine tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

from smartico_stream.engine.plan import compile_plan
from smartico_stream.engine.rules import load_rules

RULES = """
- id: b-points
  name: b-points
  priority: 2
  trigger: {event: deposit}
  actions: [{action: give_points, amount: 1}]
- id: a-bets-after-deposit
  name: a-bets-after-deposit
  priority: 1
  qualification: {event: deposit, period: 24h}
  trigger: {event: casino_bet}
  actions: [{action: give_bonus, template_id: t}]
- id: c-big-deposit-twice
  name: c-big-deposit-twice
  priority: 3
  qualification: {event: deposit, condition: event.amount >= 100}
  trigger: {event: deposit}
  actions: [{action: give_points, amount: 5}]
"""


def test_each_event_type_runs_only_the_rules_it_can_reach(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(RULES))
    plan = compile_plan(load_rules(path))
    # deposit: a's qualification, b's trigger, c's qualification-then-trigger (one step), by priority
    assert len(plan.steps_for("deposit")) == 3
    assert len(plan.steps_for("casino_bet")) == 1  # a's trigger only
    assert plan.steps_for("casino_win") == ()
    assert plan.steps_for("user_profile") == ()


def test_a_rule_set_without_rules_has_no_steps() -> None:
    from smartico_stream.engine.rules import RuleSet

    assert compile_plan(RuleSet.of(())).steps_by_type == {}
