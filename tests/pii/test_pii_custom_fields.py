"""The PII guard on custom fields (an event's ``extra``): values that look like an email or a phone,
and every value of a field listed in ``pii.custom_fields``, are encrypted for the vault (or dropped
without a key ring); the event keeps ``null`` and a sibling ``has_<key>: true`` (docs/pii.md).

Property tests: ordinary values (amounts, ids, ISO dates, IPv4 addresses, game names) are never
flagged, in any region; emails and the example numbers of every region phonenumbers knows, in E.164,
international and national format, always are. Examples go through the reference adapter and
``PiiGuard.protect``, as in the pipeline.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat

from smartico_stream.adapters.base import RecordContext, canonical_events
from smartico_stream.adapters.registry import load_adapter
from smartico_stream.events.models import CanonicalEvent
from smartico_stream.events.raw import Stream
from smartico_stream.pii import decrypt, generate_key_ring, lookup_hash
from smartico_stream.pii.detect import looks_like_email, looks_like_phone, lookup_value
from smartico_stream.pii.guard import PiiGuard
from smartico_stream.pii.vault import PiiRecord, value_aad

BASE_MS = 1_700_000_000_000
RING = generate_key_ring("k1")
ADAPTER = load_adapter("reference")
REGIONS = [None, "GB", "DE", "US", "FR", "MT", "BR", "CZ", "IN", "JP", "AO"]


def profile(**extra: Any) -> CanonicalEvent:
    message = {
        "dt_update": BASE_MS, "ext_brand_id": "b1", "user_ext_id": "u1",
        "core_registration_date": BASE_MS - 86_400_000, "core_user_language": "EN", "core_wallet_currency": "EUR",
        **extra,
    }
    return adapt(message, Stream.PROFILE)


def deposit(**extra: Any) -> CanonicalEvent:
    message = {
        "dt_finalized": BASE_MS, "ext_brand_id": "b1", "user_ext_id": "u1", "transaction_id": "t1",
        "type": "deposit", "amount": "10.00", "core_wallet_currency": "EUR", **extra,
    }
    return adapt(message, Stream.PAYMENTS)


def adapt(message: Mapping[str, Any], stream: Stream) -> CanonicalEvent:
    (event,) = canonical_events(ADAPTER, message, RecordContext(stream=stream, topic=stream.value, key="u1"))
    return event


def revealed(record: PiiRecord) -> str:
    return decrypt(RING, record.token, value_aad(record.brand, record.user, record.field)).decode()


# -- ordinary values are left alone ------------------------------------------------------------------

amounts = st.one_of(
    st.decimals(min_value=-10**12, max_value=10**12, places=2, allow_nan=False, allow_infinity=False).map(str),
    st.decimals(min_value=0, max_value=10**6, allow_nan=False, allow_infinity=False).map(lambda d: f"{d:f}"),
    st.integers(min_value=-10**12, max_value=10**12).map(lambda n: f"{n:,}".replace(",", " ")),
    st.integers(min_value=0, max_value=10**12).map(lambda n: f"{n:,}".replace(",", ".")),
    st.integers(min_value=0, max_value=10**9).map(lambda n: f"{Decimal(n) / 100:,.2f}".replace(",", " ")),
)
ids = st.one_of(
    st.integers(min_value=0, max_value=10**30).map(str),  # numeric ids of any length, zero-padded too
    st.integers(min_value=0, max_value=10**12).map(lambda n: f"{n:020d}"),
    st.uuids().map(str),
    st.tuples(st.sampled_from(["tx-", "game-", "b", "u_", "ORD"]), st.integers(0, 10**15))
    .map(lambda t: f"{t[0]}{t[1]}"),
)
dates = st.one_of(
    st.dates().map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat(timespec="milliseconds") + "Z"),
    st.dates().map(lambda d: d.strftime("%d.%m.%Y")),
    st.dates().map(lambda d: d.strftime("%Y/%m/%d")),
)
game_names = st.text(alphabet=string.ascii_letters + string.digits + " '-:!&.", min_size=1, max_size=40).filter(
    lambda s: any(ch.isalpha() for ch in s)
)
ordinary = st.one_of(amounts, ids, dates, game_names, st.ip_addresses(v=4).map(str))


@given(value=ordinary, region=st.sampled_from(REGIONS))
def test_ordinary_values_are_never_taken_for_contact_data(value: str, region: str | None) -> None:
    assert not looks_like_email(value)
    assert looks_like_phone(value, region) is None
    event = deposit(country_note=value, nested={"values": [value], "inner": value})
    records = PiiGuard(RING).protect(event, default_region=region)
    assert records == []
    assert event.extra == {"country_note": value, "nested": {"values": [value], "inner": value}}


# -- contact data is found -----------------------------------------------------------------------


def _example_numbers() -> list[tuple[str, phonenumbers.PhoneNumber]]:
    found = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                found.append((region, number))
    return found


EXAMPLES = _example_numbers()
# National numbers written in groups of three without a leading 0 ("923 123 456", Angola) read as
# amounts, and bare digits as ids; both are left to pii.custom_fields (docs/pii.md).
_AMBIGUOUS_NATIONAL = re.compile(r"\d+|[1-9]\d{0,2}(?:[ .]\d{3})+")


@given(email=st.emails(), region=st.sampled_from(REGIONS))
def test_an_email_in_a_custom_field_is_encrypted_and_replaced_by_a_marker(email: str, region: str | None) -> None:
    assert looks_like_email(email)
    event = profile(contact_email=email, vip="gold")
    (record,) = PiiGuard(RING).protect(event, default_region=region)
    assert event.extra == {"contact_email": None, "has_contact_email": True, "vip": "gold"}
    assert record.field == "custom.contact_email"
    assert revealed(record) == email.strip().lower()
    assert record.lookup_hash == lookup_hash(RING, lookup_value("custom.contact_email", email, None), record.field)


@given(example=st.sampled_from(EXAMPLES), style=st.sampled_from(["e164", "international", "national"]),
       region=st.sampled_from(REGIONS))
def test_a_phone_in_a_custom_field_is_encrypted_in_e164(
    example: tuple[str, phonenumbers.PhoneNumber], style: str, region: str | None
) -> None:
    home, number = example
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    if style == "national":
        text = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
        region = home  # a national number is read with the user's country
        if sum(ch.isdigit() for ch in text) < 7 or _AMBIGUOUS_NATIONAL.fullmatch(text):
            return
    else:
        text = phonenumbers.format_number(number, getattr(PhoneNumberFormat, style.upper()))
    event = deposit(payer_phone=text)
    (record,) = PiiGuard(RING).protect(event, default_region=region)
    assert event.extra == {"payer_phone": None, "has_payer_phone": True}
    assert (record.field, revealed(record), record.valid) == ("custom.payer_phone", e164, True)
    assert record.lookup_hash == lookup_hash(RING, lookup_value("custom.payer_phone", text, region), record.field)


def test_every_regions_example_numbers_are_recognised() -> None:
    """The whole table, not a sample: E.164 and international with or without a country, national
    with the user's country."""
    missed = []
    for home, number in EXAMPLES:
        e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
        for style in (PhoneNumberFormat.E164, PhoneNumberFormat.INTERNATIONAL, PhoneNumberFormat.NATIONAL):
            text = phonenumbers.format_number(number, style)
            national = style == PhoneNumberFormat.NATIONAL
            if national and (sum(ch.isdigit() for ch in text) < 7 or _AMBIGUOUS_NATIONAL.fullmatch(text)):
                continue
            for region in ([home] if national else [None, home]):
                found = looks_like_phone(text, region)
                if found is None or found.e164 != e164:
                    missed.append((home, text, region))
    assert not missed
    assert len(EXAMPLES) > 400


# -- where the markers go, listed fields, no key ring -------------------------------------------------


def test_nested_values_listed_fields_and_numbers() -> None:
    event = profile(
        contacts={"work": "Jane.Doe@Example.COM", "tags": ["vip", "+44 7911 123456"], "count": 3},
        mobile="07911123456",  # bare digits: an id by its shape, personal data because it is listed
        landline=441234567890,  # a number: personal data because it is listed
        alt_mobile="",
        score="1 000 000",
        signup_date="2024-03-01",
    )
    guard = PiiGuard(RING, custom_fields=["mobile", "landline", "alt_mobile"])
    records = {r.field: r for r in guard.protect(event, default_region="GB")}
    assert event.extra == {
        "contacts": {"work": None, "has_work": True, "tags": ["vip", None], "count": 3},
        "mobile": None, "has_mobile": True,
        "landline": None, "has_landline": True,
        "alt_mobile": None, "has_alt_mobile": False,
        "score": "1 000 000", "signup_date": "2024-03-01",
    }
    assert {field: revealed(r) for field, r in records.items()} == {
        "custom.contacts.work": "jane.doe@example.com",
        "custom.contacts.tags.1": "+447911123456",
        "custom.mobile": "+447911123456",  # a listed value that parses as a phone is kept in E.164
        "custom.landline": "+441234567890",  # phonenumbers reads the leading 44 as the country code
    }
    # pii find computes the same hash from what an operator types.
    assert records["custom.mobile"].lookup_hash == lookup_hash(
        RING, lookup_value("custom.mobile", "07911 123456", "GB"), "custom.mobile"
    )


def test_a_dotted_path_lists_one_nested_field_only() -> None:
    event = deposit(payer={"ref": "A-1"}, payee={"ref": "B-2"})
    records = PiiGuard(RING, custom_fields=["payer.ref"]).protect(event)
    assert event.extra == {"payer": {"ref": None, "has_ref": True}, "payee": {"ref": "B-2"}}
    assert [(r.field, revealed(r)) for r in records] == [("custom.payer.ref", "A-1")]


def test_without_a_key_ring_custom_contact_data_is_dropped_and_the_markers_stay() -> None:
    event = profile(contact_email="jane@example.com", alt_phone="+49 170 5550123", mobile="0170 5550123")
    assert PiiGuard(None, custom_fields=["mobile"]).protect(event) == []
    assert event.extra == {
        "contact_email": None, "has_contact_email": True,
        "alt_phone": None, "has_alt_phone": True,
        "mobile": None, "has_mobile": True,
    }


@pytest.mark.parametrize("depth", [50, 2000])
def test_contact_data_nested_at_any_depth_is_found(depth: int) -> None:
    nested: dict[str, Any] = {"email": "deep@example.com"}
    for _ in range(depth):
        nested = {"x": nested}
    event = deposit()
    event.extra = {"blob": nested}  # deeper than a JSON decoder allows: the walk is not recursive
    (record,) = PiiGuard(RING).protect(event)
    assert record.field.startswith("custom.blob.x.") and record.field.endswith(".email")
    inner = event.extra["blob"]
    for _ in range(depth):
        inner = inner["x"]
    assert inner == {"email": None, "has_email": True}
