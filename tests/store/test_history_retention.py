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

from smartico_stream.service import Service
from smartico_stream.store.sqlite import SqliteStore

pytestmark = pytest.mark.kafka

OLD_ROWS = 12_000  # more than the service deletes per turn of its loop (5,000)
YOUNG_ROWS = 3


def fill_history(path: Path) -> None:
    """A store whose history holds OLD_ROWS rows recorded 40 days ago, then YOUNG_ROWS recorded now."""
    async def migrate() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.close()

    asyncio.run(migrate())
    recorded = [datetime.now(UTC) - timedelta(days=40)] * OLD_ROWS + [datetime.now(UTC)] * YOUNG_ROWS
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO history (brand, user_id, rule_id, event_id, event_type, event_time, outcome, executions, "
            "recorded_at) VALUES ('b1', ?, 'r1', ?, 'deposit', '2026-01-01T00:00:00.000+00:00', 'executed', 1, ?)",
            [(f"u{n % 50}", f"ev-{n}", at.isoformat(timespec="milliseconds")) for n, at in enumerate(recorded)],
        )


def history_rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [event for (event,) in db.execute("SELECT event_id FROM history ORDER BY seq")]


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
