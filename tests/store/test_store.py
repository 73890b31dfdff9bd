"""The state store against live databases: SQLite (a temporary file) and PostgreSQL (a schema of its
own per test, dropped afterwards). Every test of the protocol runs on both.

What is proven: migrations are applied once and are idempotent on reopen; a batch (users, outbox,
history, dedup keys, offsets) is written all or nothing; acquire bumps the epoch (fencing the former
owner) and returns the stored offset and the dedup keys still inside the window; a stale epoch is
fenced and writes nothing; user versions are checked optimistically; the outbox migration keeps every seq;
migration 4 packs a previous store (a row per item) into rows per partition per batch without loss, and
the relay then delivers its pending actions once; sink cursors are per sink and partition over (row,
action index), actions come in (seq, index) order; the backlog counts what the slowest
sink still owes; history filters by user and rule. PostgreSQL only: concurrent members racing for
the same partitions and users behave as the protocol promises (FencedError / ConflictError, never a
deadlock error, never a lost update).
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from smartico_stream.engine.actions import Action, ActionKind
from smartico_stream.engine.evaluator import HistoryEntry
from smartico_stream.engine.state import RuleProgress, UserState
from smartico_stream.observability.metrics import Metrics
from smartico_stream.sinks.relay import OutboxRelay
from smartico_stream.store import BatchWrite, FencedError, OutboxRow, QueuedAction
from smartico_stream.store.base import ConflictError
from smartico_stream.store.packing import unpack_dedup
from smartico_stream.store.schema import STATE_MIGRATIONS
from smartico_stream.store.sqlite import SqliteStore
from tests.support import postgres
from tests.support.store_backends import Backend

pytestmark = pytest.mark.asyncio

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
P0 = ("payments", 0)
P1 = ("payments", 1)
P2 = ("casino", 2)
TABLES = (
    "users", "outbox", "sink_cursors", "history", "dedup_keys", "source_offsets", "handled_messages",
    "partition_leases", "source_cursors", "dead_letters", "cursor_resets",
    "rule_status", "rule_status_audit", "scheduler_leader", "scheduled_runs", "scheduled_run_users",
    "scheduled_executions", "rule_reload_requests", "rule_set_versions",
    "api_keys", "rest_partitions", "rest_inbox", "rest_idempotency",
)
# Every migration's version, in order (numbers are allotted per branch, so there may be gaps).
ALL_VERSIONS = [version for version, _ in STATE_MIGRATIONS]


# -- builders ---------------------------------------------------------------------------------------


def action(n: int, user: str = "u1", rule: str = "r1", brand: str = "b1") -> Action:
    return Action(
        action_id=f"{brand}/ev-{n}/{rule}/0",
        rule_id=rule,
        action=ActionKind.GIVE_POINTS,
        params={"amount": Decimal("1.5")},
        brand=brand,
        user=user,
        event_id=f"ev-{n}",
        event_type="deposit",
        event_time=T0 + timedelta(seconds=n),
        executions=1,
    )


def history(n: int, user: str = "u1", rule: str = "r1", brand: str = "b1", outcome: str = "executed") -> HistoryEntry:
    return HistoryEntry(
        brand=brand, user=user, rule_id=rule, event_id=f"ev-{n}", event_type="deposit",
        event_time=T0 + timedelta(seconds=n), outcome=outcome, executions=1 if outcome == "executed" else 0,
        reason=None if outcome == "executed" else "condition false",
        qualified_at=T0 if rule == "qual" else None,
        qualified_until=T0 + timedelta(hours=24) if rule == "qual" else None,
    )


def user(name: str, points: int = 0, version: int = 0, brand: str = "b1") -> UserState:
    state = UserState(brand=brand, user=name, points=Decimal(points), deposit_count=points, version=version)
    state.tags = {f"t{points}"}
    state.deposit_total = {"EUR": Decimal(points) * Decimal("10.25")}
    state.rules = {"r1": RuleProgress(remainder=Decimal("0.5"), executions=points, qualified_at=T0)}
    return state


def jsons(actions: Any) -> list[bytes]:
    """Actions as their canonical bytes (a stored action's Decimal params come back as strings)."""
    return [a.to_json() for a in actions]


def queued(partition: tuple[str, int], *actions: Action) -> list[QueuedAction]:
    return [QueuedAction(partition, a) for a in actions]


async def epochs_for(store: Any, *partitions: tuple[str, int], owner: str = "me") -> dict[tuple[str, int], int]:
    leases = await store.acquire(list(partitions), owner, dedup_since=0.0)
    return {tp: lease.epoch for tp, lease in leases.items()}


async def rows(store: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    async with store.connection() as conn:
        return await conn.fetch(sql, *args)


async def counts(store: Any) -> dict[str, int]:
    return {t: (await rows(store, f"SELECT COUNT(*) FROM {t}"))[0][0] for t in TABLES}


async def snapshot(store: Any) -> dict[str, Any]:
    """Everything a batch may write, in comparable form."""
    return {
        "users": [(u.user, u.to_json()) for u in await store.all_users()],
        "versions": await rows(store, "SELECT brand, user_id, version FROM users ORDER BY brand, user_id"),
        "actions": [a.action_id for a in await store.all_actions()],
        "history": await store.history(),
        "dedup": await dedup_rows(store),
        "offsets": await rows(store, "SELECT topic, part, next_offset FROM source_offsets ORDER BY topic, part"),
        "cursors": await rows(store, "SELECT sink, topic, part, last_seq, next_index FROM sink_cursors "
                                     "ORDER BY sink, topic, part"),
    }


async def dedup_rows(store: Any) -> list[tuple[str, int, list[tuple[int, float]]]]:
    """The stored dedup rows, unpacked: (topic, part, keys), in write order."""
    return [(topic, int(part), unpack_dedup(bytes(digests), bytes(seen)))
            for topic, part, digests, seen in await rows(store, "SELECT topic, part, digests, seen FROM dedup_keys "
                                                                "ORDER BY seq")]


# -- migrations -------------------------------------------------------------------------------------


async def test_migrations_are_applied_once_and_reopening_is_idempotent(backend: Backend) -> None:
    first = await backend.open()
    versions = await rows(first, "SELECT version FROM schema_migrations ORDER BY version")
    assert [v for (v,) in versions] == ALL_VERSIONS
    assert await counts(first) == dict.fromkeys(TABLES, 0)
    epochs = await epochs_for(first, P0)
    await first.commit(BatchWrite(epochs=epochs, offsets={P0: 7}, users=[user("u1", 3)], actions=queued(P0, action(1))))
    await first.close()
    backend.opened.remove(first)

    for _ in range(2):  # reopen twice: nothing re-applied, nothing lost
        again = await backend.open()
        versions = await rows(again, "SELECT version, applied_at FROM schema_migrations ORDER BY version")
        assert [v for v, _ in versions] == ALL_VERSIONS
        assert [a.action_id for a in await again.all_actions()] == [action(1).action_id]
        assert [u.user for u in await again.all_users()] == ["u1"]
        assert (await rows(again, "SELECT next_offset FROM source_offsets"))[0][0] == 7

    if backend.kind == "postgres":
        # Everything lives in the test's own schema.
        assert await rows(again, "SELECT current_schema()") == [(backend.schema,)]
        found = await rows(again, "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                           backend.schema)
        assert {t for (t,) in found} == {*TABLES, "schema_migrations"}


async def test_migration_3_drops_the_action_id_index_and_never_reuses_a_seq(backend: Backend) -> None:
    """A store written by the previous release (schema version 2), whose newest outbox rows were
    delivered and pruned, is upgraded: the pending rows, the sinks' cursors and the seq high-water
    mark survive, so the next action's seq is past every cursor; action ids are no longer indexed."""
    old = backend.new()
    await old.db.open(STATE_MIGRATIONS[:2])
    # Written as that release wrote them: one row per action.
    await old_outbox(old, [(P1, action(0)), (P1, action(1))])  # seq 1, 2: pending
    await old_outbox(old, [(P0, action(2)), (P0, action(3))])  # seq 3, 4: delivered and pruned
    async with old.transaction() as conn:
        await conn.execute("INSERT INTO sink_cursors (sink, topic, part, last_seq) VALUES ('s', ?, ?, 4)", *P0)
        await conn.execute("DELETE FROM outbox WHERE seq >= 3")
    await old.close()

    store = await backend.open()
    versions = [v for (v,) in await rows(store, "SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == ALL_VERSIONS
    epochs = await epochs_for(store, P0, P1)
    # The same id twice is kept twice: nothing in the engine writes one twice, and receivers
    # deduplicate by id (docs/sinks.md). Since migration 4 both are one row of their partition.
    await store.commit(BatchWrite(epochs=epochs, actions=queued(P0, action(4), action(4))))
    pending = await store.pending_actions("s", [P0, P1], 100)
    assert [(r.seq, r.index, r.action.event_id) for r in pending] == [
        (1, 0, "ev-0"), (2, 0, "ev-1"), (5, 0, "ev-4"), (5, 1, "ev-4")
    ]
    if backend.kind == "sqlite":
        indexes = [name for _, name, *_ in await rows(store, "PRAGMA index_list(outbox)")]
    else:
        indexes = [name for (name,) in await rows(
            store, "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = 'outbox'", backend.schema)]
    expected = ["outbox_partition"] if backend.kind == "sqlite" else ["outbox_partition", "outbox_pkey"]
    assert sorted(indexes) == expected


async def old_outbox(store: Any, actions: list[tuple[tuple[str, int], Action]]) -> None:
    """Outbox rows as schema versions 1 to 3 held them: one per action."""
    async with store.transaction() as conn:
        await conn.executemany(
            "INSERT INTO outbox (action_id, topic, part, brand, user_id, rule_id, body, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(a.action_id, t, p, a.brand, a.user, a.rule_id, a.to_json(), "2024-03-01T12:00:00.000+00:00")
             for (t, p), a in actions],
        )


class RecordingSink:
    """A sink double (implements ActionSink): what it acknowledged, in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: list[Action] = []

    async def deliver(self, actions: Any) -> None:
        self.received.extend(actions)

    async def close(self) -> None:
        pass


async def test_migration_4_packs_a_previous_store_and_the_relay_delivers_its_pending_actions_once(
    backend: Backend,
) -> None:
    """A store of the previous release (schema version 3: a row per action, history entry and dedup
    key) is upgraded to one row per partition per batch without loss: every action still pending
    for a sink is delivered to it exactly once by the relay (and nothing it already had), history
    reads and filters as before, the dedup window and offsets come back, users are untouched."""
    old = backend.new()
    await old.db.open(STATE_MIGRATIONS[:3])
    await old_outbox(old, [(P0, action(0)), (P0, action(1)), (P1, action(2, user="u2")), (P1, action(3, user="u2")),
                           (P0, action(4))])  # seq 1..5
    entries = [history(1), history(2, user="u2", outcome="skipped"), history(3, rule="qual"),
               history(4, brand="b2", user='we"ird\\one')]
    big = (1 << 63) + 99
    async with old.transaction() as conn:
        await conn.executemany(
            "INSERT INTO sink_cursors (sink, topic, part, last_seq) VALUES (?, ?, ?, ?)",
            [("s", *P0, 1), ("t", *P0, 5), ("t", *P1, 3)],
        )
        await conn.executemany(
            "INSERT INTO history (brand, user_id, rule_id, event_id, event_type, event_time, outcome, executions, "
            "reason, qualified_at, qualified_until, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(h.brand, h.user, h.rule_id, h.event_id, h.event_type, iso(h.event_time), h.outcome, h.executions,
              h.reason, iso(h.qualified_at), iso(h.qualified_until), "2024-03-01T12:00:00.000+00:00")
             for h in entries],
        )
        await conn.executemany(
            "INSERT INTO dedup_keys (topic, part, digest, first_seen) VALUES (?, ?, ?, ?)",
            [(*P0, 11, 100.0), (*P0, big - (1 << 64), 200.5), (*P1, 7, 150.0)],
        )
        await conn.executemany(
            "INSERT INTO partition_leases (topic, part, owner, epoch, acquired_at) VALUES (?, ?, 'old', 1, '')",
            [P0, P1],
        )
        await conn.execute("INSERT INTO source_offsets (topic, part, next_offset) VALUES (?, ?, 42)", *P0)
        await conn.execute("INSERT INTO users (brand, user_id, state, version, updated_at) "
                           "VALUES ('b1', 'u1', ?, 3, '')", user("u1", 5).to_json())
    await old.close()

    store = await backend.open()
    versions = [v for (v,) in await rows(store, "SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == ALL_VERSIONS
    assert await counts(store) == {**dict.fromkeys(TABLES, 0), "outbox": 5, "sink_cursors": 3, "history": 4,
                                   "dedup_keys": 2, "source_offsets": 1, "partition_leases": 2, "users": 1}
    assert await store.history() == entries
    assert await store.history(user="u2") == [entries[1]]
    assert await store.history(user='we"ird\\one') == [entries[3]]
    assert await store.history(brand="b1", rule="qual") == [entries[2]]
    assert jsons(await store.all_actions()) == jsons([action(0), action(1), action(2, user="u2"),
                                                       action(3, user="u2"), action(4)])
    assert await store.outbox_backlog(["s"], [P0, P1]) == 4
    assert await store.outbox_backlog(["t"], [P0, P1]) == 1
    assert await store.outbox_backlog(["s", "t"], [P0, P1]) == 4
    loaded = await store.load_users([("b1", "u1")])
    assert loaded[("b1", "u1")].version == 3 and loaded[("b1", "u1")].points == Decimal(5)

    leases = await store.acquire([P0, P1], "new", dedup_since=0.0)
    assert leases[P0].dedup_keys == [(11, 100.0), (big, 200.5)]
    assert leases[P1].dedup_keys == [(7, 150.0)]
    assert (leases[P0].epoch, leases[P0].next_offset) == (2, 42)
    epochs = {tp: lease.epoch for tp, lease in leases.items()}
    await store.commit(BatchWrite(epochs=epochs, actions=queued(P1, action(5, user="u2"), action(6, user="u2"))))

    s, t = RecordingSink("s"), RecordingSink("t")
    relay = OutboxRelay(store, [s, t], lambda: dict(epochs), Metrics(), batch_size=2)
    assert await relay.drain(10.0)
    assert await relay.drain(10.0)  # nothing more: each action once
    assert [a.event_id for a in s.received] == ["ev-1", "ev-2", "ev-3", "ev-4", "ev-5", "ev-6"]
    assert [a.event_id for a in t.received] == ["ev-3", "ev-5", "ev-6"]
    assert await store.outbox_backlog(["s", "t"], [P0, P1]) == 0
    assert await relay.prune() == 5  # the migrated rows, written in 2024; the new one is too young
    assert await store.prune_outbox(["s", "t"], [P0, P1], datetime.now(UTC) + timedelta(seconds=5)) == 2
    assert await counts(store) == {**dict.fromkeys(TABLES, 0), "sink_cursors": 4, "history": 4, "dedup_keys": 2,
                                   "source_offsets": 1, "partition_leases": 2, "users": 1}


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="milliseconds") if moment else None


async def test_two_postgres_members_opening_a_fresh_schema_together_both_start(pg: Backend) -> None:
    """Two instances of one operator starting at the same moment (a deployment rollout) on a schema
    that does not exist yet. Both must come up, with the migrations applied exactly once."""
    for _ in range(10):
        pg.schema = postgres.unique_schema("t_store")
        a, b = pg.new(), pg.new()
        try:
            results = await asyncio.gather(a.open(), b.open(), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            assert not errors, f"a member failed to start: {errors[0]!r}"
            versions = await rows(a, "SELECT version FROM schema_migrations")
            assert sorted(v for (v,) in versions) == ALL_VERSIONS
        finally:
            await a.close()
            await b.close()
            await postgres.drop_schema_async(pg.schema)


# -- atomic commit ----------------------------------------------------------------------------------


class ExplodingUser(UserState):
    def stored_parts(self) -> Any:
        raise RuntimeError("cannot serialise this user")


class ExplodingAction(Action):
    def to_json(self) -> bytes:
        raise RuntimeError("cannot serialise this action")


def full_batch(epochs: dict[tuple[str, int], int], n: int, version: int) -> BatchWrite:
    return BatchWrite(
        epochs=epochs,
        offsets={P0: 10 * n, P1: 10 * n + 1},
        users=[user("u1", n, version=version), user("u2", n, version=version)],
        actions=queued(P0, action(10 * n)) + queued(P1, action(10 * n + 1, user="u2")),
        history=[history(10 * n), history(10 * n + 1, user="u2", outcome="skipped")],
        dedup_added={P0: [(1000 + n, 100.0 + n), ((1 << 64) - 1 - n, 100.0 + n)], P1: [(2000 + n, 100.0 + n)]},
        dedup_horizon=50.0,
    )


async def test_a_commit_writes_users_outbox_history_dedup_keys_and_offsets_together(store: Any) -> None:
    epochs = await epochs_for(store, P0, P1)
    await store.commit(full_batch(epochs, 1, version=0))

    assert [(u.user, u.points, u.tags, u.deposit_total, u.rules) for u in await store.all_users()] == [
        ("u1", Decimal(1), {"t1"}, {"EUR": Decimal("10.25")}, {"r1": RuleProgress(Decimal("0.5"), 1, T0, None, 0)}),
        ("u2", Decimal(1), {"t1"}, {"EUR": Decimal("10.25")}, {"r1": RuleProgress(Decimal("0.5"), 1, T0, None, 0)}),
    ]
    loaded = await store.load_users([("b1", "u1"), ("b1", "u2"), ("b1", "nobody")])
    assert set(loaded) == {("b1", "u1"), ("b1", "u2")} and {s.version for s in loaded.values()} == {1}
    assert jsons(await store.all_actions()) == jsons([action(10), action(11, user="u2")])
    assert [(h.user, h.event_id, h.outcome, h.event_time) for h in await store.history()] == [
        ("u1", "ev-10", "executed", T0 + timedelta(seconds=10)),
        ("u2", "ev-11", "skipped", T0 + timedelta(seconds=11)),
    ]
    assert await rows(store, "SELECT topic, part, next_offset FROM source_offsets ORDER BY part") == [
        ("payments", 0, 10), ("payments", 1, 11)
    ]
    leases = await store.acquire([P0, P1], "me", dedup_since=0.0)
    assert sorted(leases[P0].dedup_keys) == [(1001, 101.0), ((1 << 64) - 2, 101.0)]
    assert leases[P1].dedup_keys == [(2001, 101.0)]
    assert (leases[P0].next_offset, leases[P1].next_offset) == (10, 11)


@pytest.mark.parametrize("failure", ["user_to_json", "action_to_json", "dedup_digest_overflow", "offset_overflow"])
async def test_a_failure_in_the_middle_of_a_commit_writes_nothing(store: Any, failure: str) -> None:
    """The failing batch changes the same users and partitions as the first one; each failure hits
    a later statement of the transaction (the last one after everything else was executed)."""
    epochs = await epochs_for(store, P0, P1)
    await store.commit(full_batch(epochs, 1, version=0))
    before = await snapshot(store)

    bad = full_batch(epochs, 2, version=1)
    if failure == "user_to_json":
        good = bad.users[0]
        bad.users[1] = ExplodingUser(brand="b1", user="u2", points=Decimal(9), version=1)
        bad.users = [good, bad.users[1]]
    elif failure == "action_to_json":
        bad.actions.append(QueuedAction(P1, ExplodingAction(**dataclasses.asdict(action(99)))))
    elif failure == "dedup_digest_overflow":
        bad.dedup_added[P1].append((1 << 65, 123.0))  # does not fit a BIGINT even as signed
    else:
        bad.offsets[P1] = 1 << 70
    with pytest.raises(Exception) as caught:
        await store.commit(bad)
    assert not isinstance(caught.value, FencedError | ConflictError)
    assert await snapshot(store) == before

    # The store is still usable, and the same batch without the poison goes through.
    await store.commit(full_batch(epochs, 2, version=1))
    after = await snapshot(store)
    assert after["actions"] == [action(10).action_id, action(11).action_id, action(20).action_id, action(21).action_id]
    assert after["offsets"] == [("payments", 0, 20), ("payments", 1, 21)]
    assert [v for _, _, v in after["versions"]] == [2, 2]


# -- leases -----------------------------------------------------------------------------------------


async def test_acquire_bumps_the_epoch_and_returns_the_stored_offset_and_the_recent_dedup_keys(store: Any) -> None:
    first = await store.acquire([P0, P2], "a", dedup_since=0.0)
    assert {tp: (lease.epoch, lease.next_offset, lease.dedup_keys) for tp, lease in first.items()} == {
        P0: (1, None, []), P2: (1, None, [])
    }
    big = (1 << 63) + 12345  # an unsigned digest past the signed range survives the round trip
    await store.commit(BatchWrite(
        epochs={P0: 1, P2: 1}, offsets={P0: 42, P2: 7},
        dedup_added={P0: [(11, 100.0), (big, 200.0), (33, 300.0)], P2: [(44, 100.0)]},
    ))

    second = await store.acquire([P0], "b", dedup_since=150.0)
    assert second[P0].epoch == 2
    assert second[P0].next_offset == 42
    assert second[P0].dedup_keys == [(big, 200.0), (33, 300.0)]  # inside the window, oldest first
    lease_row = await rows(store, "SELECT owner, epoch FROM partition_leases WHERE topic = ? AND part = ?", *P0)
    assert lease_row == [("b", 2)]

    third = await store.acquire([P0, P1, P2], "c", dedup_since=0.0)
    assert {tp: lease.epoch for tp, lease in third.items()} == {P0: 3, P1: 1, P2: 2}
    assert third[P0].dedup_keys == [(11, 100.0), (big, 200.0), (33, 300.0)]
    assert (third[P1].next_offset, third[P1].dedup_keys) == (None, [])
    assert (third[P2].next_offset, third[P2].dedup_keys) == (7, [(44, 100.0)])


async def test_the_dedup_horizon_deletes_old_keys_of_the_written_partitions_only(store: Any) -> None:
    epochs = await epochs_for(store, P0, P2)
    await store.commit(BatchWrite(epochs=epochs, dedup_added={P0: [(1, 10.0), (2, 20.0), (3, 30.0)], P2: [(4, 10.0)]}))
    await store.commit(BatchWrite(epochs=epochs, dedup_added={P0: [(6, 15.0)]}))
    # A batch for P0 only, with a horizon of 25: P0's rows whose every key is older than 25 go (the
    # row of key 6), the one holding key 3 stays whole; P2's stay.
    await store.commit(BatchWrite(epochs={P0: epochs[P0]}, offsets={P0: 5}, dedup_added={P0: [(5, 40.0)]},
                                  dedup_horizon=25.0))
    assert [(topic, part, [d for d, _ in keys]) for topic, part, keys in await dedup_rows(store)] == [
        ("payments", 0, [1, 2, 3]), ("casino", 2, [4]), ("payments", 0, [5])
    ]
    # Acquire is given the window's start: keys before it are not returned.
    leases = await store.acquire([P0], "me", dedup_since=25.0)
    assert leases[P0].dedup_keys == [(3, 30.0), (5, 40.0)]
    leases = await store.acquire([P0], "me", dedup_since=0.0)
    assert leases[P0].dedup_keys == [(1, 10.0), (2, 20.0), (3, 30.0), (5, 40.0)]


async def test_a_digest_seen_again_takes_its_latest_time_and_rows_pack_whole_windows(store: Any) -> None:
    epochs = await epochs_for(store, P0)
    window = [(d * 7919 % (1 << 64), 1000.0 + d / 8) for d in range(5000)]
    await store.commit(BatchWrite(epochs=epochs, dedup_added={P0: window}))
    await store.commit(BatchWrite(epochs=epochs, dedup_added={P0: [(window[0][0], 5000.0)]}))
    assert [len(keys) for _, _, keys in await dedup_rows(store)] == [5000, 1]  # one row per partition per batch
    leases = await store.acquire([P0], "me", dedup_since=0.0)
    assert leases[P0].dedup_keys == [*window[1:], (window[0][0], 5000.0)]


async def test_a_stale_epoch_is_fenced_and_writes_nothing(backend: Backend) -> None:
    old_owner, new_owner = await backend.open(), await backend.open()
    old = await epochs_for(old_owner, P0, P1, owner="old")
    await old_owner.commit(full_batch(old, 1, version=0))
    new = await epochs_for(new_owner, P1, owner="new")  # P1 moves; P0 stays with the old owner
    before = await snapshot(new_owner)

    with pytest.raises(FencedError) as fenced:
        await old_owner.commit(full_batch(old, 2, version=1))  # writes P0 and P1
    assert fenced.value.partitions == [P1]
    assert await snapshot(new_owner) == before

    # Delivery cursors are fenced the same way.
    pending = await old_owner.pending_actions("s", [P0, P1], 100)
    with pytest.raises(FencedError):
        await old_owner.mark_delivered("s", pending, old)
    assert await snapshot(new_owner) == before

    # The old owner can still write what it kept; the new owner writes with its epoch.
    await old_owner.commit(BatchWrite(epochs={P0: old[P0]}, offsets={P0: 99}))
    await new_owner.commit(BatchWrite(epochs={P1: new[P1]}, offsets={P1: 98}, actions=queued(P1, action(500))))
    assert (await snapshot(new_owner))["offsets"] == [("payments", 0, 99), ("payments", 1, 98)]
    # A partition never acquired cannot be written at all.
    with pytest.raises(FencedError):
        await new_owner.commit(BatchWrite(epochs={("nowhere", 0): 1}, offsets={("nowhere", 0): 1}))


async def test_fencing_and_the_dedup_horizon_cover_batches_over_many_partitions(backend: Backend) -> None:
    """Lease checks and expiry deletes are one statement per chunk of partitions: a batch wider than
    a chunk is checked and pruned in full, the last partition as much as the first."""
    old_owner, new_owner = await backend.open(), await backend.open()
    partitions = [("wide", p) for p in range(SqliteStore._PARTITION_CHUNK * 2 + 3)]
    old = await epochs_for(old_owner, *partitions, owner="old")
    await old_owner.commit(BatchWrite(epochs=old, dedup_added={tp: [(tp[1], 10.0), (1000 + tp[1], 30.0)]
                                                             for tp in partitions}))
    await old_owner.commit(BatchWrite(epochs=old, offsets=dict.fromkeys(partitions, 1), dedup_horizon=20.0))
    # Nothing went: each partition's row holds a key inside the window.
    assert sorted((part, [d for d, _ in keys]) for _, part, keys in await dedup_rows(old_owner)) == [
        (p, [p, 1000 + p]) for _, p in partitions
    ]
    await old_owner.commit(BatchWrite(epochs=old, offsets=dict.fromkeys(partitions, 1), dedup_horizon=31.0))
    assert await dedup_rows(old_owner) == []  # every partition's row was past the horizon
    last = partitions[-1]
    await epochs_for(new_owner, last, owner="new")
    before = await snapshot(new_owner)
    with pytest.raises(FencedError) as fenced:
        await old_owner.commit(BatchWrite(epochs=old, offsets=dict.fromkeys(partitions, 2)))
    assert fenced.value.partitions == [last]
    assert await snapshot(new_owner) == before


# -- optimistic user versions -----------------------------------------------------------------------


async def test_user_versions_are_checked_optimistically(backend: Backend) -> None:
    a, b = await backend.open(), await backend.open()
    ea = await epochs_for(a, P0, owner="a")
    eb = await epochs_for(b, P2, owner="b")  # users spread over two members' partitions
    await a.commit(BatchWrite(epochs=ea, users=[user("u1", 1), user("u2", 1)]))

    seen_by_a = await a.load_users([("b1", "u1"), ("b1", "u2")])
    seen_by_b = await b.load_users([("b1", "u1"), ("b1", "u2")])
    assert {s.version for s in seen_by_a.values()} == {1}
    seen_by_a[("b1", "u1")].points = Decimal(10)
    await a.commit(BatchWrite(epochs=ea, users=[seen_by_a[("b1", "u1")]], offsets={P0: 3}))
    before = await snapshot(a)

    seen_by_b[("b1", "u1")].points = Decimal(20)  # loaded at version 1, now stale
    with pytest.raises(ConflictError) as conflict:
        await b.commit(BatchWrite(epochs=eb, users=[seen_by_b[("b1", "u2")], seen_by_b[("b1", "u1")]],
                                  actions=queued(P2, action(7)), offsets={P2: 5}, history=[history(7)]))
    assert conflict.value.users == [("b1", "u1")]
    assert await snapshot(a) == before

    # A user created meanwhile by someone else is a conflict too, and so is a version from nowhere.
    with pytest.raises(ConflictError):
        await b.commit(BatchWrite(epochs=eb, users=[user("u1", 5, version=0)]))
    with pytest.raises(ConflictError):
        await b.commit(BatchWrite(epochs=eb, users=[user("ghost", 5, version=3)]))
    assert await snapshot(a) == before

    # Reloaded, b's write goes through and bumps the version.
    fresh = await b.load_users([("b1", "u1")])
    await b.commit(BatchWrite(epochs=eb, users=[fresh[("b1", "u1")]]))
    assert (await b.load_users([("b1", "u1")]))[("b1", "u1")].version == 3


async def test_version_checks_cover_batches_larger_than_one_query_chunk(store: Any) -> None:
    epochs = await epochs_for(store, P0)
    names = [f"u{i:04d}" for i in range(950)]  # > 2 chunks of 400 keys
    await store.commit(BatchWrite(epochs=epochs, users=[user(n, 1) for n in names]))
    loaded = await store.load_users([("b1", n) for n in names])
    states = [loaded[("b1", n)] for n in names]
    stale = states[870]
    stale.version = 0
    with pytest.raises(ConflictError) as conflict:
        await store.commit(BatchWrite(epochs=epochs, users=states))
    assert conflict.value.users == [("b1", "u0870")]
    stale.version = 1
    await store.commit(BatchWrite(epochs=epochs, users=states))
    assert {v for (v,) in await rows(store, "SELECT DISTINCT version FROM users")} == {2}


# -- outbox -----------------------------------------------------------------------------------------


async def test_pending_actions_and_cursors_are_per_sink_and_partition_in_seq_order(store: Any) -> None:
    epochs = await epochs_for(store, P0, P1, P2)
    # Interleaved partitions over three batches: seq is the global emission order.
    await store.commit(BatchWrite(epochs=epochs,
                                  actions=queued(P0, action(0)) + queued(P1, action(1)) + queued(P0, action(2))))
    await store.commit(BatchWrite(epochs=epochs, actions=queued(P2, action(3)) + queued(P1, action(4))))
    await store.commit(BatchWrite(epochs=epochs, actions=queued(P0, action(5)) + queued(P2, action(6))))
    partition_of = {0: P0, 1: P1, 2: P0, 3: P2, 4: P1, 5: P0, 6: P2}

    # One row per partition per batch: a batch's partitions follow each other, each in its own order.
    everything = await store.pending_actions("a", [P0, P1, P2], 100)
    assert [r.action.event_id for r in everything] == ["ev-0", "ev-2", "ev-1", "ev-3", "ev-4", "ev-5", "ev-6"]
    assert [(r.seq, r.index) for r in everything] == sorted((r.seq, r.index) for r in everything)
    assert [r.index for r in everything] == [0, 1, 0, 0, 0, 0, 0]
    assert len({r.seq for r in everything}) == 6
    assert all(r.partition == partition_of[int(r.action.event_id[3:])] for r in everything)
    assert [r.action.event_id for r in await store.pending_actions("a", [P1], 100)] == ["ev-1", "ev-4"]

    limited = await store.pending_actions("a", [P0, P1, P2], 4)
    assert [r.action.event_id for r in limited] == ["ev-0", "ev-2", "ev-1", "ev-3"]
    await store.mark_delivered("a", limited, epochs)
    assert [r.action.event_id for r in await store.pending_actions("a", [P0, P1, P2], 100)] == ["ev-4", "ev-5", "ev-6"]
    assert await store.outbox_backlog(["a"], [P0, P1, P2]) == 3
    # Sink b has its own cursors: it still owes everything.
    assert len(await store.pending_actions("b", [P0, P1, P2], 100)) == 7
    assert await store.outbox_backlog(["a", "b"], [P0, P1, P2]) == 7
    assert await store.outbox_backlog(["a", "b"], [P1]) == 2

    rest = await store.pending_actions("a", [P0, P1, P2], 100)
    await store.mark_delivered("a", rest, epochs)
    assert await store.pending_actions("a", [P0, P1, P2], 100) == []
    assert await store.outbox_backlog(["a"], [P0, P1, P2]) == 0
    b_rows = await store.pending_actions("b", [P2], 100)
    await store.mark_delivered("b", b_rows, epochs)
    assert await store.outbox_backlog(["a", "b"], [P0, P1, P2]) == 5
    assert await store.outbox_backlog([], [P0]) == 3  # no sink: every row of the partition counts
    # Cursors per sink and partition, at the last delivered row and how much of it was delivered.
    seq_of = {r.action.event_id: r.seq for r in everything}
    assert await rows(store, "SELECT sink, topic, part, last_seq, next_index FROM sink_cursors "
                             "ORDER BY sink, topic, part") == [
        ("a", "casino", 2, seq_of["ev-6"], 1), ("a", "payments", 0, seq_of["ev-5"], 1),
        ("a", "payments", 1, seq_of["ev-4"], 1), ("b", "casino", 2, seq_of["ev-6"], 1),
    ]


async def test_a_batch_row_is_delivered_in_parts_and_pruned_once_delivered_in_full(store: Any) -> None:
    epochs = await epochs_for(store, P0, P1)
    await store.commit(BatchWrite(epochs=epochs, actions=queued(P0, *(action(i) for i in range(10)))
                                  + queued(P1, action(10))))
    await store.commit(BatchWrite(epochs=epochs, actions=queued(P0, action(11))))
    assert await rows(store, "SELECT part, actions FROM outbox ORDER BY seq") == [(0, 10), (1, 1), (0, 1)]
    later = datetime.now(UTC) + timedelta(seconds=5)
    got = []
    while part := await store.pending_actions("a", [P0, P1], 3):
        assert len(part) <= 3
        got += part
        await store.mark_delivered("a", part, epochs)
        # The row of ten stays until its last action is delivered; the backlog counts what is left.
        assert await store.outbox_backlog(["a"], [P0, P1]) == 12 - len(got)
        if len(got) < 10:
            assert await store.prune_outbox(["a"], [P0, P1], later) == 0
    assert [r.action.event_id for r in got] == [f"ev-{i}" for i in range(12)]
    assert [r.index for r in got] == [*range(10), 0, 0]
    assert await store.prune_outbox(["a"], [P0, P1], later) == 12  # the three rows, by the actions they held
    assert await store.all_actions() == []
    assert await store.pending_actions("a", [P0, P1], 10) == []


@pytest.mark.parametrize("partitions_per_query", [64, 1])
async def test_pending_actions_are_exact_when_other_members_rows_dominate_the_outbox(
    store: Any, partitions_per_query: int
) -> None:
    # P1 is another member's partition with most of the rows: reading them in seq order would keep
    # few of ours, so the store reads ours per partition and must still merge them exactly (also
    # when the partitions take several queries, as more than 64 do).
    store._PARTITION_CHUNK = partitions_per_query
    epochs = await epochs_for(store, P0, P1, P2)
    for n in range(0, 60, 3):
        await store.commit(BatchWrite(epochs=epochs, actions=queued(P1, *(action(n * 10 + i) for i in range(9)))
                                      + queued(P0 if n % 2 else P2, action(n * 10 + 9))))
    ours = [r for r in await store.pending_actions("a", [P0, P1, P2], 1000) if r.partition != P1]
    assert len(ours) == 20
    got: list[OutboxRow] = []
    while batch := await store.pending_actions("a", [P0, P2], 4):
        assert len(batch) <= 4
        got += batch
        await store.mark_delivered("a", batch, epochs)
    assert [(r.seq, r.partition, r.action.event_id) for r in got] == [
        (r.seq, r.partition, r.action.event_id) for r in ours
    ]


async def test_a_partition_without_actions_does_not_hold_back_delivery(store: Any) -> None:
    epochs = await epochs_for(store, P0, P1, P2)
    await store.commit(BatchWrite(epochs=epochs, actions=queued(P0, *(action(i) for i in range(5)))))
    first = await store.pending_actions("a", [P0, P1, P2], 3)
    await store.mark_delivered("a", first, epochs)
    await store.commit(BatchWrite(epochs=epochs, actions=queued(P2, action(5))))
    rest = await store.pending_actions("a", [P0, P1, P2], 100)
    assert [r.action.event_id for r in first + rest] == [f"ev-{i}" for i in range(6)]


async def test_prune_outbox_deletes_only_what_every_sink_delivered_and_is_old_enough(store: Any) -> None:
    epochs = await epochs_for(store, P0, P1)
    await store.commit(BatchWrite(epochs=epochs, actions=queued(P0, action(0), action(1)) + queued(P1, action(2))))
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert await store.prune_outbox(["a", "b"], [P0, P1], later) == 0  # nothing delivered yet
    delivered_a = await store.pending_actions("a", [P0, P1], 100)
    await store.mark_delivered("a", delivered_a, epochs)
    assert await store.prune_outbox(["a", "b"], [P0, P1], later) == 0  # b still owes them
    await store.mark_delivered("b", (await store.pending_actions("b", [P0, P1], 100))[:2], epochs)  # ev-0, ev-1
    assert await store.prune_outbox(["a", "b"], [P0, P1], datetime.now(UTC) - timedelta(hours=1)) == 0  # too young
    assert await store.prune_outbox([], [P0, P1], later) == 0  # no sinks: kept for one to come
    assert await store.prune_outbox(["a", "b"], [P0, P1], later) == 2
    assert [r.action.event_id for r in await store.pending_actions("b", [P0, P1], 100)] == ["ev-2"]
    assert await store.outbox_backlog(["a", "b"], [P0, P1]) == 1
    assert [a.event_id for a in await store.all_actions()] == ["ev-2"]


async def test_mark_delivered_of_nothing_and_of_a_replayed_row_is_harmless(store: Any) -> None:
    epochs = await epochs_for(store, P0)
    await store.commit(BatchWrite(epochs=epochs, actions=queued(P0, action(0), action(1))))
    got = await store.pending_actions("a", [P0], 10)
    await store.mark_delivered("a", [], epochs)
    await store.mark_delivered("a", got, epochs)
    await store.mark_delivered("a", got[:1], epochs)  # a late repeat of an older delivery
    pending = await store.pending_actions("a", [P0], 10)
    # A cursor moving back makes delivery repeat (at-least-once), never skip.
    assert [r.action.event_id for r in pending] in ([], ["ev-1"])
    assert isinstance(got[0], OutboxRow)


# -- history ----------------------------------------------------------------------------------------


async def test_history_filters_by_brand_user_and_rule(store: Any) -> None:
    epochs = await epochs_for(store, P0)
    entries = [
        history(1, user="u1", rule="r1"), history(2, user="u2", rule="r1"), history(3, user="u1", rule="qual"),
        history(4, user="u1", rule="r1", outcome="skipped"), history(5, user="u1", rule="r1", brand="b2"),
    ]
    await store.commit(BatchWrite(epochs=epochs, history=entries[:2]))
    await store.commit(BatchWrite(epochs=epochs, history=entries[2:]))

    assert await store.history() == entries
    assert await store.history(user="u1") == [entries[0], entries[2], entries[3], entries[4]]
    assert await store.history(brand="b1", user="u1") == [entries[0], entries[2], entries[3]]
    assert await store.history(rule="r1") == [entries[0], entries[1], entries[3], entries[4]]
    assert await store.history(brand="b1", user="u1", rule="r1") == [entries[0], entries[3]]
    assert await store.history(rule="qual") == [entries[2]]
    assert entries[2].qualified_until == T0 + timedelta(hours=24)
    assert await store.history(user="u1", limit=2) == [entries[0], entries[2]]
    assert await store.history(user="nobody") == []


async def test_prune_history_deletes_from_the_oldest_what_was_recorded_before_the_horizon(store: Any) -> None:
    epochs = await epochs_for(store, P0)
    entries = [history(n) for n in range(6)]
    for entry in entries:  # a row per batch: six batches
        await store.commit(BatchWrite(epochs=epochs, history=[entry]))
    # Rows 1-4 (seq order) were recorded 40 days ago; row 0 by a member whose clock ran a day ahead.
    old, ahead = (datetime.now(UTC) - timedelta(days=d) for d in (40, -1))
    seqs = [seq for (seq,) in await rows(store, "SELECT seq FROM history ORDER BY seq")]
    async with store.transaction() as conn:
        await conn.execute("UPDATE history SET recorded_at = ? WHERE seq > ? AND seq < ?",
                           old.isoformat(timespec="milliseconds"), seqs[0], seqs[5])
        await conn.execute("UPDATE history SET recorded_at = ? WHERE seq = ?",
                           ahead.isoformat(timespec="milliseconds"), seqs[0])
    horizon = datetime.now(UTC) - timedelta(days=30)

    # About `limit` entries' rows from the oldest row per call: the row stamped ahead is kept, and
    # stays the start of the range.
    assert await store.prune_history(horizon, limit=3) == 2
    assert await store.history() == [entries[0], entries[3], entries[4], entries[5]]
    assert await store.prune_history(horizon, limit=100) == 2
    assert await store.history() == [entries[0], entries[5]]
    assert await store.prune_history(horizon, limit=100) == 0  # nothing else is due
    assert await store.prune_history(datetime.now(UTC) + timedelta(days=2), limit=100) == 2
    assert await store.prune_history(horizon, limit=100) == 0  # an empty table


# -- PostgreSQL: members racing ---------------------------------------------------------------------


async def test_two_postgres_members_racing_for_a_partition_one_epoch_wins_each_round(pg: Backend) -> None:
    a, b = await pg.open(), await pg.open()
    named = {"a": a, "b": b}
    offset = 0
    for round_ in range(8):
        leases = await asyncio.gather(a.acquire([P0], "a", 0.0), b.acquire([P0], "b", 0.0))
        ea, eb = leases[0][P0].epoch, leases[1][P0].epoch
        assert {ea, eb} == {2 * round_ + 1, 2 * round_ + 2}, "each acquire gets its own epoch"
        winner, loser = ("a", "b") if ea > eb else ("b", "a")
        won, lost = max(ea, eb), min(ea, eb)
        assert await rows(a, "SELECT owner, epoch FROM partition_leases") == [(winner, won)]
        # Both saw the offset of the previous round's winner.
        assert {leases[0][P0].next_offset, leases[1][P0].next_offset} == {offset or None}

        # The two write "at the same time": the holder of the older epoch is fenced.
        results = await asyncio.gather(
            named[loser].commit(BatchWrite(epochs={P0: lost}, offsets={P0: 10_000 + round_},
                                           actions=queued(P0, action(10_000 + round_)))),
            named[winner].commit(BatchWrite(epochs={P0: won}, offsets={P0: round_ + 1},
                                            actions=queued(P0, action(round_)))),
            return_exceptions=True,
        )
        assert isinstance(results[0], FencedError) and results[0].partitions == [P0]
        assert results[1] is None
        offset = round_ + 1
        assert await rows(a, "SELECT next_offset FROM source_offsets") == [(offset,)]
    assert [x.action_id for x in await a.all_actions()] == [action(i).action_id for i in range(8)]


async def test_a_postgres_commit_racing_a_takeover_is_either_seen_by_the_new_owner_or_fenced(pg: Backend) -> None:
    old, new = await pg.open(), await pg.open()
    epoch = (await old.acquire([P0], "old", 0.0))[P0].epoch
    offset = None
    outcomes = set()
    committed: list[str] = []
    for i in range(12):
        commit, lease = await asyncio.gather(
            old.commit(BatchWrite(epochs={P0: epoch}, offsets={P0: 100 + i}, actions=queued(P0, action(i)))),
            new.acquire([P0], "new", 0.0),
            return_exceptions=True,
        )
        assert not isinstance(lease, BaseException), repr(lease)
        lease = lease[P0]
        if isinstance(commit, FencedError):
            outcomes.add("fenced")
            assert lease.next_offset == offset  # nothing of the fenced batch is visible
        else:
            assert commit is None, repr(commit)
            outcomes.add("committed")
            offset = 100 + i
            committed.append(action(i).action_id)
            assert lease.next_offset == offset  # the takeover saw the whole batch
        # The former owner takes the partition back for the next round.
        epoch = (await old.acquire([P0], "old", 0.0))[P0].epoch
    assert [a.action_id for a in await old.all_actions()] == committed  # fenced batches left nothing
    assert outcomes  # either order may happen; both are correct


async def test_postgres_members_acquiring_overlapping_partitions_in_any_order_do_not_deadlock(pg: Backend) -> None:
    """librdkafka hands partitions over in no particular order; two members taking over overlapping
    sets (a member considered dead still acquiring, or a rebalance storm) must each get a lease,
    not a deadlock error that kills the rebalance callback."""
    a, b = await pg.open(), await pg.open()
    partitions = [("payments", p) for p in range(6)]
    for _ in range(3):
        results = await asyncio.gather(
            a.acquire(partitions, "a", 0.0), b.acquire(partitions[::-1], "b", 0.0), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, f"acquire failed: {type(errors[0]).__name__}: {errors[0]}"


async def test_postgres_commits_touching_the_same_users_in_any_order_conflict_instead_of_deadlocking(
    pg: Backend,
) -> None:
    """A user's streams may sit on partitions of two members; both write that user's state. The loser
    must get a ConflictError (the service reloads and redoes the batch), not a deadlock error (which
    the service does not handle: it crashes)."""
    a, b = await pg.open(), await pg.open()
    ea, eb = await epochs_for(a, P0, owner="a"), await epochs_for(b, P2, owner="b")
    names = [f"u{i:04d}" for i in range(1500)]
    await a.commit(BatchWrite(epochs=ea, users=[user(n, 1) for n in names]))
    for _ in range(3):
        la = await a.load_users([("b1", n) for n in names])
        lb = await b.load_users([("b1", n) for n in names])
        results = await asyncio.gather(
            a.commit(BatchWrite(epochs=ea, users=[la[("b1", n)] for n in names])),
            b.commit(BatchWrite(epochs=eb, users=[lb[("b1", n)] for n in reversed(names)])),
            return_exceptions=True,
        )
        unexpected = [r for r in results if r is not None and not isinstance(r, ConflictError)]
        assert not unexpected, f"commit failed with {type(unexpected[0]).__name__}: {unexpected[0]}"
        assert sum(r is None for r in results) >= 1


async def test_postgres_members_creating_the_same_new_user_concurrently_lose_no_update(pg: Backend) -> None:
    """Both members see no stored state for a new user (version 0) and commit it at the same time:
    one must win and the other get a ConflictError; otherwise the second silently overwrites the
    first's state (the first's deposit, points, tags are lost) while both think they committed."""
    a, b = await pg.open(), await pg.open()
    ea, eb = await epochs_for(a, P0, owner="a"), await epochs_for(b, P2, owner="b")
    silent_overwrites = []
    for i in range(5):
        name = f"new-{i}"
        from_a, from_b = user(name, 1), user(name, 2)
        results = await asyncio.gather(
            a.commit(BatchWrite(epochs=ea, users=[from_a])), b.commit(BatchWrite(epochs=eb, users=[from_b])),
            return_exceptions=True,
        )
        assert all(r is None or isinstance(r, ConflictError) for r in results), results
        if results == [None, None]:
            silent_overwrites.append(name)
    stored = await rows(a, "SELECT user_id, version FROM users ORDER BY user_id")
    assert not silent_overwrites, (
        f"both members committed version 0 of {silent_overwrites} and neither got a ConflictError; "
        f"stored versions: {stored} (one member's state change is lost)"
    )


@pytest.mark.parametrize(("mode", "pragma"), [("FULL", 2), ("NORMAL", 1), ("EXTRA", 3)])
async def test_the_sqlite_sync_mode_comes_from_the_settings(tmp_path: Path, mode: str, pragma: int) -> None:
    from smartico_stream.config import load_settings
    from smartico_stream.store import open_store_from_url

    settings = load_settings(environ={}, store={"url": f"sqlite:///{tmp_path}/s.db", "sqlite_synchronous": mode})
    store = open_store_from_url(settings.store.url, None, settings.store.sqlite_synchronous)
    await store.open()
    try:
        assert await rows(store, "PRAGMA synchronous") == [(pragma,)]
    finally:
        await store.close()
