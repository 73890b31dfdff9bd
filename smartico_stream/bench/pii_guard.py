"""``python -m smartico_stream.bench.pii_guard``: what the PII guard costs per profile update when the
contact data is unchanged and when it changed, and what the phone cache saves (docs/performance.md,
"PII guard").

A profile update here carries an email, a national phone (read with the user's country), a first and
a last name, as the reference adapter gives them to the guard. Each figure is the median of
``--rounds`` rounds over ``--users`` users, in microseconds of CPU time (the process's, all threads:
steadier than wall time on a shared machine) per update:

* ``guard``: ``PiiGuard.protect`` alone (events adapted beforehand: adapting costs the same either way);
* ``guard_and_vault``: the same plus the vault write of what it returned, in transactions of
  ``--batch`` updates on SQLite, as the service writes a batch;
* ``..._memory_off``: the unchanged updates with the memory and the phone cache off (what every
  update cost before);
* ``phone_parse`` / ``phone_cache_hit``: ``normalise_phone`` against a hit of the guard's cache;
* ``memory_bytes_per_user``: what the memory holds per remembered user (tracemalloc).

Each round first stores every user's profile (so the guard remembers it), then times the same values
again (``unchanged``) and then new ones (``changed``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import orjson

from smartico_stream.adapters.base import RecordContext, canonical_events
from smartico_stream.adapters.registry import load_adapter
from smartico_stream.events.models import CanonicalEvent
from smartico_stream.events.raw import RawRecord, Stream
from smartico_stream.pii.guard import PiiGuard
from smartico_stream.pii.keys import generate_key_ring
from smartico_stream.pii.normalise import PhoneNormaliser, normalise_phone
from smartico_stream.pii.vault import PiiRecord, PiiVault
from smartico_stream.store.sqlite import SqliteDatabase

BASE_MS = 1_700_000_000_000


def _profiles(users: int, version: int, first_offset: int) -> list[CanonicalEvent]:
    """One adapted profile update per user, with contact data of ``version``, at consecutive offsets."""
    adapter = load_adapter("reference")
    events = []
    for n in range(users):
        message = {
            "dt_update": BASE_MS + first_offset + n, "ext_brand_id": "b1", "user_ext_id": f"u{n}",
            "user_country": "GB", "core_registration_date": BASE_MS, "core_user_language": "EN",
            "core_wallet_currency": "EUR", "user_email": f"Player.{n}.{version}@Example.com",
            "user_phone": f"07400 {100000 + n * 7 + version:06d}", "user_first_name": f"Ann{version}",
            "user_last_name": f"Smith{n}",
        }
        context = RecordContext(stream=Stream.PROFILE, topic="user_profile", key=f"u{n}")
        (event,) = canonical_events(adapter, orjson.loads(orjson.dumps(message)), context)
        event.source = RawRecord(  # type: ignore[assignment]  # a record's coordinates (events/records.py)
            transport="kafka", topic="user_profile", partition=0, offset=first_offset + n, key=None, value=None
        )
        events.append(event)
    return events


async def _pass(guard: PiiGuard, vault: PiiVault | None, events: list[CanonicalEvent], batch: int) -> float:
    """Seconds to guard ``events`` (and write what comes out, per ``batch``)."""
    started = time.process_time()
    for start in range(0, len(events), batch):
        records: list[PiiRecord] = []
        for event in events[start:start + batch]:
            records += guard.protect(event)
        if vault is not None:
            await vault.write(records)
    return time.process_time() - started


async def _round(users: int, batch: int, with_vault: bool, directory: Path, n: int) -> dict[str, float]:
    name = "guard_and_vault" if with_vault else "guard"
    ring = generate_key_ring("k1")
    figures: dict[str, float] = {}
    for memory in (True, False):
        guard = PiiGuard(ring) if memory else PiiGuard(ring, memory_size=0, phone_cache_size=1)
        vault = PiiVault(SqliteDatabase(directory / f"pii-{n}-{with_vault}-{memory}.db"), ring)
        await vault.open()
        try:
            # Priming always writes: the memory is filled by the vault's commit.
            await _pass(guard, vault, _profiles(users, 1, 0), batch)
            unchanged = _profiles(users, 1, users)
            changed = _profiles(users, 2, 2 * users)
            target = vault if with_vault else None
            same = await _pass(guard, target, unchanged, batch) / users * 1e6
            if memory:
                figures[f"{name}_unchanged_us"] = same
                figures[f"{name}_changed_us"] = await _pass(guard, target, changed, batch) / users * 1e6
            else:
                figures[f"{name}_unchanged_memory_off_us"] = same
        finally:
            await vault.close()
    return figures


def _memory_per_user(users: int) -> float:
    guard = PiiGuard(generate_key_ring("k1"))
    events = _profiles(users, 1, 0)
    records = [record for event in events for record in guard.protect(event)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for record in records:
        if record.on_stored is not None:
            record.on_stored()  # what the vault calls once committed
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held / users


def _phone_figures(numbers: int) -> tuple[float, float]:
    raws = [f"07400 {100000 + n:06d}" for n in range(numbers)]
    started = time.process_time()
    for raw in raws:
        normalise_phone(raw, "GB")
    parse = (time.process_time() - started) / numbers * 1e6
    cache = PhoneNormaliser(numbers)
    for raw in raws:
        cache(raw, "GB")
    started = time.process_time()
    for raw in raws:
        cache(raw, "GB")
    return parse, (time.process_time() - started) / numbers * 1e6


def main() -> None:
    """Run the rounds and print the medians as one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        for n in range(args.rounds):
            for with_vault in (False, True):
                for name, value in asyncio.run(_round(args.users, args.batch, with_vault, Path(directory), n)).items():
                    figures.setdefault(name, []).append(value)
            parse, hit = _phone_figures(args.users)
            figures.setdefault("phone_parse_us", []).append(parse)
            figures.setdefault("phone_cache_hit_us", []).append(hit)
            figures.setdefault("memory_bytes_per_user", []).append(_memory_per_user(args.users))
    medians = {name: round(statistics.median(values), 2) for name, values in figures.items()}
    sys.stdout.write(orjson.dumps(medians, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
