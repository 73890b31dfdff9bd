"""Custom contact fields through the live service (embedded Kafka, SQLite state and vault, a key
ring, ``pii.custom_fields``): the state store's bytes hold none of them, the user's state keeps the
markers, and ``pii reveal`` / ``pii find`` work on ``custom.<field>`` through the CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import yaml

from smartico_stream.pii import generate_key_ring, key_ring_to_json
from smartico_stream.service import Service
from tests.pii.test_pii_end_to_end import assert_no_plaintext, cli, files_in

pytestmark = pytest.mark.kafka

BASE_MS = 1_700_000_000_000
EMAIL = "Jane.Custom@Example.com"
MOBILE = "07911123456"  # bare digits: found only because the field is listed
ALT_PHONE = "+49 170 5550123"  # found by its shape


def test_custom_contact_fields_are_encrypted_into_the_vault_and_findable(
    make_settings, producer, run_service, tmp_path: Path
) -> None:
    keys = tmp_path / "keys" / "pii-keys.json"
    keys.parent.mkdir()
    keys.write_bytes(key_ring_to_json(generate_key_ring("k1")))
    keys.chmod(0o600)
    pii = {"keys_file": str(keys), "store_url": f"sqlite:///{tmp_path / 'pii' / 'pii.db'}", "custom_fields": ["mobile"]}
    settings = make_settings(topics={"profile": ["user_profile"]}, pii=pii)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"pii": pii}))

    p = producer()
    p.ensure_topics("user_profile")
    message = {
        "dt_update": BASE_MS, "ext_brand_id": "b1", "user_ext_id": "c1", "user_country": "GB",
        "core_registration_date": BASE_MS - 86_400_000, "core_user_language": "EN", "core_wallet_currency": "EUR",
        "contact_email": EMAIL, "mobile": MOBILE, "alt_phone": ALT_PHONE, "vip": "gold",
    }
    p.send("user_profile", "c1", orjson.dumps(message))
    p.flush()
    service = Service(settings)

    async def scenario() -> dict[str, object]:
        async with run_service(service) as running:
            await running.wait_until(lambda: service.stats.processed >= 1, "the profile applied")
            (state,) = await service.store.all_users()
            return state.custom

    custom = asyncio.run(scenario())
    assert custom == {
        "contact_email": None, "has_contact_email": True,
        "mobile": None, "has_mobile": True,
        "alt_phone": None, "has_alt_phone": True,
        "vip": "gold",
    }
    needles = {EMAIL, EMAIL.lower(), MOBILE, "7911123456", "+447911123456", ALT_PHONE, "491705550123", "1705550123"}
    assert_no_plaintext(files_in(tmp_path, skip={"pii-keys.json", "config.yaml"}), needles)

    def reveal(field: str) -> str:
        done = cli("pii", "reveal", "-c", str(config), "--user", "b1:c1", "--field", field,
                   "--actor", "test", "--purpose", "custom field check")
        return done.stdout.decode().strip()

    assert reveal("custom.contact_email") == EMAIL.lower()
    assert reveal("custom.mobile") == "+447911123456"
    assert reveal("custom.alt_phone") == "+491705550123"

    def find(field: str, value: str, *country: str) -> str:
        done = cli("pii", "find", "-c", str(config), "--field", field, "--value", value, *country)
        return done.stdout.decode().strip()

    assert find("custom.contact_email", "  JANE.custom@example.COM ") == "b1:c1"
    assert find("custom.mobile", "07911 123456", "--country", "GB") == "b1:c1"
    assert find("custom.alt_phone", "+491705550123") == "b1:c1"
    assert find("custom.mobile", "+447911000000") == ""
