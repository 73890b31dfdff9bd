"""Builds the PII components a service needs from its settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from smartico_stream.config import PiiSettings
from smartico_stream.observability.logging import get_logger
from smartico_stream.pii.guard import PiiGuard
from smartico_stream.pii.keys import KeyRing
from smartico_stream.pii.payloads import Protector, encrypting, redacting
from smartico_stream.pii.vault import PiiVault
from smartico_stream.store import open_database

log = get_logger(__name__)


def key_ring_for(settings: PiiSettings, environ: Mapping[str, str] | None = None) -> KeyRing | None:
    """The configured key ring: ``keys_file``, else the ``keys_env`` variable if set, else none."""
    environ = os.environ if environ is None else environ
    if settings.keys_file is not None:
        return KeyRing.load(settings.keys_file, None, environ)
    if environ.get(settings.keys_env):
        return KeyRing.load(None, settings.keys_env, environ)
    return None


@dataclass
class PiiComponents:
    ring: KeyRing | None
    guard: PiiGuard
    vault: PiiVault | None
    protect_dead_letters: Protector


def pii_components(settings: PiiSettings, environ: Mapping[str, str] | None = None) -> PiiComponents:
    ring = key_ring_for(settings, environ)
    if ring is None:
        log.warning(
            "no PII key ring configured: emails, phones and names are dropped on arrival (not stored) and "
            "dead-letter payloads are redacted; see docs/pii.md to keep them encrypted",
        )
    vault = PiiVault(
        open_database(settings.store_url, settings.store_db_schema, connect_timeout_s=settings.store_connect_timeout_s),
        ring,
    ) if ring else None
    protect = encrypting(ring) if ring is not None and settings.dead_letters == "encrypt" else redacting
    guard = PiiGuard(ring, settings.encrypt_names, settings.email_domain, settings.custom_fields,
                     memory_size=settings.unchanged_memory_users, phone_cache_size=settings.phone_cache_size)
    return PiiComponents(ring, guard, vault, protect)
