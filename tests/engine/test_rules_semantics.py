"""Real-time automation rules, one test per semantic, through the public interfaces.

Rules are YAML written to a temporary file and loaded with ``load_rules``; events are real canonical
events (``UserProfile``, ``Payment``, ``CasinoBet``) fed to ``RuleEngine.evaluate``; a few tests run
``smartico-stream simulate`` / ``history`` as a user would, on reference-format JSONL records.

The examples are the specification's (the automation-rules help page): 10.5 EUR with a 1 EUR step,
10 EUR / 8 GBP / 12 USD, 2000 EUR and the 1000 cap, "1 point for every 100 bets", the four rows of
the "Restrict Active Hours" table on 03.03.2025, "Saturday and Sunday from 10:00 until 18:00", and
the qualification example (deposit, then 100 bets within 24 hours, rule iteration 3).
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartico_stream.engine.actions import Action, ActionKind
from smartico_stream.engine.evaluator import (
    EXECUTED,
    QUALIFICATION_EXPIRED,
    QUALIFIED,
    SKIPPED,
    Evaluation,
    HistoryEntry,
    RuleEngine,
)
from smartico_stream.engine.rules import RuleLoadError, RuleSet, load_rules
from smartico_stream.engine.state import UserState
from smartico_stream.events.models import (
    CanonicalEvent,
    CasinoBet,
    Payment,
    PlatformAggregates,
    UserProfile,
)
from tests.support.common import REPO

D = Decimal
BRAND = "b1"
MALTA = ZoneInfo("Europe/Malta")
# Monday 3 March 2025, the specification's date; 12:00 UTC.
T0 = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


# -- helpers --------------------------------------------------------------------------------------

_file_numbers = itertools.count(1)
_event_numbers = itertools.count(1)


def load(tmp_path: Path, text: str) -> RuleSet:
    """Write ``text`` (a YAML rule list) to a fresh file under ``tmp_path`` and load it."""
    path = tmp_path / f"rules-{next(_file_numbers)}.yaml"
    path.write_text(textwrap.dedent(text))
    return load_rules(path)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def local(text: str, zone: ZoneInfo = MALTA) -> datetime:
    """A wall time in ``zone`` as the UTC instant an event would carry."""
    return datetime.fromisoformat(text).replace(tzinfo=zone).astimezone(UTC)


def _eid(prefix: str, event_id: str | None) -> str:
    return event_id or f"{prefix}{next(_event_numbers)}"


def profile(user: str = "u1", at: datetime = T0, *, currency: str = "EUR", status: str = "ACTIVE",
            country: str | None = None, event_id: str | None = None) -> UserProfile:
    return UserProfile(brand_id=BRAND, user_id=user, event_id=_eid("p", event_id), event_time=at,
                       account_status=status, registration_date=utc("2025-01-01T00:00:00"), language="EN",
                       wallet_currency=currency, country=country)


def deposit(amount: str | Decimal, user: str = "u1", at: datetime = T0, *, currency: str | None = "EUR",
            event_id: str | None = None, aggregates: PlatformAggregates | None = None) -> Payment:
    return Payment(type="deposit", brand_id=BRAND, user_id=user, event_id=_eid("d", event_id), event_time=at,
                   amount=D(str(amount)), currency=currency, aggregates=aggregates)


def bet(user: str = "u1", at: datetime = T0, *, amount: str | Decimal = "1", currency: str | None = "EUR",
        event_id: str | None = None) -> CasinoBet:
    return CasinoBet(brand_id=BRAND, user_id=user, event_id=_eid("c", event_id), event_time=at,
                     bet_amount=D(str(amount)), currency=currency, game_name="Book of Dead", game_id="77")


class Harness:
    """A rule engine plus the users' states, fed one event at a time."""

    def __init__(self, rules: RuleSet) -> None:
        self.engine = RuleEngine(rules)
        self.states: dict[tuple[str, str], UserState] = {}
        self.actions: list[Action] = []
        self.history: list[HistoryEntry] = []

    def state(self, user: str = "u1") -> UserState:
        key = (BRAND, user)
        if key not in self.states:
            self.states[key] = UserState(brand=BRAND, user=user)
        return self.states[key]

    def send(self, *events: CanonicalEvent) -> list[Action]:
        """Evaluate ``events`` in order; return the actions they emitted."""
        emitted: list[Action] = []
        for event in events:
            out = Evaluation()
            self.engine.evaluate(self.state(event.user_id), event, out)
            emitted += out.actions
            self.history += out.history
        self.actions += emitted
        return emitted

    def outcomes(self, rule_id: str) -> list[str]:
        return [h.outcome for h in self.history if h.rule_id == rule_id]


def points(actions: Iterable[Action]) -> list[tuple[int, Decimal]]:
    """(executions, amount) of each give_points action: one per firing, the amount its total."""
    return [(a.executions, a.params["amount"]) for a in actions if a.action == ActionKind.GIVE_POINTS]


def bets(count: int, user: str = "u1", start: datetime = T0,
         every: timedelta = timedelta(seconds=1)) -> list[CasinoBet]:
    return [bet(user, start + i * every) for i in range(count)]


# -- accumulation -----------------------------------------------------------------------------------

DEPOSIT_POINTS = """
- id: deposit-points
  name: 1 point per 1 EUR deposited
  trigger: {event: deposit}
  accumulation: {field: event.amount, step: 1}
  actions: [{action: give_points, amount: 1}]
"""


def test_10_5_eur_deposit_with_1_eur_step_gives_10_executions_and_remembers_0_5(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, DEPOSIT_POINTS))
    first = h.send(deposit("10.5"))
    # one action for the firing, standing for its 10 executions, with their 10 points
    assert [(a.action_id, a.executions, a.params) for a in first] == [
        ("b1/" + first[0].event_id + "/deposit-points/0", 10, {"amount": D(10)})]
    assert h.state().rules["deposit-points"].remainder == D("0.5")
    assert h.state().points == D(10)
    # the remembered 0.5 EUR plus the next 0.5 EUR make one more step
    assert points(h.send(deposit("0.5"))) == [(1, D(1))]
    assert h.state().rules["deposit-points"].remainder == 0
    assert h.state().points == D(11)


WAGER_POINTS = """
- id: wager-points
  name: 1 point per 10 EUR / 8 GBP / 12 USD wagered
  trigger: {event: casino_bet}
  accumulation:
    field: event.bet_amount
    steps: {EUR: 10, GBP: 8, USD: 12}
  actions: [{action: give_points, amount: 1}]
"""


def test_per_currency_steps_follow_the_wallet_currency_of_the_profile(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, WAGER_POINTS))
    h.send(profile("eur", currency="EUR"), profile("gbp", currency="GBP"), profile("usd", currency="USD"))
    # 24 of each wallet currency: 2 steps of 10 EUR, 3 of 8 GBP, 2 of 12 USD
    assert points(h.send(bet("eur", amount="24"))) == [(2, D(2))]
    assert points(h.send(bet("gbp", amount="24", currency="GBP"))) == [(3, D(3))]
    assert points(h.send(bet("usd", amount="24", currency="USD"))) == [(2, D(2))]
    assert h.state("eur").rules["wager-points"].remainder == D(4)
    assert h.state("gbp").rules["wager-points"].remainder == D(0)
    # the profile's wallet currency comes first: a GBP user's bet labelled EUR still steps by 8
    assert points(h.send(bet("gbp", amount="8", currency="EUR"))) == [(1, D(1))]


def test_the_wallet_currency_is_fixed_once_set(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, WAGER_POINTS))
    h.send(profile(currency="GBP"), profile(currency="USD", at=T0 + timedelta(minutes=1)))
    assert h.state().wallet_currency == "GBP"
    assert points(h.send(bet(amount="16", currency="USD", at=T0 + timedelta(minutes=2)))) == [(2, D(2))]


def test_per_currency_steps_use_the_event_currency_when_there_is_no_profile(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, WAGER_POINTS))
    assert points(h.send(bet("anon", amount="24", currency="USD"))) == [(2, D(2))]
    assert h.state("anon").rules["wager-points"].remainder == 0


def test_a_currency_without_a_step_is_skipped_with_a_reason(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, WAGER_POINTS))
    h.send(profile("czk", currency="CZK"))
    assert h.send(bet("czk", amount="1000", currency="CZK")) == []
    (entry,) = [e for e in h.history if e.rule_id == "wager-points"]
    assert entry.outcome == SKIPPED and entry.reason is not None and "CZK" in entry.reason


def test_2000_eur_deposit_with_1_eur_step_gives_exactly_1000_executions_and_discards_the_rest(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, DEPOSIT_POINTS))
    actions = h.send(deposit("2000"))
    assert points(actions) == [(1000, D(1000))]  # one action of 1000 points, not 1000 actions
    assert h.state().points == D(1000)
    (entry,) = h.history
    assert (entry.outcome, entry.executions) == (EXECUTED, 1000)
    # the 1000 executions over the cap are discarded, not carried to the next deposit
    assert h.state().rules["deposit-points"].remainder == 0
    assert h.send(deposit("0.5")) == []


def test_the_seed_2000_eur_deposit_is_one_action_of_1000_points(tmp_path: Path) -> None:
    # The specification's example: 1 point per 1 EUR, a 2000 EUR deposit, the 1000 cap.
    h = Harness(load(tmp_path, DEPOSIT_POINTS))
    (action,) = h.send(deposit("2000", event_id="big"))
    assert json.loads(action.to_json()) == {
        "action": "give_points", "action_id": "b1/big/deposit-points/0", "brand": "b1", "user": "u1",
        "event_id": "big", "event_type": "deposit", "event_time": "2025-03-03T12:00:00.000Z",
        "executions": 1000, "params": {"amount": "1000"}, "rule_id": "deposit-points",
    }


def test_190_eur_on_1_point_per_10_eur_is_one_give_points_of_19(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, """
        - id: ten-eur-points
          name: 1 point per 10 EUR deposited, and a bonus per step
          trigger: {event: deposit}
          accumulation: {field: event.amount, step: 10}
          actions:
            - {action: give_points, amount: 1}
            - {action: give_bonus, template_id: per-ten, amount: 2}
            - {action: mark_user, tag: depositor}
    """))
    actions = h.send(deposit("190", event_id="d190"))
    assert [(a.action_id, a.action, a.executions, a.params) for a in actions] == [
        ("b1/d190/ten-eur-points/0", ActionKind.GIVE_POINTS, 19, {"amount": D(19)}),
        # a bonus's amount is per bonus: sent once, the receiver reads executions
        ("b1/d190/ten-eur-points/1", ActionKind.GIVE_BONUS, 19, {"template_id": "per-ten", "amount": D(2)}),
        ("b1/d190/ten-eur-points/2", ActionKind.MARK_USER, 19, {"tag": "depositor"}),
    ]
    assert (h.state().points, h.state().tags) == (D(19), {"depositor"})
    (entry,) = h.history
    assert (entry.outcome, entry.executions) == (EXECUTED, 19)


def test_a_firing_changes_points_as_its_executions_one_after_the_other_would(tmp_path: Path) -> None:
    # Deducting before giving, N times: each execution floors at 0 on its own. From 0 points, three
    # executions of "deduct 10, give 4" leave 4 (0 -> 4 -> 0 -> 4), not max(0, 0 - 30) + 12 = 12,
    # although the actions carry the totals 30 and 12.
    h = Harness(load(tmp_path, """
        - id: churn
          name: per 10 EUR deposited, take 10 points and give 4 back
          trigger: {event: deposit}
          accumulation: {field: event.amount, step: 10}
          actions: [{action: deduct_points, amount: 10}, {action: give_points, amount: 4}]
    """))
    actions = h.send(deposit("30"))
    assert [(a.action, a.executions, a.params["amount"]) for a in actions] == [
        (ActionKind.DEDUCT_POINTS, 3, D(30)), (ActionKind.GIVE_POINTS, 3, D(12))]
    assert h.state().points == D(4)


def test_accumulation_on_a_field_that_can_be_negative_never_fails_an_event(tmp_path: Path) -> None:
    # Balances may be negative (credit platforms). BUG: the rule loads, then accrue() raises
    # AccumulationError("amount must not be negative") for the whole event: the engine fails on a
    # valid deposit (simulate aborts; the service dead-letters it, so no other rule sees it either).
    # Either loading must refuse such a field, or a negative amount must add nothing.
    text = """
        - id: balance-points
          name: 1 point per 10 of real balance
          trigger: {event: deposit}
          accumulation: {field: event.real_balance, step: 10}
          actions: [{action: give_points, amount: 1}]
        - id: every-deposit
          name: bonus on every deposit
          trigger: {event: deposit}
          actions: [{action: give_bonus, template_id: dep}]
    """
    refused: RuleLoadError | None = None
    try:
        rules = load(tmp_path, text)
    except RuleLoadError as exc:
        refused = exc
    if refused is not None:  # refusing a balance field as an accumulation is as good as skipping it
        assert "accumulation.field" in str(refused)
        return
    h = Harness(rules)
    event = Payment(type="deposit", brand_id=BRAND, user_id="u1", event_id="d-neg", event_time=T0,
                    amount=D(20), currency="EUR", real_balance=D("-5.00"))
    assert [a.rule_id for a in h.send(event)] == ["every-deposit"]


def test_max_executions_per_event_lowers_the_cap(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, """
        - id: capped
          name: at most 3 points per deposit
          trigger: {event: deposit}
          accumulation: {field: event.amount, step: 1, max_executions_per_event: 3}
          actions: [{action: give_points, amount: 1}]
    """))
    assert points(h.send(deposit("10.25"))) == [(3, D(3))]
    assert h.state().rules["capped"].remainder == D("0.25")


def test_count_accumulation_1_point_for_every_100_bets(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, """
        - id: bet-points
          name: 1 point for every 100 bets
          trigger: {event: casino_bet}
          accumulation: {step: 100}
          actions: [{action: give_points, amount: 1}]
    """))
    assert h.send(*bets(99)) == []
    (hundredth,) = h.send(bet(at=T0 + timedelta(minutes=5)))
    assert hundredth.action == ActionKind.GIVE_POINTS
    assert h.send(*bets(99, start=T0 + timedelta(minutes=10))) == []
    assert len(h.send(bet(at=T0 + timedelta(minutes=20)))) == 1
    assert h.state().points == D(2)


# -- once in a lifetime ---------------------------------------------------------------------------


def test_once_in_lifetime_second_qualifying_trigger_gives_nothing(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, """
        - id: welcome
          name: welcome bonus
          once_in_lifetime: true
          trigger: {event: deposit, condition: event.amount >= 20}
          actions: [{action: give_bonus, template_id: welcome-100}]
    """))
    assert h.send(deposit("10")) == []  # not a qualifying trigger: the lifetime is not used up
    assert len(h.send(deposit("20"))) == 1
    assert h.send(deposit("50")) == []
    assert h.send(deposit("500", at=T0 + timedelta(days=400))) == []
    assert h.outcomes("welcome") == [EXECUTED]


def test_once_in_lifetime_with_accumulation_executes_exactly_once(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, """
        - id: once-points
          name: once, however much is deposited
          once_in_lifetime: true
          trigger: {event: deposit}
          accumulation: {field: event.amount, step: 1}
          actions: [{action: give_points, amount: 5}]
    """))
    assert h.send(deposit("0.5")) == []  # below one step: nothing executed yet
    actions = h.send(deposit("25"))
    assert points(actions) == [(1, D(5))]
    assert h.send(deposit("25")) == []
    assert h.state().points == D(5)
    assert [(e.outcome, e.executions) for e in h.history] == [(EXECUTED, 1)]


# -- activity period and weekdays -------------------------------------------------------------------


def _activity_rule(activity: str, timezone: str = "UTC") -> str:
    return f"""
        - id: timed
          name: timed deposit bonus
          timezone: {timezone}
          trigger: {{event: deposit}}
          activity: {activity}
          actions: [{{action: give_bonus, template_id: timed}}]
    """


def fires(h: Harness, at: datetime) -> bool:
    return len(h.send(deposit("10", at=at))) == 1


def test_activity_period_start_only_runs_from_the_start_without_end(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, _activity_rule("{start: 2025-03-03T08:00:00}")))
    assert not fires(h, utc("2025-03-03T07:59:59"))
    assert fires(h, utc("2025-03-03T08:00:00"))
    assert fires(h, utc("2026-01-01T00:00:00"))


def test_activity_period_end_only_is_active_immediately_until_the_end(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, _activity_rule("{end: 2025-03-03T18:00:00}")))
    assert fires(h, utc("2001-01-01T00:00:00"))
    assert fires(h, utc("2025-03-03T17:59:59"))
    assert not fires(h, utc("2025-03-03T18:00:00"))  # the end is exclusive
    assert not fires(h, utc("2025-03-04T12:00:00"))


def test_activity_period_with_start_and_end(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, _activity_rule("{start: 2025-03-01T00:00:00, end: 2025-03-08T00:00:00}")))
    assert not fires(h, utc("2025-02-28T23:59:59"))
    assert fires(h, utc("2025-03-01T00:00:00"))
    assert fires(h, utc("2025-03-07T23:59:59"))
    assert not fires(h, utc("2025-03-08T00:00:00"))


def test_no_activity_period_runs_until_stopped(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, _activity_rule("{}")))
    for moment in ("2001-01-01T00:00:00", "2025-03-03T03:00:00", "2026-11-01T23:59:59"):
        assert fires(h, utc(moment)), moment


def test_weekdays_saturday_and_sunday_only(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, _activity_rule("{weekdays: [saturday, sun]}")))
    assert not fires(h, utc("2025-02-28T23:59:59"))  # Friday
    assert fires(h, utc("2025-03-01T00:00:00"))  # Saturday
    assert fires(h, utc("2025-03-02T23:59:59"))  # Sunday
    assert not fires(h, utc("2025-03-03T00:00:00"))  # Monday
    assert not fires(h, utc("2025-03-05T12:00:00"))  # Wednesday


# -- restricted active hours: the specification's table (rule in Europe/Malta) --------------------

ACTIVE_HOURS_TABLE = [
    pytest.param(
        "{start: 2025-03-03T08:00:00, active_hours: {start: '09:00', end: '18:00'}}",
        [("2025-03-02 12:00", False), ("2025-03-03 08:00", False), ("2025-03-03 08:59:59", False),
         ("2025-03-03 09:00", True), ("2025-03-04 08:30", False), ("2025-03-04 09:30", True)],
        id="start date earlier than active hours start: starts 09:00 on 03.03",
    ),
    pytest.param(
        "{start: 2025-03-03T10:00:00, active_hours: {start: '09:00', end: '18:00'}}",
        [("2025-03-03 09:00", False), ("2025-03-03 09:59:59", False), ("2025-03-03 10:00", True),
         ("2025-03-04 09:00", True)],
        id="start date later than active hours start: starts 10:00 on 03.03",
    ),
    pytest.param(
        "{end: 2025-03-03T18:00:00, active_hours: {start: '09:00', end: '19:00'}}",
        [("2025-03-02 18:30", True), ("2025-03-03 17:59:59", True), ("2025-03-03 18:00", False),
         ("2025-03-03 18:30", False)],
        id="end date earlier than active hours end: stops 18:00 on 03.03",
    ),
    pytest.param(
        "{end: 2025-03-03T18:00:00, active_hours: {start: '09:00', end: '16:00'}}",
        [("2025-03-03 15:59:59", True), ("2025-03-03 16:00", False), ("2025-03-03 17:00", False),
         ("2025-03-03 18:00", False)],
        id="end date later than active hours end: stops 16:00 on 03.03",
    ),
]


@pytest.mark.parametrize(("activity", "checks"), ACTIVE_HOURS_TABLE)
def test_active_hours_combined_with_start_and_end_dates(tmp_path: Path, activity: str,
                                                         checks: list[tuple[str, bool]]) -> None:
    h = Harness(load(tmp_path, _activity_rule(activity, "Europe/Malta")))
    assert [(moment, fires(h, local(moment))) for moment, _ in checks] == checks


def test_active_hours_alone_run_daily(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, _activity_rule("{active_hours: {start: '09:00', end: '18:00'}}")))
    for day in ("2025-03-03", "2025-03-05", "2025-03-08", "2025-03-09"):  # Mon, Wed, Sat, Sun
        assert not fires(h, utc(f"{day}T08:59:59"))
        assert fires(h, utc(f"{day}T09:00:00"))
        assert fires(h, utc(f"{day}T17:59:59"))
        assert not fires(h, utc(f"{day}T18:00:00"))


def test_saturday_and_sunday_from_10_until_18(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, _activity_rule("{weekdays: [sat, sun], active_hours: {start: '10:00', end: '18:00'}}")))
    assert not fires(h, utc("2025-03-01T09:59:59"))  # Saturday, too early
    assert fires(h, utc("2025-03-01T10:00:00"))
    assert fires(h, utc("2025-03-02T17:59:59"))  # Sunday
    assert not fires(h, utc("2025-03-02T18:00:00"))
    assert not fires(h, utc("2025-03-03T12:00:00"))  # Monday, within the hours
    assert not fires(h, utc("2025-02-28T12:00:00"))  # Friday


# -- time zone ------------------------------------------------------------------------------------


def test_rule_in_europe_malta_judges_the_utc_event_time_in_malta(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, _activity_rule("{active_hours: {start: '10:00', end: '18:00'}}", "Europe/Malta")))
    # winter: Malta is UTC+1
    assert not fires(h, utc("2025-03-03T08:59:59"))
    assert fires(h, utc("2025-03-03T09:00:00"))  # 10:00 in Malta
    assert fires(h, utc("2025-03-03T16:59:59"))
    assert not fires(h, utc("2025-03-03T17:00:00"))  # 18:00 in Malta
    # summer: Malta is UTC+2
    assert fires(h, utc("2025-07-01T08:00:00"))
    assert not fires(h, utc("2025-07-01T16:00:00"))


def test_rule_time_zone_decides_the_weekday(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, _activity_rule("{weekdays: [sun]}", "Europe/Malta")))
    assert fires(h, utc("2025-03-01T23:30:00"))  # Saturday in UTC, Sunday 00:30 in Malta
    assert not fires(h, utc("2025-03-02T23:30:00"))  # Sunday in UTC, Monday in Malta


def test_activity_start_without_offset_is_local_to_the_rule_time_zone(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, _activity_rule("{start: 2025-03-03T08:00:00}", "Europe/Malta")))
    assert not fires(h, utc("2025-03-03T06:59:59"))
    assert fires(h, utc("2025-03-03T07:00:00"))  # 08:00 in Malta


# -- qualification --------------------------------------------------------------------------------

# The specification's example: qualification trigger "Deposit", then 100 casino bets within 24 hours
# of qualifying for a bonus, rule iteration 3.
DEPOSIT_THEN_BETS = """
- id: deposit-then-bets
  name: deposit, then 100 casino bets within 24 hours, 3 times per qualification
  qualification: {event: deposit, period: 24h, iterations: 3}
  trigger: {event: casino_bet}
  accumulation: {step: 100}
  actions: [{action: give_bonus, template_id: bets-100}]
"""


def test_qualification_bets_before_any_deposit_do_not_count(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, DEPOSIT_THEN_BETS))
    assert h.send(*bets(150)) == []
    assert h.outcomes("deposit-then-bets") == []
    assert h.send(deposit("10", at=T0 + timedelta(hours=1))) == []
    assert h.outcomes("deposit-then-bets") == [QUALIFIED]
    # none of the 150 earlier bets counted: 99 more are still not enough
    assert h.send(*bets(99, start=T0 + timedelta(hours=2))) == []
    assert len(h.send(bet(at=T0 + timedelta(hours=3)))) == 1


def test_qualification_100_bets_within_24h_give_the_bonus_and_record_qualification(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, DEPOSIT_THEN_BETS))
    h.send(deposit("10", at=T0))
    (qualified,) = h.history
    assert (qualified.outcome, qualified.qualified_at, qualified.qualified_until) == (
        QUALIFIED, T0, T0 + timedelta(hours=24))
    (bonus,) = h.send(*bets(100, start=T0 + timedelta(hours=1)))
    assert (bonus.action, bonus.params) == (ActionKind.GIVE_BONUS, {"template_id": "bets-100"})
    executed = h.history[-1]
    assert (executed.outcome, executed.executions, executed.qualified_at, executed.qualified_until) == (
        EXECUTED, 1, T0, T0 + timedelta(hours=24))


def test_qualification_300_bets_give_3_bonuses_then_nothing_until_a_new_deposit(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, DEPOSIT_THEN_BETS))
    h.send(deposit("10"))
    assert len(h.send(*bets(300, start=T0 + timedelta(minutes=1)))) == 3
    assert h.send(*bets(250, start=T0 + timedelta(hours=2))) == []  # iterations used up
    assert h.outcomes("deposit-then-bets") == [QUALIFIED, EXECUTED, EXECUTED, EXECUTED]
    # a new deposit requalifies: the 250 bets in between were not progress
    h.send(deposit("10", at=T0 + timedelta(hours=3)))
    assert h.send(*bets(99, start=T0 + timedelta(hours=4))) == []
    assert len(h.send(bet(at=T0 + timedelta(hours=5)))) == 1


def test_qualification_period_expiry_voids_progress_and_requalifying_starts_again(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, DEPOSIT_THEN_BETS))
    h.send(deposit("10", at=T0))
    assert h.send(*bets(99, start=T0 + timedelta(hours=1))) == []
    # the 100th bet comes one second after the 24 hours: no bonus, the progress is void
    assert h.send(bet(at=T0 + timedelta(hours=24, seconds=1))) == []
    expired = h.history[-1]
    assert (expired.outcome, expired.qualified_at, expired.qualified_until) == (
        QUALIFICATION_EXPIRED, T0, T0 + timedelta(hours=24))
    assert expired.reason
    assert h.state().rules["deposit-then-bets"].remainder == 0
    # later bets, still unqualified, count for nothing and record nothing more
    assert h.send(*bets(200, start=T0 + timedelta(hours=25))) == []
    assert h.outcomes("deposit-then-bets") == [QUALIFIED, QUALIFICATION_EXPIRED]
    # requalifying starts from zero: 99 bets are not enough, the 100th is
    requalified = T0 + timedelta(days=2)
    h.send(deposit("10", at=requalified))
    assert h.history[-1].qualified_until == requalified + timedelta(hours=24)
    assert h.send(*bets(99, start=requalified + timedelta(minutes=1))) == []
    assert len(h.send(bet(at=requalified + timedelta(hours=23)))) == 1


def test_qualification_lapsed_while_requalifying_voids_the_old_progress(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, DEPOSIT_THEN_BETS))
    h.send(deposit("10", at=T0))
    h.send(*bets(60, start=T0 + timedelta(hours=1)))
    # the qualification lapses without a bet noticing; the next deposit requalifies from zero
    h.send(deposit("10", at=T0 + timedelta(hours=30)))
    assert h.state().rules["deposit-then-bets"].remainder == 0
    assert h.send(*bets(99, start=T0 + timedelta(hours=31))) == []
    assert len(h.send(bet(at=T0 + timedelta(hours=32)))) == 1


def test_qualification_counts_only_trigger_events_after_the_qualifying_event(tmp_path: Path) -> None:
    # Deposits and casino bets come from different topics, so a bet placed before the deposit can be
    # processed after it. Rules run on event time: a bet placed before the user qualified is a bet
    # "without making a deposit" and must not count. BUG: RuleProgress.is_qualified (state.py) only
    # checks the end of the period, never that the event is at or after qualified_at, so the early
    # bet counts as progress (and with a period, an early bet would even be judged inside it).
    h = Harness(load(tmp_path, """
        - id: deposit-then-bet
          name: deposit, then a casino bet within 24 hours
          qualification: {event: deposit, period: 24h}
          trigger: {event: casino_bet}
          actions: [{action: give_bonus, template_id: first-bet}]
    """))
    h.send(deposit("10", at=T0))
    assert h.send(bet(at=T0 - timedelta(hours=1))) == []  # placed before the deposit, processed after
    assert h.outcomes("deposit-then-bet") == [QUALIFIED]
    assert len(h.send(bet(at=T0 + timedelta(minutes=30)))) == 1


def test_qualification_period_includes_its_last_instant(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, DEPOSIT_THEN_BETS))
    h.send(deposit("10", at=T0))
    h.send(*bets(99, start=T0 + timedelta(hours=1)))
    assert len(h.send(bet(at=T0 + timedelta(hours=24)))) == 1


def test_the_qualifying_event_itself_is_not_progress(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, """
        - id: after-big-deposit
          name: qualify with a 100 EUR deposit, then every deposit counts
          qualification: {event: deposit, condition: event.amount >= 100}
          trigger: {event: deposit}
          actions: [{action: give_points, amount: 1}]
    """))
    assert h.send(deposit("20")) == []  # not qualified yet
    assert h.send(deposit("100")) == []  # qualifies; the qualifying deposit is not counted
    assert h.outcomes("after-big-deposit") == [QUALIFIED]
    assert len(h.send(deposit("20"))) == 1
    assert h.send(deposit("150")) == []  # qualifies again, again not counted
    assert h.outcomes("after-big-deposit") == [QUALIFIED, EXECUTED, QUALIFIED]


def test_qualification_condition_deposit_of_100_eur(tmp_path: Path) -> None:
    # the specification's second example: qualify with a 100 EUR deposit, then 5 bets, iteration 3
    h = Harness(load(tmp_path, """
        - id: big-deposit-then-5-bets
          name: deposit 100 EUR, then 5 bets, 3 times per deposit
          qualification: {event: deposit, condition: event.amount >= 100, iterations: 3}
          trigger: {event: casino_bet}
          accumulation: {step: 5}
          actions: [{action: give_bonus, template_id: five-bets}]
    """))
    h.send(deposit("50"))  # does not qualify
    assert h.outcomes("big-deposit-then-5-bets") == []
    assert h.send(*bets(10)) == []
    h.send(deposit("100", at=T0 + timedelta(hours=1)))
    assert h.outcomes("big-deposit-then-5-bets") == [QUALIFIED]
    assert len(h.send(*bets(20, start=T0 + timedelta(hours=2)))) == 3
    h.send(deposit("50", at=T0 + timedelta(hours=3)))  # too small to requalify
    assert h.send(*bets(10, start=T0 + timedelta(hours=4))) == []
    h.send(deposit("100", at=T0 + timedelta(hours=5)))
    assert len(h.send(*bets(5, start=T0 + timedelta(hours=6)))) == 1


def test_remaining_iterations_cap_the_executions_of_one_event(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, """
        - id: wager-after-deposit
          name: after a deposit, 1 point per 10 EUR wagered, at most twice
          qualification: {event: deposit, iterations: 2}
          trigger: {event: casino_bet}
          accumulation: {field: event.bet_amount, step: 10}
          actions: [{action: give_points, amount: 1}]
    """))
    h.send(deposit("10"))
    assert points(h.send(bet(amount="55"))) == [(2, D(2))]  # 5 steps, 2 iterations: the rest is discarded
    progress = h.state().rules["wager-after-deposit"]
    assert (progress.qualified_at, progress.remainder) == (None, 0)  # used up: must qualify again
    assert h.send(bet(amount="100")) == []


def test_qualified_once_without_iterations_or_once_in_lifetime_completes_every_time(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, """
        - id: every-5-bets
          name: after one deposit, a bonus for every 5 bets, for ever
          qualification: {event: deposit}
          trigger: {event: casino_bet}
          accumulation: {step: 5}
          actions: [{action: give_bonus, template_id: five}]
    """))
    h.send(deposit("10"))
    assert len(h.send(*bets(50, start=T0 + timedelta(minutes=1)))) == 10
    assert len(h.send(*bets(50, start=T0 + timedelta(days=365)))) == 10
    (qualified, *executed) = h.history
    assert qualified.outcome == QUALIFIED and qualified.qualified_until is None
    assert {e.outcome for e in executed} == {EXECUTED}


# -- account status -------------------------------------------------------------------------------

NON_ACTIVE = ["BLOCKED", "SELF_EXCLUDED", "SUSPENDED", "BANNED", "DEACTIVATED", "PENDING", "LOCKED", "APPROVED"]
ANY_DEPOSIT = """
- id: any-deposit
  name: bonus on every deposit
  trigger: {event: deposit}
  actions: [{action: give_bonus, template_id: dep}]
"""


@pytest.mark.parametrize("status", NON_ACTIVE)
def test_non_active_accounts_get_no_actions_and_a_skipped_history_entry(tmp_path: Path, status: str) -> None:
    h = Harness(load(tmp_path, ANY_DEPOSIT))
    h.send(profile(status=status))
    assert h.send(deposit("10", at=T0 + timedelta(minutes=1))) == []
    (entry,) = h.history
    assert entry.outcome == SKIPPED
    assert entry.reason is not None and status in entry.reason
    # back to ACTIVE: actions again
    h.send(profile(status="ACTIVE", at=T0 + timedelta(minutes=2)))
    assert len(h.send(deposit("10", at=T0 + timedelta(minutes=3)))) == 1


def test_a_profile_update_without_a_status_keeps_the_known_status(tmp_path: Path) -> None:
    # A profile update that does not carry core_account_status (the reference adapter leaves it out
    # when the message has none) must not make a self-excluded user ACTIVE again: other profile
    # fields (country, kyc_status, ...) are only overwritten when given. BUG: state._apply_profile
    # copies profile.account_status unconditionally, and the model defaults it to ACTIVE, so the
    # self-excluded user starts receiving marketing actions again.
    h = Harness(load(tmp_path, ANY_DEPOSIT))
    h.send(profile(status="SELF_EXCLUDED", country="MT"))
    update = UserProfile(brand_id=BRAND, user_id="u1", event_id="p-update", event_time=T0 + timedelta(minutes=1),
                         registration_date=utc("2025-01-01T00:00:00"), language="EN", wallet_currency="EUR",
                         country="DE")
    assert "account_status" not in update.model_fields_set
    h.send(update)
    assert h.state().country == "DE"
    assert h.send(deposit("10", at=T0 + timedelta(minutes=2))) == []
    assert h.state().account_status == "SELF_EXCLUDED"


def test_a_user_without_a_profile_counts_as_active(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, ANY_DEPOSIT))
    assert len(h.send(deposit("10", user="stranger"))) == 1


def test_a_skipped_event_does_not_accumulate(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, DEPOSIT_POINTS))
    h.send(profile(status="BLOCKED"))
    assert h.send(deposit("5.5")) == []
    h.send(profile(status="ACTIVE"))
    assert len(h.send(deposit("0.5"))) == 0
    assert h.state().rules["deposit-points"].remainder == D("0.5")


# -- segments -------------------------------------------------------------------------------------


def test_segment_on_country_and_a_missing_country_is_not_in_it(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, """
        - id: canada
          name: customers from Canada
          segment: user.country == "CA"
          trigger: {event: deposit}
          actions: [{action: give_bonus, template_id: maple}]
    """))
    assert h.send(deposit("10", user="nobody")) == []  # no profile, no country
    h.send(profile("no-country"), profile("us", country="US"), profile("ca", country="CA"))
    assert h.send(deposit("10", user="no-country")) == []
    assert h.send(deposit("10", user="us")) == []
    assert len(h.send(deposit("10", user="ca"))) == 1


def test_segment_on_deposit_count_sees_the_triggering_deposit(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, """
        - id: repeat-depositor
          name: customers with a deposit count > 1
          segment: user.deposit_count > 1
          trigger: {event: deposit}
          actions: [{action: give_bonus, template_id: again}]
    """))
    assert h.send(deposit("10")) == []
    assert len(h.send(deposit("10"))) == 1  # the event is folded into deposit_count before rules run


def test_segment_on_tags_after_mark_and_unmark(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, """
        - id: mark-vip
          name: big deposits make a VIP
          trigger: {event: deposit, condition: event.amount >= 1000}
          actions: [{action: mark_user, tag: vip}]
        - id: unmark-vip
          name: a withdrawal ends it
          trigger: {event: withdrawal_completed}
          actions: [{action: unmark_user, tag: vip}]
        - id: vip-bets
          name: VIP bet bonus
          segment: '"vip" in user.tags'
          trigger: {event: casino_bet}
          actions: [{action: give_bonus, template_id: vip-spin}]
    """))
    assert h.send(bet()) == []
    h.send(deposit("1000"))
    assert h.state().tags == {"vip"}
    assert len(h.send(bet())) == 1
    h.send(Payment(type="withdrawal_completed", brand_id=BRAND, user_id="u1", event_id="w1", event_time=T0,
                   amount=D(5), currency="EUR"))
    assert h.state().tags == set()
    assert h.send(bet()) == []


def test_events_for_a_never_seen_user_create_it(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, ANY_DEPOSIT))
    assert (BRAND, "fresh") not in h.states
    h.send(deposit("7", user="fresh"))
    state = h.state("fresh")
    assert (state.deposit_count, state.deposit_total) == (1, {"EUR": D(7)})


# -- actions --------------------------------------------------------------------------------------

EVERY_ACTION = """
- id: setup
  name: runs first
  priority: 1
  trigger: {event: deposit}
  actions:
    - {action: give_points, amount: 2}
    - {action: mark_user, tag: new}
- id: everything
  name: every action kind
  priority: 2
  trigger: {event: deposit}
  actions:
    - {action: give_points, amount: 10}
    - {action: deduct_points, amount: 3}
    - {action: give_bonus, template_id: welcome-100, amount: 20}
    - {action: give_mission, mission_id: m-7}
    - {action: start_campaign, campaign_id: spring}
    - {action: stop_campaign, campaign_id: winter}
    - {action: mark_user, tag: vip}
    - {action: unmark_user, tag: new}
    - {action: change_level, level: 3}
    - {action: webhook, url: "https://example.com/hook", payload: {kind: deposit, n: 1}}
- id: reset
  name: runs last
  priority: 3
  trigger: {event: casino_bet}
  actions:
    - {action: reset_points}
"""


def test_every_action_kind_with_its_params_and_state_effects(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, EVERY_ACTION))
    actions = h.send(deposit("10", event_id="dep-1"))
    assert [(a.rule_id, a.action, a.params) for a in actions] == [
        ("setup", ActionKind.GIVE_POINTS, {"amount": D(2)}),
        ("setup", ActionKind.MARK_USER, {"tag": "new"}),
        ("everything", ActionKind.GIVE_POINTS, {"amount": D(10)}),
        ("everything", ActionKind.DEDUCT_POINTS, {"amount": D(3)}),
        ("everything", ActionKind.GIVE_BONUS, {"template_id": "welcome-100", "amount": D(20)}),
        ("everything", ActionKind.GIVE_MISSION, {"mission_id": "m-7"}),
        ("everything", ActionKind.START_CAMPAIGN, {"campaign_id": "spring"}),
        ("everything", ActionKind.STOP_CAMPAIGN, {"campaign_id": "winter"}),
        ("everything", ActionKind.MARK_USER, {"tag": "vip"}),
        ("everything", ActionKind.UNMARK_USER, {"tag": "new"}),
        ("everything", ActionKind.CHANGE_LEVEL, {"level": 3}),
        ("everything", ActionKind.WEBHOOK, {"url": "https://example.com/hook", "payload": {"kind": "deposit", "n": 1}}),
    ]
    assert [a.action_id for a in actions[:3]] == ["b1/dep-1/setup/0", "b1/dep-1/setup/1", "b1/dep-1/everything/0"]
    assert actions[-1].action_id == "b1/dep-1/everything/9"
    assert {a.executions for a in actions} == {1}
    state = h.state()
    assert (state.points, state.tags, state.level) == (D(9), {"vip"}, 3)
    (reset,) = h.send(bet())
    assert (reset.action, reset.params) == (ActionKind.RESET_POINTS, {})
    assert h.state().points == 0
    # every action serialises to canonical JSON
    assert json.loads(actions[4].to_json())["params"] == {"template_id": "welcome-100", "amount": "20"}


def test_deduct_points_never_goes_below_zero(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, """
        - id: penalty
          name: deduct 5
          trigger: {event: withdrawal_requested}
          actions: [{action: deduct_points, amount: 5}]
        - id: earn
          name: earn 2
          trigger: {event: deposit}
          actions: [{action: give_points, amount: 2}]
    """))
    h.send(deposit("1"))
    h.send(Payment(type="withdrawal_requested", brand_id=BRAND, user_id="u1", event_id="w1", event_time=T0,
                   amount=D(1)))
    assert h.state().points == 0


STATE_CHAIN = """
- id: a-points
  name: 10 points per deposit
  priority: {points}
  trigger: {{event: deposit}}
  actions: [{{action: give_points, amount: 10}}]
- id: b-level
  name: level 2 once a user has 10 points
  priority: {level}
  segment: user.points >= 10
  trigger: {{event: deposit}}
  actions: [{{action: change_level, level: 2}}]
- id: c-tag
  name: tag level 2 users
  priority: {tag}
  segment: user.level == 2
  trigger: {{event: deposit}}
  actions: [{{action: mark_user, tag: level-two}}]
"""


def test_state_effects_are_visible_to_later_rules_of_the_same_event(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, STATE_CHAIN.format(points=1, level=2, tag=3)))
    assert [a.rule_id for a in h.send(deposit("1"))] == ["a-points", "b-level", "c-tag"]
    assert (h.state().points, h.state().level, h.state().tags) == (D(10), 2, {"level-two"})


def test_rules_earlier_in_priority_do_not_see_effects_of_later_ones(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, STATE_CHAIN.format(points=3, level=2, tag=1)))
    # order c-tag, b-level, a-points: each sees only what earlier rules and earlier events did
    assert [a.rule_id for a in h.send(deposit("1"))] == ["a-points"]
    assert [a.rule_id for a in h.send(deposit("1"))] == ["b-level", "a-points"]
    assert [a.rule_id for a in h.send(deposit("1"))] == ["c-tag", "b-level", "a-points"]


def test_action_ids_are_deterministic_across_runs(tmp_path: Path) -> None:
    rules = load(tmp_path, DEPOSIT_POINTS + EVERY_ACTION)
    events = [profile(event_id="p-1"), deposit("3.5", event_id="dep-1"), bet(event_id="bet-1"),
              deposit("2", user="u2", event_id="dep-2")]
    first, second = Harness(rules), Harness(rules)
    first.send(*events)
    second.send(*events)
    assert [a.to_json() for a in first.actions] == [a.to_json() for a in second.actions]
    assert [(a.action_id, a.executions) for a in first.actions if a.rule_id == "deposit-points"] == [
        ("b1/dep-1/deposit-points/0", 3), ("b1/dep-2/deposit-points/0", 2),
    ]
    groups: dict[tuple[str, str], list[Action]] = {}
    for action in first.actions:
        groups.setdefault((action.event_id, action.rule_id), []).append(action)
    for (event_id, rule_id), group in groups.items():  # one firing per event and rule
        assert [a.action_id for a in group] == [f"b1/{event_id}/{rule_id}/{i}" for i in range(len(group))]


# -- priority and indexing ------------------------------------------------------------------------


def test_rules_run_by_priority_ascending_then_id(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, """
        - {id: zeta, name: z, priority: 5, trigger: {event: deposit}, actions: [{action: give_points, amount: 1}]}
        - {id: beta, name: b, priority: 1, trigger: {event: deposit}, actions: [{action: give_points, amount: 1}]}
        - {id: alpha, name: a, priority: 1, trigger: {event: deposit}, actions: [{action: give_points, amount: 1}]}
        - {id: default, name: d, trigger: {event: deposit}, actions: [{action: give_points, amount: 1}]}
        - {id: neg, name: n, priority: -10, trigger: {event: deposit}, actions: [{action: give_points, amount: 1}]}
    """))
    assert [a.rule_id for a in h.send(deposit("1"))] == ["neg", "alpha", "beta", "zeta", "default"]


def test_rules_are_indexed_by_trigger_type(tmp_path: Path) -> None:
    rules = load(tmp_path, """
        - id: casino-any
          name: every casino bet, every user
          trigger: {event: casino_bet}
          actions: [{action: give_points, amount: 1}]
        - id: deposit-any
          name: every deposit
          trigger: {event: deposit}
          actions: [{action: give_points, amount: 1}]
        - id: qualified-bets
          name: qualified by deposit, triggered by bets
          qualification: {event: deposit}
          trigger: {event: casino_bet}
          actions: [{action: give_points, amount: 1}]
    """)
    assert [r.id for r in rules.for_event("deposit")] == ["deposit-any", "qualified-bets"]
    assert [r.id for r in rules.for_event("casino_bet")] == ["casino-any", "qualified-bets"]
    assert rules.for_event("casino_win") == ()
    h = Harness(rules)
    # a deposit never fires the casino rule, whose (empty) segment matches everyone
    assert [a.rule_id for a in h.send(deposit("10"))] == ["deposit-any"]
    assert [a.rule_id for a in h.send(bet())] == ["casino-any", "qualified-bets"]


# -- aggregates -----------------------------------------------------------------------------------


def test_platform_aggregates_are_stored_as_given_and_usable_in_segments(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, """
        - id: platform-vip
          name: lifetime deposits of 1000 or more, as the platform counts them
          segment: user.platform_total_deposit_amount >= 1000 and user.platform_total_deposit_count >= 10
          trigger: {event: deposit}
          actions: [{action: give_bonus, template_id: vip}]
    """))
    assert h.send(deposit("50")) == []
    given = PlatformAggregates(total_deposit_amount=D("1500.50"), total_deposit_count=12)
    assert len(h.send(deposit("50", aggregates=given))) == 1
    state = h.state()
    assert (state.platform_total_deposit_amount, state.platform_total_deposit_count) == (D("1500.50"), 12)
    # the engine's own aggregates are kept alongside, not replaced
    assert (state.deposit_count, state.deposit_total) == (2, {"EUR": D(100)})
    # an event without aggregates leaves the platform's values as they were
    h.send(deposit("1"))
    assert state.platform_total_deposit_amount == D("1500.50")


def test_engine_aggregates(tmp_path: Path) -> None:
    h = Harness(load(tmp_path, """
        - id: eur-30
          name: deposited 30 EUR in total
          once_in_lifetime: true
          segment: user.deposit_total["EUR"] >= 30
          trigger: {event: deposit}
          actions: [{action: give_bonus, template_id: thirty}]
    """))
    t1, t2 = T0, T0 + timedelta(hours=1)
    assert h.send(deposit("10", at=t1)) == []
    assert len(h.send(deposit("20.00", at=t2))) == 1
    h.send(bet(amount="2.5", at=t2 + timedelta(minutes=1)), bet(amount="1", at=t2 + timedelta(minutes=2)))
    s = h.state()
    assert (s.deposit_count, s.deposit_total, s.first_deposit_time, s.last_deposit_time, s.last_deposit_amount) == (
        2, {"EUR": D(30)}, t1, t2, D(20))
    assert (s.bet_count, s.bet_total, s.last_bet_time) == (2, {"EUR": D("3.5")}, t2 + timedelta(minutes=2))


# -- simulate and history (the CLI, as a user runs it) ----------------------------------------------


def cli(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "smartico_stream.cli", *map(str, args)], capture_output=True,
                          env=env, cwd=REPO, timeout=60, check=False)


def ms(text: str) -> int:
    return int(utc(text).timestamp() * 1000)


def rec_profile(user: str, at: str, *, currency: str = "EUR", status: str = "ACTIVE", **extra: Any) -> dict[str, Any]:
    return {"stream": "profile", "key": user, "value": {
        "dt_update": ms(at), "ext_brand_id": BRAND, "user_ext_id": user, "core_account_status": status,
        "core_registration_date": "2025-01-01T00:00:00Z", "core_user_language": "EN",
        "core_wallet_currency": currency, **extra}}


def rec_deposit(user: str, tx: str, at: str, amount: str, **extra: Any) -> dict[str, Any]:
    return {"stream": "payments", "key": user, "value": {
        "dt_finalized": ms(at), "ext_brand_id": BRAND, "user_ext_id": user, "transaction_id": tx,
        "type": "deposit", "amount": amount, "core_wallet_currency": "EUR", **extra}}


def rec_bet(user: str, tx: str, at: str, amount: str = "1") -> dict[str, Any]:
    return {"stream": "casino", "key": user, "value": {
        "bet_date": ms(at), "ext_brand_id": BRAND, "user_ext_id": user, "transaction_id": tx, "type": "bet",
        "bet_amount": amount, "game_name": "Book of Dead", "game_id": 77}}


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


SIM_RULES = """
- id: deposit-points
  name: 1 point per 10 EUR / 8 GBP / 12 USD deposited
  trigger: {event: deposit}
  accumulation: {field: event.amount, steps: {EUR: 10, GBP: 8, USD: 12}}
  actions: [{action: give_points, amount: 1}]
- id: platform-vip
  name: platform lifetime deposits over 1000
  once_in_lifetime: true
  segment: user.platform_total_deposit_amount > 1000
  trigger: {event: deposit}
  actions: [{action: mark_user, tag: vip}]
- id: deposit-then-3-bets
  name: deposit, then 3 bets within 24 hours
  qualification: {event: deposit, period: 24h, iterations: 1}
  trigger: {event: casino_bet}
  accumulation: {step: 3}
  actions: [{action: give_bonus, template_id: three-bets, amount: 5}]
- id: every-deposit
  name: bonus on every deposit
  trigger: {event: deposit}
  actions: [{action: give_bonus, template_id: dep}]
"""


def _sim_records() -> list[dict[str, Any]]:
    return [
        rec_profile("u1", "2025-03-01T09:00:00", currency="GBP", user_country="MT"),
        rec_profile("blocked", "2025-03-01T09:00:00", status="BLOCKED"),
        rec_deposit("u1", "d1", "2025-03-01T10:00:00", "17.50", total_deposit_amount="1500"),
        rec_bet("u1", "c1", "2025-03-01T11:00:00"),
        rec_bet("u1", "c2", "2025-03-01T12:00:00"),
        rec_deposit("new", "d2", "2025-03-01T12:30:00", "25"),
        rec_bet("u1", "c3", "2025-03-01T13:00:00"),
        rec_deposit("blocked", "d3", "2025-03-01T14:00:00", "100"),
        rec_deposit("u1", "d1", "2025-03-01T10:00:00", "17.50"),  # a duplicate: deduplicated
    ]


def test_simulate_is_deterministic_and_applies_the_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(SIM_RULES)
    events = write_jsonl(tmp_path / "events.jsonl", _sim_records())
    first = cli("simulate", "--rules", rules, "--events", events)
    second = cli("simulate", "--rules", rules, "--events", events)
    assert first.returncode == 0, first.stderr.decode()
    assert first.stdout == second.stdout
    actions = [json.loads(line) for line in first.stdout.splitlines()]
    assert [(a["action_id"], a["executions"], a["params"]) for a in actions] == [
        # 17.50 with the GBP step (profile currency): 2 executions, one action of 2 points
        ("b1/d1/deposit-points/0", 2, {"amount": "2"}),
        ("b1/d1/every-deposit/0", 1, {"template_id": "dep"}),
        ("b1/d1/platform-vip/0", 1, {"tag": "vip"}),  # platform aggregate from the record
        ("b1/c3/deposit-then-3-bets/0", 1, {"template_id": "three-bets", "amount": "5"}),
        ("b1/d2/deposit-points/0", 2, {"amount": "2"}),  # a never-seen user, EUR from the event
        ("b1/d2/every-deposit/0", 1, {"template_id": "dep"}),
    ]
    assert b"deduplicated 1" in first.stderr and b"actions 6" in first.stderr


def test_simulate_state_is_readable_by_history_per_user_and_per_rule(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(SIM_RULES)
    events = write_jsonl(tmp_path / "events.jsonl", _sim_records())
    db = tmp_path / "state.db"
    assert cli("simulate", "--rules", rules, "--events", events, "--state", db).returncode == 0
    store = f"sqlite:///{db}"

    per_user = cli("history", "--store", store, "--user", "b1:u1", "--json")
    assert per_user.returncode == 0, per_user.stderr.decode()
    rows = [json.loads(line) for line in per_user.stdout.splitlines()]
    assert {r["user"] for r in rows} == {"u1"}
    qualification = [(r["outcome"], r["qualification_date"], r["qualification_valid_until"])
                     for r in rows if r["rule_id"] == "deposit-then-3-bets"]
    assert qualification == [
        ("qualified", "2025-03-01T10:00:00.000Z", "2025-03-02T10:00:00.000Z"),
        ("executed", "2025-03-01T10:00:00.000Z", "2025-03-02T10:00:00.000Z"),
    ]
    assert {(r["rule_id"], r["outcome"], r["executions"]) for r in rows} >= {
        ("deposit-points", "executed", 2), ("platform-vip", "executed", 1)}

    per_rule = cli("history", "--store", store, "--rule", "every-deposit", "--json")
    rows = [json.loads(line) for line in per_rule.stdout.splitlines()]
    assert [(r["user"], r["outcome"], r["reason"]) for r in rows] == [
        ("u1", "executed", None),
        ("blocked", "skipped", "account status BLOCKED is not ACTIVE"),
        ("new", "executed", None),
    ]

    text = cli("history", "--store", store, "--user", "b1:u1", "--rule", "deposit-then-3-bets")
    lines = text.stdout.decode().splitlines()
    assert len(lines) == 2
    assert "qualified 2025-03-01T10:00:00.000Z valid until 2025-03-02T10:00:00.000Z" in lines[0]

    # the never-seen user was created in the store
    with sqlite3.connect(db) as conn:
        users = {tuple(row) for row in conn.execute("SELECT brand, user_id FROM users")}
    assert users == {("b1", "u1"), ("b1", "new"), ("b1", "blocked")}


def test_simulate_twice_on_the_same_state_file_does_not_apply_the_records_twice(tmp_path: Path) -> None:
    # BUG: simulate() ignores what the store's lease returns (dedup keys, next offset), so a second
    # run with the same --state re-applies every record on top of the saved user states: counters
    # double, once-in-a-lifetime rules see an earlier execution, and the history gets a second set of
    # rows, all silently. Whether a re-run resumes (everything deduplicated), starts afresh, or
    # refuses the existing file, the history must not describe each event twice.
    rules = tmp_path / "rules.yaml"
    rules.write_text(SIM_RULES)
    events = write_jsonl(tmp_path / "events.jsonl", _sim_records())
    db = tmp_path / "state.db"
    store = f"sqlite:///{db}"
    assert cli("simulate", "--rules", rules, "--events", events, "--state", db).returncode == 0
    before = cli("history", "--store", store, "--user", "b1:u1", "--json").stdout
    cli("simulate", "--rules", rules, "--events", events, "--state", db)
    after = cli("history", "--store", store, "--user", "b1:u1", "--json").stdout
    assert after == before


# -- properties -----------------------------------------------------------------------------------

_amounts = st.decimals(min_value=0, max_value=400, places=2, allow_nan=False, allow_infinity=False)
_steps = st.decimals(min_value=D("0.5"), max_value=50, places=2, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amounts=st.lists(_amounts, min_size=1, max_size=15), step=_steps)
def test_property_accumulation_conserves_every_amount(tmp_path: Path, amounts: list[Decimal], step: Decimal) -> None:
    rules = load(tmp_path, f"""
        - id: acc
          name: property
          trigger: {{event: deposit}}
          accumulation: {{field: event.amount, step: "{step}"}}
          actions: [{{action: give_points, amount: 1}}]
    """)
    h = Harness(rules)
    for i, amount in enumerate(amounts):
        h.send(deposit(amount, at=T0 + timedelta(seconds=i)))
    remainder = h.state().rules["acc"].remainder if "acc" in h.state().rules else D(0)
    assert 0 <= remainder < step
    # no event can reach the cap here: (step + 400) / 0.5 < 1000
    executions = sum(a.executions for a in h.actions)
    assert executions * step + remainder == sum(amounts)
    # one action per firing, its amount the total of its executions
    assert len(h.actions) == len({a.event_id for a in h.actions})
    assert sum(a.params["amount"] for a in h.actions) == executions == h.state().points


_event_kinds = st.sampled_from(["deposit", "bet", "profile", "withdrawal"])

EXTRA_RULES = """
- id: every-bet
  name: every 7 EUR wagered, two actions
  trigger: {event: casino_bet}
  accumulation: {field: event.bet_amount, step: 7}
  actions: [{action: give_points, amount: 1}, {action: webhook, url: "https://example.com/hook"}]
- id: withdrawals
  name: on withdrawal
  trigger: {event: withdrawal_completed}
  actions: [{action: deduct_points, amount: 1}]
"""


@pytest.fixture(scope="module")
def demo_and_extra_rules(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    """The demo's sample rules plus two more, loaded as a folder of two files."""
    folder = tmp_path_factory.mktemp("rule-folder")
    (folder / "demo.yaml").write_text((REPO / "smartico_stream/demo/rules.yaml").read_text())
    (folder / "extra.yml").write_text(EXTRA_RULES)
    return load_rules(folder)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(st.tuples(_event_kinds, st.sampled_from(["u1", "u2", "u3"]), _amounts,
                                 st.integers(min_value=0, max_value=48 * 3600)), min_size=1, max_size=40))
def test_property_action_ids_are_unique(demo_and_extra_rules: RuleSet,
                                        script: Sequence[tuple[str, str, Decimal, int]]) -> None:
    h = Harness(demo_and_extra_rules)
    numbers: dict[str, itertools.count[int]] = {}
    # event ids are unique per type (the dedup key) but the same number recurs across types and users
    for kind, user, amount, offset in sorted(script, key=lambda s: s[3]):
        n = str(next(numbers.setdefault(kind, itertools.count(1))))
        at = T0 + timedelta(seconds=offset)
        if kind == "deposit":
            h.send(deposit(amount, user=user, at=at, event_id=n))
        elif kind == "bet":
            h.send(bet(user, at, amount=amount, event_id=n))
        elif kind == "withdrawal":
            h.send(Payment(type="withdrawal_completed", brand_id=BRAND, user_id=user, event_id=n, event_time=at,
                           amount=amount))
        else:
            h.send(profile(user, at, country="MT", event_id=f"profile:{user}:{n}"))
    ids = [a.action_id for a in h.actions]
    assert len(ids) == len(set(ids))
