"""PII end to end: nothing the service writes, prints or publishes holds an email or phone in plaintext.

The data-integration promise: email, phone (and names where configured) are encrypted on arrival and
stored in an isolated database; phones are normalised with the user's country; nothing in the service
holds or prints them in plaintext. Each test runs the real thing and then looks at the raw bytes:

1. the ``demo`` (real service, embedded Kafka, synthetic stream) with ``--keep``: every file it
   leaves, its dead letters, its metrics, stdout and stderr;
2. ``simulate`` with and without a key ring;
3. key rotation through the ``pii`` CLI on the store ``simulate`` wrote;
4. dead letters of the live service: encrypted (and decryptable, audited, through the CLI) or redacted;
5. a key ring file others can read is refused;

plus two findings (see the docstrings of the last two tests).

Every subprocess and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import phonenumbers
import pytest

from smartico_stream.demo.runner import DEMO_MAX_MESSAGE_BYTES
from smartico_stream.demo.synthetic import RecordKind, StreamSpec, synthetic_stream
from smartico_stream.events.raw import Stream
from smartico_stream.pii import DecryptError, KeyRing, PiiKeyError, decrypt, key_ring_to_json
from smartico_stream.pii.normalise import normalise_email, normalise_phone
from smartico_stream.pii.payloads import ORIGINAL_BYTES_HEADER, PROTECTION_HEADER, reveal_dead_letter
from smartico_stream.pii.vault import PiiVault, value_aad
from smartico_stream.service import Service
from smartico_stream.store.sqlite import SqliteDatabase, SqliteStore
from tests.support.common import REPO

RULES = REPO / "smartico_stream" / "demo" / "rules.yaml"
_SCRIPT = Path(sys.executable).with_name("smartico-stream")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "smartico_stream.cli"]
BASE_MS = 1_700_000_000_000
DEMO_EVENTS, DEMO_USERS = 4000, 400


# -- helpers ----------------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any SMARTICO_STREAM_* setting (a developer's shell must not leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SMARTICO_STREAM_")}
    env.update(extra)
    return env


def cli(*args: str, timeout_s: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run([*CLI, *args], capture_output=True, timeout=timeout_s, env=clean_env(), cwd=REPO)
    if check:
        assert done.returncode == 0, (
            f"smartico-stream {' '.join(args)} exited {done.returncode}\n"
            f"stdout: {done.stdout.decode(errors='replace')[-2000:]}\n"
            f"stderr: {done.stderr.decode(errors='replace')[-2000:]}"
        )
    return done


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def email_needles(raw: str) -> set[str]:
    return {raw, raw.strip(), raw.strip().lower()}


def phone_needles(raw: str, country: str | None) -> set[str]:
    """Every plaintext form of a phone: as sent, trimmed, its digits, E.164, E.164 digits, and the
    national significant number."""
    needles = {raw, raw.strip(), digits(raw)}
    e164 = normalise_phone(raw, country).e164
    if e164:
        needles |= {e164, e164[1:], phonenumbers.national_significant_number(phonenumbers.parse(e164))}
    # Short fragments ("12") would match unrelated bytes; every real number is longer than this.
    return {n for n in needles if len(n.strip()) >= 7}


def files_in(directory: Path, *, skip: Iterable[str] = ()) -> dict[str, bytes]:
    """Raw bytes of every file under ``directory`` (SQLite -wal/-shm included), by relative name."""
    skipped = set(skip)
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name not in skipped
    }


def _trie_pattern(words: Iterable[bytes]) -> re.Pattern[bytes]:
    """One regex matching any of ``words``, factored as a trie: thousands of needles over megabytes
    in a fraction of a second (a plain alternation or one ``find`` per needle takes seconds)."""
    end = -1
    trie: dict[int, Any] = {}
    for word in words:
        node = trie
        for byte in word:
            node = node.setdefault(byte, {})
        node[end] = {}

    def build(node: dict[int, Any]) -> bytes:
        branches = [re.escape(bytes([byte])) + build(child) for byte, child in sorted(node.items()) if byte != end]
        if not branches:
            return b""
        body = branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"
        return b"(?:" + body + b")?" if end in node else body

    return re.compile(build(trie))


def find_plaintext(blobs: Mapping[str, bytes], needles: Iterable[str], limit: int = 20) -> list[str]:
    """Where any needle occurs in any blob, case-insensitively, with some context: the failure message."""
    pattern = _trie_pattern({needle.lower().encode("utf-8") for needle in needles})
    hits = []
    for name, blob in blobs.items():
        for match in pattern.finditer(blob.lower()):
            start, stop = match.span()
            hits.append(f"{match.group().decode(errors='replace')!r} in {name}: "
                        f"...{blob[max(0, start - 80):stop + 80]!r}...")
            if len(hits) >= limit:
                return hits
    return hits


def assert_no_plaintext(blobs: Mapping[str, bytes], needles: Iterable[str]) -> None:
    needles = set(needles)
    assert needles, "nothing to look for"
    assert blobs, "nothing to look in"
    hits = find_plaintext(blobs, needles)
    assert not hits, "plaintext PII found:\n" + "\n".join(hits)


def test_the_plaintext_scanner_finds_what_it_looks_for() -> None:
    # The scans below pass by finding nothing, so the scanner itself must be shown to find things.
    needles = {"user1@example.test", "user12@example.test", "+4915123456789", "4915123456789", "Müller", "0151 2345"}
    blobs = {
        "binary": b"\x00\xff" * 100 + b"USER12@Example.TEST" + b"\x01" * 10,
        "text": "name=Müller".encode(),
        "digits": b"tel:004915123456789;",
        "clean": b"user2@example.test +4915123456780 0151-2345",
    }
    hits = find_plaintext(blobs, needles)
    assert [h.split(" in ")[1].split(":")[0] for h in hits] == ["binary", "text", "digits"], hits
    assert find_plaintext({"clean": blobs["clean"]}, needles) == []


def run_async(coroutine: Any, timeout_s: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, timeout_s)

    return asyncio.run(bounded())


async def with_vault(path: Path, ring: KeyRing, work: Any) -> Any:
    vault = PiiVault(SqliteDatabase(path), ring)
    await vault.open()
    try:
        return await work(vault)
    finally:
        await vault.close()


def vault_rows(path: Path) -> list[tuple[str, str, str, bytes, str, int]]:
    async def read(vault: PiiVault) -> list[tuple[Any, ...]]:
        async with vault.db.connection() as conn:
            return await conn.fetch(
                "SELECT brand, user_id, field, token, key_id, valid FROM pii_values ORDER BY brand, user_id, field"
            )

    # Any ring opens the database; the rows are read, not decrypted.
    return [(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in run_async(with_vault(path, _any_ring(), read))]


def _any_ring() -> KeyRing:
    from smartico_stream.pii import generate_key_ring

    return generate_key_ring("any")


def load_states(path: Path, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    async def load() -> dict[tuple[str, str], Any]:
        store = SqliteStore(path)
        await store.open()
        try:
            return await store.load_users(keys)
        finally:
            await store.close()

    return run_async(load())


def write_private(path: Path, content: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    return path


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def envelope(stream: str, key: str, value: Mapping[str, Any]) -> bytes:
    return orjson.dumps({"stream": stream, "key": key, "value": value})


# -- 1. the demo ------------------------------------------------------------------------------------


@dataclass
class DemoRun:
    directory: Path
    stdout: bytes
    stderr: bytes
    summary: dict[str, Any]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    directory = tmp_path_factory.mktemp("demo") / "kept"
    done = cli(
        "demo", "--events", str(DEMO_EVENTS), "--users", str(DEMO_USERS), "--json", "--metrics-port", "0",
        "--keep", str(directory), timeout_s=120,
    )
    return DemoRun(directory, done.stdout, done.stderr, orjson.loads(done.stdout.splitlines()[-1]))


@dataclass
class SyntheticPii:
    needles: set[str]
    # (brand, user) -> (normalised email, normalised phone) of users with an OK profile
    users: dict[tuple[str, str], tuple[str, str]]
    malformed_values: list[bytes]


def synthetic_pii() -> SyntheticPii:
    """Rebuild the demo's stream: every email/phone in every plaintext form, and the malformed records."""
    spec = StreamSpec(users=DEMO_USERS, events=DEMO_EVENTS, oversized_bytes=DEMO_MAX_MESSAGE_BYTES + 4096)
    needles: set[str] = set()
    users: dict[tuple[str, str], tuple[str, str]] = {}
    malformed = []
    for record in synthetic_stream(spec):
        if record.kind is RecordKind.MALFORMED:
            malformed.append(record.value)
        if record.stream is not Stream.PROFILE:
            continue
        try:
            message = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            continue  # the invalid_utf8 defect: a registered user, whose values come from its OK profile
        email, phone, country = message["user_email"], message["user_phone"], message.get("user_country")
        needles |= email_needles(email) | phone_needles(phone, country)
        if record.kind is RecordKind.OK:
            normalised_phone = normalise_phone(phone, country).e164 or phone.strip()
            users[(message["ext_brand_id"], str(message["user_ext_id"]))] = (normalise_email(email), normalised_phone)
    return SyntheticPii(needles, users, malformed)


@pytest.mark.kafka
def test_demo_leaves_no_plaintext_email_or_phone_anywhere(demo: DemoRun) -> None:
    pii = synthetic_pii()
    assert len(pii.users) > 50 and len(pii.needles) > 4 * len(pii.users)
    assert demo.summary["consumed"] == DEMO_EVENTS
    assert demo.summary["dead_lettered"] == len(pii.malformed_values) > 0

    files = files_in(demo.directory, skip={"pii-keys.json"})
    expected = {"state.db", "pii.db", "actions.jsonl", "dead-letters.jsonl", "metrics.txt"}
    assert expected <= set(files), sorted(files)
    blobs = {**files, "stdout": demo.stdout, "stderr": demo.stderr}
    for number, line in enumerate((demo.directory / "dead-letters.jsonl").read_bytes().splitlines()):
        blobs[f"dead letter #{number} (value, hex-decoded)"] = bytes.fromhex(orjson.loads(line)["value"])
    assert_no_plaintext(blobs, pii.needles)


@pytest.mark.kafka
def test_demo_pii_store_holds_encrypted_values_that_reveal_with_an_audit_row(demo: DemoRun) -> None:
    pii = synthetic_pii()
    ring = KeyRing.load(demo.directory / "pii-keys.json", None)
    pii_db = demo.directory / "pii.db"

    rows = vault_rows(pii_db)
    # Every user with a profile: email, phone, first and last name, all under the demo's key.
    assert {(brand, user) for brand, user, *_ in rows} == set(pii.users)
    assert len(rows) == 4 * len(pii.users)
    assert {key_id for *_, key_id, _ in rows} == {ring.current}

    (brand, user), (email, phone) = next(iter(pii.users.items()))

    async def work(vault: PiiVault) -> tuple[Any, ...]:
        revealed = (
            await vault.reveal(brand, user, "email", actor="pii-test", purpose="demo check"),
            await vault.reveal(brand, user, "phone", actor="pii-test", purpose="demo check"),
        )
        return revealed, await vault.find("email", email), await vault.key_usage(), await vault.audit_log()

    (revealed_email, revealed_phone), found, usage, audit = run_async(with_vault(pii_db, ring, work))
    assert (revealed_email, revealed_phone) == (email, phone)
    assert found == [(brand, user)]
    assert usage == {ring.current: len(rows)}
    assert [(a["actor"], a["purpose"], a["action"], a["brand"], a["user"], a["field"]) for a in audit] == [
        ("pii-test", "demo check", "reveal", brand, user, "email"),
        ("pii-test", "demo check", "reveal", brand, user, "phone"),
    ]


@pytest.mark.kafka
def test_demo_dead_letters_are_encrypted_and_decrypt_to_the_original_records(demo: DemoRun) -> None:
    pii = synthetic_pii()
    ring = KeyRing.load(demo.directory / "pii-keys.json", None)
    rows = [orjson.loads(line) for line in (demo.directory / "dead-letters.jsonl").read_bytes().splitlines()]
    assert len(rows) == len(pii.malformed_values)

    decrypted = []
    for row in rows:
        headers = {name: value.encode() for name, value in row["headers"].items()}
        assert headers[PROTECTION_HEADER].startswith(b"aes-256-gcm"), row["headers"]
        assert headers[PROTECTION_HEADER] == f"aes-256-gcm;key={ring.current}".encode()
        value = bytes.fromhex(row["value"])
        assert not value.startswith(b"{") and not value.startswith(b"[")
        decrypted.append(reveal_dead_letter(ring, value, headers))
    assert sorted(decrypted) == sorted(pii.malformed_values)
    # Some of them are profiles: the encryption really hid an address (the scan found none).
    assert any(re.search(rb"user\d+@example\.test", d) for d in decrypted)


# -- 2. simulate -------------------------------------------------------------------------------------

# brand, user, country, email as sent, phone as sent, normalised phone
SIM_USERS = [
    ("b1", "s1", "DE", " Jane.Doe@Example.COM ", "0151 23456789", "+4915123456789"),
    ("b1", "s2", "FR", "MiXeD.Case@Example.Org  ", "06 12 34 56 78", "+33612345678"),
    ("b1", "s3", "US", "  Sam.Smith@example.NET", "(201) 555-0123", "+12015550123"),
    ("b2", "s4", "GB", "jane.doe@example.com", "07400 123456", "+447400123456"),
    ("b2", "s5", "BR", "Joao.Silva@Example.com.br", "(11) 96123-4567", "+5511961234567"),
    ("b2", "s6", "ES", "Ana.Lopez@Example.es", "612 34 56 78", "+34612345678"),
    ("b1", "s7", "DE", "Garbage.Phone@Example.de", "ring me maybe", "ring me maybe"),
]
SIM_NAMES = {"s1": ("Zebulon", "Quackenbush"), "s4": ("Philippa", "Throckmorton")}


def sim_records() -> list[bytes]:
    lines = []
    for n, (brand, user, country, email, phone, _) in enumerate(SIM_USERS):
        first, last = SIM_NAMES.get(user, (None, None))
        value = {
            "dt_update": BASE_MS + n, "ext_brand_id": brand, "user_ext_id": user,
            "core_registration_date": BASE_MS - 86_400_000, "core_user_language": "EN",
            "core_wallet_currency": "EUR", "user_country": country, "user_email": email, "user_phone": phone,
        }
        if first:
            value |= {"user_first_name": first, "user_last_name": last}
        lines.append(envelope("profile", user, value))
        for k in range(2):
            lines.append(envelope("payments", user, {
                "dt_finalized": BASE_MS + 1000 + 10 * n + k, "ext_brand_id": brand, "user_ext_id": user,
                "transaction_id": f"dep-{user}-{k}", "type": "deposit", "amount": "50.00",
                "core_wallet_currency": "EUR",
            }))
    return lines


def sim_needles() -> set[str]:
    needles = set()
    for _, _, country, email, phone, _ in SIM_USERS:
        needles |= email_needles(email) | phone_needles(phone, country)
    for first, last in SIM_NAMES.values():
        needles |= {first, last}
    return needles


def sim_expected() -> dict[tuple[str, str, str], str]:
    """(brand, user, field) -> the value the vault must reveal."""
    expected = {}
    for brand, user, _, email, _, phone in SIM_USERS:
        expected[(brand, user, "email")] = email.strip().lower()
        expected[(brand, user, "phone")] = phone
        if user in SIM_NAMES:
            expected[(brand, user, "first_name")], expected[(brand, user, "last_name")] = SIM_NAMES[user]
    return expected


@dataclass
class Simulated:
    directory: Path
    events: Path
    keys: Path
    state: Path
    pii_state: Path
    run: subprocess.CompletedProcess[bytes]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Simulated:
    directory = tmp_path_factory.mktemp("simulate")
    events = directory / "events.jsonl"
    events.write_bytes(b"\n".join(sim_records()) + b"\n")
    keys = directory / "pii-keys.json"
    cli("pii", "keygen", "--out", str(keys))
    state, pii_state = directory / "state.db", directory / "pii.db"
    run = cli("simulate", "--rules", str(RULES), "--events", str(events), "--state", str(state),
              "--pii-keys", str(keys), "--pii-state", str(pii_state))
    return Simulated(directory, events, keys, state, pii_state, run)


def test_simulate_with_a_key_ring_stores_only_ciphertext(simulated: Simulated) -> None:
    assert stat.S_IMODE(simulated.keys.stat().st_mode) == 0o600  # keygen writes it private
    assert simulated.run.stdout.strip(), "the sample rules should produce actions for the deposits"
    assert b"records 21, processed 21" in simulated.run.stderr

    stores = {
        name: blob for name, blob in files_in(simulated.directory).items()
        if name.startswith(("state.db", "pii.db"))
    }
    assert {"state.db", "pii.db"} <= set(stores)
    assert_no_plaintext({**stores, "stdout": simulated.run.stdout, "stderr": simulated.run.stderr}, sim_needles())

    ring = KeyRing.load(simulated.keys, None)
    expected = sim_expected()

    async def work(vault: PiiVault) -> tuple[Any, ...]:
        revealed = {k: await vault.reveal(*k, actor="pii-test", purpose="simulate check") for k in expected}
        return revealed, await vault.find("email", "jane.doe@example.com"), await vault.key_usage()

    revealed, found, usage = run_async(with_vault(simulated.pii_state, ring, work))
    assert revealed == expected
    assert found == [("b1", "s1"), ("b2", "s4")]  # one person on two brands
    assert usage == {"k1": len(expected)}
    validity = {(b, u, f): v for b, u, f, _, _, v in vault_rows(simulated.pii_state)}
    assert validity[("b1", "s7", "phone")] == 0 and validity[("b1", "s1", "phone")] == 1

    states = load_states(simulated.state, [(b, u) for b, u, *_ in SIM_USERS])
    for brand, user, country, *_ in SIM_USERS:
        state = states[(brand, user)]
        assert state.has_email is True and state.has_phone is True, user
        assert state.phone_valid is (user != "s7"), user
        assert state.country == country
        assert state.deposit_count == 2


def test_simulate_without_a_key_ring_stores_no_pii_at_all(simulated: Simulated, tmp_path: Path) -> None:
    # A PII store without keys is refused, not created.
    refused_store = tmp_path / "pii-no-keys.db"
    refused = cli("simulate", "--rules", str(RULES), "--events", str(simulated.events),
                  "--pii-state", str(refused_store), check=False)
    assert refused.returncode == 2
    assert b"--pii-state needs --pii-keys" in refused.stderr
    assert not refused_store.exists()

    state = tmp_path / "state.db"
    run = cli("simulate", "--rules", str(RULES), "--events", str(simulated.events), "--state", str(state))
    assert b"records 21, processed 21" in run.stderr
    assert run.stdout == simulated.run.stdout  # the PII path changes nothing for the rules
    assert sorted(p.name for p in tmp_path.iterdir() if "pii" in p.name) == []
    assert_no_plaintext({**files_in(tmp_path), "stdout": run.stdout, "stderr": run.stderr}, sim_needles())

    states = load_states(state, [(b, u) for b, u, *_ in SIM_USERS])
    for brand, user, *_ in SIM_USERS:
        assert states[(brand, user)].has_email is True and states[(brand, user)].has_phone is True
        assert states[(brand, user)].phone_valid is (user != "s7")


# -- 3. rotation through the CLI --------------------------------------------------------------------


def key_usage(config: Path) -> dict[str, int]:
    out = cli("pii", "key-usage", "-c", str(config)).stdout.decode()
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.strip()}


def test_key_rotation_round_trip_through_the_cli(simulated: Simulated, tmp_path: Path) -> None:
    keys = tmp_path / "pii-keys.json"
    shutil.copy(simulated.keys, keys)  # copies the 0600 mode too
    pii_db = tmp_path / "pii.db"
    for name in os.listdir(simulated.directory):
        if name.startswith("pii.db"):
            shutil.copy(simulated.directory / name, tmp_path / name)
    config = write_config(tmp_path / "config.yaml", {"pii": {"keys_file": str(keys), "store_url": f"sqlite:///{pii_db}"}})
    expected = sim_expected()
    old_ring = KeyRing.load(keys, None)

    assert key_usage(config) == {"k1": len(expected)}

    added = cli("pii", "add-key", "--keys", str(keys), "--key-id", "k2")
    assert b"k2 is now the current key" in added.stdout
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    ring = KeyRing.load(keys, None)
    assert ring.current == "k2" and set(ring.keys) == {"k1", "k2"}
    assert ring.keys["k1"] == old_ring.keys["k1"] and ring.hmac_key == old_ring.hmac_key
    assert key_usage(config) == {"k1": len(expected)}  # adding a key re-encrypts nothing

    rotated = cli("pii", "rotate", "-c", str(config))
    assert f"re-encrypted {len(expected)} value(s)".encode() in rotated.stdout
    assert key_usage(config) == {"k2": len(expected)}
    assert cli("pii", "rotate", "-c", str(config)).stdout.startswith(b"re-encrypted 0 value(s)")

    revealed = cli("pii", "reveal", "-c", str(config), "--user", "b1:s1", "--field", "email",
                   "--actor", "support-7", "--purpose", "ticket 4711")
    assert revealed.stdout.decode().strip() == "jane.doe@example.com"
    missing = cli("pii", "reveal", "-c", str(config), "--user", "b1:nobody", "--field", "email",
                  "--actor", "support-7", "--purpose", "ticket 4711", check=False)
    assert missing.returncode == 1 and b"no email stored for b1:nobody" in missing.stderr

    # k1 can be retired: a ring holding only k2 reads every row; the old ring reads none of them.
    k2_only = KeyRing(keys={"k2": ring.keys["k2"]}, current="k2", hmac_key=ring.hmac_key)
    rows = vault_rows(pii_db)
    assert len(rows) == len(expected)
    for brand, user, field, token, key_id, _ in rows:
        assert key_id == "k2"
        aad = value_aad(brand, user, field)
        assert decrypt(k2_only, token, aad).decode() == expected[(brand, user, field)]
        with pytest.raises(DecryptError):
            decrypt(old_ring, token, aad)
    k2_keys = write_private(tmp_path / "k2-only.json", key_ring_to_json(k2_only))
    k2_config = write_config(tmp_path / "k2.yaml", {"pii": {"keys_file": str(k2_keys), "store_url": f"sqlite:///{pii_db}"}})
    phone = cli("pii", "reveal", "-c", str(k2_config), "--user", "b2:s5", "--field", "phone",
                "--actor", "support-7", "--purpose", "ticket 4712")
    assert phone.stdout.decode().strip() == "+5511961234567"

    found = cli("pii", "find", "-c", str(k2_config), "--field", "email", "--value", " Jane.Doe@Example.COM ")
    assert found.stdout.decode().split() == ["b1:s1", "b2:s4"]
    found_phone = cli("pii", "find", "-c", str(config), "--field", "phone", "--value", "+49 151 2345 6789")
    assert found_phone.stdout.decode().split() == ["b1:s1"]
    found_national = cli("pii", "find", "-c", str(config), "--field", "phone", "--value", "07400 123456",
                         "--country", "GB")
    assert found_national.stdout.decode().split() == ["b2:s4"]

    audit = run_async(with_vault(pii_db, ring, lambda vault: vault.audit_log()))
    reveals = [(a["actor"], a["purpose"], a["brand"], a["user"], a["field"]) for a in audit if a["action"] == "reveal"]
    assert ("support-7", "ticket 4711", "b1", "s1", "email") in reveals
    assert ("support-7", "ticket 4711", "b1", "nobody", "email") in reveals  # a miss is audited too
    assert ("support-7", "ticket 4712", "b2", "s5", "phone") in reveals
    # Nothing the CLI printed along the way holds more than what was asked for.
    assert_no_plaintext({"pii.db": pii_db.read_bytes()}, sim_needles())


# -- 4. dead letters of the live service -------------------------------------------------------------

DL_EMAIL = "Dead.Letter.Person@Example.test"
DL_PHONE = "0170 5550123"
DL_PHONE_E164 = "+491705550123"


def dl_profile(user: str, **changes: Any) -> dict[str, Any]:
    # PII first, so that a record cut in half still carries it.
    message = {
        "user_email": DL_EMAIL, "user_phone": DL_PHONE, "user_first_name": "Zebulon", "user_last_name": "Quackenbush",
        "dt_update": BASE_MS, "ext_brand_id": "b1", "user_ext_id": user, "user_country": "DE",
        "core_registration_date": BASE_MS - 86_400_000, "core_user_language": "EN", "core_wallet_currency": "EUR",
    }
    message.update(changes)
    return {k: v for k, v in message.items() if v is not None}


DL_NEEDLES = email_needles(DL_EMAIL) | phone_needles(DL_PHONE, "DE") | {"Zebulon", "Quackenbush"}


def headers_of(message: Any) -> dict[str, bytes]:
    return dict(message.headers() or [])


@pytest.mark.kafka
def test_live_dead_letters_are_encrypted_revealed_by_the_cli_with_audit_or_redacted(
    kafka, make_settings, producer, run_service, broker, tmp_path: Path, capfd
) -> None:
    keys = tmp_path / "pii-keys.json"
    cli("pii", "keygen", "--out", str(keys))
    ring = KeyRing.load(keys, None)
    pii_db = tmp_path / "pii.db"
    p = producer()
    p.ensure_topics("user_profile", "user_profile_r")

    missing_field = orjson.dumps(dl_profile("dl-1", core_registration_date=None))
    whole = orjson.dumps(dl_profile("dl-2"))
    truncated = whole[: len(whole) // 2]
    assert DL_EMAIL.encode() in truncated and DL_PHONE.encode() in truncated
    good = orjson.dumps(dl_profile("dl-ok"))
    sent = {
        "missing_field": p.send("user_profile", "dl-1", missing_field),
        "good": p.send("user_profile", "dl-ok", good),
        "truncated": p.send("user_profile", "dl-2", truncated),
    }
    p.flush()

    encrypting = Service(make_settings(
        topics={"profile": ["user_profile"]},
        kafka={"dead_letter_topic": "dl-encrypted"},
        pii={"keys_file": str(keys), "store_url": f"sqlite:///{pii_db}"},
    ))

    async def consume(service: Service, total: int) -> None:
        async with run_service(service) as running:
            await running.wait_until(lambda: service.stats.consumed >= total, f"{total} records handled", 30)

    asyncio.run(consume(encrypting, 3))
    assert (encrypting.stats.processed, encrypting.stats.dead_lettered) == (1, 2)

    letters = broker.read_all("dl-encrypted", expected=2, timeout_s=20)
    assert len(letters) == 2
    originals = {(sent["missing_field"].partition, sent["missing_field"].offset): missing_field,
                 (sent["truncated"].partition, sent["truncated"].offset): truncated}
    for letter in letters:
        headers = headers_of(letter)
        assert headers[PROTECTION_HEADER].startswith(b"aes-256-gcm"), headers
        assert headers[PROTECTION_HEADER] == b"aes-256-gcm;key=k1"
        assert_no_plaintext({"value": letter.value(), "headers": b"\n".join(headers.values())}, DL_NEEDLES)
        source = (int(headers["x-smartico-source-partition"]), int(headers["x-smartico-source-offset"]))
        assert reveal_dead_letter(ring, letter.value(), headers) == originals[source]
    # The good profile's values went to the vault, encrypted.
    assert run_async(with_vault(pii_db, ring, lambda v: v.reveal("b1", "dl-ok", "phone", actor="t", purpose="t"))) \
        == DL_PHONE_E164

    # The CLI decrypts them for an operator, auditing first.
    config = {
        "kafka": {
            "config": {"bootstrap.servers": kafka.bootstrap_servers, "group.id": "dl-cli"},
            "topics": {"profile": ["user_profile"]},
            "dead_letter_topic": "dl-encrypted",
        },
        "pii": {"keys_file": str(keys), "store_url": f"sqlite:///{pii_db}"},
    }
    cfg = write_config(tmp_path / "config.yaml", config)
    shown = cli("pii", "decrypt-dead-letters", "-c", str(cfg), "--actor", "ops-anna", "--purpose", "INC-42",
                "--limit", "2", "--timeout-s", "10", timeout_s=60)
    rows = [orjson.loads(line) for line in shown.stdout.splitlines()]
    assert sorted(row["payload"].encode() for row in rows) == sorted(originals.values())
    assert {row["x-smartico-error-class"] for row in rows} == {"MissingField", "DecodeError"}
    audit = run_async(with_vault(pii_db, ring, lambda v: v.audit_log()))
    assert ("ops-anna", "INC-42", "decrypt up to 2 dead letter(s)") in [
        (a["actor"], a["purpose"], a["action"]) for a in audit
    ]

    # No audit, no decryption: with a PII store that cannot be opened nothing is revealed.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    broken = write_config(tmp_path / "broken.yaml", {
        **config, "pii": {"keys_file": str(keys), "store_url": f"sqlite:///{blocker / 'pii.db'}"}
    })
    refused = cli("pii", "decrypt-dead-letters", "-c", str(broken), "--actor", "ops-anna", "--purpose", "INC-43",
                  "--limit", "2", "--timeout-s", "5", timeout_s=60, check=False)
    assert refused.returncode != 0
    assert b"payload" not in refused.stdout
    assert_no_plaintext({"stdout": refused.stdout or b"-", "stderr": refused.stderr or b"-"}, DL_NEEDLES)

    # Redacted: no payload at all, only its size.
    redacted_sent = p.send("user_profile_r", "dl-3", missing_field)
    p.flush()
    redacting = Service(make_settings(
        topics={"profile": ["user_profile_r"]},
        kafka={"dead_letter_topic": "dl-redacted"},
        store={"url": f"sqlite:///{tmp_path / 'state-redact.db'}"},
        pii={"keys_file": str(keys), "store_url": f"sqlite:///{tmp_path / 'pii-redact.db'}", "dead_letters": "redact"},
    ))
    asyncio.run(consume(redacting, 1))
    (letter,) = broker.read_all("dl-redacted", expected=1, timeout_s=20)
    headers = headers_of(letter)
    assert not letter.value()
    assert headers[PROTECTION_HEADER] == b"redacted"
    assert headers[ORIGINAL_BYTES_HEADER] == str(len(missing_field)).encode()
    assert int(headers["x-smartico-source-offset"]) == redacted_sent.offset
    assert_no_plaintext({"headers": b"\n".join(headers.values())}, DL_NEEDLES)

    # Neither service printed any of it, and its state store holds none of it.
    out, err = capfd.readouterr()
    assert_no_plaintext({"stdout": out.encode() or b"-", "stderr": err.encode() or b"-",
                         **{n: b for n, b in files_in(tmp_path).items() if n.startswith(("state", "pii"))}},
                        DL_NEEDLES)


# -- 5. key file permissions -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_ring_readable_by_others_is_refused_with_the_chmod_to_run(tmp_path: Path, mode: int) -> None:
    keys = tmp_path / "pii-keys.json"
    cli("pii", "keygen", "--out", str(keys))
    ring = json.loads(keys.read_text())
    secrets = [*ring["keys"].values(), ring["hmac_key"]]
    keys.chmod(mode)

    with pytest.raises(PiiKeyError) as refused:
        KeyRing.load(keys, None)
    message = str(refused.value)
    assert f"chmod 600 {keys}" in message
    assert not any(secret in message for secret in secrets)

    from smartico_stream.config import PiiSettings
    from smartico_stream.pii.setup import pii_components

    with pytest.raises(PiiKeyError, match="chmod 600"):
        pii_components(PiiSettings(keys_file=keys, store_url=f"sqlite:///{tmp_path / 'pii.db'}"), environ={})
    keys.chmod(0o600)
    assert KeyRing.load(keys, None).current == "k1"
    keys.chmod(mode)

    if mode != 0o644:
        return  # the CLI paths once are enough
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(sim_records()[:1]) + b"\n")
    for args in (
        ["simulate", "--rules", str(RULES), "--events", str(events), "--pii-keys", str(keys)],
        ["pii", "add-key", "--keys", str(keys), "--key-id", "k2"],
        ["pii", "key-usage", "-c", str(write_config(tmp_path / "c.yaml", {"pii": {
            "keys_file": str(keys), "store_url": f"sqlite:///{tmp_path / 'pii.db'}"}}))],
    ):
        done = cli(*args, check=False)
        assert done.returncode == 2, (args, done.stderr)
        assert f"run: chmod 600 {keys}".encode() in done.stderr, (args, done.stderr)
        assert not any(secret.encode() in done.stderr + done.stdout for secret in secrets)
    assert set(json.loads(keys.read_text())["keys"]) == {"k1"}  # add-key left the file alone
    assert not (tmp_path / "pii.db").exists()


# -- findings ------------------------------------------------------------------------------------------


def _simulate_profiles(tmp_path: Path, profiles: list[dict[str, Any]]) -> tuple[KeyRing, Path, Path]:
    keys = tmp_path / "pii-keys.json"
    cli("pii", "keygen", "--out", str(keys))
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(envelope("profile", str(p["user_ext_id"]), p) + b"\n" for p in profiles))
    state, pii_db = tmp_path / "state.db", tmp_path / "pii.db"
    cli("simulate", "--rules", str(RULES), "--events", str(events), "--state", str(state),
        "--pii-keys", str(keys), "--pii-state", str(pii_db))
    return KeyRing.load(keys, None), state, pii_db


def _profile(when_ms: int, **fields: Any) -> dict[str, Any]:
    message = {
        "dt_update": when_ms, "ext_brand_id": "b1", "user_ext_id": "f1",
        "core_registration_date": BASE_MS - 86_400_000, "core_user_language": "EN", "core_wallet_currency": "EUR",
    }
    message.update(fields)
    return message


def test_a_deduplicated_profile_does_not_overwrite_newer_pii_in_the_vault(tmp_path: Path) -> None:
    """A re-sent (duplicate) old profile is dropped by dedup, so the engine keeps the newer profile;
    the PII store must keep the newer values too.

    Finding: ``Pipeline.prepare`` (smartico_stream/pipeline/pipeline.py, the guard block) extends
    ``result.pii`` with the records of *every* adapted event before ``_drop_repeats`` decides which
    events are fresh, so the duplicate's (older) email and phone are written to the vault and
    overwrite the current ones, while state and rules ignore the duplicate.
    """
    old = _profile(BASE_MS, user_country="DE", user_email="old.address@example.test", user_phone="+49 151 11111111")
    new = _profile(BASE_MS + 60_000, user_country="DE", user_email="new.address@example.test",
                   user_phone="+49 151 22222222")
    ring, _, pii_db = _simulate_profiles(tmp_path, [old, new, old])  # the third line re-sends the first

    async def work(vault: PiiVault) -> tuple[Any, ...]:
        return (await vault.reveal("b1", "f1", "email", actor="t", purpose="t"),
                await vault.reveal("b1", "f1", "phone", actor="t", purpose="t"))

    assert run_async(with_vault(pii_db, ring, work)) == ("new.address@example.test", "+4915122222222")


def test_a_profile_update_without_country_normalises_the_phone_with_the_users_country(tmp_path: Path) -> None:
    """Profiles may be partial updates (the engine keeps fields an update does not repeat, e.g. the
    country). A phone in national format sent without ``user_country`` belongs to the user's known
    country: it must be stored as E.164, flagged valid, and findable by its E.164 lookup hash.

    Finding: ``PiiGuard.protect`` (smartico_stream/pii/guard.py) normalises with ``event.country``
    only; with the country absent from the update, ``normalise_phone("0151 98765432", None)`` fails,
    so the raw text is stored, ``phone_valid`` becomes False in the user's state (overwriting True)
    and the number's lookup hash no longer matches its E.164 form.
    """
    ring, state, pii_db = _simulate_profiles(tmp_path, [
        _profile(BASE_MS, user_country="DE", user_phone="+49 151 23456789"),
        _profile(BASE_MS + 60_000, user_phone="0151 98765432"),  # a new number; country unchanged, not repeated
    ])

    async def work(vault: PiiVault) -> tuple[Any, ...]:
        return (await vault.reveal("b1", "f1", "phone", actor="t", purpose="t"),
                await vault.find("phone", "+4915198765432"))

    revealed, found = run_async(with_vault(pii_db, ring, work))
    user_state = load_states(state, [("b1", "f1")])[("b1", "f1")]
    assert user_state.country == "DE"
    assert (revealed, found, user_state.phone_valid) == ("+4915198765432", [("b1", "f1")], True)
