"""The operator's database restarted while the service pages through a view: a real restart of a
real server (PostgreSQL and MariaDB), of a private instance made for the test so that the shared
servers of this machine stay up (tests/replica/private_server.py).

While the server is down, every read fails and is retried with a growing backoff; the stored
cursor does not move; once the server is back the service resumes where it was, and every row is
handled exactly once, in order."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncmy
import asyncpg
import pytest

from smartico_stream.service import Service
from tests.replica.conftest import OperatorDb, ago, deposit
from tests.replica.private_server import private_server
from tests.replica.test_replica_source import deposits_view, stored_cursor
from tests.support.service import RecordingEngine, ServiceRun

BACKLOG, TOTAL = 1500, 1700

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(240)]


async def _operator_db(kind: str, dsn: str) -> OperatorDb:
    if kind == "postgresql":
        conn = await asyncpg.connect(dsn)
        await conn.execute('CREATE SCHEMA IF NOT EXISTS "op"')
        return OperatorDb(kind, dsn, "op", conn)
    conn = await asyncmy.connect(host="127.0.0.1", port=int(dsn.rsplit(":", 1)[1].split("/")[0]), user="root",
                                 autocommit=True)
    async with conn.cursor() as cursor:
        await cursor.execute("CREATE DATABASE IF NOT EXISTS `op`")
    return OperatorDb(kind, dsn.rsplit("/", 1)[0] + "/op", "op", conn)


async def _close(db: OperatorDb) -> None:
    conn = db._conn
    if db.kind == "postgresql":
        await conn.close()
    else:
        await conn.ensure_closed()


class SlowEngine(RecordingEngine):
    """A few milliseconds per user per batch, so that the backlog takes seconds to page through and
    the restart lands in the middle of it."""

    def apply_user_events(self, user, events):  # type: ignore[no-untyped-def]
        time.sleep(0.003)
        return super().apply_user_events(user, events)


def _errors(service: Service) -> float:
    samples = service.metrics.replica_errors.collect()[0].samples
    return sum(sample.value for sample in samples if sample.name.endswith("_total"))


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
async def test_the_database_restarted_mid_paging(kind, replica_settings, tmp_path: Path):
    with private_server(kind) as server:
        db = await _operator_db(kind, server.dsn)
        try:
            await db.deposits_table()
            now = await db.now_utc()
            rows = [deposit(ago(now, 6000 - i), f"t{i:04}", user=f"u{i % 5}") for i in range(TOTAL)]
            await db.insert("deposits", rows[:BACKLOG])
        finally:
            await _close(db)
        view = deposits_view(db)
        settings = replica_settings(db, [view], page_size=10, dsn=db.dsn, retry_backoff_s=0.1, max_backoff_s=0.4)
        engine = SlowEngine()
        service = Service(settings, engine=engine)
        running = ServiceRun(service)
        try:
            await running.wait_until(lambda: len(engine.applied) >= 40, "the first pages")
            # Down while the service pages through the backlog (pages of 10, back to back).
            await asyncio.to_thread(server.stop)
            down_at = len(engine.applied)
            assert down_at < BACKLOG, "the backlog was read before the restart; the test proves nothing"
            await running.wait_until(lambda: _errors(service) >= 1, "a failed read")
            cursor_while_down = await stored_cursor(tmp_path / "state.db", view["name"])
            await asyncio.sleep(2.0)
            errors_while_down = _errors(service)
            assert await stored_cursor(tmp_path / "state.db", view["name"]) == cursor_while_down
            assert len(engine.applied) == down_at  # nothing read, nothing handled
            # Retried with backoff (0.1, 0.2, 0.4, 0.4 ... s): a handful of attempts in 2 s, not a busy loop.
            assert 2 <= errors_while_down <= 12, errors_while_down
            await asyncio.to_thread(server.start)
            db = await _operator_db(kind, server.dsn)
            try:
                await db.insert("deposits", rows[BACKLOG:])
            finally:
                await _close(db)
            await running.wait_until(lambda: len(engine.applied) >= TOTAL, "every row after the restart", 60)
            await asyncio.sleep(0.3)
        finally:
            await running.stop()
    ids = engine.event_ids()
    assert len(ids) == TOTAL and sorted(ids) == [f"t{i:04}" for i in range(TOTAL)]  # each row once
    for user in {event.user_id for event in engine.events}:  # and each user's rows in view order
        mine = [event.event_id for event in engine.events if event.user_id == user]
        assert mine == sorted(mine)
    assert cursor_while_down is not None and cursor_while_down.values[1] == f"t{down_at - 1:04}"
