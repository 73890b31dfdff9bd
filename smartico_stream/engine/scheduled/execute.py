"""One user of a scheduled run: the actions, the state change and the history line. Pure.

A scheduled run executes each user of its audience once. The actions are the rule's, one each,
with deterministic ids built from the rule, the run and the user (``brand/run/user/rule/index``
through :func:`~smartico_stream.engine.actions.action_id`, the run and user standing in for the
event), so a resumed or repeated step produces the same ids. The effects on the user's points, tags
and level are those a real-time firing of one execution has (``outcomes.FiringEffects``).
A user whose account is not ACTIVE gets nothing; the history says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from smartico_stream.engine.actions import Action, action_id
from smartico_stream.engine.firing import params_for_executions
from smartico_stream.engine.outcomes import EXECUTED, SKIPPED, HistoryEntry
from smartico_stream.engine.scheduled.spec import ScheduledRule
from smartico_stream.engine.state import UserState

__all__ = ["SCHEDULED_RUN", "UserOutcome", "execute_for_user", "run_event_id"]

# The event_type of the actions and history entries of scheduled runs (there is no source event).
SCHEDULED_RUN = "scheduled_run"


def run_event_id(run_id: str, user: str) -> str:
    """What stands for the source event in a scheduled action's id: the run and the user."""
    return f"{run_id}/{user}"


@dataclass(slots=True)
class UserOutcome:
    executed: bool
    actions: list[Action] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)


def execute_for_user(rule: ScheduledRule, state: UserState, run_id: str, at: datetime) -> UserOutcome:
    """Execute ``rule`` for the user of ``state`` (mutated in place) as part of run ``run_id`` at
    ``at``. The history entry's ``event_id`` is the run id."""
    if not state.is_active:
        entry = HistoryEntry(state.brand, state.user, rule.id, run_id, SCHEDULED_RUN, at, SKIPPED,
                             reason=f"account status {state.account_status} is not ACTIVE")
        return UserOutcome(False, history=[entry])
    event_id = run_event_id(run_id, state.user)
    actions = [
        Action(
            action_id=action_id(state.brand, event_id, rule.id, index),
            rule_id=rule.id,
            action=kind,
            params=params_for_executions(kind, params, 1),
            brand=state.brand,
            user=state.user,
            event_id=event_id,
            event_type=SCHEDULED_RUN,
            event_time=at,
            executions=1,
        )
        for index, (kind, params) in enumerate(rule.actions)
    ]
    rule.effects.apply(state, 1)
    state.progress(rule.id).executions += 1
    entry = HistoryEntry(state.brand, state.user, rule.id, run_id, SCHEDULED_RUN, at, EXECUTED, executions=1)
    return UserOutcome(True, actions, [entry])
