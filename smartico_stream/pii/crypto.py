"""Authenticated encryption of PII values and keyed lookup hashes.

Token format (version 1), all one ``bytes`` value::

    b"v1" | key-id length (1 byte, 1..32) | key id (ASCII) | nonce (12 random bytes)
          | AES-256-GCM ciphertext || 16-byte tag

The AES-GCM associated data is the token header (``b"v1" | length | key id``) followed by the
caller's ``aad``. The caller's part binds a ciphertext to its row and field (for example
``b"brand\\x1fuser\\x1femail"``), so a token copied into another row or column does not decrypt.
The header part means the version and key id cannot be edited without the tag failing, even if
the same key bytes were ever present under two ids.

A fresh random 96-bit nonce per encryption is safe for one key up to roughly 2**32 encryptions
(the NIST SP 800-38D bound for random nonces); rotating the key (see :mod:`.keys`) resets that.

Lookup hashes are hex HMAC-SHA256 under the ring's separate ``hmac_key`` over
``field + "\\x1f" + normalised value``: equal values of the same field hash equally across brands
(cross-brand matching), values of different fields never share a hash.

Errors never carry plaintext or key bytes; they may name a key id.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .keys import KeyRing, PiiKeyError

__all__ = [
    "NONCE_BYTES",
    "TAG_BYTES",
    "TOKEN_VERSION",
    "DecryptError",
    "decrypt",
    "encrypt",
    "lookup_hash",
    "reencrypt",
    "token_key_id",
]

TOKEN_VERSION = b"v1"
NONCE_BYTES = 12
TAG_BYTES = 16
_MAX_KEY_ID = 32
_KEY_ID = re.compile(rb"[A-Za-z0-9_.-]{1,32}")
_FIELD_SEPARATOR = "\x1f"


class DecryptError(ValueError):
    """A token could not be decrypted: malformed, unknown key id, tampered, or wrong AAD.

    The message never contains plaintext or key material.
    """


def _check_aad(aad: bytes) -> None:
    if not isinstance(aad, bytes):
        # A str here would be a caller bug that silently changes the binding; be loud about it.
        raise TypeError(f"aad must be bytes, not {type(aad).__name__}")


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # The codec's own message quotes the offending character: a piece of the PII.
        raise ValueError(f"{what} is not encodable as UTF-8 (it contains a lone surrogate)") from None


def _split(token: bytes) -> tuple[bytes, str, bytes, bytes]:
    """(header, key id, nonce, ciphertext-with-tag) of a token, or :class:`DecryptError`."""
    if not isinstance(token, (bytes, bytearray, memoryview)):
        raise DecryptError(f"PII token must be bytes, not {type(token).__name__}")
    token = bytes(token)
    if not token.startswith(TOKEN_VERSION):
        raise DecryptError("malformed PII token: unknown format version (expected v1)")
    if len(token) < len(TOKEN_VERSION) + 1:
        raise DecryptError("malformed PII token: truncated before the key id")
    id_len = token[len(TOKEN_VERSION)]
    id_start = len(TOKEN_VERSION) + 1
    header_end = id_start + id_len
    if not 1 <= id_len <= _MAX_KEY_ID or len(token) < header_end:
        raise DecryptError("malformed PII token: bad key id length")
    raw_id = token[id_start:header_end]
    if _KEY_ID.fullmatch(raw_id) is None:
        raise DecryptError("malformed PII token: key id has invalid characters")
    body = token[header_end:]
    if len(body) < NONCE_BYTES + TAG_BYTES:
        raise DecryptError("malformed PII token: too short for nonce and authentication tag")
    return token[:header_end], raw_id.decode("ascii"), body[:NONCE_BYTES], body[NONCE_BYTES:]


def encrypt(ring: KeyRing, plaintext: str | bytes, aad: bytes) -> bytes:
    """Encrypt ``plaintext`` (``str`` is UTF-8 encoded) with the ring's current key, bound to ``aad``."""
    if isinstance(plaintext, str):
        data = _utf8(plaintext, "plaintext")
    elif isinstance(plaintext, bytes):
        data = plaintext
    else:
        raise TypeError(f"plaintext must be str or bytes, not {type(plaintext).__name__}")
    _check_aad(aad)
    key_id = ring.current.encode("ascii")  # KeyRing guarantees an ASCII id of 1..32 characters
    header = TOKEN_VERSION + bytes([len(key_id)]) + key_id
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + AESGCM(ring.key(ring.current)).encrypt(nonce, data, header + aad)


def decrypt(ring: KeyRing, token: bytes, aad: bytes) -> bytes:
    """The plaintext bytes of ``token``, using the key its header names and the same ``aad``.

    Raises :class:`DecryptError` if the token is malformed, its key id is not in ``ring``, or
    authentication fails (tampered token, wrong key, or ``aad`` differing from encryption time).
    """
    _check_aad(aad)
    header, key_id, nonce, sealed = _split(token)
    try:
        key = ring.key(key_id)
    except PiiKeyError as exc:
        raise DecryptError(f"cannot decrypt PII token: {exc}") from None
    try:
        return AESGCM(key).decrypt(nonce, sealed, header + aad)
    except InvalidTag:
        raise DecryptError(
            f"PII token (key id {key_id!r}) failed authentication: it was altered, "
            "or it belongs to another row/field (AAD mismatch)"
        ) from None


def token_key_id(token: bytes) -> str:
    """The id of the key that encrypted ``token`` (rotation re-encrypts those != ``ring.current``)."""
    return _split(token)[1]


def reencrypt(ring: KeyRing, token: bytes, aad: bytes) -> bytes:
    """Rotation step 2: decrypt ``token`` with whichever key made it, encrypt again with the current key.

    Always produces a fresh token (new nonce), even if ``token`` already uses the current key.
    """
    return encrypt(ring, decrypt(ring, token, aad), aad)


def lookup_hash(ring: KeyRing, normalised_value: str, field: str) -> str:
    """Hex HMAC-SHA256 of ``field + "\\x1f" + normalised_value`` under ``ring.hmac_key``.

    Pass the *normalised* value (see :mod:`.normalise`) so formatting differences do not split
    one person into several hashes. ``field`` (e.g. ``"email"``, ``"phone"``) keeps values of
    different kinds apart; it must be non-empty and free of the separator so the hashed input
    is unambiguous.
    """
    if not isinstance(field, str) or not field or _FIELD_SEPARATOR in field:
        raise ValueError("field must be a non-empty str without the \\x1f separator")
    if not isinstance(normalised_value, str):
        raise TypeError(f"normalised_value must be str, not {type(normalised_value).__name__}")
    message = _utf8(field + _FIELD_SEPARATOR + normalised_value, "normalised_value")
    return hmac.new(ring.hmac_key, message, hashlib.sha256).hexdigest()
