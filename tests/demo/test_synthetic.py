"""The synthetic operator stream: deterministic, exact in its totals, and faithful to the reference
wire format (so the demo, the tests and the benchmark exercise what operators really send)."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartico_stream.demo.synthetic import (
    DEFECTS,
    DUPLICATE_WINDOW,
    OVERSIZED_MIN_BYTES,
    REFERENCE_START_MS,
    RecordKind,
    StreamSpec,
    SyntheticRecord,
    expected_counts,
    synthetic_stream,
)
from smartico_stream.events import (
    CanonicalEvent,
    CasinoBet,
    CasinoWin,
    Payment,
    SportBetOpen,
    SportBetSelectionOpen,
    SportBetSelectionSettled,
    SportBetSettled,
    UserProfile,
)
from smartico_stream.events.raw import Stream

# The reference wire format, written out independently of the generator so that a typo there fails here.
PROFILE_FIELDS = {
    "dt_update", "ext_brand_id", "user_ext_id", "core_account_status", "core_registration_date",
    "core_user_language", "core_wallet_currency", "core_username", "user_birthdate", "user_country",
    "user_email", "user_first_name", "user_last_name", "user_phone", "core_is_email_disabled_by_platform",
    "core_is_sms_disabled_by_platform", "core_user_gender", "core_kyc_status",
}
PROFILE_REQUIRED = {"dt_update", "ext_brand_id", "user_ext_id", "core_registration_date",
                    "core_user_language", "core_wallet_currency", "core_account_status"}
PROFILE_CUSTOM = {"vip_tier"}
PAYMENT_FIELDS = {
    "dt_finalized", "ext_brand_id", "user_ext_id", "transaction_id", "type", "amount",
    "core_wallet_currency", "payment_method", "deposit_status", "deposit_code", "provider_name",
    "real_balance", "bonus_balance", "total_balance",
}
PAYMENT_REQUIRED = {"dt_finalized", "ext_brand_id", "user_ext_id", "transaction_id", "type", "amount"}
PAYMENT_TYPES = {
    "deposit", "deposit_failed", "deposit_cancelled", "withdrawal_requested", "withdrawal_approved",
    "withdrawal_completed", "withdrawal_rejected", "withdrawal_cancelled",
}
CASINO_FIELDS = {
    "ext_brand_id", "user_ext_id", "transaction_id", "type", "bet_date", "bet_amount", "win_amount",
    "game_name", "game_id", "game_category", "game_provider", "bet_amount_real", "bet_amount_bonus",
    "win_amount_real", "win_amount_bonus", "game_vendor", "casino_game_ext_id", "core_wallet_currency",
}
CASINO_REQUIRED = {"ext_brand_id", "user_ext_id", "transaction_id", "type", "bet_date", "bet_amount",
                   "game_name", "game_id"}
SPORT_COMMON = {"ext_brand_id", "user_ext_id", "transaction_id", "type", "event_date", "bet_id",
                "core_wallet_currency", "is_live"}
SPORT_FIELDS = {
    "sport_bet_open": SPORT_COMMON | {"stake", "total_odds", "bet_type", "selections_count"},
    "sport_bet_selection_open": SPORT_COMMON | {"selection_id", "odds", "sport", "tournament",
                                                "match_name", "market", "outcome"},
    "sport_bet_settled": SPORT_COMMON | {"result", "stake", "payout", "total_odds"},
    "sport_bet_selection_settled": SPORT_COMMON | {"selection_id", "result"},
}
TIME_FIELD = {Stream.PROFILE: "dt_update", Stream.PAYMENTS: "dt_finalized", Stream.CASINO: "bet_date",
              Stream.SPORT: "event_date"}
MONEY_FIELDS = {"amount", "real_balance", "bonus_balance", "total_balance", "bet_amount", "win_amount",
                "bet_amount_real", "bet_amount_bonus", "win_amount_real", "win_amount_bonus", "stake",
                "payout", "total_odds", "odds"}

SMALL = StreamSpec(users=300, events=5000, seed=11)


@pytest.fixture(scope="module")
def small() -> list[SyntheticRecord]:
    return list(synthetic_stream(SMALL))


@pytest.fixture(scope="module")
def default() -> list[SyntheticRecord]:
    return list(synthetic_stream(StreamSpec()))


def ok_records(records: list[SyntheticRecord]) -> list[SyntheticRecord]:
    return [r for r in records if r.kind is RecordKind.OK]


def decode(record: SyntheticRecord) -> dict[str, Any]:
    message = orjson.loads(record.value)
    assert isinstance(message, dict)
    return message


# -- determinism and totals -----------------------------------------------------------------------


def test_the_same_spec_gives_byte_identical_records() -> None:
    first = list(synthetic_stream(SMALL))
    second = list(synthetic_stream(SMALL))
    assert first == second  # dataclass equality: stream, key, value bytes, kind, defect, user


def test_another_seed_gives_another_stream(small: list[SyntheticRecord]) -> None:
    other = list(synthetic_stream(StreamSpec(users=300, events=5000, seed=12)))
    assert [r.value for r in other] != [r.value for r in small]


@pytest.mark.parametrize("events", [0, 1, 2, 3, 7, 50, 999])
def test_the_total_is_exact_for_small_streams(events: int) -> None:
    records = list(synthetic_stream(StreamSpec(events=events, users=10)))
    assert len(records) == events


@settings(max_examples=40, deadline=None)
@given(
    events=st.integers(0, 400),
    users=st.integers(1, 50),
    duplicate_share=st.floats(0, 0.3),
    malformed_share=st.floats(0, 0.2),
    seed=st.integers(0, 2**32),
)
def test_any_valid_spec_yields_exactly_the_planned_counts(
    events: int, users: int, duplicate_share: float, malformed_share: float, seed: int
) -> None:
    spec = StreamSpec(users=users, events=events, seed=seed, duplicate_share=duplicate_share,
                      malformed_share=malformed_share)
    records = list(synthetic_stream(spec))
    counts = expected_counts(records)
    ok, duplicates, malformed = spec.counts()
    assert (counts["total"], counts["ok"], counts["duplicate"], counts["malformed"]) == (
        events, ok, duplicates, malformed)
    assert len({r.user for r in records if r.kind is RecordKind.OK}) <= users
    if records:
        assert records[0].kind is RecordKind.OK


def test_shares_match_the_spec(default: list[SyntheticRecord]) -> None:
    counts = expected_counts(default)
    assert counts["total"] == 20000
    assert counts["duplicate"] == pytest.approx(20000 * 0.02, abs=1)
    assert counts["malformed"] == pytest.approx(20000 * 0.01, abs=1)
    assert counts["ok"] == 20000 - counts["duplicate"] - counts["malformed"]
    assert sum(counts[d] for d in DEFECTS) == counts["malformed"]


def test_expected_counts_has_every_key_even_when_zero() -> None:
    counts = expected_counts([])
    assert set(counts) == {"total", "ok", "duplicate", "malformed", *DEFECTS}
    assert set(counts.values()) == {0}


def test_every_defect_appears_in_a_5000_event_stream(small: list[SyntheticRecord]) -> None:
    counts = expected_counts(small)
    assert all(counts[d] >= 1 for d in DEFECTS), counts
    # Cycling keeps them balanced.
    assert max(counts[d] for d in DEFECTS) - min(counts[d] for d in DEFECTS) <= 1


@pytest.mark.parametrize(
    "bad",
    [{"users": 0}, {"events": -1}, {"brands": ()}, {"brands": ("",)}, {"duplicate_share": -0.1},
     {"malformed_share": 1.5}, {"duplicate_share": 0.4, "malformed_share": 0.2}],
)
def test_invalid_specs_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        StreamSpec(**bad)


# -- OK records: the reference format ---------------------------------------------------------------


def test_ok_records_are_reference_format_objects_keyed_by_their_user(small: list[SyntheticRecord]) -> None:
    for record in ok_records(small):
        message = decode(record)
        assert record.key is not None and record.defect is None
        assert record.key == str(message["user_ext_id"]).encode()
        assert record.user == f"{message['ext_brand_id']}:{message['user_ext_id']}"
        assert message["ext_brand_id"] in SMALL.brands
        assert isinstance(message[TIME_FIELD[record.stream]], int)
        fields = set(message)
        if record.stream is Stream.PROFILE:
            assert PROFILE_REQUIRED <= fields <= PROFILE_FIELDS | PROFILE_CUSTOM
        elif record.stream is Stream.PAYMENTS:
            assert PAYMENT_REQUIRED <= fields <= PAYMENT_FIELDS
            assert message["type"] in PAYMENT_TYPES
        elif record.stream is Stream.CASINO:
            assert CASINO_REQUIRED <= fields <= CASINO_FIELDS
            assert message["type"] in ("bet", "win")
            assert ("win_amount" in fields) == (message["type"] == "win")
        else:
            assert fields == SPORT_FIELDS[message["type"]]


def test_transaction_ids_are_unique_per_ok_record(default: list[SyntheticRecord]) -> None:
    ids = [decode(r)["transaction_id"] for r in ok_records(default) if r.stream is not Stream.PROFILE]
    assert len(ids) == len(set(ids))


def test_amounts_are_strings_or_numbers_with_two_decimals(small: list[SyntheticRecord]) -> None:
    kinds: Counter[str] = Counter()
    for record in ok_records(small):
        # parse_float=Decimal keeps the digits as written, which orjson's floats would not.
        message = json.loads(record.value, parse_float=Decimal)
        for name in MONEY_FIELDS & set(message):
            value = message[name]
            kinds[type(value).__name__] += 1
            text = value if isinstance(value, str) else str(value)
            assert Decimal(text) >= 0 and Decimal(text).as_tuple().exponent == -2, (name, text)
    assert kinds["str"] > 0 and kinds["Decimal"] > 0


def test_users_have_mixed_id_kinds_and_fixed_currency_country_and_language(default: list[SyntheticRecord]) -> None:
    per_user: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    id_kinds: Counter[str] = Counter()
    currencies: set[str] = set()
    for record in ok_records(default):
        message = decode(record)
        if record.stream is Stream.PROFILE:
            per_user[record.user or ""].add(
                (message["core_wallet_currency"], message["user_country"], message["core_user_language"]))
            user_id = message["user_ext_id"]
            id_kinds["int" if isinstance(user_id, int) else "uuid" if len(user_id) == 36 else "str"] += 1
        currencies.add(message.get("core_wallet_currency", ""))
    assert all(len(v) == 1 for v in per_user.values())
    assert set(id_kinds) == {"int", "str", "uuid"}
    assert {"EUR", "GBP", "USD"} <= currencies


def test_profiles_carry_pii_in_several_phone_formats(small: list[SyntheticRecord]) -> None:
    profiles = [decode(r) for r in ok_records(small) if r.stream is Stream.PROFILE]
    assert all(p["user_email"].endswith("@example.test") for p in profiles)
    phones = [p["user_phone"] for p in profiles]
    assert any(p.startswith("+") and p[1:].isdigit() for p in phones)  # E.164
    assert any(not p.startswith("+") for p in phones)  # national format
    assert any("vip_tier" in p for p in profiles)
    assert {p["core_user_gender"] for p in profiles if "core_user_gender" in p} >= {"M", "F", "MALE", "FEMALE"}


def test_each_users_first_record_is_a_profile(default: list[SyntheticRecord]) -> None:
    seen: set[str | None] = set()
    for record in ok_records(default):
        if record.user not in seen:
            assert record.stream is Stream.PROFILE, record
            seen.add(record.user)


def test_event_times_strictly_increase_per_user_and_stay_in_the_past(default: list[SyntheticRecord]) -> None:
    now_ms = int(time.time() * 1000)
    last: dict[str | None, int] = {}
    for record in ok_records(default):
        message = decode(record)
        moment = message[TIME_FIELD[record.stream]]
        assert REFERENCE_START_MS <= moment < now_ms
        assert moment > last.get(record.user, 0), record.user
        last[record.user] = moment
        if record.stream is Stream.PROFILE:
            assert message["core_registration_date"] <= moment
            assert message["user_birthdate"] < message["core_registration_date"]


def test_the_mix_after_registration_is_roughly_the_target(default: list[SyntheticRecord]) -> None:
    seen: set[str | None] = set()
    mix: Counter[Stream] = Counter()
    for record in ok_records(default):
        if record.user in seen:
            mix[record.stream] += 1
        seen.add(record.user)
    total = sum(mix.values())
    target = {Stream.PROFILE: 0.05, Stream.PAYMENTS: 0.20, Stream.CASINO: 0.55, Stream.SPORT: 0.20}
    for stream, share in target.items():
        assert mix[stream] / total == pytest.approx(share, abs=0.04), (stream, mix)


def test_casino_wins_follow_their_bets(small: list[SyntheticRecord]) -> None:
    open_bets: dict[str | None, list[str]] = defaultdict(list)
    types: Counter[str] = Counter()
    for record in ok_records(small):
        if record.stream is Stream.CASINO:
            message = decode(record)
            types[message["type"]] += 1
            if message["type"] == "bet":
                open_bets[record.user].append(message["game_id"])
            else:
                assert message["game_id"] in open_bets[record.user]
                open_bets[record.user].remove(message["game_id"])
    assert types["bet"] == types["win"] > 0
    assert not any(open_bets.values())


def test_sport_bets_follow_the_spec_sequence(small: list[SyntheticRecord]) -> None:
    sequences: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in ok_records(small):
        if record.stream is Stream.SPORT:
            message = decode(record)
            sequences[message["bet_id"]].append(message)
    assert sequences
    for bet_id, messages in sequences.items():
        legs = messages[0]["selections_count"]
        expected = (["sport_bet_open"] + ["sport_bet_selection_open"] * legs + ["sport_bet_settled"]
                    + ["sport_bet_selection_settled"] * legs)
        assert [m["type"] for m in messages] == expected, bet_id
        assert len({m["user_ext_id"] for m in messages}) == 1
        opened = [m["selection_id"] for m in messages if m["type"] == "sport_bet_selection_open"]
        settled = [m["selection_id"] for m in messages if m["type"] == "sport_bet_selection_settled"]
        assert opened == settled and len(set(opened)) == legs
        settlement = messages[legs + 1]
        results = [m["result"] for m in messages[legs + 2:]]
        assert settlement["result"] == ("LOST" if "LOST" in results else
                                        "VOID" if set(results) == {"VOID"} else "WON")
        if settlement["result"] == "LOST":
            assert Decimal(str(settlement["payout"])) == 0


def test_withdrawals_go_through_a_life_cycle(default: list[SyntheticRecord]) -> None:
    types = Counter(decode(r)["type"] for r in ok_records(default) if r.stream is Stream.PAYMENTS)
    assert set(types) == PAYMENT_TYPES
    assert types["deposit"] > types["withdrawal_requested"]
    assert types["withdrawal_requested"] >= (types["withdrawal_approved"] + types["withdrawal_rejected"]
                                             + types["withdrawal_cancelled"])


# -- OK records through the canonical models ------------------------------------------------------


# Birthdates around 1970 are small epoch-ms values; they must keep their instant.
_AROUND_1970_MS = 100_000_000_000



def _to_canonical(record: SyntheticRecord) -> CanonicalEvent:
    """A deliberately small test-local mapping: enough to prove the values the generator writes are
    ones the canonical models accept (codes, amounts, timestamps, ids)."""
    m = decode(record)
    common = {"brand_id": m["ext_brand_id"], "user_id": m["user_ext_id"]}
    if record.stream is Stream.PROFILE:
        return UserProfile(
            **common, event_id=f"{m['ext_brand_id']}:{m['user_ext_id']}:{m['dt_update']}",
            event_time=m["dt_update"], account_status=m["core_account_status"],
            registration_date=m["core_registration_date"], language=m["core_user_language"],
            wallet_currency=m["core_wallet_currency"], username=m["core_username"],
            birthdate=m["user_birthdate"], country=m["user_country"], email=m["user_email"],
            first_name=m["user_first_name"], last_name=m["user_last_name"], phone=m["user_phone"],
            is_email_disabled_by_platform=m["core_is_email_disabled_by_platform"],
            is_sms_disabled_by_platform=m["core_is_sms_disabled_by_platform"],
            gender=m.get("core_user_gender"), kyc_status=m["core_kyc_status"],
            extra={k: v for k, v in m.items() if k in PROFILE_CUSTOM},
        )
    common |= {"event_id": m["transaction_id"]}
    if record.stream is Stream.PAYMENTS:
        return Payment(
            **common, type=m["type"], event_time=m["dt_finalized"], amount=m["amount"],
            currency=m["core_wallet_currency"], method=m["payment_method"], status=m.get("deposit_status"),
            code=m.get("deposit_code"), provider=m["provider_name"], real_balance=m["real_balance"],
            bonus_balance=m["bonus_balance"], total_balance=m["total_balance"],
        )
    if record.stream is Stream.CASINO:
        fields = dict(
            **common, event_time=m["bet_date"], bet_amount=m["bet_amount"], bet_amount_real=m["bet_amount_real"],
            bet_amount_bonus=m["bet_amount_bonus"], currency=m["core_wallet_currency"], game_name=m["game_name"],
            game_id=m["game_id"], game_category=m["game_category"], game_provider=m["game_provider"],
            game_vendor=m["game_vendor"], catalog_game_id=m["casino_game_ext_id"],
        )
        if m["type"] == "bet":
            return CasinoBet(**fields)
        return CasinoWin(**fields, win_amount=m["win_amount"], win_amount_real=m["win_amount_real"],
                         win_amount_bonus=m["win_amount_bonus"])
    sport = dict(**common, event_time=m["event_date"], bet_id=m["bet_id"], currency=m["core_wallet_currency"],
                 is_live=m["is_live"])
    rest = {k: v for k, v in m.items() if k not in SPORT_COMMON}
    model: Callable[..., CanonicalEvent] = {
        "sport_bet_open": SportBetOpen, "sport_bet_selection_open": SportBetSelectionOpen,
        "sport_bet_settled": SportBetSettled, "sport_bet_selection_settled": SportBetSelectionSettled,
    }[m["type"]]
    return model(**sport, **rest)


def test_every_ok_record_maps_onto_a_valid_canonical_event(small: list[SyntheticRecord]) -> None:
    events = [_to_canonical(r) for r in ok_records(small)]
    assert len(events) == len(ok_records(small))
    assert {type(e).__name__ for e in events} == {
        "UserProfile", "Payment", "CasinoBet", "CasinoWin", "SportBetOpen", "SportBetSelectionOpen",
        "SportBetSettled", "SportBetSelectionSettled"}
    assert any(e.extra.get("vip_tier") for e in events if isinstance(e, UserProfile))


def test_birthdates_around_1970_sent_as_epoch_ms_keep_their_instant(small: list[SyntheticRecord]) -> None:
    profiles = [decode(r) for r in ok_records(small) if r.stream is Stream.PROFILE]
    ambiguous = [p for p in profiles if abs(p["user_birthdate"]) < _AROUND_1970_MS]
    assert ambiguous, "the generator draws birthdates from 1955-2004, so some fall around 1970"
    for p in ambiguous:
        profile = UserProfile(
            brand_id=p["ext_brand_id"], user_id=p["user_ext_id"], event_id="e", event_time=p["dt_update"],
            registration_date=p["core_registration_date"], language=p["core_user_language"],
            wallet_currency=p["core_wallet_currency"], birthdate=p["user_birthdate"],
        )
        assert profile.birthdate == datetime.fromtimestamp(p["user_birthdate"] / 1000, UTC)


# -- duplicates and malformed records -------------------------------------------------------------


def test_duplicates_are_byte_copies_of_a_recent_ok_record(default: list[SyntheticRecord]) -> None:
    duplicates = 0
    for position, record in enumerate(default):
        if record.kind is not RecordKind.DUPLICATE:
            continue
        duplicates += 1
        window = default[max(0, position - DUPLICATE_WINDOW):position]
        originals = [r for r in window if r.kind is RecordKind.OK and r.value == record.value]
        assert originals, f"duplicate at {position} has no OK original in the previous {DUPLICATE_WINDOW}"
        original = originals[-1]
        assert (original.key, original.stream, original.user) == (record.key, record.stream, record.user)
    assert duplicates == 400


def test_malformed_records_have_the_defect_they_claim(small: list[SyntheticRecord]) -> None:
    ok_ids = {decode(r)["transaction_id"] for r in ok_records(small) if r.stream is not Stream.PROFILE}
    known_keys: set[bytes | None] = set()
    seen: set[str] = set()
    for record in small:
        if record.kind is RecordKind.OK:
            known_keys.add(record.key)
            continue
        if record.kind is not RecordKind.MALFORMED:
            continue
        assert record.user is None and record.defect in DEFECTS
        defect = record.defect
        seen.add(defect)
        if defect == "null_key":
            assert record.key is None
        else:
            assert record.key in known_keys, "malformed records belong to an already registered user"
        if defect == "invalid_json":
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(record.value)
            record.value.decode()  # truncated, but still text
            continue
        if defect == "invalid_utf8":
            assert b"\xff\xfe" in record.value
            with pytest.raises(UnicodeDecodeError):
                record.value.decode()
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(record.value)
            continue
        parsed = orjson.loads(record.value)
        if defect == "not_an_object":
            assert isinstance(parsed, list) and isinstance(parsed[0], dict)
            continue
        assert isinstance(parsed, dict)
        if record.stream is not Stream.PROFILE:
            assert parsed["transaction_id"] not in ok_ids
        if record.key is not None:
            assert record.key == str(parsed["user_ext_id"]).encode()
        if defect == "missing_field":
            assert record.stream is Stream.PAYMENTS and parsed["type"] == "deposit" and "amount" not in parsed
        elif defect == "wrong_type":
            assert record.stream is Stream.CASINO and isinstance(parsed["bet_amount"], dict)
        elif defect == "negative_amount":
            assert Decimal(str(parsed["amount"])) < 0
        elif defect == "nan_amount":
            assert parsed["amount"] == "NaN"
        elif defect == "future_date":
            assert record.stream is Stream.PROFILE
            assert parsed["core_registration_date"] > int(time.time() * 1000) + 365 * 86_400_000
        elif defect == "unknown_type":
            assert record.stream is Stream.PAYMENTS and parsed["type"] == "chargeback_reversal"
        elif defect == "oversized":
            assert len(record.value) > OVERSIZED_MIN_BYTES and parsed["type"] == "deposit"
        elif defect == "null_key":
            assert record.stream is Stream.PAYMENTS and parsed["type"] == "deposit"
            assert PAYMENT_REQUIRED <= set(parsed) <= PAYMENT_FIELDS
    assert seen == set(DEFECTS)


def test_generation_is_fast_enough_for_the_benchmark() -> None:
    # Generous bound (the target is 200k in well under 5 s): this only catches a pathological slowdown.
    start = time.process_time()
    count = sum(1 for _ in synthetic_stream(StreamSpec(events=50_000)))
    assert count == 50_000
    assert time.process_time() - start < 5.0
