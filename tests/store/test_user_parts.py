"""A user's state is stored in parts, and a commit rewrites only the parts its batch changed.

What is proven, on SQLite and PostgreSQL: a state comes back equal whatever parts it has; a commit
of a user whose profile, rule progress and payment ids did not change leaves those columns as the
row has them (a value planted there survives), and a change to one part rewrites that part; a row
written before the parts existed (schema version 8: the whole document in ``state``) is read whole,
still counts in audiences, and is rewritten in parts at its next commit. Through ``simulate``: the
same stream with every state read back from the store each batch (a state cache of one user) gives
the same actions and the same stored users as with every state kept in memory, so no code path that
changes a part forgets to say so.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from smartico_stream.adapters.registry import load_adapter
from smartico_stream.bench.rules import write_rules
from smartico_stream.demo.synthetic import RecordKind, StreamSpec, synthetic_stream
from smartico_stream.engine.actions import Action
from smartico_stream.engine.rules import load_rules
from smartico_stream.engine.state import ALL_PARTS, RuleProgress, UserState
from smartico_stream.events.raw import RawRecord
from smartico_stream.simulate import simulate
from smartico_stream.store.base import BatchWrite
from smartico_stream.store.scheduled import ScheduleStore
from smartico_stream.store.schema import STATE_MIGRATIONS
from smartico_stream.store.sqlite import SqliteStore
from tests.store.test_store import epochs_for, rows
from tests.support.store_backends import Backend

pytestmark = pytest.mark.asyncio

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
T0_MS = 1_700_000_000_000
P0 = ("payments", 0)
KEY = ("b1", "u1")


def rich_user(version: int = 0) -> UserState:
    """A state with every part: profile (and custom fields), rule progress, payment ids."""
    state = UserState(brand="b1", user="u1", version=version, country="MT", language="en", has_email=True,
                      deposit_count=3,
                      deposit_total={"EUR": Decimal("30.50")}, points=Decimal(7), tags={"vip"},
                      last_event_time=T0)
    state.custom = {"segment": "high", "score": 4}
    state.rules = {"r1": RuleProgress(remainder=Decimal("0.5"), executions=2, qualified_at=T0)}
    state.payment_ids = bytes(range(24))
    return state


async def commit(store: Any, *users: UserState) -> None:
    await store.commit(BatchWrite(epochs=await epochs_for(store, P0), users=list(users)))


async def load(store: Any) -> UserState:
    return (await store.load_users([KEY]))[KEY]


async def test_a_state_comes_back_equal_with_nothing_left_to_write(store: Any) -> None:
    await commit(store, rich_user())
    loaded = await load(store)
    assert loaded == rich_user(version=1)
    assert loaded.changed == 0
    assert [orjson.loads(u.to_json()) for u in await store.all_users()] == [orjson.loads(rich_user().to_json())]


async def test_a_commit_rewrites_only_the_parts_that_changed(store: Any) -> None:
    await commit(store, rich_user())
    planted_rules = orjson.dumps({"planted": {"executions": 9}})
    planted_profile = orjson.dumps({"country": "ZZ"})
    async with store.transaction() as conn:
        await conn.execute("UPDATE users SET progress = ?, profile = ?, payments = ?",
                           planted_rules, planted_profile, b"")

    loaded = await load(store)
    loaded.deposit_count += 1  # the core only: no profile, progress or payments flag
    await commit(store, loaded)
    again = await load(store)
    assert again.deposit_count == 4
    assert (again.country, set(again.rules), again.payment_ids) == ("ZZ", {"planted"}, b"")

    again.progress("r2").executions = 1  # the rule progress, through the engine's accessor
    await commit(store, again)
    (progress, profile), = await rows(store, "SELECT progress, profile FROM users")
    assert set(orjson.loads(progress)) == {"planted", "r2"}
    assert bytes(profile) == planted_profile


async def test_a_row_from_before_the_parts_is_read_whole_and_rewritten_in_parts(backend: Backend) -> None:
    old = backend.new()
    await old.db.open(STATE_MIGRATIONS[:-1])  # schema version 8
    async with old.transaction() as conn:
        await conn.execute("INSERT INTO users (brand, user_id, state, version, updated_at) "
                           "VALUES ('b1', 'u1', ?, 1, '')", rich_user().to_json())
    await old.close()

    store = await backend.open()
    loaded = await load(store)
    assert loaded == rich_user(version=1)
    assert loaded.changed == ALL_PARTS  # nothing is in parts yet: all of it is written next time
    documents = [doc async for page in ScheduleStore(store).stream_documents() for doc in page]
    assert orjson.loads(documents[0][2])["country"] == "MT"

    await commit(store, loaded)
    (core, profile, progress, payments), = await rows(store, "SELECT state, profile, progress, payments FROM users")
    assert not {"rules", "payment_ids", "country", "custom"} & set(orjson.loads(core))
    assert orjson.loads(profile)["custom"] == {"segment": "high", "score": 4}
    assert set(orjson.loads(progress)) == {"r1"}
    assert bytes(payments) == bytes(range(24))
    assert await load(store) == rich_user(version=2)
    documents = [doc async for page in ScheduleStore(store).stream_documents() for doc in page]
    assert orjson.loads(documents[0][2]) == orjson.loads(core) | orjson.loads(profile)


async def _simulated(records: list[RawRecord], rules_path: Path, state_path: Path,
                     cache: int) -> tuple[list[bytes], list[bytes]]:
    """The actions (canonical JSON, in emission order) and the stored users of one simulate run."""
    lines: list[bytes] = []

    def collect(actions: list[Action]) -> None:
        lines.extend(action.to_json() for action in actions)

    await simulate(records, load_adapter("reference"), load_rules(rules_path), collect, state_path=state_path,
                   batch_size=50, state_cache_size=cache)
    stored = SqliteStore(state_path)
    await stored.open()
    try:
        return lines, [user.to_json() for user in await stored.all_users()]
    finally:
        await stored.close()


async def test_states_read_back_from_the_store_every_batch_give_the_same_actions_and_users(tmp_path: Path) -> None:
    stream = list(synthetic_stream(StreamSpec(users=25, events=1500, seed=5)))
    # Then the first 40 payments again, 25 minutes of source time later: past the dedup window, so
    # only the payment ids each user's state remembers keep them from counting twice.
    late = [r for r in stream if r.stream.value == "payments" and r.kind == RecordKind.OK][:40]
    records = [
        RawRecord(transport="file", topic=r.stream.value, partition=0, offset=i, key=r.key, value=r.value,
                  timestamp_ms=T0_MS + i * 1000)
        for i, r in enumerate(stream + late)
    ]
    rules_path = write_rules(tmp_path / "rules.yaml")
    kept = await _simulated(records, rules_path, tmp_path / "kept.db", cache=100_000)
    reread = await _simulated(records, rules_path, tmp_path / "reread.db", cache=1)
    assert len(kept[0]) > 300 and len(kept[1]) == 25  # every rule kind fires on this stream
    assert reread == kept
