"""Dead letters must not leak personal data: their raw payload is encrypted with the PII key ring
(bound to the record's source coordinates) or, by configuration, redacted."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from smartico_stream.pii.crypto import decrypt, encrypt, token_key_id
from smartico_stream.pii.keys import KeyRing

PROTECTION_HEADER = "x-smartico-payload-protection"
ORIGINAL_BYTES_HEADER = "x-smartico-payload-bytes"

# The value a dead letter carries and the headers that say how it was protected.
Protected = tuple[bytes | None, list[tuple[str, bytes]]]
Protector = Callable[[bytes | None, str, int, int], Protected]


def dead_letter_aad(topic: str, partition: int, offset: int) -> bytes:
    return f"dead-letter\x1f{topic}\x1f{partition}\x1f{offset}".encode()


def encrypting(ring: KeyRing) -> Protector:
    def protect(value: bytes | None, topic: str, partition: int, offset: int) -> Protected:
        if value is None:
            return None, []
        token = encrypt(ring, value, dead_letter_aad(topic, partition, offset))
        return token, [(PROTECTION_HEADER, f"aes-256-gcm;key={token_key_id(token)}".encode())]

    return protect


def redacting(value: bytes | None, topic: str, partition: int, offset: int) -> Protected:
    if value is None:
        return None, []
    return None, [(PROTECTION_HEADER, b"redacted"), (ORIGINAL_BYTES_HEADER, str(len(value)).encode())]


def reveal_dead_letter(ring: KeyRing, value: bytes, headers: Mapping[str, bytes | None]) -> bytes:
    """The original payload of an encrypted dead letter (its source coordinates are in its headers)."""
    protection = (headers.get(PROTECTION_HEADER) or b"").decode()
    if not protection.startswith("aes-256-gcm"):
        raise ValueError(f"this dead letter's payload is not encrypted (protection: {protection or 'none'})")
    aad = dead_letter_aad(
        _coordinate(headers, "x-smartico-source-topic").decode(),
        int(_coordinate(headers, "x-smartico-source-partition")),
        int(_coordinate(headers, "x-smartico-source-offset")),
    )
    return decrypt(ring, value, aad)


def _coordinate(headers: Mapping[str, bytes | None], name: str) -> bytes:
    value = headers[name]
    if value is None:
        raise ValueError(f"this dead letter's {name} header has no value")
    return value
