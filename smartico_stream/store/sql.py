"""The state store logic, written once for SQLite and PostgreSQL over a :class:`Database`.

SQL uses ``?`` placeholders; the PostgreSQL connection rewrites them to ``$n``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

from smartico_stream.engine.actions import Action
from smartico_stream.engine.evaluator import HistoryEntry
from smartico_stream.engine.state import UserState
from smartico_stream.events.raw import PartitionId, UserKey
from smartico_stream.store.base import BatchWrite, ConflictError, FencedError, Lease, OutboxRow, RowEncodingError
from smartico_stream.store.schema import STATE_MIGRATIONS, Dialect, Migrations, to_signed, to_unsigned


class Connection(Protocol):
    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def execute_count(self, sql: str, *args: Any) -> int:
        """Run one statement; the number of rows it changed."""
        ...


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="milliseconds") if moment else None


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _by_brand(keys: Sequence[UserKey]) -> dict[str, list[str]]:
    """User ids grouped by brand, in the order given (without repeats)."""
    grouped: dict[str, list[str]] = {}
    for brand, user in dict.fromkeys(keys):
        grouped.setdefault(brand, []).append(user)
    return grouped


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


def _each_partition(count: int, condition: str = "") -> str:
    """A WHERE clause matching ``count`` (topic, part) pairs, each with ``condition`` (parameters:
    topic, part and the condition's, per pair). An OR of terms, not a row-value IN: both databases
    turn each term into its own index range."""
    return " OR ".join([f"(topic = ? AND part = ?{condition})"] * count)


class _DryRun(Exception):
    """Raised inside a probe's transaction to roll it back."""


def _encoded_users(users: Sequence[UserState], now: str) -> list[tuple[Any, ...]]:
    """The users' rows, in one lock order. A state JSON cannot hold (an integer beyond 64 bits
    from a custom field) is a :class:`RowEncodingError`, so the service can isolate its record."""
    try:
        ordered = sorted(users, key=lambda u: (u.brand, u.user))
        return [(u.brand, u.user, u.to_json(), u.version + 1, now) for u in ordered]
    except (TypeError, ValueError) as exc:
        # orjson's messages name the problem ("Integer exceeds 64-bit range"), never the value.
        raise RowEncodingError(f"users.state: a user's state cannot be encoded as JSON ({exc})") from None


class Database(Protocol):
    """What the store logic needs from a database: SQLiteDatabase or PostgresDatabase."""

    dialect: Dialect

    async def open(self, migrations: Migrations) -> None: ...

    async def close(self) -> None: ...

    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """A Connection inside one write transaction."""
        ...

    def connection(self) -> AbstractAsyncContextManager[Connection]:
        """A Connection for reads."""
        ...

    def refusal(self, exc: BaseException) -> str | None:
        """A value-free description when ``exc`` means the database refused the content written
        (not the connection, not a lock), else ``None``."""
        ...


async def dry_run(db: Database, write: Callable[[Connection], Awaitable[None]]) -> None:
    """Run ``write`` in a transaction of ``db`` and roll it back: raises what a real write would,
    leaves the database as it was."""
    try:
        async with db.transaction() as conn:
            await write(conn)
            raise _DryRun
    except _DryRun:
        return


class SqlStore:
    """The state store over a :class:`Database` (the Store protocol of store/base.py)."""

    _lease_lock = ""  # appended to the lease check (PostgreSQL locks the rows until commit)
    _VERSION_CHUNK = 400
    _PARTITION_CHUNK = 64  # partitions per outbox query (PostgreSQL allows 32767 parameters)

    def __init__(self, db: Database) -> None:
        self.db = db

    async def open(self) -> None:
        """Connect and apply pending migrations."""
        await self.db.open(STATE_MIGRATIONS)

    async def close(self) -> None:
        await self.db.close()

    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        return self.db.transaction()

    def connection(self) -> AbstractAsyncContextManager[Connection]:
        return self.db.connection()

    # partitions --------------------------------------------------------------------------------

    async def acquire(
        self, partitions: Sequence[PartitionId], owner: str, dedup_since: float
    ) -> dict[PartitionId, Lease]:
        leases: dict[PartitionId, Lease] = {}
        async with self.transaction() as conn:
            for topic, part in sorted(partitions):  # one lock order for every writer: no deadlocks
                await conn.execute(
                    "INSERT INTO partition_leases (topic, part, owner, epoch, acquired_at) VALUES (?, ?, ?, 1, ?) "
                    "ON CONFLICT (topic, part) DO UPDATE SET owner = excluded.owner, "
                    "epoch = partition_leases.epoch + 1, acquired_at = excluded.acquired_at",
                    topic, part, owner, _now(),
                )
                lease_rows = await conn.fetch(
                    "SELECT epoch FROM partition_leases WHERE topic = ? AND part = ?", topic, part
                )
                epoch = lease_rows[0][0]
                offset_rows = await conn.fetch(
                    "SELECT next_offset FROM source_offsets WHERE topic = ? AND part = ?", topic, part
                )
                keys = await conn.fetch(
                    "SELECT digest, first_seen FROM dedup_keys WHERE topic = ? AND part = ? AND first_seen >= ? "
                    "ORDER BY first_seen",
                    topic, part, dedup_since,
                )
                leases[(topic, part)] = Lease(
                    epoch=int(epoch),
                    next_offset=int(offset_rows[0][0]) if offset_rows else None,
                    dedup_keys=[(to_unsigned(int(d)), float(t)) for d, t in keys],
                )
        return leases

    async def _check_epochs(self, conn: Connection, epochs: dict[PartitionId, int]) -> None:
        stored: dict[PartitionId, int] = {}
        ordered = sorted(epochs)  # one lock order for every writer (PostgreSQL locks the rows read)
        for chunk in _chunks(ordered, self._PARTITION_CHUNK):
            # One query per chunk of partitions, not one round trip per partition.
            sql = (f"SELECT topic, part, epoch FROM partition_leases WHERE {_each_partition(len(chunk))} "
                   f"ORDER BY topic, part{self._lease_lock}")
            for topic, part, epoch in await conn.fetch(sql, *(arg for tp in chunk for arg in tp)):
                stored[(topic, int(part))] = int(epoch)
        stale = [tp for tp in ordered if stored.get(tp) != epochs[tp]]
        if stale:
            raise FencedError(stale)

    async def _delete_older(self, conn: Connection, table: str, column: str, partitions: Sequence[PartitionId],
                            horizon: float) -> None:
        """Delete the rows of ``partitions`` whose ``column`` is before ``horizon``: one statement
        per chunk of partitions, each term a range of the (topic, part, age) index."""
        for chunk in _chunks(sorted(partitions), self._PARTITION_CHUNK):
            await conn.execute(
                f"DELETE FROM {table} WHERE {_each_partition(len(chunk), f' AND {column} < ?')}",
                *(arg for topic, part in chunk for arg in (topic, part, horizon)),
            )

    async def _user_rows(self, conn: Connection, keys: Sequence[UserKey], columns: str) -> list[tuple[Any, ...]]:
        """``(brand, user_id, *columns)`` of the stored users among ``keys``: one query per brand and
        chunk, each ``brand = ? AND user_id IN (...)``, primary-key lookups on both databases (SQLite
        scans the table for a row-value IN over VALUES; one query per user is a round trip each)."""
        found: list[tuple[Any, ...]] = []
        for brand, users in _by_brand(keys).items():
            for chunk in _chunks(users, self._VERSION_CHUNK):
                rows = await conn.fetch(
                    f"SELECT user_id, {columns} FROM users "
                    f"WHERE brand = ? AND user_id IN ({_placeholders(len(chunk))})",
                    brand, *chunk,
                )
                found += [(brand, *row) for row in rows]
        return found

    async def _lock_users(self, conn: Connection, keys: Sequence[UserKey]) -> None:
        """SQLite has one writer at a time (BEGIN IMMEDIATE): nothing more to lock."""

    async def _check_versions(self, conn: Connection, users: Sequence[UserState]) -> None:
        """Optimistic concurrency: each user must still have the version it was loaded with."""
        expected = {(u.brand, u.user): u.version for u in users}
        keys = sorted(expected)
        await self._lock_users(conn, keys)
        rows = await self._user_rows(conn, keys, "version")
        stored = {(brand, user): int(version) for brand, user, version in rows}
        stale = [key for key, version in expected.items() if stored.get(key, 0) != version]
        if stale:
            raise ConflictError(stale)

    # batches -----------------------------------------------------------------------------------

    async def commit(self, batch: BatchWrite) -> None:
        async with self.transaction() as conn:
            await self._write(conn, batch)

    async def probe(self, batch: BatchWrite) -> None:
        """Dry run of :meth:`commit` (the batch is written, then rolled back): how a batch the store
        refused is searched for the record that caused it (docs/exactly-once.md)."""
        await dry_run(self.db, lambda conn: self._write(conn, batch))

    def refusal(self, exc: BaseException) -> str | None:
        """See :meth:`Store.refusal`: a row this store could not encode, or the database's own
        data errors (:meth:`Database.refusal`)."""
        if isinstance(exc, RowEncodingError):
            return str(exc)
        return self.db.refusal(exc)

    async def _write(self, conn: Connection, batch: BatchWrite) -> None:
        now = _now()
        await self._check_epochs(conn, batch.epochs)
        if batch.users:
            await self._check_versions(conn, batch.users)
            await conn.executemany(
                "INSERT INTO users (brand, user_id, state, version, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (brand, user_id) DO UPDATE SET state = excluded.state, version = excluded.version, "
                "updated_at = excluded.updated_at",
                _encoded_users(batch.users, now),
            )
        if batch.actions:
            await conn.executemany(
                "INSERT INTO outbox (action_id, topic, part, brand, user_id, rule_id, body, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        action.action_id, topic, part, action.brand, action.user, action.rule_id,
                        action.to_json(), now,
                    )
                    for (topic, part), action in batch.actions
                ],
            )
        if batch.history:
            await conn.executemany(
                "INSERT INTO history (brand, user_id, rule_id, event_id, event_type, event_time, outcome, "
                "executions, reason, qualified_at, qualified_until, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (h.brand, h.user, h.rule_id, h.event_id, h.event_type, _iso(h.event_time), h.outcome,
                     h.executions, h.reason, _iso(h.qualified_at), _iso(h.qualified_until), now)
                    for h in batch.history
                ],
            )
        added = [(t, p, to_signed(d), seen) for (t, p), keys in batch.dedup_added.items() for d, seen in keys]
        if added:
            await conn.executemany(
                "INSERT INTO dedup_keys (topic, part, digest, first_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (topic, part, digest) DO UPDATE SET first_seen = excluded.first_seen",
                added,
            )
        if batch.dedup_horizon is not None and batch.epochs:
            await self._delete_older(conn, "dedup_keys", "first_seen", list(batch.epochs), batch.dedup_horizon)
        handled = [(t, p, key, batch.handled_at) for (t, p), keys in batch.handled_messages.items() for key in keys]
        if handled:
            await conn.executemany(
                "INSERT INTO handled_messages (topic, part, message_key, handled_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (topic, part, message_key) DO NOTHING",
                handled,
            )
        if batch.handled_horizon is not None and batch.handled_messages:
            await self._delete_older(conn, "handled_messages", "handled_at", list(batch.handled_messages),
                                     batch.handled_horizon)
        if batch.offsets:
            await conn.executemany(
                "INSERT INTO source_offsets (topic, part, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT (topic, part) DO UPDATE SET next_offset = excluded.next_offset",
                [(t, p, o) for (t, p), o in batch.offsets.items()],
            )

    async def load_users(self, keys: Sequence[UserKey]) -> dict[UserKey, UserState]:
        found: dict[UserKey, UserState] = {}
        async with self.connection() as conn:
            for brand, user, document, version in await self._user_rows(conn, keys, "state, version"):
                state = UserState.from_json(bytes(document))
                state.version = int(version)
                found[(brand, user)] = state
        return found

    async def handled(self, partition: PartitionId, message_keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        topic, part = partition
        async with self.connection() as conn:
            for chunk in _chunks(list(message_keys), self._VERSION_CHUNK):
                rows = await conn.fetch(
                    "SELECT message_key FROM handled_messages WHERE topic = ? AND part = ? AND message_key IN "
                    f"({_placeholders(len(chunk))})",
                    topic, part, *chunk,
                )
                found.update(r[0] for r in rows)
        return found

    # outbox ------------------------------------------------------------------------------------

    async def pending_actions(self, sink: str, partitions: Sequence[PartitionId], limit: int) -> list[OutboxRow]:
        async with self.connection() as conn:
            cursors = await self._cursors(conn, [sink])
            after = {tp: cursors.get((sink, *tp), 0) for tp in partitions}
            found = await self._scan_rows(conn, after, limit) if after else []
            if found is None:
                found, exact_until = [], None
                for chunk in _chunks(partitions, self._PARTITION_CHUNK):
                    rows, until = await self._next_rows(conn, [(tp, after[tp]) for tp in chunk], limit)
                    found += rows
                    if until is not None:
                        exact_until = until if exact_until is None else min(exact_until, until)
                # Across chunks too, only the merge up to the lowest bound is in seq order.
                found = sorted(row for row in found if exact_until is None or row[0] <= exact_until)
        return [OutboxRow(seq, tp, Action.from_json(body)) for seq, tp, body in found[:limit]]

    async def _scan_rows(self, conn: Connection, after: dict[PartitionId, int],
                         limit: int) -> list[tuple[int, PartitionId, bytes]] | None:
        """The rows from the first pending one on, in seq order, keeping those of ``after``'s
        partitions past their own cursor: exact, and the cheapest read while this member owns most
        rows (one index range, no sort). ``None`` when other members' rows make up most of it."""
        first = None
        items = list(after.items())
        for chunk in _chunks(items, self._PARTITION_CHUNK):
            # Each MIN is one index seek; a partition without actions keeps its cursor at 0 and
            # must not drag the scan back to the start of the table.
            sql = "SELECT MIN(s) FROM (" + " UNION ALL ".join(
                "SELECT MIN(seq) AS s FROM outbox WHERE topic = ? AND part = ? AND seq > ?" for _ in chunk
            ) + ") AS firsts"
            found = (await conn.fetch(sql, *(arg for (topic, part), seq in chunk for arg in (topic, part, seq))))[0][0]
            if found is not None:
                first = int(found) if first is None else min(first, int(found))
        if first is None:
            return []
        rows = await conn.fetch(
            "SELECT seq, topic, part, body FROM outbox WHERE seq >= ? ORDER BY seq LIMIT ?", first, limit
        )
        kept = []
        for seq, topic, part, body in rows:
            tp = (topic, int(part))
            cursor = after.get(tp)
            if cursor is not None and seq > cursor:
                kept.append((int(seq), tp, bytes(body)))
        # ``kept`` always holds the first pending row, so a scan of others' rows still progresses.
        return kept if len(rows) < limit or len(kept) >= limit // 2 else None

    async def _next_rows(self, conn: Connection, cursors: list[tuple[PartitionId, int]],
                         limit: int) -> tuple[list[tuple[int, PartitionId, bytes]], int | None]:
        """The first rows by seq after each partition's cursor, in one round trip, and the seq up to
        which they are complete (``None``: all of them are).

        Reading ``limit`` rows of every partition to keep ``limit`` overall would read (and sort)
        ``partitions`` times too much. Each partition gives at most ``share`` rows instead; the
        merge is exact up to the lowest last seq of a partition that filled its share (beyond it
        that partition may have rows not read), so the rows up to there are returned: never fewer
        than ``share``, usually about ``limit``."""
        share = min(limit, max(16, -(-2 * limit // len(cursors))))
        sql = " UNION ALL ".join(
            f"SELECT * FROM (SELECT seq, topic, part, body FROM outbox WHERE topic = ? AND part = ? AND seq > ? "
            f"ORDER BY seq LIMIT {share}) AS p{index}"
            for index in range(len(cursors))
        ) + " ORDER BY seq"
        rows = await conn.fetch(sql, *(arg for (topic, part), after in cursors for arg in (topic, part, after)))
        merged = [(int(seq), (topic, int(part)), bytes(body)) for seq, topic, part, body in rows]
        per_partition: dict[PartitionId, list[int]] = {}
        for seq, tp, _ in merged:
            per_partition.setdefault(tp, []).append(seq)
        filled = [seqs[-1] for seqs in per_partition.values() if len(seqs) >= share]
        exact_until = min(filled, default=None)
        exact = merged if exact_until is None else [row for row in merged if row[0] <= exact_until]
        if len(exact) > limit:
            exact = exact[:limit]
            exact_until = exact[-1][0]
        return exact, exact_until

    async def _cursors(self, conn: Connection, sinks: Sequence[str]) -> dict[tuple[str, str, int], int]:
        """(sink, topic, part) -> last delivered seq, for every partition these sinks delivered from."""
        rows = await conn.fetch(
            f"SELECT sink, topic, part, last_seq FROM sink_cursors WHERE sink IN ({_placeholders(len(sinks))})",
            *sinks,
        )
        return {(sink, topic, int(part)): int(seq) for sink, topic, part, seq in rows}

    async def mark_delivered(self, sink: str, rows: Sequence[OutboxRow], epochs: dict[PartitionId, int]) -> None:
        last: dict[PartitionId, int] = {}
        for row in rows:
            last[row.partition] = max(last.get(row.partition, 0), row.seq)
        async with self.transaction() as conn:
            await self._check_epochs(conn, {tp: epochs[tp] for tp in last})
            await conn.executemany(
                "INSERT INTO sink_cursors (sink, topic, part, last_seq) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sink, topic, part) DO UPDATE SET last_seq = excluded.last_seq",
                [(sink, t, p, seq) for (t, p), seq in last.items()],
            )

    async def outbox_backlog(self, sinks: Sequence[str], partitions: Sequence[PartitionId]) -> int:
        if not partitions:
            return 0
        backlog = 0
        async with self.connection() as conn:
            cursors = await self._cursors(conn, sinks) if sinks else {}
            for chunk in _chunks(partitions, self._PARTITION_CHUNK):
                # Counted from the slowest sink's cursor of each partition.
                slowest = [min((cursors.get((sink, *tp), 0) for sink in sinks), default=0) for tp in chunk]
                args = [arg for tp, after in zip(chunk, slowest, strict=True) for arg in (*tp, after)]
                sql = f"SELECT COUNT(*) FROM outbox WHERE {_each_partition(len(chunk), ' AND seq > ?')}"
                backlog += int((await conn.fetch(sql, *args))[0][0])
        return backlog

    async def prune_outbox(
        self, sinks: Sequence[str], partitions: Sequence[PartitionId], committed_before: datetime
    ) -> int:
        if not sinks or not partitions:
            return 0  # without sinks the actions wait for one to be configured
        deleted = 0
        async with self.transaction() as conn:
            cursors = await self._cursors(conn, sinks)
            for topic, part in sorted(partitions):
                delivered = min(cursors.get((sink, topic, part), 0) for sink in sinks)
                if delivered:
                    deleted += await conn.execute_count(
                        "DELETE FROM outbox WHERE topic = ? AND part = ? AND seq <= ? AND created_at < ?",
                        topic, part, delivered, _iso(committed_before),
                    )
        return deleted

    # history -----------------------------------------------------------------------------------

    async def prune_history(self, recorded_before: datetime, limit: int) -> int:
        async with self.transaction() as conn:
            oldest = (await conn.fetch("SELECT MIN(seq) FROM history"))[0][0]
            if oldest is None:
                return 0
            # A range of seqs from the oldest row, not "recorded_at < ?" alone: recorded_at has no
            # index (it would cost one more entry per row written), so that alone would walk the
            # whole table to find, most of the time, nothing. Rows are numbered as they are written,
            # so the range holds the oldest; a row stamped late by a member whose clock ran ahead
            # holds the range back by that skew, no more.
            return await conn.execute_count(
                "DELETE FROM history WHERE seq < ? AND recorded_at < ?", int(oldest) + limit, _iso(recorded_before)
            )

    # inspection --------------------------------------------------------------------------------

    async def history(self, *, brand: str | None = None, user: str | None = None, rule: str | None = None,
                      limit: int = 1000) -> list[HistoryEntry]:
        clauses, args = [], []
        for column, value in (("brand", brand), ("user_id", user), ("rule_id", rule)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self.connection() as conn:
            rows = await conn.fetch(
                "SELECT brand, user_id, rule_id, event_id, event_type, event_time, outcome, executions, reason, "
                f"qualified_at, qualified_until FROM history {where} ORDER BY seq LIMIT ?",
                *args, limit,
            )
        return [
            HistoryEntry(
                brand=r[0], user=r[1], rule_id=r[2], event_id=r[3], event_type=r[4],
                event_time=datetime.fromisoformat(r[5]),  # NOT NULL: every history row has its event's time
                outcome=r[6], executions=int(r[7]), reason=r[8], qualified_at=_dt(r[9]), qualified_until=_dt(r[10]),
            )
            for r in rows
        ]

    async def all_actions(self) -> list[Action]:
        async with self.connection() as conn:
            rows = await conn.fetch("SELECT body FROM outbox ORDER BY seq")
        return [Action.from_json(bytes(r[0])) for r in rows]

    async def all_users(self) -> list[UserState]:
        async with self.connection() as conn:
            rows = await conn.fetch("SELECT state FROM users ORDER BY brand, user_id")
        return [UserState.from_json(bytes(r[0])) for r in rows]

