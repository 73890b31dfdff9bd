"""The PII guard (smartico_stream.pii.guard.PiiGuard), through its public interface.

The data-integration promise: email, phone and (where configured) names are encrypted on arrival;
phones are normalised with the user's country; nothing downstream of the guard holds them in
plaintext. These tests feed reference-format profile messages through the reference adapter (as the
pipeline does), run ``PiiGuard.protect`` and check both sides: what is left on the event (only
derived flags) and what comes out (encrypted records that decrypt, with the vault's AAD, to the
normalised value, next to a keyed lookup hash).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from smartico_stream.adapters.base import RecordContext, canonical_events
from smartico_stream.adapters.registry import load_adapter
from smartico_stream.engine.batch import BatchEngine
from smartico_stream.engine.evaluator import RuleEngine
from smartico_stream.engine.rules import RuleSet
from smartico_stream.engine.state import UserState
from smartico_stream.events.models import CanonicalEvent, UserProfile
from smartico_stream.events.raw import RawRecord, Stream
from smartico_stream.events.records import dump_event
from smartico_stream.pii import DecryptError, decrypt, generate_key_ring, lookup_hash, token_key_id
from smartico_stream.pii.guard import PiiGuard
from smartico_stream.pii.vault import PiiRecord, PiiVault, value_aad
from smartico_stream.pipeline.pipeline import OK, Pipeline
from smartico_stream.store.sqlite import SqliteDatabase

BASE_MS = 1_700_000_000_000
RING = generate_key_ring("k1")
ADAPTER = load_adapter("reference")


def profile_message(user: str = "u1", brand: str = "b1", **fields: Any) -> dict[str, Any]:
    """A reference-format profile message; ``fields`` add or replace keys (``None`` removes one)."""
    message: dict[str, Any] = {
        "dt_update": BASE_MS,
        "ext_brand_id": brand,
        "user_ext_id": user,
        "core_registration_date": BASE_MS - 86_400_000,
        "core_user_language": "EN",
        "core_wallet_currency": "EUR",
    }
    for name, value in fields.items():
        if value is None:
            message.pop(name, None)
        else:
            message[name] = value
    return message


def adapt(message: Mapping[str, Any], stream: Stream = Stream.PROFILE) -> CanonicalEvent:
    context = RecordContext(stream=stream, topic=stream.value, key=str(message["user_ext_id"]))
    (event,) = canonical_events(ADAPTER, message, context)
    return event


def profile(**fields: Any) -> UserProfile:
    event = adapt(profile_message(**fields))
    assert event.type == "user_profile"
    return event


def by_field(records: list[PiiRecord]) -> dict[str, PiiRecord]:
    fields = [r.field for r in records]
    assert len(fields) == len(set(fields)), f"one record per field expected, got {fields}"
    return {r.field: r for r in records}


def plain(record: PiiRecord) -> str:
    """Decrypt a record the way the vault does (AAD bound to brand, user and field)."""
    return decrypt(RING, record.token, value_aad(record.brand, record.user, record.field)).decode("utf-8")


def assert_no_pii_left(event: UserProfile) -> None:
    assert event.email is None and event.phone is None
    assert event.first_name is None and event.last_name is None
    dumped = orjson.dumps(dump_event(event)).decode()
    for name in ('"email":"', '"phone":"', '"first_name":"', '"last_name":"'):
        assert name not in dumped, dumped


# -- email ----------------------------------------------------------------------------------------


def test_email_is_trimmed_lower_cased_encrypted_and_removed_from_the_event() -> None:
    event = profile(user_email="  Jane.Doe@Example.COM \t")
    records = by_field(PiiGuard(RING).protect(event))

    assert event.email is None
    assert event.has_email is True
    assert event.email_domain is None  # not configured
    record = records["email"]
    assert (record.brand, record.user, record.field) == ("b1", "u1", "email")
    assert plain(record) == "jane.doe@example.com"
    assert record.valid is True
    assert record.key_id == token_key_id(record.token) == "k1"
    assert record.lookup_hash == lookup_hash(RING, "jane.doe@example.com", "email")
    # The token is ciphertext: neither form of the address is in it.
    assert b"jane.doe" not in record.token.lower() and b"example" not in record.token.lower()
    assert "jane" not in repr(record).lower()


def test_email_domain_is_kept_only_when_configured() -> None:
    kept = profile(user_email=" Jane.Doe@Example.COM ")
    PiiGuard(RING, keep_email_domain=True).protect(kept)
    assert kept.email_domain == "example.com"
    assert kept.email is None

    dropped = profile(user_email=" Jane.Doe@Example.COM ")
    PiiGuard(RING, keep_email_domain=False).protect(dropped)
    assert dropped.email_domain is None


def test_implausible_email_is_still_encrypted_but_flagged() -> None:
    event = profile(user_email=" Not An Email ")
    record = by_field(PiiGuard(RING).protect(event))["email"]
    assert plain(record) == "not an email"
    assert record.valid is False
    assert event.email is None and event.has_email is True


def test_blank_email_counts_as_no_email_and_stores_nothing() -> None:
    event = profile(user_email="   ")
    records = PiiGuard(RING).protect(event)
    assert [r for r in records if r.field == "email"] == []
    assert event.email is None
    assert event.has_email is False


# -- phone ----------------------------------------------------------------------------------------

NATIONAL_PHONES = [
    # (user_country, as the operator sends it, E.164)
    ("DE", "0151 23456789", "+4915123456789"),
    ("FR", "06 12 34 56 78", "+33612345678"),
    ("US", "(201) 555-0123", "+12015550123"),
    ("GB", "07400 123456", "+447400123456"),
    ("ES", "612 34 56 78", "+34612345678"),
    ("BR", "(11) 96123-4567", "+5511961234567"),
    ("AR", "011 2345-6789", "+541123456789"),
]


@pytest.mark.parametrize(("country", "raw", "e164"), NATIONAL_PHONES)
def test_national_phone_is_normalised_with_the_profile_country(country: str, raw: str, e164: str) -> None:
    event = profile(user_country=country, user_phone=raw)
    record = by_field(PiiGuard(RING).protect(event))["phone"]

    assert event.phone is None
    assert event.has_phone is True
    assert event.phone_valid is True
    assert plain(record) == e164
    assert record.valid is True
    assert record.lookup_hash == lookup_hash(RING, e164, "phone")
    digits = e164.lstrip("+").encode()
    assert digits not in record.token and raw.encode() not in record.token


def test_international_phone_keeps_its_own_country_code() -> None:
    event = profile(user_country="DE", user_phone="+44 7400 123456")
    assert plain(by_field(PiiGuard(RING).protect(event))["phone"]) == "+447400123456"


def test_same_number_in_national_and_international_form_hashes_the_same() -> None:
    national = by_field(PiiGuard(RING).protect(profile(user_country="DE", user_phone="0151 23456789")))["phone"]
    international = by_field(
        PiiGuard(RING).protect(profile(user_country="FR", user_phone="+49 151 2345 6789"))
    )["phone"]
    assert national.lookup_hash == international.lookup_hash


@pytest.mark.parametrize("raw", ["12", "call me", "  call me  "])
def test_unparseable_phone_is_kept_encrypted_flagged_invalid_and_the_event_flows(raw: str) -> None:
    event = profile(user_country="DE", user_phone=raw)
    record = by_field(PiiGuard(RING).protect(event))["phone"]

    assert event.phone is None
    assert event.has_phone is True
    assert event.phone_valid is False
    assert record.valid is False
    assert plain(record) == raw.strip()
    assert record.lookup_hash == lookup_hash(RING, raw.strip(), "phone")

    # ... and through the pipeline the profile is applied (not dead-lettered), flags and all.
    state = run_pipeline([profile_message(user_country="DE", user_phone=raw, user_email="x@example.test")])
    assert state.has_phone is True and state.phone_valid is False
    assert raw.strip().encode() not in state.to_json()


# -- names ----------------------------------------------------------------------------------------


def test_names_are_encrypted_when_configured() -> None:
    event = profile(user_first_name=" Søren ", user_last_name="Müller")
    records = by_field(PiiGuard(RING, encrypt_names=True).protect(event))
    assert event.first_name is None and event.last_name is None
    assert plain(records["first_name"]) == "Søren"  # UTF-8 intact
    assert plain(records["last_name"]) == "Müller"
    assert records["first_name"].lookup_hash == lookup_hash(RING, "Søren", "first_name")
    assert records["last_name"].lookup_hash == lookup_hash(RING, "Müller", "last_name")


def test_names_are_dropped_when_not_configured() -> None:
    event = profile(user_first_name="Søren", user_last_name="Müller", user_email="s@example.test")
    records = PiiGuard(RING, encrypt_names=False).protect(event)
    assert {r.field for r in records} == {"email"}
    assert event.first_name is None and event.last_name is None


# -- no key ring ----------------------------------------------------------------------------------


def test_without_a_key_ring_nothing_is_returned_and_every_pii_field_is_removed() -> None:
    guard = PiiGuard(None, encrypt_names=True, keep_email_domain=True)
    assert guard.stores_values is False
    event = profile(
        user_email=" Jane.Doe@Example.COM ", user_phone="0151 23456789", user_country="DE",
        user_first_name="Jane", user_last_name="Doe",
    )
    assert guard.protect(event) == []
    assert_no_pii_left(event)
    assert event.has_email is True and event.has_phone is True and event.phone_valid is True
    assert event.email_domain == "example.com"


# -- every record, and the vault's binding ---------------------------------------------------------


def test_every_record_decrypts_only_under_its_own_row_and_field() -> None:
    event = profile(
        user_email="Jane@Example.com", user_phone="+49 151 23456789", user_country="DE",
        user_first_name="Jane", user_last_name="Doe",
    )
    records = PiiGuard(RING).protect(event)
    expected = {"email": "jane@example.com", "phone": "+4915123456789", "first_name": "Jane", "last_name": "Doe"}
    assert {r.field: plain(r) for r in records} == expected
    for record in records:
        assert record.lookup_hash == lookup_hash(RING, expected[record.field], record.field)
        for brand, user, field in [("b2", "u1", record.field), ("b1", "u2", record.field),
                                   ("b1", "u1", "nickname")]:
            with pytest.raises(DecryptError):
                decrypt(RING, record.token, value_aad(brand, user, field))
        with pytest.raises(DecryptError):  # another ring (another operator's keys)
            decrypt(generate_key_ring("k1"), record.token, value_aad(record.brand, record.user, record.field))
    # Field names keep hashes apart: the same text as a first and a last name hashes differently.
    assert lookup_hash(RING, "Jane", "first_name") != lookup_hash(RING, "Jane", "last_name")


def test_same_email_on_two_brands_matches_by_hash_while_tokens_differ() -> None:
    guard = PiiGuard(RING)
    eu = by_field(guard.protect(profile(brand="brand-eu", user="1", user_email="Jane.Doe@Example.com")))["email"]
    latam = by_field(
        guard.protect(profile(brand="brand-latam", user="77", user_email=" jane.doe@example.COM"))
    )["email"]
    assert eu.lookup_hash == latam.lookup_hash
    assert eu.token != latam.token
    assert plain(eu) == plain(latam) == "jane.doe@example.com"
    # Encrypting the same value twice for the same row gives different tokens too (fresh nonce).
    again = by_field(guard.protect(profile(brand="brand-eu", user="1", user_email="Jane.Doe@Example.com")))["email"]
    assert again.token != eu.token and again.lookup_hash == eu.lookup_hash


def test_records_round_trip_through_the_vault(tmp_path: Path) -> None:
    guard = PiiGuard(RING)
    records = guard.protect(profile(brand="b1", user="u1", user_email=" Jane@Example.com ",
                                    user_phone="0151 23456789", user_country="DE"))
    records += guard.protect(profile(brand="b2", user="u9", user_email="JANE@example.com"))

    async def scenario() -> tuple[Any, ...]:
        vault = PiiVault(SqliteDatabase(tmp_path / "pii.db"), RING)
        await vault.open()
        try:
            await vault.write(records)
            email = await vault.reveal("b1", "u1", "email", actor="test", purpose="unit test")
            phone = await vault.reveal("b1", "u1", "phone", actor="test", purpose="unit test")
            found = await vault.find("email", "jane@example.com")
            return email, phone, found, await vault.key_usage(), await vault.audit_log()
        finally:
            await vault.close()

    email, phone, found, usage, audit = asyncio.run(scenario())
    assert (email, phone) == ("jane@example.com", "+4915123456789")
    assert found == [("b1", "u1"), ("b2", "u9")]
    assert usage == {"k1": 3}
    assert [(a["actor"], a["purpose"], a["action"], a["field"]) for a in audit] == [
        ("test", "unit test", "reveal", "email"), ("test", "unit test", "reveal", "phone")
    ]
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for needle in (b"jane@example.com", b"Jane@Example.com", b"+4915123456789", b"4915123456789", b"23456789"):
        assert needle not in raw


# -- other events and partial profiles -------------------------------------------------------------


def test_non_profile_events_without_contact_data_pass_untouched() -> None:
    # Contact data in their custom fields is protected: tests/pii/test_pii_custom_fields.py.
    deposit = adapt(
        {"dt_finalized": BASE_MS, "ext_brand_id": "b1", "user_ext_id": "u1", "transaction_id": "t1",
         "type": "deposit", "amount": "10.00", "core_wallet_currency": "EUR", "note": "first deposit, 2024-03-01"},
        Stream.PAYMENTS,
    )
    bet = adapt(
        {"ext_brand_id": "b1", "user_ext_id": "u1", "transaction_id": "c1", "type": "bet", "bet_date": BASE_MS,
         "bet_amount": "1.00", "game_name": "Book of Ra", "game_id": "g1"},
        Stream.CASINO,
    )
    for event in (deposit, bet):
        before = dump_event(event)
        assert PiiGuard(RING).protect(event) == []
        assert PiiGuard(None).protect(event) == []
        assert dump_event(event) == before


def test_profile_without_pii_fields_leaves_the_flags_unset() -> None:
    # A partial update without email/phone must not tell the engine "the user has no email".
    event = profile(core_account_status="SUSPENDED")
    assert PiiGuard(RING).protect(event) == []
    assert event.has_email is None and event.has_phone is None and event.phone_valid is None


# -- the engine's state after the guard ------------------------------------------------------------


def run_pipeline(messages: list[dict[str, Any]], guard: PiiGuard | None = None) -> UserState:
    """Messages of one user through decode -> adapt -> guard -> engine; that user's state."""
    guard = guard or PiiGuard(RING, keep_email_domain=True)
    records = [
        RawRecord(transport="file", topic="user_profile", partition=0, offset=i,
                  key=str(m["user_ext_id"]).encode(), value=orjson.dumps(m))
        for i, m in enumerate(messages)
    ]
    pipeline = Pipeline(ADAPTER, {"user_profile": Stream.PROFILE}, guard=guard)
    key = (str(messages[0]["ext_brand_id"]), str(messages[0]["user_ext_id"]))
    states = {key: UserState(brand=key[0], user=key[1])}
    result = pipeline.process(records, BatchEngine(RuleEngine(RuleSet.of(())), states))
    assert result.results[("user_profile", OK)] == len(records), (result.results, result.dead_letters)
    assert not result.dead_letters
    return states[key]


@pytest.mark.parametrize("with_ring", [True, False], ids=["key-ring", "no-key-ring"])
def test_engine_state_after_a_profile_holds_only_derived_flags(with_ring: bool) -> None:
    guard = PiiGuard(RING if with_ring else None, keep_email_domain=True)
    state = run_pipeline(
        [profile_message(user_email="  Jane.Doe@Example.COM ", user_phone="0151 23456789", user_country="DE",
                         user_first_name="Zebulon", user_last_name="Quackenbush")],
        guard,
    )
    assert state.has_email is True and state.has_phone is True and state.phone_valid is True
    assert state.email_domain == "example.com"
    assert state.country == "DE"
    document = state.to_json()
    for needle in ("Jane.Doe@Example.COM", "jane.doe@example.com", "jane.doe", "0151 23456789", "015123456789",
                   "+4915123456789", "4915123456789", "23456789", "Zebulon", "Quackenbush"):
        assert needle.encode() not in document, needle
    # The round trip through the store's format keeps it that way.
    assert UserState.from_json(document).to_json() == document
