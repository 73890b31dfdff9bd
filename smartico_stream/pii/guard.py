"""The PII guard: on arrival, before dedup and the engine, personal data leaves the event.

Emails are trimmed and lower-cased, phones normalised to E.164 with the user's country as the
region for national numbers. The values are encrypted (AES-GCM) for the isolated PII vault, with a
keyed hash beside them for lookups; the event keeps only derived, non-identifying fields
(``has_email``, ``has_phone``, ``phone_valid``, optionally ``email_domain``). Without a key ring
the values are dropped: nothing downstream ever sees plaintext either way.

Custom fields (an event's ``extra``, any event type) get the same treatment when their value looks
like an email or a phone (:mod:`.detect`) or their key is listed in ``pii.custom_fields``: the value
becomes ``null``, a sibling ``has_<key>: true`` says one was there, and the vault holds it as field
``custom.<dotted path>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from smartico_stream.events.models import CanonicalEvent, UserProfile
from smartico_stream.pii.crypto import encrypt, lookup_hash
from smartico_stream.pii.detect import lookup_form, recognise
from smartico_stream.pii.keys import KeyRing
from smartico_stream.pii.normalise import email_domain, is_plausible_email, normalise_email, normalise_phone
from smartico_stream.pii.vault import PiiRecord, value_aad

NAME_FIELDS = ("first_name", "last_name")
CUSTOM_PREFIX = "custom."  # vault field of a custom value: custom.<dotted path in extra>
MARKER_PREFIX = "has_"


class PiiGuard:
    def __init__(self, ring: KeyRing | None, encrypt_names: bool = True, keep_email_domain: bool = False,
                 custom_fields: Iterable[str] = ()) -> None:
        self._ring = ring
        self._encrypt_names = encrypt_names
        self._keep_email_domain = keep_email_domain
        self._custom_fields = frozenset(custom_fields)

    @property
    def stores_values(self) -> bool:
        return self._ring is not None

    def protect(self, event: CanonicalEvent, default_region: str | None = None) -> list[PiiRecord]:
        """Strip personal data from ``event`` (in place); return the encrypted records to store.
        ``default_region`` (the user's known country) reads national phone numbers in profile
        updates that do not repeat the country."""
        records: list[PiiRecord] = []
        if event.extra:
            region = (event.country if isinstance(event, UserProfile) else None) or default_region
            for path, value, valid in self._strip_custom(event.extra, region):
                records += self._record(event, CUSTOM_PREFIX + path, value, valid)
        if not isinstance(event, UserProfile):
            return records
        if event.email is not None:
            email = normalise_email(event.email)
            event.has_email = email is not None
            event.email = None
            if email is not None:
                if self._keep_email_domain:
                    event.email_domain = email_domain(email)
                records += self._record(event, "email", email, is_plausible_email(email))
        if event.phone is not None:
            phone = normalise_phone(event.phone, event.country or default_region)
            event.has_phone = bool(event.phone.strip())
            event.phone_valid = phone.valid
            # An unparseable number is still kept (encrypted, flagged invalid): support may need it.
            value = phone.e164 or event.phone.strip()
            event.phone = None
            if value:
                records += self._record(event, "phone", value, phone.valid)
        for field in NAME_FIELDS:
            value = getattr(event, field)
            if value is not None:
                setattr(event, field, None)  # names are stored encrypted where configured, else not at all
                if self._encrypt_names and value.strip():
                    records += self._record(event, field, value.strip(), True)
        return records

    def _record(self, event: CanonicalEvent, field: str, value: str, valid: bool) -> list[PiiRecord]:
        if self._ring is None:
            return []
        aad = value_aad(event.brand_id, event.user_id, field)
        return [
            PiiRecord(
                brand=event.brand_id,
                user=event.user_id,
                field=field,
                token=encrypt(self._ring, value, aad),
                lookup_hash=lookup_hash(self._ring, value, field),
                valid=valid,
            )
        ]

    def _strip_custom(self, extra: dict[str, Any], region: str | None) -> list[tuple[str, str, bool]]:
        """Replace the personal data in ``extra`` (in place, at any depth) by ``null`` with a sibling
        ``has_<key>: true`` (a list item is only nulled); return (dotted path, normalised value,
        valid) of each. Iterative, so no nesting depth gets past it; most values cost a type test,
        most strings an ``"@"`` test and one character-class match (this runs on every event)."""
        found: list[tuple[str, str, bool]] = []
        listed = self._custom_fields
        stack: list[tuple[dict[str, Any] | list[Any], str]] = [(extra, "")]
        while stack:
            container, prefix = stack.pop()
            pairs = container.items() if type(container) is dict else enumerate(container)
            changes: list[tuple[str | int, tuple[str, bool]]] = []
            for key, value in pairs:
                kind = type(value)
                if listed and value is not None and (key in listed or f"{prefix}{key}" in listed):
                    changes.append((key, _listed_value(_as_text(value), region)))
                elif kind is str:
                    if (protected := recognise(value, region)) is not None:
                        changes.append((key, protected))
                elif kind is dict or kind is list:
                    stack.append((value, f"{prefix}{key}."))
                # numbers and booleans are never read as contact data unless the field is listed
            for key, (value, valid) in changes:  # after the loop: a marker changes the dict's size
                if isinstance(container, dict):
                    container[str(key)] = None
                    container[f"{MARKER_PREFIX}{key}"] = bool(value)
                else:
                    container[int(key)] = None
                if value:
                    found.append((f"{prefix}{key}", value, valid))
        return found


def _listed_value(text: str, region: str | None) -> tuple[str, bool]:
    """(normalised value, valid) of a listed field's value: ``""`` when there is nothing in it."""
    value = lookup_form(text, region)
    if not value:
        return "", False
    if "@" in value:
        return value, is_plausible_email(value)
    phone = normalise_phone(value, region)
    return value, phone.valid if phone.e164 else True  # not a phone at all: kept as it came


def _as_text(value: object) -> str:
    """A listed field's value as text: a string as it is, anything else as compact JSON."""
    return value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
