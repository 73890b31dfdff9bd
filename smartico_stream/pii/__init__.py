"""PII protection: key ring, authenticated encryption, lookup hashes, and normalisation.

Operators are promised that email, phone and names are encrypted on arrival and stored apart from
the rule-engine state. This package holds the building blocks; it does no I/O except loading
the key ring (:meth:`KeyRing.load`).

- :mod:`.keys` — :class:`KeyRing` (AES-256 keys by id + separate HMAC key), loading, rotation.
- :mod:`.crypto` — :func:`encrypt`/:func:`decrypt` (AES-256-GCM, AAD-bound tokens),
  :func:`reencrypt`, :func:`token_key_id`, :func:`lookup_hash` (HMAC-SHA256).
- :mod:`.normalise` — :func:`normalise_phone` (E.164 via the user's country),
  :func:`normalise_email`, :func:`email_domain`, :func:`is_plausible_email`.
- :mod:`.detect` — recognising emails and phones in custom fields (:func:`~.detect.looks_like_email`,
  :func:`~.detect.looks_like_phone`) and their lookup form.
"""

from __future__ import annotations

from .crypto import DecryptError, decrypt, encrypt, lookup_hash, reencrypt, token_key_id
from .keys import KeyRing, PiiKeyError, add_key, generate_key_ring, key_ring_to_json
from .normalise import NormalisedPhone, email_domain, is_plausible_email, normalise_email, normalise_phone

__all__ = [
    "DecryptError",
    "KeyRing",
    "NormalisedPhone",
    "PiiKeyError",
    "add_key",
    "decrypt",
    "email_domain",
    "encrypt",
    "generate_key_ring",
    "is_plausible_email",
    "key_ring_to_json",
    "lookup_hash",
    "normalise_email",
    "normalise_phone",
    "reencrypt",
    "token_key_id",
]
