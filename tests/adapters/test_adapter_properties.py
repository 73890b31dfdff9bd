"""Property tests of the built-in adapters.

Valid generated messages must map exactly: amounts equal to the input (for Betwave, minor units over
10**exponent) as exact Decimals, ids as strings, event_time in UTC at millisecond precision, unknown
keys preserved in ``extra``. Junk must never raise anything but ``AdapterError`` or
``pydantic.ValidationError``.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from smartico_stream.adapters.base import AdapterError, RecordContext, canonical_events
from smartico_stream.events.models import PAYMENT_TYPES, CanonicalEvent, EventType, SportBetResult
from smartico_stream.events.raw import Stream
from smartico_stream_adapters import reference
from smartico_stream_adapters.betwave import MINOR_UNIT_EXPONENTS, BetwaveAdapter
from smartico_stream_adapters.reference import ReferenceAdapter

REFERENCE = ReferenceAdapter()
BETWAVE = BetwaveAdapter()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)

# Shared strategies ----------------------------------------------------------------------------------

# No whitespace or control characters: the canonical models strip surrounding whitespace from every
# string, custom properties in `extra` included.
clean_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=20
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    clean_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(clean_text, inner, max_size=3),
    max_leaves=8,
)
ids = st.one_of(
    st.integers(0, 2**63 - 1),
    st.text(alphabet=string.ascii_letters + string.digits + "-_:.", min_size=1, max_size=64),
    st.uuids().map(str),
)
offsets = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2025, 12, 31), timezones=offsets)
currencies = st.sampled_from(["EUR", "USD", "GBP", "CHF", "JPY", "KRW", "KWD", "BHD", "SEK"])
languages = st.sampled_from(["EN", "de", "Fr", "BG", "KO", "SV"])


def epoch_ms(moment: datetime) -> int:
    return (moment - EPOCH) // ONE_MS


def utc_ms(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def timestamp_wire(moment: datetime) -> st.SearchStrategy[Any]:
    return st.sampled_from([epoch_ms(moment), str(epoch_ms(moment)), moment.isoformat()])


def assert_identity(event: CanonicalEvent, brand: Any, user: Any, moment: datetime) -> None:
    assert event.brand_id == str(brand)
    assert event.user_id == str(user)
    assert isinstance(event.event_id, str)
    assert event.event_time == utc_ms(moment)
    assert event.event_time.utcoffset() == timedelta(0)
    assert event.event_time.microsecond % 1000 == 0


def assert_extra_kept(event: CanonicalEvent, unknown: Mapping[str, Any]) -> None:
    for key, value in unknown.items():
        assert key in event.extra
        assert event.extra[key] == value


# Reference adapter ----------------------------------------------------------------------------------

REFERENCE_KEYS = frozenset(
    source
    for rules in (
        reference.PROFILE_RULES,
        reference.PAYMENT_RULES,
        reference.CASINO_WIN_RULES,
        reference.SPORT_OPEN_RULES,
        reference.SPORT_SETTLED_RULES,
        reference.SPORT_SELECTION_SETTLED_RULES,
    )
    for rule in rules
    for source in rule.sources
) | reference.AGGREGATE_FIELDS | {"type", "event_id", "transaction_id"}

reference_unknown = st.dictionaries(clean_text.filter(lambda key: key not in REFERENCE_KEYS), json_values, max_size=4)


@st.composite
def decimal_amounts(draw: st.DrawFn) -> tuple[Any, Decimal, bool]:
    """(wire value, exact expected Decimal, whether the string form must survive too)."""
    if draw(st.booleans()):
        places = draw(st.integers(0, 6))
        value = draw(st.decimals(min_value=0, max_value=10**12, places=places, allow_nan=False, allow_infinity=False))
        text = format(value, "f")
        return text, Decimal(text), True
    # Within the schema's range, at most 18 digits after the point: a double of 0.01 or more has no more.
    number = draw(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
                  .filter(lambda n: n == 0 or n >= 0.01))
    # What the operator wrote, not the binary float: 0.1 must become 0.1, not 0.1000000000000000055...
    return number, Decimal(repr(number)), False


def assert_amount(actual: Decimal | None, expected: tuple[Any, Decimal, bool]) -> None:
    _, exact, keep_text = expected
    assert actual == exact
    if keep_text:
        assert str(actual) == str(exact)


def random_case(draw: st.DrawFn, text: str) -> str:
    return draw(st.sampled_from([str.lower, str.upper, str.title]))(text)


@st.composite
def reference_payments(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    moment, brand, user, tx = draw(moments), draw(ids), draw(ids), draw(ids)
    kind = draw(st.sampled_from(sorted(PAYMENT_TYPES)))
    amount = draw(decimal_amounts())
    unknown = draw(reference_unknown)
    message = {
        **unknown,
        "dt_finalized": draw(timestamp_wire(moment)),
        "ext_brand_id": brand,
        "user_ext_id": user,
        "transaction_id": tx,
        "type": random_case(draw, kind.value),
        "amount": amount[0],
        "core_wallet_currency": draw(currencies),
    }
    return message, {"moment": moment, "brand": brand, "user": user, "tx": tx, "type": kind.value,
                     "amount": amount, "unknown": unknown}


@given(reference_payments())
def test_reference_payments_map_exactly(generated: tuple[dict[str, Any], dict[str, Any]]) -> None:
    message, want = generated
    [event] = canonical_events(REFERENCE, message, RecordContext(Stream.PAYMENTS, "payments"))
    assert event.type == want["type"]
    assert event.event_id == str(want["tx"])
    assert_identity(event, want["brand"], want["user"], want["moment"])
    assert_amount(event.amount, want["amount"])
    assert_extra_kept(event, want["unknown"])


@st.composite
def reference_casino(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    moment, brand, user, tx = draw(moments), draw(ids), draw(ids), draw(ids)
    is_win = draw(st.booleans())
    bet, win = draw(decimal_amounts()), draw(decimal_amounts())
    unknown = draw(reference_unknown)
    message = {
        **unknown,
        "bet_date": draw(timestamp_wire(moment)),
        "ext_brand_id": brand,
        "user_ext_id": user,
        "transaction_id" if draw(st.booleans()) else "bet_id": tx,
        "type": random_case(draw, draw(st.sampled_from(["win", "casino_win"] if is_win else ["bet", "casino_bet"]))),
        "bet_amount": bet[0],
        "game_name": draw(clean_text),
        "game_id": draw(ids),
    }
    if is_win:
        message["win_amount"] = win[0]
    return message, {"moment": moment, "brand": brand, "user": user, "tx": tx, "win": is_win,
                     "bet": bet, "win_amount": win, "unknown": unknown}


@given(reference_casino())
def test_reference_casino_maps_exactly(generated: tuple[dict[str, Any], dict[str, Any]]) -> None:
    message, want = generated
    [event] = canonical_events(REFERENCE, message, RecordContext(Stream.CASINO, "casino"))
    assert event.type == (EventType.CASINO_WIN if want["win"] else EventType.CASINO_BET)
    assert event.event_id == str(want["tx"])
    assert event.game_id == str(message["game_id"])
    assert_identity(event, want["brand"], want["user"], want["moment"])
    assert_amount(event.bet_amount, want["bet"])
    if want["win"]:
        assert_amount(event.win_amount, want["win_amount"])
    assert_extra_kept(event, want["unknown"])


@st.composite
def reference_sport(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    moment, brand, user, tx, bet_id = draw(moments), draw(ids), draw(ids), draw(ids), draw(ids)
    kind = draw(st.sampled_from([t for t in EventType if t.value.startswith("sport_")]))
    stake, payout = draw(decimal_amounts()), draw(decimal_amounts())
    unknown = draw(reference_unknown)
    message = {
        **unknown,
        "event_date": draw(timestamp_wire(moment)),
        "ext_brand_id": brand,
        "user_ext_id": user,
        "transaction_id": tx,
        "bet_id": bet_id,
        "type": random_case(draw, kind.value),
        "stake": stake[0],
        "payout": payout[0],
        "selection_id": draw(ids),
        "result": random_case(draw, draw(st.sampled_from([result.value.lower() for result in SportBetResult]))),
    }
    return message, {"moment": moment, "brand": brand, "user": user, "tx": tx, "bet_id": bet_id, "type": kind,
                     "stake": stake, "payout": payout, "unknown": unknown}


@given(reference_sport())
def test_reference_sport_maps_exactly(generated: tuple[dict[str, Any], dict[str, Any]]) -> None:
    message, want = generated
    [event] = canonical_events(REFERENCE, message, RecordContext(Stream.SPORT, "sport"))
    assert event.type == want["type"]
    assert event.event_id == str(want["tx"])
    assert event.bet_id == str(want["bet_id"])
    assert_identity(event, want["brand"], want["user"], want["moment"])
    if want["type"] in (EventType.SPORT_BET_OPEN, EventType.SPORT_BET_SETTLED):
        assert_amount(event.stake, want["stake"])
    else:
        assert event.selection_id == str(message["selection_id"])
    if want["type"] == EventType.SPORT_BET_SETTLED:
        assert_amount(event.payout, want["payout"])
    assert_extra_kept(event, want["unknown"])


@st.composite
def reference_profiles(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    moment, registered, brand, user = draw(moments), draw(moments), draw(ids), draw(ids)
    total = draw(decimal_amounts())
    unknown = draw(reference_unknown)
    message = {
        **unknown,
        "dt_update": draw(timestamp_wire(moment)),
        "ext_brand_id": brand,
        "user_ext_id": user,
        "core_registration_date": draw(timestamp_wire(registered)),
        "core_user_language": draw(languages),
        "core_wallet_currency": draw(currencies),
        "total_deposit_amount": total[0],
    }
    return message, {"moment": moment, "registered": registered, "brand": brand, "user": user,
                     "total": total, "unknown": unknown}


@given(reference_profiles())
def test_reference_profiles_map_exactly(generated: tuple[dict[str, Any], dict[str, Any]]) -> None:
    message, want = generated
    [event] = canonical_events(REFERENCE, message, RecordContext(Stream.PROFILE, "profile"))
    assert_identity(event, want["brand"], want["user"], want["moment"])
    assert event.registration_date == utc_ms(want["registered"])
    assert event.language == message["core_user_language"].upper()
    assert event.aggregates is not None
    assert_amount(event.aggregates.total_deposit_amount, want["total"])
    assert_extra_kept(event, want["unknown"])


# Betwave adapter ------------------------------------------------------------------------------------

BETWAVE_TOP_LEVEL = frozenset(
    {"meta", "player", "payment", "money", "balances", "round", "game", "bet", "win", "slip", "totals", "attributes"}
)
betwave_unknown = st.dictionaries(
    clean_text.filter(lambda key: key not in BETWAVE_TOP_LEVEL and "." not in key), json_values, max_size=4
)


def exponent_of(currency: str) -> int:
    return MINOR_UNIT_EXPONENTS.get(currency, 2)


@st.composite
def minor_money(draw: st.DrawFn, currency: str, *, bonus: bool = False) -> dict[str, Any]:
    amount = draw(st.integers(0, 10**15))
    money: dict[str, Any] = {"amountMinor": draw(st.sampled_from([str(amount), amount])), "currency": currency}
    if bonus and draw(st.booleans()):
        money["bonusMinor"] = str(draw(st.integers(0, amount)))
    return money


def assert_minor(actual: Decimal | None, minor: Any, currency: str) -> None:
    """Exactly minor / 10**exponent, and written with the currency's number of decimals."""
    exponent = exponent_of(currency)
    assert actual is not None
    assert Fraction(actual) == Fraction(int(minor), 10**exponent)
    assert actual.as_tuple().exponent == -exponent


def betwave_envelope(draw: st.DrawFn, kind: int) -> tuple[dict[str, Any], dict[str, Any]]:
    moment, brand, user, event_id = draw(moments), draw(ids), draw(ids), draw(ids)
    unknown = draw(betwave_unknown)
    message = {
        **unknown,
        "meta": {"eventId": event_id, "kind": kind, "occurredAt": moment.isoformat()},
        "player": {"id": user, "brand": {"code": brand}},
    }
    return message, {"moment": moment, "brand": brand, "user": user, "event_id": event_id, "unknown": unknown}


@st.composite
def betwave_payments(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    kind, status, canonical = draw(
        st.sampled_from(
            [(200, 1, "deposit"), (200, 2, "deposit_failed"), (200, 3, "deposit_cancelled")]
            + [(210, code, f"withdrawal_{name}") for code, name in
               [(1, "requested"), (2, "approved"), (3, "completed"), (4, "rejected"), (5, "cancelled")]]
        )
    )
    message, want = betwave_envelope(draw, kind)
    currency = draw(currencies)
    payment_id = draw(ids)
    message["payment"] = {"id": payment_id, "status": status}
    message["money"] = draw(minor_money(currency))
    real, bonus = draw(st.integers(-(10**12), 10**12)), draw(st.integers(0, 10**12))
    message["balances"] = {"realMinor": str(real), "bonusMinor": str(bonus)}
    want.update(type=canonical, currency=currency, payment_id=payment_id, real=real, bonus=bonus)
    return message, want


@given(betwave_payments())
def test_betwave_payments_map_exactly(generated: tuple[dict[str, Any], dict[str, Any]]) -> None:
    message, want = generated
    [event] = canonical_events(BETWAVE, message, RecordContext(Stream.PAYMENTS, "payments"))
    assert event.type == want["type"]
    assert event.event_id == f"{str(want['payment_id']).strip()}:{want['type']}"
    assert_identity(event, want["brand"], want["user"], want["moment"])
    assert_minor(event.amount, message["money"]["amountMinor"], want["currency"])
    assert_minor(event.real_balance, want["real"], want["currency"])
    assert_minor(event.bonus_balance, want["bonus"], want["currency"])
    assert_minor(event.total_balance, want["real"] + want["bonus"], want["currency"])
    assert_extra_kept(event, want["unknown"])


@st.composite
def betwave_casino(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    kind = draw(st.sampled_from([300, 301, 302]))
    message, want = betwave_envelope(draw, kind)
    currency = draw(currencies)
    round_id = draw(ids)
    message["round"] = {"id": round_id}
    message["game"] = {"id": draw(ids), "title": draw(clean_text)}
    message["bet"] = draw(minor_money(currency, bonus=True))
    message["win"] = draw(minor_money(currency, bonus=True))
    want.update(kind=kind, currency=currency, round_id=round_id)
    return message, want


@given(betwave_casino())
def test_betwave_casino_maps_exactly(generated: tuple[dict[str, Any], dict[str, Any]]) -> None:
    message, want = generated
    events = canonical_events(BETWAVE, message, RecordContext(Stream.CASINO, "casino"))
    expected_types = {300: ["casino_bet"], 301: ["casino_bet", "casino_win"], 302: ["casino_win"]}[want["kind"]]
    assert [event.type for event in events] == expected_types
    round_id = str(want["round_id"]).strip()
    assert [event.event_id for event in events] == [f"{round_id}:{t.removeprefix('casino_')}" for t in expected_types]
    bet, win, currency = message["bet"], message["win"], want["currency"]
    for event in events:
        assert_identity(event, want["brand"], want["user"], want["moment"])
        assert_minor(event.bet_amount, bet["amountMinor"], currency)
        if "bonusMinor" in bet:
            assert_minor(event.bet_amount_bonus, bet["bonusMinor"], currency)
            assert_minor(event.bet_amount_real, int(bet["amountMinor"]) - int(bet["bonusMinor"]), currency)
        if event.type == EventType.CASINO_WIN:
            assert_minor(event.win_amount, win["amountMinor"], currency)
        assert_extra_kept(event, want["unknown"])


@st.composite
def betwave_sport(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    settled = draw(st.booleans())
    message, want = betwave_envelope(draw, 401 if settled else 400)
    currency = draw(currencies)
    slip_id = draw(ids)
    leg_ids = draw(st.lists(ids, min_size=1, max_size=4, unique_by=lambda value: str(value).strip()))
    legs = [{"id": leg_id, "odds": "1.5"} for leg_id in leg_ids]
    slip: dict[str, Any] = {"id": slip_id, "stake": draw(minor_money(currency)), "legs": legs}
    if settled:
        slip["result"] = draw(st.integers(1, 6))
        slip["payout"] = draw(minor_money(currency))
        for leg in legs:
            leg["result"] = draw(st.integers(1, 6))
    message["slip"] = slip
    want.update(settled=settled, currency=currency, slip_id=slip_id, leg_ids=leg_ids)
    return message, want


@given(betwave_sport())
def test_betwave_sport_maps_exactly(generated: tuple[dict[str, Any], dict[str, Any]]) -> None:
    message, want = generated
    events = canonical_events(BETWAVE, message, RecordContext(Stream.SPORT, "sport"))
    stage = "settled" if want["settled"] else "open"
    slip_id = str(want["slip_id"]).strip()
    legs = [str(leg_id).strip() for leg_id in want["leg_ids"]]
    assert [event.event_id for event in events] == [f"{slip_id}:{stage}"] + [f"{slip_id}:{leg}:{stage}" for leg in legs]
    bet, *selections = events
    assert bet.type == f"sport_bet_{stage}"
    assert all(event.type == f"sport_bet_selection_{stage}" for event in selections)
    assert [event.selection_id for event in selections] == legs
    assert_minor(bet.stake, message["slip"]["stake"]["amountMinor"], want["currency"])
    if want["settled"]:
        assert_minor(bet.payout, message["slip"]["payout"]["amountMinor"], want["currency"])
    else:
        assert bet.selections_count == len(legs)
    for event in events:
        assert event.bet_id == slip_id
        assert_identity(event, want["brand"], want["user"], want["moment"])
        assert_extra_kept(event, want["unknown"])


@st.composite
def betwave_profiles(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    message, want = betwave_envelope(draw, draw(st.sampled_from([100, 101])))
    registered = draw(moments)
    currency = draw(currencies)
    message["player"].update(
        registeredAt=registered.isoformat(),
        locale=draw(languages) + draw(st.sampled_from(["", "-AT", "_SE"])),
        walletCurrency=currency,
    )
    total = draw(st.integers(0, 10**15))
    message["totals"] = {"currency": currency, "depositMinor": str(total)}
    want.update(registered=registered, currency=currency, total=total)
    return message, want


@given(betwave_profiles())
def test_betwave_profiles_map_exactly(generated: tuple[dict[str, Any], dict[str, Any]]) -> None:
    message, want = generated
    [event] = canonical_events(BETWAVE, message, RecordContext(Stream.PROFILE, "profile"))
    assert event.event_id == str(want["event_id"]).strip()
    assert_identity(event, want["brand"], want["user"], want["moment"])
    assert event.registration_date == utc_ms(want["registered"])
    assert event.language == message["player"]["locale"][:2].upper()
    assert event.aggregates is not None
    assert_minor(event.aggregates.total_deposit_amount, want["total"], want["currency"])
    assert_extra_kept(event, want["unknown"])


# Junk -------------------------------------------------------------------------------------------------

# Wider than JSON on purpose (unbounded ints, NaN, infinities): the adapters must still only
# raise their documented errors.
junk_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
    st.sampled_from(
        ["", " ", "NaN", "-1", "1e400", "2999-01-01", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
         "0", "99999999999999999999", "deposit", "win"]
    ),
)
junk_values = st.recursive(
    junk_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = []
    if isinstance(value, dict):
        for key, inner in value.items():
            found.append((*prefix, key))
            found.extend(_paths(inner, (*prefix, key)))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found.append((*prefix, index))
            found.extend(_paths(inner, (*prefix, index)))
    return found


@st.composite
def corrupted(draw: st.DrawFn, valid: st.SearchStrategy[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """A valid message with a few fields, at any depth, deleted or replaced by junk."""
    message, _ = draw(valid)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(message)
        if not paths:
            break
        *parents, last = draw(st.sampled_from(paths))
        holder: Any = message
        for step in parents:
            holder = holder[step]
        if isinstance(holder, dict) and draw(st.booleans()):
            del holder[last]
        else:
            holder[last] = draw(junk_values)
    return message


def assert_only_documented_errors(adapter: Any, message: Any, stream: Stream) -> None:
    try:
        events = canonical_events(adapter, message, RecordContext(stream, stream.value))
    except (AdapterError, ValidationError):
        return
    assert all(event.type in EVENT_TYPES and event.user_key == (event.brand_id, event.user_id) for event in events)


EVENT_TYPES = frozenset(t.value for t in EventType)
reference_junk = st.one_of(
    st.dictionaries(st.sampled_from(sorted(REFERENCE_KEYS)) | st.text(max_size=8), junk_values, max_size=15),
    corrupted(reference_payments()),
    corrupted(reference_casino()),
    corrupted(reference_sport()),
    corrupted(reference_profiles()),
)
betwave_junk = st.one_of(
    st.dictionaries(st.sampled_from(sorted(BETWAVE_TOP_LEVEL)) | st.text(max_size=8), junk_values, max_size=8),
    corrupted(betwave_payments()),
    corrupted(betwave_casino()),
    corrupted(betwave_sport()),
    corrupted(betwave_profiles()),
)


@settings(max_examples=400)
@given(reference_junk, st.sampled_from(list(Stream)))
def test_reference_junk_raises_only_documented_errors(message: dict[str, Any], stream: Stream) -> None:
    assert_only_documented_errors(REFERENCE, message, stream)


@settings(max_examples=400)
@given(betwave_junk, st.sampled_from(list(Stream)))
def test_betwave_junk_raises_only_documented_errors(message: dict[str, Any], stream: Stream) -> None:
    assert_only_documented_errors(BETWAVE, message, stream)
