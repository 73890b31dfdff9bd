"""Recognising contact data in operator fields the model does not know (custom properties, an event's
``extra``), cheaply: these checks run on every string of every custom field of every event.

Only strings are looked at, and most are dismissed by a character test before anything costly: an
email needs an ``"@"``; a phone needs 7 to 32 characters that are all digits, spaces, ``+-.()``,
7 to 15 of them digits, and then a number ``phonenumbers`` calls *valid* (not merely possible).

Ordinary values are not flagged: amounts (``"1234.50"``, ``"1 000 000"``), ids (``"123456789"``,
uuids, ``"tx-42"``), ISO dates and times, IPv4 addresses, game names. The price of that: a phone
written as bare digits without ``+`` (``"07700900123"``) looks like an id and is not recognised by
its shape, and a national number needs the user's country; list such fields in
``pii.custom_fields`` (docs/pii.md).
"""

from __future__ import annotations

import re

from smartico_stream.pii.normalise import (
    NormalisedPhone,
    PhoneNormalise,
    is_plausible_email,
    normalise_email,
    normalise_phone,
)

__all__ = ["looks_like_email", "looks_like_phone", "lookup_form", "lookup_value", "recognise"]

_EMAIL_MAX = 320
_PHONE_SHAPE = re.compile(r"[0-9+\-.() ]{7,32}")
# Shapes made of phone characters that are something else.
_NOT_A_PHONE = re.compile(
    r"-?\d+"  # an integer (an id): bare digits, however long, are not read as a phone
    r"|-?\d*\.\d+"  # a decimal amount
    r"|-?[1-9]\d{0,2}(?:[ .]\d{3})+(?:\.\d+)?"  # an amount in groups of three (a national number may be one too)
    r"|\d{4}[-./]\d{1,2}[-./]\d{1,2}"  # an ISO (or dotted) date
    r"|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}"  # a day-month-year date
    r"|\d{1,3}(?:\.\d{1,3}){3}"  # an IPv4 address
)
_MIN_DIGITS, _MAX_DIGITS = 7, 15  # E.164 holds at most 15 digits
_DIGITS = "0123456789"


def looks_like_email(text: str) -> bool:
    """``text`` is an address: one ``"@"``, no whitespace, a dotted domain whose last label is not
    all digits (``"bet@1.5"`` is not an address)."""
    if "@" not in text or len(text) > _EMAIL_MAX:
        return False
    email = text.strip().lower()
    if not is_plausible_email(email):
        return False
    tld = email.rpartition(".")[2]
    return len(tld) >= 2 and not tld.isdigit() and all(ch.isalnum() or ch == "-" for ch in tld)


def looks_like_phone(
    text: str, region: str | None, normalise: PhoneNormalise = normalise_phone
) -> NormalisedPhone | None:
    """The normalised number when ``text`` is a valid phone number: international (``+CC`` or
    ``00CC``) in any case, national only with the user's ``region`` and written with separators.
    ``None`` for everything else, fast for most values. ``normalise`` is :func:`normalise_phone`
    or a cache of it (:class:`~.normalise.PhoneNormaliser`)."""
    # Cheapest tests first: this runs on every string of every custom field.
    if not _PHONE_SHAPE.fullmatch(text):
        return None
    stripped = text.strip()
    if stripped.isdigit():
        return None  # an id
    if region is None and not stripped.startswith(("+", "00")):
        return None  # a national number cannot be read without the user's country
    if not _MIN_DIGITS <= sum(map(stripped.count, _DIGITS)) <= _MAX_DIGITS or _NOT_A_PHONE.fullmatch(stripped):
        return None
    phone = normalise(stripped, region)
    return phone if phone.valid and phone.e164 is not None else None


def recognise(text: str, region: str | None, normalise: PhoneNormalise = normalise_phone) -> tuple[str, bool] | None:
    """(normalised value, valid) when ``text`` looks like an email (lower-cased) or a phone (E.164),
    else ``None``: what the guard asks of every string in a custom field."""
    if "@" in text:
        return (normalise_email(text) or "", True) if looks_like_email(text) else None
    if not _PHONE_SHAPE.fullmatch(text):
        return None  # the common case, before any call
    phone = looks_like_phone(text, region, normalise)
    return (phone.e164 or "", True) if phone is not None else None


def lookup_form(text: str, region: str | None, normalise: PhoneNormalise = normalise_phone) -> str:
    """The form of a custom field's value its lookup hash is computed over (what ``pii find``
    computes from what an operator types): an email lower-cased, a phone in E.164 when it parses,
    else the trimmed text."""
    value = text.strip()
    if "@" in value:
        return value.lower()
    phone = normalise(value, region)
    return phone.e164 or value


def lookup_value(field: str, text: str, region: str | None) -> str:
    """What ``pii find`` hashes for a value typed for ``field``: its form on arrival (an email
    normalised, a phone in E.164 by ``region``, a custom field's value by :func:`lookup_form`)."""
    if field == "email":
        return normalise_email(text) or ""
    if field.startswith("custom."):
        return lookup_form(text, region)
    return normalise_phone(text, region).e164 or text.strip()
