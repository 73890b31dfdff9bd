"""PII work only when PII changes, through the live service (embedded Kafka, a key ring, the state
store and the PII vault both on SQLite, then both on PostgreSQL): a profile update that repeats the
user's email, phone and name rewrites no vault row; one that changes the email rewrites that row only.

A vault write is an upsert (one row per brand, user and field), so the rows are counted by what
changed in them: every write stores a fresh ciphertext (a random nonce) and a new ``updated_at``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from smartico_stream.pii import generate_key_ring, key_ring_to_json
from smartico_stream.pii.vault import PiiVault
from smartico_stream.service import Service

pytestmark = pytest.mark.kafka

BASE_MS = 1_700_000_000_000
USER = "r1"


def profile(when: int, email: str, **extra: Any) -> bytes:
    return orjson.dumps({
        "dt_update": BASE_MS + when, "ext_brand_id": "b1", "user_ext_id": USER, "user_country": "GB",
        "core_registration_date": BASE_MS - 86_400_000, "core_user_language": "EN", "core_wallet_currency": "EUR",
        "user_email": email, "user_phone": "07400 123456", "user_first_name": "Ann", **extra,
    })


async def rows(vault: PiiVault) -> dict[str, tuple[bytes, str]]:
    """field -> (ciphertext, updated_at) of the user's rows."""
    async with vault.db.connection() as conn:
        found = await conn.fetch("SELECT field, token, updated_at FROM pii_values WHERE brand = ? AND user_id = ?",
                                 "b1", USER)
    return {field: (bytes(token), str(updated)) for field, token, updated in found}


def rewritten(before: dict[str, tuple[bytes, str]], after: dict[str, tuple[bytes, str]]) -> list[str]:
    assert set(before) == set(after)
    return sorted(field for field in after if after[field] != before[field])


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_an_unchanged_profile_update_writes_no_vault_row_and_a_changed_one_does(
    store_kind, make_settings, producer, run_service, request, tmp_path: Path
) -> None:
    keys = tmp_path / "pii-keys.json"
    keys.write_bytes(key_ring_to_json(generate_key_ring("k1")))
    keys.chmod(0o600)
    if store_kind == "postgres":
        schema = request.getfixturevalue("postgres_schema")
        store = {"url": schema.dsn, "db_schema": schema.schema}
        pii = {"keys_file": str(keys), "store_url": schema.dsn, "store_db_schema": schema.schema + "_pii"}
        request.addfinalizer(lambda: _drop(schema.schema + "_pii", schema.dsn))
    else:
        store = {"url": f"sqlite:///{tmp_path / 'state.db'}"}
        pii = {"keys_file": str(keys), "store_url": f"sqlite:///{tmp_path / 'pii.db'}"}
    settings = make_settings(topics={"profile": ["user_profile"]}, store=store, pii=pii)
    p = producer()
    p.ensure_topics("user_profile")
    service = Service(settings)

    async def scenario() -> tuple[list[str], list[str], Any]:
        async with run_service(service) as running:
            vault = service.pii.vault
            assert vault is not None

            async def handled(n: int, message: bytes) -> dict[str, tuple[bytes, str]]:
                p.send("user_profile", USER, message)
                p.flush()
                await running.wait_until(lambda: service.stats.processed >= n, f"profile {n} applied")
                return await rows(vault)

            first = await handled(1, profile(1, "Ann@Example.test"))
            assert sorted(first) == ["email", "first_name", "phone"]
            # Same contact data (the email only in another case), a new language: not a duplicate.
            repeat = await handled(2, profile(2, " ann@example.TEST", core_user_language="DE"))
            changed = await handled(3, profile(3, "new@example.test"))
            (state,) = await service.store.all_users()
            return rewritten(first, repeat), rewritten(repeat, changed), state

    unchanged_rows, changed_rows, state = asyncio.run(scenario())
    assert unchanged_rows == []
    assert changed_rows == ["email"]
    assert service.pii.guard.skipped == 3 + 2  # all three fields, then phone and name
    assert (state.has_email, state.has_phone, state.phone_valid) == (True, True, True)


def _drop(schema: str, dsn: str) -> None:
    from tests.support.postgres import drop_schema

    drop_schema(schema, dsn)
