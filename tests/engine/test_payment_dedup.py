"""Money events are never applied twice: the per-user memory of applied transactions (engine.payments)
against a reference model, its bounds, its place in the state document, and through the rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from smartico_stream.adapters.base import RecordContext, canonical_events
from smartico_stream.adapters.registry import load_adapter
from smartico_stream.config import DedupSettings
from smartico_stream.engine.base import ALREADY_APPLIED
from smartico_stream.engine.batch import BatchEngine
from smartico_stream.engine.evaluator import RuleEngine
from smartico_stream.engine.payments import ENTRY_BYTES, MONEY_EVENT_TYPES, PaymentDedup, remembered
from smartico_stream.engine.rules import load_rules
from smartico_stream.engine.state import USER_SCHEMA, UserState
from smartico_stream.events.models import CanonicalEvent, EventType
from smartico_stream.events.raw import Stream
from smartico_stream.pipeline.dedup import dedup_digest

T0 = datetime(2026, 1, 7, 12, 0, tzinfo=UTC)
DAY_S = 86_400
ADAPTER = load_adapter("reference")


def event(
    tx: str, kind: str = "deposit", at: datetime = T0, amount: str = "10.00", brand: str = "b1"
) -> CanonicalEvent:
    stream = Stream.PAYMENTS if kind in {t.value for t in MONEY_EVENT_TYPES} else Stream.CASINO
    message: dict[str, Any] = {
        "type": kind, "ext_brand_id": brand, "user_ext_id": "u1", "transaction_id": tx,
        "amount": amount, "bet_amount": amount, "game_id": "g", "game_name": "G", "core_wallet_currency": "EUR",
        "dt_finalized": int(at.timestamp() * 1000), "bet_date": int(at.timestamp() * 1000),
    }
    context = RecordContext(stream=stream, topic=stream.value, key="u1", headers={})
    (adapted,) = canonical_events(ADAPTER, message, context)
    return adapted


def test_money_events_are_every_deposit_and_withdrawal_status() -> None:
    assert {t.value for t in MONEY_EVENT_TYPES} == {
        "deposit", "deposit_failed", "deposit_cancelled", "withdrawal_requested", "withdrawal_approved",
        "withdrawal_completed", "withdrawal_rejected", "withdrawal_cancelled",
    }
    assert EventType.CASINO_BET not in MONEY_EVENT_TYPES


def test_a_repeat_is_found_however_late_within_the_horizon() -> None:
    memory = PaymentDedup(horizon_s=30 * DAY_S, max_per_user=1_000)
    state = UserState(brand="b1", user="u1")
    assert not memory.seen_before(state, event("tx-1"))
    assert memory.seen_before(state, event("tx-1"))  # the same transaction, resent (same event time)
    assert not memory.seen_before(state, event("tx-1", kind="withdrawal_requested"))  # another type
    assert not memory.seen_before(state, event("tx-1", brand="b2"))  # another brand's transaction
    assert not memory.seen_before(state, event("bet-1", kind="casino_bet"))  # not a money event
    assert not memory.seen_before(state, event("bet-1", kind="casino_bet"))  # ... never remembered
    assert len(remembered(state)) == 3
    # a later deposit 29 days on does not push tx-1 out; 31 days on, it does
    assert not memory.seen_before(state, event("tx-2", at=T0 + timedelta(days=29)))
    assert memory.seen_before(state, event("tx-1"))
    assert not memory.seen_before(state, event("tx-3", at=T0 + timedelta(days=31)))
    assert [t for _, t in remembered(state)] == [int((T0 + timedelta(days=d)).timestamp()) for d in (29, 31)]


def test_the_bound_keeps_the_newest_and_costs_twelve_bytes_per_transaction() -> None:
    memory = PaymentDedup(horizon_s=30 * DAY_S, max_per_user=5)
    state = UserState(brand="b1", user="u1")
    for i in range(8):
        assert not memory.seen_before(state, event(f"tx-{i}", at=T0 + timedelta(seconds=i)))
    assert len(state.payment_ids) == 5 * ENTRY_BYTES
    assert [d for d, _ in remembered(state)] == [dedup_digest("b1", "deposit", f"tx-{i}") for i in range(3, 8)]
    assert memory.seen_before(state, event("tx-7", at=T0 + timedelta(seconds=7)))
    assert not memory.seen_before(state, event("tx-0"))  # past the bound: applied again


def test_settings_turn_it_off() -> None:
    assert PaymentDedup.from_settings(DedupSettings()) == PaymentDedup(2_592_000.0, 1_000)
    assert PaymentDedup.from_settings(DedupSettings(payments_max_per_user=0)) is None
    assert PaymentDedup.from_settings(DedupSettings(enabled=False)) is None


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 6), st.sampled_from(["deposit", "withdrawal_completed", "casino_bet"]),
                  st.integers(-3, 40)),
        max_size=60,
    ),
    horizon_days=st.sampled_from([1, 10, 30]),
    bound=st.sampled_from([1, 3, 1_000]),
)
def test_matches_a_reference_model(steps: list[tuple[int, str, int]], horizon_days: int, bound: int) -> None:
    """The memory against a list: in applied order, the horizon passed (against the event checked)
    drops the oldest first, then the bound; a repeat is one still held and not older than the
    horizon. The state's document keeps it exactly."""
    memory = PaymentDedup(horizon_s=horizon_days * DAY_S, max_per_user=bound)
    state = UserState(brand="b1", user="u1")
    model: list[tuple[int, int]] = []
    for tx, kind, day in steps:
        item = event(f"tx-{tx}", kind=kind, at=T0 + timedelta(days=day))
        expected = False
        if kind != "casino_bet":
            at = int(item.event_time.timestamp())
            oldest = at - horizon_days * DAY_S
            while model and model[0][1] < oldest:
                model.pop(0)
            digest = dedup_digest("b1", kind, f"tx-{tx}")
            expected = any(d == digest and t >= oldest for d, t in model)
            if not expected:
                model = [*model, (digest, at)][-bound:]
        assert memory.seen_before(state, item) is expected
        assert remembered(state) == model
        assert UserState.from_json(state.to_json()).payment_ids == state.payment_ids


def test_the_state_document_holds_it_compactly_and_an_older_document_loads() -> None:
    state = UserState(brand="b1", user="u1")
    memory = PaymentDedup()
    for i in range(1_000):
        memory.seen_before(state, event(f"tx-{i}", at=T0 + timedelta(minutes=i)))
    document = state.to_json()
    assert len(document) - len(UserState(brand="b1", user="u1").to_json()) < 1_000 * 16 + 200
    assert UserState.from_json(document) == state
    old = b'{"brand":"b1","user":"u1","deposit_count":3}'  # written before the field existed
    assert UserState.from_json(old).payment_ids == b""
    assert "user.payment_ids" not in USER_SCHEMA  # not something rules can read


def test_a_repeated_deposit_changes_no_total_and_triggers_no_rule(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - id: dep\n    name: a point per deposit\n    trigger: {event: deposit}\n"
        "    actions:\n      - {action: give_points, amount: 1}\n"
    )
    rules = RuleEngine(load_rules(tmp_path / "rules.yaml"))
    state = UserState(brand="b1", user="u1")
    batch = BatchEngine(rules, {("b1", "u1"): state})
    outcomes = batch.apply_user_events(("b1", "u1"), [event("tx-1"), event("tx-2", amount="5.00"), event("tx-1")])
    assert outcomes == [(2, ALREADY_APPLIED)]
    assert (state.deposit_count, state.deposit_total, state.points) == (2, {"EUR": Decimal("15.00")}, 2)
    assert [a.event_id for _, a in batch.actions] == ["tx-1", "tx-2"]
    without = BatchEngine(rules, {("b1", "u1"): UserState(brand="b1", user="u1")}, payments=None)
    assert without.apply_user_events(("b1", "u1"), [event("tx-1"), event("tx-1")]) == []
