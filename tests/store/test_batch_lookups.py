"""The lookups a batch makes in the store (the users' rows, the RabbitMQ message ids already handled)
find exactly the keys asked for; on PostgreSQL the users' rows are found by touching only those
rows, even on a table the planner has no statistics for (never analysed: autovacuum off, or a
store just loaded)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from smartico_stream.engine.state import UserState
from smartico_stream.store.base import BatchWrite
from tests.store.test_store import epochs_for, rows
from tests.support.store_backends import Backend

pytestmark = pytest.mark.asyncio

QUEUE = ("q.events", 3)
USERS = 3000
BULK = 60_000


async def _fill(store: Any) -> None:
    """USERS users of brand b1, a few of b2, and USERS handled ids of QUEUE (plus one of another queue)."""
    users = [UserState(brand="b1", user=f"u{i}", deposit_count=i) for i in range(USERS)]
    users += [UserState(brand="b2", user=f"u{i}", deposit_count=-i) for i in range(3)]
    epochs = await epochs_for(store, QUEUE, ("q.other", 0))
    await store.commit(BatchWrite(epochs=epochs, users=users, handled_at=1.0, handled_messages={
        QUEUE: [f"m{i}" for i in range(USERS)], ("q.other", 0): ["x1"],
    }))


async def test_users_and_handled_ids_are_found_exactly(store: Any) -> None:
    await _fill(store)
    asked = [("b1", "u7"), ("b2", "u1"), ("b1", "nobody"), ("b3", "u7"), ("b1", "u7"), ("b1", f"u{USERS - 1}")]
    loaded = await store.load_users(asked)
    assert {key: state.deposit_count for key, state in loaded.items()} == {
        ("b1", "u7"): 7, ("b2", "u1"): -1, ("b1", f"u{USERS - 1}"): USERS - 1,
    }
    assert all(state.version == 1 for state in loaded.values())
    assert await store.load_users([]) == {}

    assert await store.handled(QUEUE, ["m0", "m5", "x1", "m5", "never", f"m{USERS - 1}"]) == {
        "m0", "m5", f"m{USERS - 1}",
    }
    assert await store.handled(("q.other", 0), ["m0", "x1"]) == {"x1"}
    assert await store.handled(QUEUE, []) == set()


def _rows_touched(node: dict[str, Any], table: str) -> float:
    """Rows the plan's scans of ``table`` produced or filtered out, over all their loops."""
    touched = 0.0
    if node.get("Relation Name") == table or node.get("Index Name", "").startswith(table):
        touched += (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * node.get("Actual Loops", 1)
    return touched + sum(_rows_touched(child, table) for child in node.get("Plans", ()))


async def _explain(store: Any, sql: str, *args: Any) -> dict[str, Any]:
    (plan,), = await rows(store, "EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
    parsed: list[dict[str, Any]] = orjson.loads(plan)
    return parsed[0]["Plan"]


async def test_on_postgres_the_users_lookup_touches_only_the_rows_asked_for(pg: Backend) -> None:
    store = await pg.open()
    await _fill(store)
    # Enough rows that reading them all costs more than a lookup per key (on a few thousand rows
    # one pass over the table is the cheaper plan, and PostgreSQL rightly takes it).
    async with store.transaction() as conn:
        await conn.execute("INSERT INTO users (brand, user_id, state, version, updated_at) "
                           "SELECT 'b1', 'bulk' || i, '', 1, '' FROM generate_series(1, ?::int) AS i", BULK)
    (never_analysed,), = await rows(store, "SELECT reltuples < 0 FROM pg_class WHERE oid = 'users'::regclass")
    assert never_analysed, "the table must be one the planner has no statistics for"
    # As many as one batch's version check asks for at a time (a long IN list is what the planner
    # judged not selective enough to look up).
    keys = [("b1", f"bulk{i}") for i in range(1, BULK, BULK // 400)]

    plan = await _explain(store, store._USER_ROWS.format(columns="version"),
                          [b for b, _ in keys], [u for _, u in keys])
    assert _rows_touched(plan, "users") <= len(keys), orjson.dumps(plan).decode()
