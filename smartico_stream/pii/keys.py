"""Key material for PII encryption: the key ring, where it is loaded from, and rotation.

A :class:`KeyRing` holds every AES-256 key that may still be needed to *read* stored PII (by key
id), the id of the one key new writes use (``current``), and a separate HMAC key for the lookup
hashes (``hmac_key``).

On-disk / env-var format (JSON, keys base64-encoded)::

    {"current": "k2", "keys": {"k1": "<base64 of 32 bytes>", "k2": "..."}, "hmac_key": "<base64>"}

Rotation of the encryption keys:

1. ``add_key(ring, "k2")`` — a new random key becomes ``current``; old keys stay so old rows
   still decrypt. Deploy the new ring everywhere before anything writes with it.
2. Re-encrypt every stored token whose :func:`~smartico_stream.pii.crypto.token_key_id` is not
   ``ring.current`` with :func:`~smartico_stream.pii.crypto.reencrypt`.
3. Only then drop the old key from the ring file.

The HMAC key is deliberately *not* part of that rotation: lookup hashes are compared for equality
(cross-brand matching, "find user by email"), so changing it means re-hashing every stored row
from its decrypted plaintext in one migration. It must also differ from every encryption key.

Nothing in this module ever puts key bytes into an exception message or a ``repr``: key rings end
up in tracebacks and structured logs, and those are not a place for secrets.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "AES_KEY_BYTES",
    "MIN_HMAC_KEY_BYTES",
    "KeyRing",
    "PiiKeyError",
    "add_key",
    "generate_key_ring",
    "key_ring_to_json",
]

AES_KEY_BYTES = 32
"""AES-256: every encryption key is exactly this long."""

MIN_HMAC_KEY_BYTES = 32
"""HMAC-SHA256 keys shorter than the hash output would weaken the lookup hashes."""

_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_JSON_FIELDS = frozenset({"current", "keys", "hmac_key"})


class PiiKeyError(ValueError):
    """The key ring is missing, malformed or unsafe. Messages never contain key material."""


def _check_key_id(key_id: object, origin: str) -> str:
    if not isinstance(key_id, str) or _KEY_ID.fullmatch(key_id) is None:
        # Echo a bad id only when it is short: a long one may well be a key pasted in the wrong
        # place (base64 of 32 bytes is 44 characters), and key material never goes in a message.
        if isinstance(key_id, str) and len(key_id) <= 32:
            shown = repr(key_id)
        elif isinstance(key_id, str):
            shown = f"of {len(key_id)} characters"
        else:
            shown = f"of type {type(key_id).__name__}"
        raise PiiKeyError(
            f"{origin}: invalid key id {shown}; key ids are 1-32 characters of A-Z, a-z, 0-9, '_', '.', '-'"
        )
    return key_id


@dataclass(frozen=True, repr=False)
class KeyRing:
    """Encryption keys by id, the id new writes use, and the (separate) lookup-hash key.

    Construction validates everything, so a ``KeyRing`` that exists is usable:
    32-byte keys, valid ids, ``current`` present, an HMAC key of at least 32 bytes that is not
    also one of the encryption keys, and no two ids sharing the same key bytes.
    """

    keys: Mapping[str, bytes]
    current: str
    hmac_key: bytes

    def __post_init__(self) -> None:
        _validate(self.keys, self.current, self.hmac_key, "key ring")
        # Freeze the mapping: a frozen dataclass holding a caller's mutable dict is not frozen.
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    def __repr__(self) -> str:
        # Never the default dataclass repr: it would print every key.
        return f"KeyRing(current={self.current!r}, key_ids=[{self._ids()}])"

    def _ids(self) -> str:
        return _ids(self.keys)

    def key(self, key_id: str) -> bytes:
        """The AES key with this id; :class:`PiiKeyError` naming the id when the ring lacks it."""
        try:
            return self.keys[key_id]
        except KeyError:
            raise PiiKeyError(f"unknown key id {key_id!r}; the key ring has {self._ids()}") from None

    @classmethod
    def from_json(cls, raw: bytes | str, origin: str) -> KeyRing:
        """Parse the JSON key-ring format; ``origin`` (file path or env var name) prefixes every error."""
        try:
            doc: Any = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            # Only the position: the parser's message could quote the document.
            where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            raise PiiKeyError(f"{origin}: not valid JSON{where}") from None
        if not isinstance(doc, dict):
            raise PiiKeyError(f"{origin}: expected a JSON object with 'current', 'keys' and 'hmac_key'")
        missing = sorted(_JSON_FIELDS - doc.keys())
        if missing:
            raise PiiKeyError(f"{origin}: missing field(s) {', '.join(missing)}")
        unknown = sorted(str(name)[:40] for name in doc.keys() - _JSON_FIELDS)
        if unknown:
            # Most likely a typo (e.g. "hmac"); silently ignoring it could hide a missing key.
            raise PiiKeyError(f"{origin}: unknown field(s) {', '.join(unknown)}")

        current = doc["current"]
        if not isinstance(current, str):
            raise PiiKeyError(f"{origin}: 'current' must be a key id string")
        raw_keys = doc["keys"]
        if not isinstance(raw_keys, dict) or not raw_keys:
            raise PiiKeyError(f"{origin}: 'keys' must be a non-empty object of key id -> base64 key")
        keys = {
            key_id: _b64(encoded, origin, f"key {_check_key_id(key_id, origin)!r}")
            for key_id, encoded in raw_keys.items()
        }
        hmac_key = _b64(doc["hmac_key"], origin, "hmac_key")
        _validate(keys, current, hmac_key, origin)
        return cls(keys=keys, current=current, hmac_key=hmac_key)

    @classmethod
    def load(cls, file: Path | None, env_var: str | None, environ: Mapping[str, str] = os.environ) -> KeyRing:
        """Load the key ring from exactly one of ``file`` or the environment variable ``env_var``.

        A file readable or writable by group or others is refused (with the ``chmod`` to run):
        the key ring is the one secret that makes the encrypted PII store worth anything.
        """
        if file is None and env_var is not None:
            value = environ.get(env_var)
            if value is None or not value.strip():
                raise PiiKeyError(f"environment variable {env_var} (PII key ring) is not set or empty")
            return cls.from_json(value, origin=f"environment variable {env_var}")
        if file is None or env_var is not None:
            raise PiiKeyError("give exactly one PII key ring source: a key file or an environment variable")

        path = Path(file)
        try:
            # Check the mode on the opened descriptor, not the path, so a swap between the check
            # and the read cannot slip a different file past the check.
            with open(path, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise PiiKeyError(f"{path}: PII key ring must be a regular file")
                if os.name == "posix" and info.st_mode & 0o077:
                    raise PiiKeyError(
                        f"{path}: PII key ring is accessible by group/others "
                        f"(mode {stat.filemode(info.st_mode)}); run: chmod 600 {path}"
                    )
                raw = handle.read()
        except FileNotFoundError:
            raise PiiKeyError(f"{path}: PII key ring file does not exist") from None
        except IsADirectoryError:
            raise PiiKeyError(f"{path}: PII key ring must be a regular file") from None
        except PermissionError:
            raise PiiKeyError(f"{path}: PII key ring file is not readable by this process") from None
        return cls.from_json(raw, origin=str(path))


def _ids(keys: Mapping[str, bytes]) -> str:
    return ", ".join(sorted(keys))


def _size(value: object) -> str:
    return f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__


def _validate(keys: Mapping[str, bytes], current: object, hmac_key: object, origin: str) -> None:
    """Every rule a usable ring obeys; errors start with ``origin`` and name ids, never key bytes."""
    if not isinstance(keys, Mapping) or not keys:
        raise PiiKeyError(f"{origin}: the key ring has no encryption keys")
    seen: dict[bytes, str] = {}
    for key_id, key in keys.items():
        _check_key_id(key_id, origin)
        if not isinstance(key, bytes) or len(key) != AES_KEY_BYTES:
            raise PiiKeyError(f"{origin}: key {key_id!r} must be {AES_KEY_BYTES} bytes (AES-256), got {_size(key)}")
        if key in seen:
            # Same bytes under two ids would make token_key_id() misreport what a rotation did.
            raise PiiKeyError(f"{origin}: keys {seen[key]!r} and {key_id!r} hold the same key")
        seen[key] = key_id
    _check_key_id(current, origin)
    if current not in keys:
        raise PiiKeyError(f"{origin}: current key id {current!r} is not in the key ring (it has {_ids(keys)})")
    if not isinstance(hmac_key, bytes) or len(hmac_key) < MIN_HMAC_KEY_BYTES:
        raise PiiKeyError(f"{origin}: hmac_key must be at least {MIN_HMAC_KEY_BYTES} bytes, got {_size(hmac_key)}")
    if hmac_key in seen:
        raise PiiKeyError(f"{origin}: hmac_key must differ from the encryption keys (it equals key {seen[hmac_key]!r})")


def _b64(value: object, origin: str, what: str) -> bytes:
    if not isinstance(value, str):
        raise PiiKeyError(f"{origin}: {what} must be a base64 string")
    try:
        # validate=True: stray characters are an error, not silently skipped (which would
        # turn a corrupted key into a different, shorter one).
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PiiKeyError(f"{origin}: {what} is not valid base64") from None


def generate_key_ring(key_id: str = "k1") -> KeyRing:
    """A fresh ring with one random encryption key (``key_id``, current) and a random HMAC key."""
    _check_key_id(key_id, "generate_key_ring")
    return KeyRing(keys={key_id: os.urandom(AES_KEY_BYTES)}, current=key_id, hmac_key=os.urandom(MIN_HMAC_KEY_BYTES))


def add_key(ring: KeyRing, key_id: str) -> KeyRing:
    """Rotation step 1: a copy of ``ring`` with a new random key ``key_id`` that becomes current.

    Old keys stay (old tokens must keep decrypting until re-encrypted); the HMAC key is unchanged.
    """
    _check_key_id(key_id, "add_key")
    if key_id in ring.keys:
        raise PiiKeyError(f"add_key: key id {key_id!r} is already in the key ring; pick a new id")
    return KeyRing(keys={**ring.keys, key_id: os.urandom(AES_KEY_BYTES)}, current=key_id, hmac_key=ring.hmac_key)


def key_ring_to_json(ring: KeyRing) -> bytes:
    """Serialise ``ring`` to the format :meth:`KeyRing.from_json` reads (UTF-8, trailing newline)."""
    doc = {
        "current": ring.current,
        "keys": {key_id: base64.b64encode(ring.keys[key_id]).decode("ascii") for key_id in sorted(ring.keys)},
        "hmac_key": base64.b64encode(ring.hmac_key).decode("ascii"),
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")
