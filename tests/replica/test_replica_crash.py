"""SIGKILL mid-cycle, then resume: the users' state and the actions equal ``simulate`` on the same
rows, on the real PostgreSQL and MariaDB.

The service runs as a subprocess (``tests.support.failpoint_run``) and kills itself just before a
store commit, then (second run) just after one; a third run finishes. Dedup is off in the service,
so a row handled twice would show as a doubled deposit or extra points; ``simulate`` reads the same
rows as JSON envelopes (no row repeats, so its dedup changes nothing)."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from smartico_stream.store.sqlite import SqliteStore
from tests.replica.conftest import OperatorDb
from tests.support.common import DEMO_RULES
from tests.support.crash import Processes, action_ids, simulate

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(240)]

ROWS = 150
USERS = 10


async def _deposits(db: OperatorDb) -> list[dict[str, Any]]:
    await db.execute(
        'CREATE TABLE "{schema}"."deposits" (dt_finalized {ts} NOT NULL, ext_brand_id varchar(32) NOT NULL, '
        "user_ext_id varchar(64) NOT NULL, transaction_id varchar(64) NOT NULL PRIMARY KEY, "
        "deposit_amount decimal(18,2) NOT NULL, core_wallet_currency char(3) NOT NULL)"
    )
    now = await db.now_utc()
    rows = [
        {"dt_finalized": now - timedelta(hours=2) + timedelta(seconds=i // 3),  # ties in threes
         "ext_brand_id": "b1", "user_ext_id": f"u{i % USERS}", "transaction_id": f"tx{i:04}",
         "deposit_amount": Decimal(5 + (i * 7) % 40), "core_wallet_currency": "EUR"}
        for i in range(ROWS)
    ]
    await db.insert("deposits", rows)
    return rows


def _envelopes(rows: list[dict[str, Any]], path: Path) -> Path:
    with path.open("wb") as out:
        for row in rows:
            value = {**row, "type": "deposit", "dt_finalized": row["dt_finalized"].replace(tzinfo=UTC).isoformat(),
                     "deposit_amount": str(row["deposit_amount"])}
            out.write(orjson.dumps({"stream": "payments", "key": row["user_ext_id"], "value": value}) + b"\n")
    return path


def _config(path: Path, db: OperatorDb, store: Path) -> Path:
    config = {
        "source": "replica",
        "adapter": "reference",
        "instance_id": "crash-test",
        "store": {"url": f"sqlite:///{store}"},
        "engine": {"rules": str(DEMO_RULES)},
        "dedup": {"enabled": False},
        "metrics": {"port": 0, "host": "127.0.0.1"},
        "logging": {"level": "INFO", "format": "json"},
        "replica": {
            "dsn": db.dsn, "page_size": 20, "visibility_delay_s": 0.5, "idle_wait_s": 0.05,
            "views": [{"name": db.qualified("deposits"), "stream": "payments", "cursor": "dt_finalized",
                       "id": "transaction_id", "defaults": {"type": "deposit"}}],
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def _stored(store_path: Path) -> tuple[dict[str, Any], list[str]]:
    store = SqliteStore(store_path)
    await store.open()
    try:
        users = {u.user: u for u in await store.all_users()}
        actions = [a.action_id for a in await store.all_actions()]
    finally:
        await store.close()
    return users, actions


def _summary(state: Any) -> tuple[Any, ...]:
    return state.deposit_count, state.deposit_total, state.points, sorted(state.tags), state.last_deposit_amount


async def test_sigkill_mid_cycle_resumes_equal_to_simulate(operator_db, tmp_path, processes: Processes):
    db = operator_db
    rows = await _deposits(db)
    store_path = tmp_path / "state.db"
    config = _config(tmp_path / "config.yaml", db, store_path)
    for run, failpoint in enumerate(("before_store_commit=3", "after_store_commit=2")):
        proc = processes.start(config, tmp_path / f"run{run}.log", failpoints=failpoint, name=f"run{run}")
        code = await asyncio.to_thread(proc.wait, 60)
        assert code == -signal.SIGKILL, f"run {run} ended with {code}, not at its failpoint:\n{proc.log_tail()}"
    last = processes.start(config, tmp_path / "final.log", name="final")
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        users, _ = await _stored(store_path)
        if sum(u.deposit_count for u in users.values()) >= ROWS:
            break
        assert last.alive(), last.log_tail()
        assert asyncio.get_running_loop().time() < deadline, f"not all deposits applied:\n{last.log_tail()}"
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)  # anything applied twice has time to land
    assert await asyncio.to_thread(last.terminate) == 0
    users, actions = await _stored(store_path)

    expected_lines = await asyncio.to_thread(
        simulate, DEMO_RULES, _envelopes(rows, tmp_path / "rows.jsonl"), tmp_path / "simulated.db")
    simulated_users, _ = await _stored(tmp_path / "simulated.db")
    assert {user: _summary(state) for user, state in users.items()} == \
        {user: _summary(state) for user, state in simulated_users.items()}
    assert sum(u.deposit_count for u in users.values()) == ROWS
    assert sorted(actions) == sorted(action_ids(expected_lines))
    assert actions and len(actions) == len(set(actions))
