"""`smartico-stream demo --transport replica`: the synthetic stream written as rows into views of a
scratch schema on the local PostgreSQL while the real service polls them; the same summary as the
other demos, everything written is consumed, and the scratch schema is gone afterwards."""

from __future__ import annotations

import subprocess

import asyncpg
import orjson
import pytest

from tests.support.common import CLI
from tests.support.postgres import PG_DSN, require_postgres

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(300)]


async def test_demo_on_replica_views_prints_the_summary_and_drops_its_schema():
    require_postgres()
    process = subprocess.Popen([*CLI, "demo", "--transport", "replica", "--events", "3000", "--users", "300",
                                "--metrics-port", "0", "--json", "--replica-dsn", PG_DSN],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err.decode()
    summary = orjson.loads(out)
    assert summary["produced"] > 2800 and summary["consumed"] == summary["produced"]
    assert summary["processed"] + summary["deduplicated"] + summary["dead_lettered"] == summary["consumed"]
    assert summary["deduplicated"] > 0  # re-sent rows, dropped by transaction id
    assert summary["dead_lettered"] > 0  # rows a replica can hold but the models refuse (negative amounts, ...)
    assert summary["actions"] > 0 and summary["actions_delivered"] == summary["actions"]
    assert summary["expected"]["skipped:not_a_row"] > 0  # invalid JSON and the like: no table holds them
    conn = await asyncpg.connect(PG_DSN)
    try:
        left = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
                                f"smartico_demo_{process.pid}_%")
    finally:
        await conn.close()
    assert left == []


async def test_demo_refuses_an_unknown_transport():
    done = subprocess.run([*CLI, "demo", "--transport", "carrier-pigeon"], capture_output=True, timeout=60,
                          check=False)
    assert done.returncode == 2 and "kafka, rabbitmq, replica or rest" in done.stderr.decode()
