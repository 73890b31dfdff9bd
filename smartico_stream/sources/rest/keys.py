"""API keys: ``ssk_<key id>_<secret>``. The key id finds the stored row; only a SHA-256 of the
secret is stored (the secret is 256 random bits, so a slow password hash would add nothing but
latency to every request) and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "ssk_"
_SHAPE = re.compile(r"ssk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: ``token`` is shown once, ``key_hash`` is what the store keeps."""

    key_id: str
    token: str
    key_hash: str


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> NewKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id, f"{PREFIX}{key_id}_{secret}", secret_hash(secret))


def parse_token(token: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a well-formed key, else None."""
    match = _SHAPE.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def matches(secret: str, key_hash: str) -> bool:
    return hmac.compare_digest(secret_hash(secret), key_hash)
