"""The PII guard: on arrival, before dedup and the engine, personal data leaves the event.

Emails are trimmed and lower-cased, phones normalised to E.164 with the user's country as the
region for national numbers. The values are encrypted (AES-GCM) for the isolated PII vault, with a
keyed hash beside them for lookups; the event keeps only derived, non-identifying fields
(``has_email``, ``has_phone``, ``phone_valid``, optionally ``email_domain``). Without a key ring
the values are dropped: nothing downstream ever sees plaintext either way.
"""

from __future__ import annotations

from smartico_stream.events.models import CanonicalEvent, UserProfile
from smartico_stream.pii.crypto import encrypt, lookup_hash
from smartico_stream.pii.keys import KeyRing
from smartico_stream.pii.normalise import email_domain, is_plausible_email, normalise_email, normalise_phone
from smartico_stream.pii.vault import PiiRecord, value_aad

NAME_FIELDS = ("first_name", "last_name")


class PiiGuard:
    def __init__(self, ring: KeyRing | None, encrypt_names: bool = True, keep_email_domain: bool = False) -> None:
        self._ring = ring
        self._encrypt_names = encrypt_names
        self._keep_email_domain = keep_email_domain

    @property
    def stores_values(self) -> bool:
        return self._ring is not None

    def protect(self, event: CanonicalEvent, default_region: str | None = None) -> list[PiiRecord]:
        """Strip personal data from ``event`` (in place); return the encrypted records to store.
        ``default_region`` (the user's known country) reads national phone numbers in profile
        updates that do not repeat the country."""
        if not isinstance(event, UserProfile):
            return []
        records: list[PiiRecord] = []
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
