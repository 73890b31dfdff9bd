"""Execution history retention, through a running service on the embedded Kafka: history recorded
longer ago than ``store.history_retention_s`` is deleted between batches, several chunks in a row
when that much is due, and counted in smartico_stream_history_pruned_total; younger history stays,
and ``0`` keeps everything."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from smartico_stream.engine.evaluator import HistoryEntry
from smartico_stream.service import Service
from smartico_stream.store.packing import history_fields, pack_history
from smartico_stream.store.sqlite import SqliteStore

pytestmark = pytest.mark.kafka

OLD_ROWS = 12_000  # entries: more than the service deletes per turn of its loop (about 5,000)
YOUNG_ROWS = 3
PER_BATCH = 100  # entries per stored history row (one row per batch)


def entry(n: int) -> HistoryEntry:
    return HistoryEntry(brand="b1", user=f"u{n % 50}", rule_id="r1", event_id=f"ev-{n}", event_type="deposit",
                        event_time=datetime(2026, 1, 1, tzinfo=UTC), outcome="executed", executions=1)


def fill_history(path: Path) -> None:
    """A store whose history holds OLD_ROWS entries recorded 40 days ago (in batches of PER_BATCH),
    then YOUNG_ROWS recorded now."""
    async def migrate() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.close()

    asyncio.run(migrate())
    old = (datetime.now(UTC) - timedelta(days=40)).isoformat(timespec="milliseconds")
    batches = [(PER_BATCH, pack_history(entry(n) for n in range(start, start + PER_BATCH)), old)
               for start in range(0, OLD_ROWS, PER_BATCH)]
    young = pack_history(entry(n) for n in range(OLD_ROWS, OLD_ROWS + YOUNG_ROWS))
    batches.append((YOUNG_ROWS, young, datetime.now(UTC).isoformat(timespec="milliseconds")))
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO history (entries, body, recorded_at) VALUES (?, ?, ?)", batches)


def history_rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [fields[3] for (body,) in db.execute("SELECT body FROM history ORDER BY seq")
                for fields in history_fields(body)]


def deposit() -> bytes:
    return orjson.dumps({"dt_finalized": 1_700_000_000_000, "ext_brand_id": "b1", "user_ext_id": "u1",
                         "transaction_id": "retention-dep", "type": "deposit", "amount": "5.00"})


@pytest.mark.parametrize("retention_days", [30, 0])
def test_history_older_than_the_retention_is_deleted_while_the_service_runs(
    retention_days, make_settings, producer, recording_engine, run_service, tmp_path
):
    settings = make_settings(topics={"payments": ["payments"]},
                             store={"history_retention_s": retention_days * 86_400.0})
    path = Path(settings.store.url.removeprefix("sqlite:///"))
    fill_history(path)
    p = producer()
    p.ensure_topics("payments")
    service = Service(settings, engine=recording_engine())

    def pruned() -> float:
        return service.metrics.registry.get_sample_value("smartico_stream_history_pruned_total") or 0.0

    async def scenario() -> None:
        async with run_service(service) as running:
            if retention_days:
                await running.wait_until(lambda: pruned() == OLD_ROWS, "the expired history to be deleted")
            # A record handled: the loop has turned since it started.
            p.send("payments", "u1", deposit())
            p.flush()
            await running.wait_until(lambda: service.stats.consumed == 1, "the record")

    asyncio.run(scenario())
    young = [f"ev-{n}" for n in range(OLD_ROWS, OLD_ROWS + YOUNG_ROWS)]
    if retention_days:
        assert history_rows(path) == young
    else:
        assert pruned() == 0
        assert len(history_rows(path)) == OLD_ROWS + YOUNG_ROWS
