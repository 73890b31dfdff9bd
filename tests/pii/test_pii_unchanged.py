"""PII work only when PII changes: the guard skips a value the vault already holds, and caches phone
normalisation (smartico_stream/pii/guard.py, module docstring).

The promise checked here: skipping changes nothing anyone can observe except the work done. The
events leaving the guard and the vault's final contents are the same with the memory on and off, for
random sequences of profile updates with repeats, batch boundaries, redone batches, duplicates that
dedup drops, and another member writing the vault while this one skipped offsets. Through the public
pieces: the reference adapter, ``Pipeline.protect_and_dedup`` and a real ``PiiVault`` on SQLite.
"""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartico_stream.events.raw import RawRecord, Stream
from smartico_stream.events.records import dump_event
from smartico_stream.pii import decrypt, generate_key_ring
from smartico_stream.pii.guard import PiiGuard
from smartico_stream.pii.normalise import PhoneNormaliser, normalise_phone
from smartico_stream.pii.vault import PiiRecord, PiiVault, value_aad
from smartico_stream.pipeline.dedup import DedupWindow
from smartico_stream.pipeline.pipeline import Pipeline
from smartico_stream.store.sqlite import SqliteDatabase
from tests.pii.test_pii_guard import ADAPTER, BASE_MS, adapt, profile_message

RING = generate_key_ring("k1")
TOPIC = "user_profile"

# Small pools, so that random sequences repeat values often (and come back to old ones).
EMAILS = ["ann@example.test", " Ann@Example.test ", "bob@example.test", "not-an-address"]
PHONES = ["07400 123456", "0151 23456789", "+49 151 23456789", "12"]
COUNTRIES = [None, "GB", "DE"]
NAMES = ["Ann", "Bob", ""]


def record(offset: int, message: dict[str, Any], partition: int = 0) -> RawRecord:
    return RawRecord("kafka", TOPIC, partition, offset, str(message["user_ext_id"]).encode(), orjson.dumps(message))


def update(user: str, when: int, email: str | None = None, phone: str | None = None, country: str | None = None,
           name: str | None = None) -> dict[str, Any]:
    return profile_message(user=user, dt_update=BASE_MS + when, user_email=email, user_phone=phone,
                           user_country=country, user_first_name=name)


class Arm:
    """One guard, its pipeline (with a dedup window, committed as the service commits it) and a vault."""

    def __init__(self, vault: PiiVault, memory_size: int) -> None:
        self.guard = PiiGuard(RING, keep_email_domain=True, memory_size=memory_size)
        self.window = DedupWindow(3600, 10_000)
        self.pipeline = Pipeline(ADAPTER, {TOPIC: Stream.PROFILE}, dedup_window_for=lambda t, p: self.window,
                                 guard=self.guard)
        self.vault = vault
        self.events: list[dict[str, Any]] = []
        self.written = 0

    async def batch(self, records: Sequence[RawRecord], commit: bool = True) -> list[PiiRecord]:
        """One attempt at a batch: guard + dedup, the vault write, then (``commit``) the dedup keys."""
        result = self.pipeline.protect_and_dedup(self.pipeline.adapt(records))
        await self.vault.write(result.pii)
        self.written += len(result.pii)
        if commit:
            self.events += [dump_event(e) for item in result.accepted for e in item.events]
            for keys in result.dedup_added.values():
                for digest, first_seen in keys:
                    self.window.add(digest, first_seen)
        return result.pii


async def vault_contents(vault: PiiVault) -> dict[tuple[str, str, str], tuple[str, str, str, int]]:
    """Every row, decrypted: (brand, user, field) -> (value, lookup hash, key id, valid)."""
    async with vault.db.connection() as conn:
        rows = await conn.fetch("SELECT brand, user_id, field, token, lookup_hash, key_id, valid FROM pii_values")
    return {
        (brand, user, fld): (decrypt(RING, bytes(token), value_aad(brand, user, fld)).decode(), digest, key, int(ok))
        for brand, user, fld, token, digest, key, ok in rows
    }


async def open_vault(path: Path) -> PiiVault:
    vault = PiiVault(SqliteDatabase(path), RING)
    await vault.open()
    return vault


# -- the property ----------------------------------------------------------------------------------


@dataclass
class Step:
    """A batch of profile updates (indexes into the pools), then what happens to it."""

    updates: list[tuple[int, int, int, int, int, bool]]  # user, email, phone, country, name, resend previous
    redo: bool = False  # the batch is done a second time (a conflict at the state commit)
    foreign: tuple[int, int] | None = None  # another member writes (user, email) and this one skips offsets


update_strategy = st.tuples(
    st.integers(0, 1), st.integers(0, len(EMAILS)), st.integers(0, len(PHONES)), st.integers(0, len(COUNTRIES) - 1),
    st.integers(0, len(NAMES)), st.booleans(),
)
step_strategy = st.builds(
    Step,
    updates=st.lists(update_strategy, min_size=1, max_size=6),
    redo=st.booleans(),
    foreign=st.none() | st.tuples(st.integers(0, 1), st.integers(0, len(EMAILS) - 1)),
)


def pick(pool: Sequence[str | None], index: int) -> str | None:
    return pool[index] if index < len(pool) else None  # one past the end: the field is not sent


async def run_both(steps: list[Step], directory: Path) -> tuple[Arm, Arm]:
    skipping = Arm(await open_vault(directory / "skip.db"), memory_size=1000)
    plain = Arm(await open_vault(directory / "plain.db"), memory_size=0)
    offset, when = 0, 0
    last: dict[int, dict[str, Any]] = {}
    try:
        for step in steps:
            records = []
            for user, email, phone, country, name, resend in step.updates:
                if resend and user in last:
                    message = last[user]  # the same event id again: dedup drops it
                else:
                    when += 1
                    message = update(f"u{user}", when, pick(EMAILS, email), pick(PHONES, phone),
                                     COUNTRIES[country], pick(NAMES, name))
                    last[user] = message
                records.append(record(offset, message))
                offset += 1
            for arm in (skipping, plain):
                if step.redo:
                    await arm.batch(records, commit=False)
                await arm.batch(records)
            if step.foreign is not None:
                user, email = step.foreign
                intruder = PiiGuard(RING, memory_size=0)
                when += 1
                event = adapt(update(f"u{user}", when, email=EMAILS[email]))
                for arm in (skipping, plain):
                    await arm.vault.write(intruder.protect(copy.deepcopy(event)))  # one event each
                offset += 5  # the records that member handled
        return skipping, plain
    finally:
        await skipping.vault.close()
        await plain.vault.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step_strategy, min_size=1, max_size=10))
def test_events_and_vault_are_the_same_with_and_without_the_skip(steps: list[Step]) -> None:
    async def scenario(directory: Path) -> None:
        skipping, plain = await run_both(steps, directory)
        assert skipping.events == plain.events
        skipping_vault = PiiVault(SqliteDatabase(directory / "skip.db"), RING)
        plain_vault = PiiVault(SqliteDatabase(directory / "plain.db"), RING)
        for vault in (skipping_vault, plain_vault):
            await vault.open()
        try:
            assert await vault_contents(skipping_vault) == await vault_contents(plain_vault)
        finally:
            for vault in (skipping_vault, plain_vault):
                await vault.close()
        assert skipping.written <= plain.written

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(Path(directory)))


# -- what is skipped, and what is not -----------------------------------------------------------------


FULL = {"email": "Ann@Example.test", "phone": "07400 123456", "country": "GB", "name": "Ann"}


def full(user: str, when: int, **changes: Any) -> dict[str, Any]:
    values = {**FULL, **changes}
    return update(user, when, values["email"], values["phone"], values["country"], values["name"])


def test_an_unchanged_repeat_makes_no_record_and_keeps_the_derived_fields(tmp_path: Path) -> None:
    async def scenario() -> None:
        arm = Arm(await open_vault(tmp_path / "pii.db"), memory_size=1000)
        try:
            first = await arm.batch([record(0, full("u1", 1))])
            assert sorted(r.field for r in first) == ["email", "first_name", "phone"]
            repeat = await arm.batch([record(1, full("u1", 2, email=" ANN@example.test"))])
            assert repeat == []
            assert arm.guard.skipped == 3
            derived = [{k: e[k] for k in ("has_email", "email_domain", "has_phone", "phone_valid")}
                       for e in arm.events]
            assert derived == [{"has_email": True, "email_domain": "example.test", "has_phone": True,
                                "phone_valid": True}] * 2
            changed = await arm.batch([record(2, full("u1", 3, email="new@example.test"))])
            assert [r.field for r in changed] == ["email"]
        finally:
            await arm.vault.close()

    asyncio.run(scenario())


def test_a_national_phone_read_in_another_country_is_protected_again(tmp_path: Path) -> None:
    async def scenario() -> list[list[str]]:
        arm = Arm(await open_vault(tmp_path / "pii.db"), memory_size=1000)
        try:
            fields = []
            for offset, country in enumerate(["GB", "GB", "DE"]):
                pii = await arm.batch([record(offset, full("u1", offset, phone="0151 23456789", country=country))])
                fields.append(sorted(r.field for r in pii))
            return fields
        finally:
            await arm.vault.close()

    assert asyncio.run(scenario()) == [["email", "first_name", "phone"], [], ["phone"]]


def test_nothing_is_remembered_before_the_vault_commits(tmp_path: Path) -> None:
    """A dry run (the service's bisection), a write that fails, a gap in the offsets, another
    partition, or a repeat inside the batch of the first sighting: each leaves the value unremembered."""

    async def scenario() -> None:
        arm = Arm(await open_vault(tmp_path / "pii.db"), memory_size=1000)
        try:
            pending = arm.pipeline.protect_and_dedup(arm.pipeline.adapt([record(0, full("u1", 1))])).pii
            await arm.vault.probe(pending)
            assert len(await arm.batch([record(1, full("u1", 2))])) == 3  # the probe remembered nothing

            assert await arm.batch([record(2, full("u1", 3))]) == []
            assert len(await arm.batch([record(9, full("u1", 4))])) == 3  # offsets 3-8 went elsewhere
            assert len(await arm.batch([record(0, full("u1", 5), partition=1)])) == 3  # another partition

            same_batch = await arm.batch([record(1, full("u2", 6)), record(2, full("u2", 7))])
            assert len(same_batch) == 6  # neither is in the vault while the batch is being guarded
            assert await arm.batch([record(3, full("u2", 8))]) == []

            failing = arm.pipeline.protect_and_dedup(arm.pipeline.adapt([record(4, full("u2", 9, name="Bo"))])).pii
            await arm.vault.close()
            with pytest.raises(Exception):  # noqa: B017 - whatever a closed database raises
                await arm.vault.write(failing)
            arm.vault = await open_vault(tmp_path / "pii.db")
            assert [r.field for r in await arm.batch([record(5, full("u2", 10, name="Bo"))])] == ["first_name"]
        finally:
            await arm.vault.close()

    asyncio.run(scenario())


def test_rabbitmq_deliveries_and_events_without_coordinates_are_never_skipped(tmp_path: Path) -> None:
    guard = PiiGuard(RING, memory_size=1000)
    pipeline = Pipeline(ADAPTER, {"q": Stream.PROFILE}, guard=guard)

    async def scenario() -> list[int]:
        vault = await open_vault(tmp_path / "pii.db")
        counts = []
        try:
            for tag in (1, 2, 3):
                raw = RawRecord("rabbitmq", "q", 0, tag, b"u1", orjson.dumps(full("u1", tag)))
                pii = pipeline.protect_and_dedup(pipeline.adapt([raw])).pii
                await vault.write(pii)
                counts.append(len(pii))
            for when in (4, 5):
                pii = guard.protect(adapt(full("u1", when)))
                await vault.write(pii)
                counts.append(len(pii))
        finally:
            await vault.close()
        return counts

    assert asyncio.run(scenario()) == [3] * 5
    assert guard.skipped == 0


# -- the phone cache ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.sampled_from(PHONES), st.text("0123456789+-() ", max_size=18), st.integers()),
       country=st.sampled_from([None, "GB", "DE", "US", "gb", "XX"]))
def test_the_phone_cache_answers_what_normalise_phone_answers(raw: Any, country: str | None) -> None:
    cache = PhoneNormaliser(maxsize=4)
    assert cache(raw, country) == normalise_phone(raw, country)
    assert cache(raw, country) == normalise_phone(raw, country)  # the second answer is the cached one
    assert cache.hits == (1 if isinstance(raw, str) else 0)


def test_the_phone_cache_is_bounded() -> None:
    cache = PhoneNormaliser(maxsize=3)
    for n in range(10):
        cache(f"+44 7400 12345{n}", "GB")
    assert len(cache) == 3
    assert (cache.hits, cache.misses) == (0, 10)
    cache("+44 7400 123459", "GB")
    assert cache.hits == 1


# -- the measurement script ---------------------------------------------------------------------------


def test_the_measurement_script_reports_every_figure() -> None:
    """``python -m smartico_stream.bench.pii_guard`` (docs/performance.md, "PII guard") on a small run."""
    done = subprocess.run([sys.executable, "-m", "smartico_stream.bench.pii_guard", "--users", "40", "--rounds", "1"],
                          capture_output=True, timeout=120, check=True)
    figures = orjson.loads(done.stdout)
    assert set(figures) == {
        f"{part}_{case}_us" for part in ("guard", "guard_and_vault") for case in ("unchanged", "changed",
                                                                                  "unchanged_memory_off")
    } | {"phone_parse_us", "phone_cache_hit_us", "memory_bytes_per_user"}
    assert all(value > 0 for value in figures.values()), figures
