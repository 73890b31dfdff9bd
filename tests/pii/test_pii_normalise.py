"""Phone and email normalisation (smartico_stream.pii.normalise): pure functions, no fixtures.

The country table uses phonenumbers' own example numbers (real formats, reserved/example ranges),
written out literally so a metadata update that changes them shows up as a test diff.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartico_stream.pii.normalise import (
    NormalisedPhone,
    email_domain,
    is_plausible_email,
    normalise_email,
    normalise_phone,
)

# (user_country, national-format input as users type it, expected E.164)
NATIONAL = [
    ("US", "(201) 555-0123", "+12015550123"),
    ("GB", "07400 123456", "+447400123456"),
    ("GB", "0121 234 5678", "+441212345678"),
    ("DE", "030 123456", "+4930123456"),
    ("DE", "01512 3456789", "+4915123456789"),
    ("FR", "06 12 34 56 78", "+33612345678"),
    ("ES", "612 34 56 78", "+34612345678"),
    ("IT", "02 1234 5678", "+390212345678"),  # Italian fixed lines keep their leading 0
    ("IT", "312 345 6789", "+393123456789"),
    ("BR", "(11) 96123-4567", "+5511961234567"),
    ("IN", "081234 56789", "+918123456789"),
    ("UA", "050 123 4567", "+380501234567"),
    ("MT", "9696 1234", "+35696961234"),
    ("CA", "(506) 234-5678", "+15062345678"),
    ("AU", "0412 345 678", "+61412345678"),
    ("AU", "(02) 1234 5678", "+61212345678"),
    ("SE", "070-123 45 67", "+46701234567"),
    ("SE", "08-12 34 56", "+468123456"),
    ("BG", "02 123 456", "+3592123456"),
    ("PL", "512 345 678", "+48512345678"),
    ("NL", "06 12345678", "+31612345678"),
]
COUNTRIES = sorted({country for country, _, _ in NATIONAL})


def test_table_covers_at_least_twelve_countries() -> None:
    assert len(COUNTRIES) >= 12


@pytest.mark.parametrize(("country", "raw", "e164"), NATIONAL)
def test_national_format_uses_the_user_country(country: str, raw: str, e164: str) -> None:
    assert normalise_phone(raw, country) == NormalisedPhone(e164, True, country)


@pytest.mark.parametrize(("country", "raw", "e164"), NATIONAL)
def test_national_format_tolerates_lower_case_and_padded_country(country: str, raw: str, e164: str) -> None:
    assert normalise_phone(raw, f" {country.lower()} ").e164 == e164


@pytest.mark.parametrize(("country", "raw", "e164"), NATIONAL)
@pytest.mark.parametrize("user_country", [None, "US", "GB", "DE", "AU"])
def test_plus_cc_ignores_the_user_country(
    country: str, raw: str, e164: str, user_country: str | None
) -> None:
    result = normalise_phone(e164, user_country)
    assert (result.e164, result.valid) == (e164, True)
    # +1 is shared by US and CA: the region comes from the number, not from the user.
    assert result.region_used == country


@pytest.mark.parametrize(("country", "raw", "e164"), NATIONAL)
@pytest.mark.parametrize("user_country", [None, "US", "CA", "AU", "GB", "DE"])
def test_00cc_is_international_whatever_the_user_country(
    country: str, raw: str, e164: str, user_country: str | None
) -> None:
    # US/CA dial 011 and AU 0011 abroad, and None has no dialling rules at all; operators send
    # 00CC anyway, so it must still read as an international number.
    result = normalise_phone("00" + e164[1:], user_country)
    assert result == NormalisedPhone(e164, True, country)


@pytest.mark.parametrize(
    ("raw", "country", "e164"),
    [
        ("+44 (0)121 234-5678", "DE", "+441212345678"),  # the "(0)" trunk hint of UK business cards
        ("+1.201.555.0123", None, "+12015550123"),
        ("+49-30-123456", "FR", "+4930123456"),
        ("  +33 6 12 34 56 78  ", "FR", "+33612345678"),
        ("0033.6.12.34.56.78", "ES", "+33612345678"),
        ("030\u00a0123456", "DE", "+4930123456"),  # no-break space from a web form
        ("(02)\t1234\n5678", "AU", "+61212345678"),
        ("011 49 30 123456", "US", "+4930123456"),  # US users' own international prefix
        ("0011 49 30 123456", "AU", "+4930123456"),  # AU users' own international prefix
    ],
)
def test_separators_and_international_prefixes(raw: str, country: str | None, e164: str) -> None:
    result = normalise_phone(raw, country)
    assert (result.e164, result.valid) == (e164, True)


def test_number_from_another_country_keeps_its_own_country() -> None:
    # A UK user with a German number: neither rewritten to +44 nor rejected.
    assert normalise_phone("+49 30 123456", "GB") == NormalisedPhone("+4930123456", True, "DE")
    assert normalise_phone("0049 30 123456", "GB") == NormalisedPhone("+4930123456", True, "DE")
    # A Canadian number of a US user: same +1, but the region is read from the number.
    assert normalise_phone("+1 506 234 5678", "US") == NormalisedPhone("+15062345678", True, "CA")


def test_national_number_read_with_the_wrong_country_is_not_valid() -> None:
    # Without +CC the user's country decides; a UK mobile read as a US number is not a number.
    result = normalise_phone("07400 123456", "US")
    assert result.valid is False and result.e164 is None and result.region_used == "US"


def test_possible_but_unallocated_number_keeps_e164_and_is_not_valid() -> None:
    # Ofcom's drama range 07700 900xxx has a possible length but is not an allocated range.
    assert normalise_phone("07700 900123", "GB") == NormalisedPhone("+447700900123", False, "GB")


def test_non_geographic_number_has_no_region() -> None:
    assert normalise_phone("+800 1234 5678", "GB") == NormalisedPhone("+80012345678", True, None)


@pytest.mark.parametrize(
    ("raw", "country"),
    [
        ("12", "DE"),  # too short (a local-only number without its area code is not E.164-able)
        ("555 0123", "US"),  # 7-digit US local number: no area code
        ("+1 555 0100", "US"),
        ("1" * 40, "GB"),  # too long
        ("9" * 300, "FR"),  # longer than phonenumbers accepts at all
        ("call me maybe", "GB"),
        ("not a phone", None),
        ("abc", "DE"),
        ("", "DE"),
        ("   ", "GB"),
        ("+", None),
        ("00", "GB"),
        ("()-.", "US"),
        ("+999 123 456 789", "GB"),  # unassigned country code
        ("07400 123456", None),  # national format but no country to read it with
        ("030 123456", None),
        ("030 123456", "XX"),  # not a region: treated as no country
        ("030 123456", "Germany"),
    ],
)
def test_garbage_is_invalid_and_never_raises(raw: str, country: str | None) -> None:
    result = normalise_phone(raw, country)
    assert result.e164 is None
    assert result.valid is False


def test_garbage_reports_the_usable_user_country() -> None:
    assert normalise_phone("abc", "de") == NormalisedPhone(None, False, "DE")
    assert normalise_phone("abc", None) == NormalisedPhone(None, False, None)
    assert normalise_phone("abc", "XX") == NormalisedPhone(None, False, None)


def test_non_string_input_is_garbage_not_an_exception() -> None:
    assert normalise_phone(None, "GB") == NormalisedPhone(None, False, "GB")  # type: ignore[arg-type]
    assert normalise_phone(4930123456, None) == NormalisedPhone(None, False, None)  # type: ignore[arg-type]
    assert normalise_phone("030 123456", 49) == NormalisedPhone(None, False, None)  # type: ignore[arg-type]


_PHONE_ALPHABET = "0123456789+()-. \t\u00a0x#*/ext"


@settings(max_examples=400, deadline=None)
@given(
    raw=st.one_of(st.text(), st.text(alphabet=_PHONE_ALPHABET, max_size=30)),
    country=st.sampled_from([*COUNTRIES, None]),
)
def test_normalise_phone_never_raises(raw: str, country: str | None) -> None:
    result = normalise_phone(raw, country)
    assert isinstance(result, NormalisedPhone)
    if result.valid:
        assert result.e164 is not None
    if result.e164 is not None:
        assert result.e164.startswith("+") and result.e164[1:].isdigit()
        # Normalising is idempotent: the E.164 form reads back as itself from any user country.
        again = normalise_phone(result.e164, "GB")
        assert (again.e164, again.valid) == (result.e164, result.valid)


# --- email ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        ("  bob@example.com\n", "bob@example.com"),
        ("\tÉLODIE@Exemple.FR ", "élodie@exemple.fr"),
        ("not-an-email", "not-an-email"),  # normalised anyway; plausibility is a separate check
        ("", None),
        ("   \t\n", None),
    ],
)
def test_normalise_email(raw: str, expected: str | None) -> None:
    assert normalise_email(raw) == expected


def test_normalise_email_non_string_is_none() -> None:
    assert normalise_email(None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("email", "domain"),
    [
        ("alice@example.com", "example.com"),
        ('"odd@local"@example.org', "example.org"),  # the last "@" separates the domain
        ("no-at-sign", None),
        ("trailing@", None),
        ("@example.com", "example.com"),
        ("", None),
    ],
)
def test_email_domain(email: str, domain: str | None) -> None:
    assert email_domain(email) == domain


@pytest.mark.parametrize(
    ("email", "plausible"),
    [
        ("alice@example.com", True),
        ("a.b+tag@mail.example.co.uk", True),
        ("élodie@exemple.fr", True),
        ("alice@localhost", False),  # no dot in the domain
        ("@example.com", False),  # empty local part
        ("alice@", False),
        ("alice", False),
        ("a@b@example.com", False),  # two "@"
        ("al ice@example.com", False),
        ("alice@exa mple.com", False),
        ("alice@example.com\n", False),
        ("alice@.com", False),  # empty domain label
        ("alice@example.", False),
        ("alice@example..com", False),
        ("", False),
    ],
)
def test_is_plausible_email(email: str, plausible: bool) -> None:
    assert is_plausible_email(email) is plausible


@given(st.text())
def test_email_helpers_never_raise(raw: str) -> None:
    email = normalise_email(raw)
    if email is not None:
        assert email == email.strip().lower() and email
        email_domain(email)
        is_plausible_email(email)
