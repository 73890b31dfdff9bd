"""The canonical event models, through their public constructors only.

What operators really send (ids of any kind, epoch ms or ISO-8601 with offsets, amounts as numbers
or strings, codes in any case) must normalise to one canonical form; what cannot be trusted must be
rejected with a message that says what is wrong.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from smartico_stream.events import (
    EVENT_MODELS,
    MODEL_BY_TYPE,
    PAYMENT_TYPES,
    AccountStatus,
    CanonicalEvent,
    CasinoBet,
    CasinoWin,
    EventType,
    Gender,
    Payment,
    PlatformAggregates,
    SourceCoordinates,
    SportBetOpen,
    SportBetResult,
    SportBetSelectionOpen,
    SportBetSelectionSettled,
    SportBetSettled,
    UserProfile,
)

T0_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
T0 = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def payment(**overrides: Any) -> Payment:
    fields: dict[str, Any] = {"type": "deposit", "brand_id": "brand", "user_id": "u-1", "event_id": "dep-1",
                              "event_time": T0_MS, "amount": "10.00"}
    return Payment(**(fields | overrides))


def profile(**overrides: Any) -> UserProfile:
    fields: dict[str, Any] = {"brand_id": "brand", "user_id": "u-1", "event_id": "p-1", "event_time": T0_MS,
                              "registration_date": T0_MS - 86_400_000, "language": "EN", "wallet_currency": "EUR"}
    return UserProfile(**(fields | overrides))


def casino_win(**overrides: Any) -> CasinoWin:
    fields: dict[str, Any] = {"brand_id": "brand", "user_id": "u-1", "event_id": "cw-1", "event_time": T0_MS,
                              "bet_amount": "1.00", "win_amount": "0.00", "game_name": "20 Super Hot",
                              "game_id": 12}
    return CasinoWin(**(fields | overrides))


def errors(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[tuple[Any, ...], str]]:
    return [(e["loc"], e["msg"]) for e in exc.value.errors()]


def rejected(factory: Any, field: str, **overrides: Any) -> str:
    """Build with ``overrides``; it must fail on ``field`` alone. Returns the message."""
    with pytest.raises(ValidationError) as exc:
        factory(**overrides)
    found = errors(exc)
    assert [loc for loc, _ in found] == [(field,)], found
    return found[0][1]


# -- ids ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (123, "123"),
        (0, "0"),
        (10**20, "100000000000000000000"),
        ("john77", "john77"),
        ("  u-1  ", "u-1"),
        (uuid.UUID("f0e6e2e1-4797-4b75-9d62-ad964a4f05af"), "f0e6e2e1-4797-4b75-9d62-ad964a4f05af"),
        ("f0e6e2e1-4797-4b75-9d62-ad964a4f05af", "f0e6e2e1-4797-4b75-9d62-ad964a4f05af"),
    ],
)
def test_ids_of_any_kind_become_strings(raw: Any, expected: str) -> None:
    event = payment(user_id=raw, brand_id=raw, event_id=raw)
    assert (event.user_id, event.brand_id, event.event_id) == (expected, expected, expected)
    assert event.user_key == (expected, expected)


@pytest.mark.parametrize("raw", [True, False, None, "", "   ", 1.5, 12.0, ["u-1"], {"id": 1}])
def test_ids_that_are_not_int_str_or_uuid_are_rejected(raw: Any) -> None:
    message = rejected(payment, "user_id", user_id=raw)
    assert "id" in message


def test_ids_are_bounded_in_length() -> None:
    assert payment(user_id="x" * 256).user_id == "x" * 256
    rejected(payment, "user_id", user_id="x" * 257)


# -- timestamps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        T0_MS,
        str(T0_MS),
        float(T0_MS),
        "2023-11-14T22:13:20Z",
        "2023-11-14T22:13:20.000z",
        "2023-11-14T22:13:20+00:00",
        "2023-11-15T00:13:20+02:00",
        "2023-11-14T17:13:20-05:00",
        "2023-11-15T03:43:20+05:30",
        "2023-11-14T22:13:20",  # naive: the spec's zone is UTC
        "2023-11-14 22:13:20",
        T0,
        T0.replace(tzinfo=None),
        T0.astimezone(timezone(timedelta(hours=-7))),
    ],
)
def test_timestamps_normalise_to_the_same_utc_instant(raw: Any) -> None:
    event_time = payment(event_time=raw).event_time
    assert event_time == T0
    assert event_time.utcoffset() == timedelta(0)


def test_timestamps_keep_milliseconds_and_drop_finer_precision() -> None:
    assert payment(event_time=T0_MS + 123).event_time == T0 + timedelta(milliseconds=123)
    assert payment(event_time="2023-11-14T22:13:20.123456Z").event_time == T0 + timedelta(milliseconds=123)
    assert payment(event_time=T0 + timedelta(microseconds=999_999)).event_time.microsecond == 999_000
    assert payment(event_time=T0_MS + 250.4).event_time == T0 + timedelta(milliseconds=250)


def test_timestamps_serialise_as_iso_8601_utc_with_milliseconds() -> None:
    event = payment(event_time="2023-11-15T00:13:20.5+02:00")
    assert event.model_dump(mode="json")["event_time"] == "2023-11-14T22:13:20.500Z"


@pytest.mark.parametrize("raw", ["yesterday", "2023-13-45T00:00:00Z", "14/11/2023", "", "12:00", "NaN"])
def test_garbage_timestamps_are_rejected_with_a_clear_message(raw: str) -> None:
    message = rejected(payment, "event_time", event_time=raw)
    assert "is not a timestamp" in message and "epoch milliseconds or ISO-8601" in message


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (True, "not a boolean"),
        (None, "epoch milliseconds"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        ([T0_MS], "epoch milliseconds"),
    ],
)
def test_non_timestamp_values_are_rejected(raw: Any, fragment: str) -> None:
    assert fragment in rejected(payment, "event_time", event_time=raw)


@pytest.mark.parametrize("raw", [10**20, "9" * 30, -(10**15), T0_MS // 1000 * 10**6])
def test_out_of_range_epochs_are_a_validation_error(raw: Any) -> None:
    assert "outside 1900..2200 as epoch milliseconds" in rejected(payment, "event_time", event_time=raw)


def test_float_epoch_milliseconds_round_to_the_nearest_millisecond() -> None:
    assert payment(event_time=1081392821517.6).event_time == datetime(2004, 4, 8, 2, 53, 41, 518000, tzinfo=UTC)


def test_epoch_seconds_are_not_mistaken_for_milliseconds() -> None:
    # The spec's unit is milliseconds: 1700000000 would be 1970-01-20, never 2023, so it is refused.
    assert "looks like epoch seconds" in rejected(payment, "event_time", event_time=T0_MS // 1000)


@pytest.mark.parametrize("ms", [19_180_800_000, 63_072_000_000, -31_536_000_000])
def test_epoch_ms_around_1970_are_milliseconds(ms: int) -> None:
    # 1970-08-11, 1972-01-01, 1969-01-01: ordinary birthdates.
    assert profile(birthdate=ms).birthdate == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


# -- dates that must be in the past ---------------------------------------------------------------


def test_future_business_dates_are_rejected() -> None:
    future = datetime.now(UTC) + timedelta(days=1)
    assert "must be in the past" in rejected(payment, "event_time", event_time=future)
    assert "must be in the past" in rejected(profile, "registration_date", registration_date="2999-01-01T00:00:00Z")
    assert "must be in the past" in rejected(profile, "birthdate", birthdate=7_000_000_000_000)
    with pytest.raises(ValidationError):
        PlatformAggregates(first_deposit_time=future)


def test_match_start_time_may_be_in_the_future() -> None:
    # A selection on a match that has not started yet is normal.
    future = datetime.now(UTC) + timedelta(days=3)
    selection = SportBetSelectionOpen(brand_id="b", user_id=1, event_id="s", event_time=T0_MS, bet_id="sb-1",
                                      selection_id="sel-1", match_start_time=future)
    assert selection.match_start_time is not None and selection.match_start_time > datetime.now(UTC)


# -- amounts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0.1, Decimal("0.1")),
        (100.0, Decimal("100.0")),
        (19.99, Decimal("19.99")),
        (1234567.89, Decimal("1234567.89")),
        ("100.00", Decimal("100.00")),
        (" 7.5 ", Decimal("7.5")),
        (5, Decimal(5)),
        (0, Decimal(0)),
        (Decimal("0.30"), Decimal("0.30")),
    ],
)
def test_amounts_are_decimals_that_keep_the_written_digits(raw: Any, expected: Decimal) -> None:
    amount = payment(amount=raw).amount
    assert isinstance(amount, Decimal)
    assert amount == expected and str(amount) == str(expected)


@pytest.mark.parametrize(
    "raw", [float("nan"), float("inf"), float("-inf"), "NaN", "nan", "Infinity", "-Infinity", "sNaN"]
)
def test_non_finite_amounts_are_rejected(raw: Any) -> None:
    assert "finite" in rejected(payment, "amount", amount=raw)


@pytest.mark.parametrize("raw", [-1, -0.01, "-25.00", Decimal("-1")])
def test_negative_amounts_are_rejected(raw: Any) -> None:
    assert "greater than or equal to 0" in rejected(payment, "amount", amount=raw)


@pytest.mark.parametrize("raw", [True, "ten", {"value": "1.00"}, None, ""])
def test_non_numeric_amounts_are_rejected(raw: Any) -> None:
    rejected(payment, "amount", amount=raw)


def test_balances_may_be_negative_but_not_nan() -> None:
    assert payment(real_balance="-12.50").real_balance == Decimal("-12.50")
    rejected(payment, "real_balance", real_balance="NaN")


def test_odds_are_at_least_one() -> None:
    bet = SportBetOpen(brand_id="b", user_id=1, event_id="sbo-1", event_time=T0_MS, bet_id="sb-1", stake="5.00",
                       total_odds=2.75, selections_count=2)
    assert bet.total_odds == Decimal("2.75")
    with pytest.raises(ValidationError):
        SportBetOpen(brand_id="b", user_id=1, event_id="sbo-1", event_time=T0_MS, bet_id="sb-1", stake="5.00",
                     total_odds="0.99")
    with pytest.raises(ValidationError):
        SportBetOpen(brand_id="b", user_id=1, event_id="sbo-1", event_time=T0_MS, bet_id="sb-1", stake="5.00",
                     selections_count=0)


@settings(max_examples=300)
@given(st.decimals(min_value=0, max_value=Decimal("1e12"), places=2, allow_nan=False, allow_infinity=False))
def test_any_two_place_decimal_string_round_trips(amount: Decimal) -> None:
    assert payment(amount=str(amount)).amount == amount


@settings(max_examples=300)
@given(st.decimals(min_value=0, max_value=Decimal("1e9"), places=2, allow_nan=False, allow_infinity=False))
def test_any_two_place_float_keeps_its_written_value(amount: Decimal) -> None:
    # A JSON number such as 19.99 arrives as a float; it must not pick up binary noise.
    parsed = payment(amount=float(amount)).amount
    assert parsed == amount
    assert parsed.as_tuple().exponent >= -2


# -- ISO codes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "raw", "expected"),
    [
        ("language", "en", "EN"),
        ("language", " Pt ", "PT"),
        ("country", "ua", "UA"),
        ("country", "GB", "GB"),
        ("wallet_currency", "eur", "EUR"),
        ("wallet_currency", "Gbp", "GBP"),
    ],
)
def test_iso_codes_are_upper_cased(field: str, raw: str, expected: str) -> None:
    assert getattr(profile(**{field: raw}), field) == expected


@pytest.mark.parametrize(
    ("field", "raw", "standard"),
    [
        ("language", "XX", "ISO 639-1"),
        ("language", "eng", "ISO 639-1"),
        ("country", "UK", "ISO 3166-1"),
        ("country", "USA", "ISO 3166-1"),
        ("wallet_currency", "EURO", "ISO 4217"),
        ("wallet_currency", "ZZZ", "ISO 4217"),
        ("wallet_currency", 978, "ISO 4217"),
    ],
)
def test_unknown_iso_codes_are_rejected(field: str, raw: Any, standard: str) -> None:
    assert standard in rejected(profile, field, **{field: raw})


def test_payment_currency_is_validated_too() -> None:
    assert payment(currency="usd").currency == "USD"
    rejected(payment, "currency", currency="US$")


# -- profile enums --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("F", Gender.FEMALE), ("m", Gender.MALE), (" female ", Gender.FEMALE), ("MALE", Gender.MALE),
     ("unknown", Gender.UNKNOWN), (None, None)],
)
def test_gender_short_forms_are_normalised(raw: str | None, expected: Gender | None) -> None:
    assert profile(gender=raw).gender == expected


def test_unknown_gender_is_rejected() -> None:
    rejected(profile, "gender", gender="X")


def test_account_status_defaults_to_active_and_ignores_case() -> None:
    assert profile().account_status is AccountStatus.ACTIVE
    assert profile(account_status="self_excluded").account_status is AccountStatus.SELF_EXCLUDED
    assert profile(account_status=" Blocked ").account_status is AccountStatus.BLOCKED
    rejected(profile, "account_status", account_status="CLOSED")


def test_a_full_reference_profile_is_accepted() -> None:
    event = profile(username="JohnDoe77", birthdate=788918400000, country="US", email="john.doe@example.test",
                    first_name="John", last_name="Doe", phone="+15551234567",
                    is_email_disabled_by_platform=False, is_sms_disabled_by_platform=False, gender="MALE",
                    kyc_status="VERIFIED", affiliate_id=4322, affiliate_str="john24")
    assert event.birthdate == datetime(1995, 1, 1, tzinfo=UTC)
    assert event.type == "user_profile"


# -- extra and unknown fields ---------------------------------------------------------------------


def test_extra_carries_any_json_value() -> None:
    extra = {"vip_tier": "gold", "score": 12, "ratio": 0.5, "flags": [True, None], "nested": {"a": ["b", 1]}}
    assert profile(extra=extra).extra == extra
    assert profile().extra == {}


@pytest.mark.parametrize("bad", [{"when": datetime(2024, 1, 1)}, {"tags": {"a", "b"}}, {"raw": b"x"}])
def test_extra_rejects_values_that_are_not_json(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        profile(extra=bad)


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_unknown_top_level_fields_are_rejected(model: type[CanonicalEvent]) -> None:
    with pytest.raises(ValidationError) as exc:
        model(vip_tier="gold")
    assert ("vip_tier",) in [loc for loc, _ in errors(exc)]
    assert any(e["type"] == "extra_forbidden" for e in exc.value.errors())


# -- event types ----------------------------------------------------------------------------------


def test_every_event_type_has_exactly_one_model() -> None:
    assert set(MODEL_BY_TYPE) == set(EventType)
    assert {t for m in EVENT_MODELS for t in m.event_type} == set(EventType)
    assert sum(len(m.event_type) for m in EVENT_MODELS) == len(EventType)
    assert len(PAYMENT_TYPES) == 8 and all(MODEL_BY_TYPE[t] is Payment for t in PAYMENT_TYPES)


@pytest.mark.parametrize("model", [m for m in EVENT_MODELS if m is not Payment], ids=lambda m: m.__name__)
def test_single_type_models_default_their_type(model: type[CanonicalEvent]) -> None:
    (only,) = model.event_type
    assert model.model_fields["type"].default == only.value


@pytest.mark.parametrize(
    ("factory", "wrong", "allowed"),
    [
        (payment, "casino_bet", "'deposit'"),
        (payment, "chargeback_reversal", "'withdrawal_cancelled'"),
        (profile, "deposit", "'user_profile'"),
        (casino_win, "casino_bet", "'casino_win'"),
        (casino_win, "win", "'casino_win'"),
    ],
)
def test_a_type_that_is_not_the_models_own_is_rejected_readably(factory: Any, wrong: str, allowed: str) -> None:
    message = rejected(factory, "type", type=wrong)
    assert message.startswith("Input should be") and allowed in message


def test_payment_requires_a_type() -> None:
    with pytest.raises(ValidationError) as exc:
        Payment(brand_id="b", user_id=1, event_id="e", event_time=T0_MS, amount=1)
    assert errors(exc) == [(("type",), "Field required")]


@pytest.mark.parametrize("kind", sorted(PAYMENT_TYPES))
def test_every_payment_type_is_accepted(kind: EventType) -> None:
    assert payment(type=kind.value).type == kind.value


def test_sport_and_casino_models_accept_the_reference_shapes() -> None:
    common: dict[str, Any] = {"brand_id": "b", "user_id": 1, "event_time": T0_MS, "bet_id": "sb-1", "is_live": True}
    settled = SportBetSettled(**common, event_id="sbs-1", result="WON", stake=5, payout="13.75", total_odds=2.75)
    assert settled.result is SportBetResult.WON
    leg = SportBetSelectionSettled(**common, event_id="sss-1", selection_id="sel-1", result="LOST")
    assert leg.result is SportBetResult.LOST
    with pytest.raises(ValidationError):
        SportBetSettled(**common, event_id="sbs-1", result="PUSHED", stake=5, payout=5)
    bet = CasinoBet(brand_id="b", user_id=1, event_id="cb-1", event_time=T0_MS, bet_amount="1.00",
                    game_name="20 Super Hot", game_id="g-1", catalog_game_id=uuid.UUID(int=7))
    assert bet.catalog_game_id == str(uuid.UUID(int=7))
    rejected(casino_win, "game_name", game_name="")
    rejected(casino_win, "win_amount", win_amount=None)


# -- source coordinates and serialisation ---------------------------------------------------------


def test_source_coordinates_are_frozen_and_transport_is_closed() -> None:
    source = SourceCoordinates(transport="kafka", topic="payments", partition=3, offset=42, timestamp=T0_MS)
    assert source.timestamp == T0
    with pytest.raises(ValidationError):
        source.offset = 43  # type: ignore[misc]
    with pytest.raises(ValidationError):
        SourceCoordinates(transport="sqs", topic="payments")


def test_aggregates_reject_negative_counts() -> None:
    assert PlatformAggregates(total_deposit_count=3, total_deposit_amount="150.00").total_deposit_count == 3
    with pytest.raises(ValidationError):
        PlatformAggregates(total_deposit_count=-1)


def test_json_round_trip_preserves_the_event() -> None:
    event = payment(
        amount=0.1, real_balance="-5.25", event_time="2023-11-15T00:13:20.123+02:00",
        source=SourceCoordinates(transport="kafka", topic="payments", partition=1, offset=9),
        aggregates=PlatformAggregates(total_deposit_amount="100.10"), extra={"note": "x"},
    )
    dumped = event.model_dump_json()
    assert '"amount":"0.1"' in dumped and '"event_time":"2023-11-14T22:13:20.123Z"' in dumped
    assert Payment.model_validate_json(dumped) == event


# -- properties -----------------------------------------------------------------------------------

offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes)))
local_datetimes = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2025, 12, 31, 23, 59, 59)).map(
    lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000))


@settings(max_examples=300)
@given(local_datetimes, offsets)
def test_any_offset_iso_timestamp_is_the_same_instant_in_utc(local: datetime, offset: timezone) -> None:
    moment = local.replace(tzinfo=offset)
    expected = moment.astimezone(UTC)
    iso = moment.isoformat(timespec="milliseconds")
    epoch_ms = (expected - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    for raw in (iso, moment, epoch_ms):
        parsed = payment(event_time=raw).event_time
        assert parsed == expected
        assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)
