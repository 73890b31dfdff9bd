"""The user-state document the store keeps per user (``UserState.to_json`` / ``from_json``).

What is proven: any state reads back equal to itself and encodes to the same bytes again
(property-based, with the values that a compact encoding could confuse: False against None, 0
against None, Decimal zero, empty maps); fields at their default are left out of the document; a
document in the older form, every field written out, still loads, through a live store.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartico_stream.engine.state import RuleProgress, UserState
from smartico_stream.store.sqlite import SqliteStore

T0 = datetime(2026, 1, 7, 13, 49, 15, 503000, tzinfo=UTC)

decimals = st.decimals(min_value=Decimal("-1e9"), max_value=Decimal("1e9"), places=2, allow_nan=False)
moments = st.none() | st.integers(0, 10**8).map(lambda s: T0 + timedelta(milliseconds=s))
small = st.integers(0, 3)  # 0 is the interesting value: the default of counters, not of optional ints
optional_int = st.none() | small
optional_bool = st.none() | st.booleans()
text = st.none() | st.sampled_from(["", "EUR", "DE", "ACTIVE", "wörld"])
totals = st.dictionaries(st.sampled_from(["EUR", "GBP", "?"]), decimals, max_size=3)
progress = st.builds(
    RuleProgress, remainder=decimals, executions=small, qualified_at=moments, qualified_until=moments,
    iterations=small,
)

states = st.builds(
    UserState,
    brand=st.sampled_from(["b1", "brand-eu"]),
    user=st.text(min_size=1, max_size=8),
    account_status=text,
    country=text,
    registration_date=moments,
    affiliate_id=optional_int,
    is_email_disabled_by_platform=optional_bool,
    is_sms_disabled_by_platform=optional_bool,
    has_email=st.booleans(),
    phone_valid=optional_bool,
    custom=st.dictionaries(
        st.sampled_from(["vip", "segment"]), st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=4)
    ),
    deposit_count=small,
    deposit_total=totals,
    bet_total=totals,
    last_deposit_amount=st.none() | decimals,
    last_event_time=moments,
    platform_total_bet_amount=st.none() | decimals,
    platform_total_bet_count=optional_int,
    points=decimals,
    level=optional_int,
    tags=st.sets(st.sampled_from(["vip", "depositor", "a"]), max_size=3),
    rules=st.dictionaries(st.sampled_from(["r1", "r2", "deposit-points"]), progress, max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(states)
def test_any_state_reads_back_equal_and_encodes_to_the_same_bytes(state: UserState) -> None:
    document = state.to_json()
    again = UserState.from_json(document)
    assert again == state
    assert again.to_json() == document


@settings(max_examples=100, deadline=None)
@given(states)
def test_the_document_leaves_out_exactly_the_fields_at_their_default(state: UserState) -> None:
    data = orjson.loads(state.to_json())
    fresh = UserState(brand=state.brand, user=state.user)
    for name in ("account_status", "affiliate_id", "is_email_disabled_by_platform", "has_email", "deposit_count",
                 "level", "last_event_time", "platform_total_bet_count", "deposit_total", "tags", "custom"):
        assert (name in data) == (getattr(state, name) != getattr(fresh, name)), name
    assert "version" not in data  # the store keeps it in its own column


def test_values_equal_to_a_default_of_another_type_are_kept() -> None:
    state = UserState(brand="b", user="u", level=0, affiliate_id=0, is_email_disabled_by_platform=False,
                      last_deposit_amount=Decimal("0.00"), platform_total_bet_count=0)
    data = orjson.loads(state.to_json())
    assert data["level"] == 0
    assert data["affiliate_id"] == 0
    assert data["is_email_disabled_by_platform"] is False
    assert data["last_deposit_amount"] == "0.00"
    assert UserState.from_json(state.to_json()) == state


def _full_form(state: UserState) -> bytes:
    """A document as the store wrote it before the compact form: every field, nulls included."""
    # (payment_ids came after that form: such a document never has it)
    data: dict[str, Any] = {
        name: getattr(state, name) for name in UserState.__dataclass_fields__ if name not in ("version", "payment_ids")
    }
    data["tags"] = sorted(state.tags)
    data["rules"] = {rid: {"remainder": str(p.remainder), "executions": p.executions, "qualified_at": p.qualified_at,
                           "qualified_until": p.qualified_until, "iterations": p.iterations}
                     for rid, p in state.rules.items()}
    return orjson.dumps(data, default=str, option=orjson.OPT_SORT_KEYS)


@pytest.mark.asyncio
async def test_a_stored_document_in_the_older_full_form_still_loads(tmp_path: Path) -> None:
    state = UserState(brand="b1", user="old", country="MT", deposit_count=2, level=0, has_email=True,
                      deposit_total={"EUR": Decimal("30.50")}, points=Decimal(12), tags={"vip"},
                      last_event_time=T0,
                      rules={"r1": RuleProgress(remainder=Decimal("0.5"), executions=1, qualified_at=T0)})
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    try:
        async with store.transaction() as conn:
            await conn.execute(
                "INSERT INTO users (brand, user_id, state, version, updated_at) VALUES (?, ?, ?, ?, ?)",
                "b1", "old", _full_form(state), 3, "2026-01-07T00:00:00.000+00:00",
            )
        loaded = (await store.load_users([("b1", "old")]))[("b1", "old")]
    finally:
        await store.close()
    assert loaded.version == 3
    loaded.version = 0
    assert loaded == state


def test_a_new_users_document_holds_only_its_key() -> None:
    assert orjson.loads(UserState(brand="b1", user="u").to_json()) == {"brand": "b1", "user": "u"}
