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
from smartico_stream.store.base import (
    BatchWrite,
    ConflictError,
    FencedError,
    Lease,
    LeaseHolder,
    OutboxRow,
    RowEncodingError,
    StoredDeadLetter,
)
from smartico_stream.store.packing import (
    history_entry,
    history_fields,
    pack_actions,
    pack_dedup,
    pack_history,
    unpack_actions,
    unpack_dedup,
)
from smartico_stream.store.schema import STATE_MIGRATIONS, Dialect, Migrations

# A sink's delivery position in a partition: (seq of a batch row, actions of it delivered). Every
# row before ``seq`` is delivered in full.
Cursor = tuple[int, int]
_START: Cursor = (0, 0)


class Connection(Protocol):
    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def execute_count(self, sql: str, *args: Any) -> int:
        """Run one statement; the number of rows it changed."""
        ...


# The renewal time of a released lease: long expired for any lease timeout.
_RELEASED_AT = datetime(1970, 1, 1, tzinfo=UTC).isoformat(timespec="milliseconds")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="milliseconds") if moment else None


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


# The columns a user's state is read from (UserState.from_stored_parts).
STATE_COLUMNS = "state, profile, progress, payments"


def _encoded_users(users: Sequence[UserState], now: str) -> list[tuple[Any, ...]]:
    """The users' rows, in one lock order: the core document and the parts the batch changed, NULL
    for the others (the upsert keeps what the row has). A state JSON cannot hold (an integer beyond
    64 bits from a custom field) is a :class:`RowEncodingError`, so the service can isolate its record."""
    try:
        ordered = sorted(users, key=lambda u: (u.brand, u.user))
        return [(u.brand, u.user, *u.stored_parts(), u.version + 1, now) for u in ordered]
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
                packed = await conn.fetch(
                    "SELECT digests, seen FROM dedup_keys WHERE topic = ? AND part = ? AND newest >= ? ORDER BY seq",
                    topic, part, dedup_since,
                )
                leases[(topic, part)] = Lease(
                    epoch=int(epoch),
                    next_offset=int(offset_rows[0][0]) if offset_rows else None,
                    dedup_keys=_dedup_window(packed, dedup_since),
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
        chunk, each ``brand = ? AND user_id IN (...)``, primary-key lookups on SQLite (which scans the
        table for a row-value IN over VALUES; one query per user is a round trip each). PostgreSQL
        has its own form (``PostgresStore._user_rows``)."""
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

    # A new user has every part (UserState.changed starts at ALL_PARTS); a stored one keeps the
    # parts given as NULL.
    _UPSERT_USERS = (
        "INSERT INTO users (brand, user_id, state, profile, progress, payments, version, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (brand, user_id) DO UPDATE SET state = excluded.state, "
        "profile = COALESCE(excluded.profile, users.profile), "
        "progress = COALESCE(excluded.progress, users.progress), "
        "payments = COALESCE(excluded.payments, users.payments), "
        "version = excluded.version, updated_at = excluded.updated_at"
    )

    async def _upsert_users(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """Write the users' rows: one row per user, updated in place, with only the parts that
        changed. (A change log with periodic compaction was measured and not taken:
        docs/performance.md, "Store writes".)"""
        await conn.executemany(self._UPSERT_USERS, rows)

    # batches -----------------------------------------------------------------------------------

    async def commit(self, batch: BatchWrite) -> None:
        async with self.transaction() as conn:
            await self._write(conn, batch)

    async def write_in(self, conn: Connection, batch: BatchWrite) -> None:
        """Write ``batch`` inside a transaction the caller holds (``transaction()``), fenced and
        version-checked like :meth:`commit`: the scheduler adds its run's progress to the same
        transaction."""
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
            await self._upsert_users(conn, _encoded_users(batch.users, now))
        if batch.actions:
            # One row per partition: its actions in emission order (see store/packing.py).
            documents: dict[PartitionId, list[bytes]] = {}
            for (topic, part), action in batch.actions:
                documents.setdefault((topic, part), []).append(action.to_json())
            await conn.executemany(
                "INSERT INTO outbox (topic, part, actions, body, created_at) VALUES (?, ?, ?, ?, ?)",
                [(topic, part, len(docs), pack_actions(docs), now) for (topic, part), docs in documents.items()],
            )
        if batch.history:
            # One row per batch: an entry carries no partition, and nothing reads history by partition.
            await conn.execute(
                "INSERT INTO history (entries, body, recorded_at) VALUES (?, ?, ?)",
                len(batch.history), pack_history(batch.history), now,
            )
        added = [
            (topic, part, len(keys), max(seen for _, seen in keys), *pack_dedup(keys))
            for (topic, part), keys in batch.dedup_added.items() if keys
        ]
        if added:
            await conn.executemany(
                "INSERT INTO dedup_keys (topic, part, keys, newest, digests, seen) VALUES (?, ?, ?, ?, ?, ?)",
                added,
            )
        if batch.dedup_horizon is not None and batch.epochs:
            # Whole rows go once their newest key is past the horizon; acquire drops older keys of
            # the rows kept (it is given the window's start).
            await self._delete_older(conn, "dedup_keys", "newest", list(batch.epochs), batch.dedup_horizon)
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
        if batch.cursors:
            await conn.executemany(
                "INSERT INTO source_cursors (topic, part, cursor) VALUES (?, ?, ?) "
                "ON CONFLICT (topic, part) DO UPDATE SET cursor = excluded.cursor",
                [(t, p, c) for (t, p), c in batch.cursors.items()],
            )

    async def load_users(self, keys: Sequence[UserKey]) -> dict[UserKey, UserState]:
        found: dict[UserKey, UserState] = {}
        async with self.connection() as conn:
            for brand, user, core, profile, progress, payments, version in await self._user_rows(
                conn, keys, f"{STATE_COLUMNS}, version"
            ):
                state = UserState.from_stored_parts(core, profile, progress, payments)
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

    # cursors, leases held by renewal, dead letters kept in the store ------------------------------

    async def source_cursors(self, partitions: Sequence[PartitionId]) -> dict[PartitionId, str]:
        found: dict[PartitionId, str] = {}
        async with self.connection() as conn:
            for chunk in _chunks(sorted(partitions), self._PARTITION_CHUNK):
                rows = await conn.fetch(
                    f"SELECT topic, part, cursor FROM source_cursors WHERE {_each_partition(len(chunk))}",
                    *(arg for tp in chunk for arg in tp),
                )
                found.update(((topic, int(part)), str(cursor)) for topic, part, cursor in rows)
        return found

    async def lease_holders(self, partitions: Sequence[PartitionId]) -> dict[PartitionId, LeaseHolder]:
        found: dict[PartitionId, LeaseHolder] = {}
        async with self.connection() as conn:
            for chunk in _chunks(sorted(partitions), self._PARTITION_CHUNK):
                rows = await conn.fetch(
                    "SELECT topic, part, owner, epoch, acquired_at FROM partition_leases "
                    f"WHERE {_each_partition(len(chunk))}",
                    *(arg for tp in chunk for arg in tp),
                )
                for topic, part, owner, epoch, at in rows:
                    found[(topic, int(part))] = LeaseHolder(str(owner), int(epoch), datetime.fromisoformat(at))
        return found

    async def renew_leases(self, owner: str, epochs: dict[PartitionId, int]) -> list[PartitionId]:
        lost: list[PartitionId] = []
        now = _now()
        async with self.transaction() as conn:
            for (topic, part), epoch in sorted(epochs.items()):
                changed = await conn.execute_count(
                    "UPDATE partition_leases SET acquired_at = ? WHERE topic = ? AND part = ? AND owner = ? "
                    "AND epoch = ?",
                    now, topic, part, owner, epoch,
                )
                if not changed:
                    lost.append((topic, part))
        return lost

    async def release_leases(self, owner: str, epochs: dict[PartitionId, int]) -> None:
        # The epoch stays: the next holder bumps it as on any takeover, so a late write of ours
        # would still be fenced. Only the renewal time goes back to the epoch's start.
        async with self.transaction() as conn:
            for (topic, part), epoch in sorted(epochs.items()):
                await conn.execute(
                    "UPDATE partition_leases SET acquired_at = ? WHERE topic = ? AND part = ? AND owner = ? "
                    "AND epoch = ?",
                    _RELEASED_AT, topic, part, owner, epoch,
                )

    async def reset_source_cursor(self, partition: PartitionId, cursor: str, owner: str, actor: str,
                                  reason: str) -> str | None:
        topic, part = partition
        now = _now()
        async with self.transaction() as conn:
            await conn.execute(
                "INSERT INTO partition_leases (topic, part, owner, epoch, acquired_at) VALUES (?, ?, ?, 1, ?) "
                "ON CONFLICT (topic, part) DO UPDATE SET owner = excluded.owner, "
                "epoch = partition_leases.epoch + 1, acquired_at = excluded.acquired_at",
                topic, part, owner, now,
            )
            rows = await conn.fetch("SELECT cursor FROM source_cursors WHERE topic = ? AND part = ?", topic, part)
            previous = str(rows[0][0]) if rows else None
            await conn.execute(
                "INSERT INTO source_cursors (topic, part, cursor) VALUES (?, ?, ?) "
                "ON CONFLICT (topic, part) DO UPDATE SET cursor = excluded.cursor",
                topic, part, cursor,
            )
            await conn.execute(
                "INSERT INTO cursor_resets (topic, part, previous, cursor, actor, reason, reset_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                topic, part, previous, cursor, actor, reason, now,
            )
        return previous

    async def write_dead_letters(self, letters: Sequence[StoredDeadLetter]) -> None:
        if not letters:
            return
        now = _now()
        async with self.transaction() as conn:
            await conn.executemany(
                "INSERT INTO dead_letters (topic, part, coordinates, source_offset, stage, error_class, message, "
                "payload, protection, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (topic, part, coordinates) DO NOTHING",
                [(*d.partition, d.coordinates, d.offset, d.stage, d.error_class, d.message, d.payload, d.protection,
                  now) for d in letters],
            )

    async def dead_letters(self, partition: PartitionId | None = None) -> list[StoredDeadLetter]:
        sql = ("SELECT topic, part, coordinates, source_offset, stage, error_class, message, payload, protection "
               "FROM dead_letters")
        args: list[Any] = []
        if partition is not None:
            sql += " WHERE topic = ? AND part = ?"
            args = list(partition)
        async with self.connection() as conn:
            rows = await conn.fetch(sql + " ORDER BY failed_at, topic, part, coordinates", *args)
        return [
            StoredDeadLetter((topic, int(part)), coordinates, int(offset), stage, error_class, message,
                             bytes(payload) if payload is not None else None, protection)
            for topic, part, coordinates, offset, stage, error_class, message, payload, protection in rows
        ]

    # outbox ------------------------------------------------------------------------------------

    async def pending_actions(self, sink: str, partitions: Sequence[PartitionId], limit: int) -> list[OutboxRow]:
        if not partitions or limit <= 0:
            return []
        async with self.connection() as conn:
            cursors = await self._cursors(conn, [sink])
            after = [(tp, cursors.get((sink, *tp), _START)) for tp in partitions]
            # First which rows (seq, partition, action count: small), then the bodies of the few
            # that hold the next ``limit`` actions.
            found: list[tuple[int, PartitionId, int, int]] = []
            exact_until: int | None = None
            for chunk in _chunks(after, self._PARTITION_CHUNK):
                rows, until = await self._pending_rows(conn, chunk, limit)
                found += rows
                if until is not None:
                    exact_until = until if exact_until is None else min(exact_until, until)
            found.sort()
            chosen: list[tuple[int, PartitionId, int, int]] = []  # seq, partition, first index, stop
            total = 0
            for seq, tp, count, start in found:
                # Across chunks too, only the merge up to the lowest bound is in seq order.
                if total >= limit or (exact_until is not None and seq > exact_until):
                    break
                take = min(count - start, limit - total)
                chosen.append((seq, tp, start, start + take))
                total += take
            bodies: dict[int, bytes] = {}
            for seqs in _chunks([seq for seq, *_ in chosen], self._VERSION_CHUNK):
                sql = f"SELECT seq, body FROM outbox WHERE seq IN ({_placeholders(len(seqs))})"
                bodies.update((int(seq), bytes(body)) for seq, body in await conn.fetch(sql, *seqs))
        pending = []
        for seq, tp, start, stop in chosen:
            if seq not in bodies:
                break  # pruned meanwhile by another member: it was delivered, and what follows waits
            documents = unpack_actions(bodies[seq])
            pending += [OutboxRow(seq, tp, Action.from_json(documents[i]), i) for i in range(start, stop)]
        return pending

    async def _pending_rows(self, conn: Connection, cursors: Sequence[tuple[PartitionId, Cursor]],
                            limit: int) -> tuple[list[tuple[int, PartitionId, int, int]], int | None]:
        """``(seq, partition, actions, first pending index)`` of the first rows with pending actions
        of each partition, in one round trip, and the seq up to which they are complete (``None``:
        all of them are).

        Each partition gives at most ``share`` rows rather than ``limit`` (which would read
        ``partitions`` times too much); the merge is exact up to the lowest last seq of a partition
        that filled its share (beyond it that partition may have rows not read). One row more is
        read than the share: the cursor's own row may be delivered in full already, and a share
        of it alone would bound the merge below every pending row (no progress)."""
        share = min(limit, max(16, -(-2 * limit // len(cursors))))
        sql = " UNION ALL ".join(
            f"SELECT * FROM (SELECT seq, topic, part, actions FROM outbox WHERE topic = ? AND part = ? AND seq >= ? "
            f"ORDER BY seq LIMIT {share + 1}) AS p{index}"
            for index in range(len(cursors))
        )
        args = [arg for (topic, part), (seq, _) in cursors for arg in (topic, part, seq)]
        position = dict(cursors)
        found: list[tuple[int, PartitionId, int, int]] = []
        per_partition: dict[PartitionId, list[int]] = {}
        for seq, topic, part, count in await conn.fetch(sql, *args):
            tp = (topic, int(part))
            cursor_seq, delivered = position[tp]
            start = delivered if seq == cursor_seq else 0
            per_partition.setdefault(tp, []).append(int(seq))
            if start < count:
                found.append((int(seq), tp, int(count), start))
        filled = [seqs[-1] for seqs in per_partition.values() if len(seqs) > share]
        exact_until = min(filled, default=None)
        return found, exact_until

    async def _cursors(self, conn: Connection, sinks: Sequence[str]) -> dict[tuple[str, str, int], Cursor]:
        """(sink, topic, part) -> delivery position, for every partition these sinks delivered from."""
        rows = await conn.fetch(
            "SELECT sink, topic, part, last_seq, next_index FROM sink_cursors "
            f"WHERE sink IN ({_placeholders(len(sinks))})",
            *sinks,
        )
        return {(sink, topic, int(part)): (int(seq), int(index)) for sink, topic, part, seq, index in rows}

    def _slowest(self, cursors: dict[tuple[str, str, int], Cursor], sinks: Sequence[str], tp: PartitionId) -> Cursor:
        """The position every one of ``sinks`` has delivered up to in ``tp`` (no sinks: the start)."""
        return min((cursors.get((sink, *tp), _START) for sink in sinks), default=_START)

    async def mark_delivered(self, sink: str, rows: Sequence[OutboxRow], epochs: dict[PartitionId, int]) -> None:
        last: dict[PartitionId, Cursor] = {}
        for row in rows:
            last[row.partition] = max(last.get(row.partition, _START), (row.seq, row.index + 1))
        async with self.transaction() as conn:
            await self._check_epochs(conn, {tp: epochs[tp] for tp in last})
            await conn.executemany(
                "INSERT INTO sink_cursors (sink, topic, part, last_seq, next_index) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (sink, topic, part) DO UPDATE SET last_seq = excluded.last_seq, "
                "next_index = excluded.next_index",
                [(sink, t, p, seq, index) for (t, p), (seq, index) in last.items()],
            )

    async def outbox_backlog(self, sinks: Sequence[str], partitions: Sequence[PartitionId]) -> int:
        if not partitions:
            return 0
        backlog = 0
        async with self.connection() as conn:
            cursors = await self._cursors(conn, sinks) if sinks else {}
            for chunk in _chunks(partitions, self._PARTITION_CHUNK):
                # Counted from the slowest sink's cursor of each partition: the rows from its row on,
                # less what was delivered of that row.
                sql = "SELECT SUM(n) FROM (" + " UNION ALL ".join(
                    "SELECT SUM(CASE WHEN seq = ? THEN actions - ? ELSE actions END) AS n FROM outbox "
                    "WHERE topic = ? AND part = ? AND seq >= ?"
                    for _ in chunk
                ) + ") AS partitions"
                args = []
                for tp in chunk:
                    seq, delivered = self._slowest(cursors, sinks, tp)
                    args += [seq, delivered, *tp, seq]
                backlog += int((await conn.fetch(sql, *args))[0][0] or 0)
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
                seq, delivered = self._slowest(cursors, sinks, (topic, part))
                if seq:
                    # Whole rows only: those before the cursor's row, and that row once delivered in full.
                    rows = await conn.fetch(
                        "DELETE FROM outbox WHERE topic = ? AND part = ? AND seq <= ? AND (seq < ? OR actions <= ?) "
                        "AND created_at < ? RETURNING actions",
                        topic, part, seq, seq, delivered, _iso(committed_before),
                    )
                    deleted += sum(int(n) for (n,) in rows)
        return deleted

    # history -----------------------------------------------------------------------------------

    async def prune_history(self, recorded_before: datetime, limit: int) -> int:
        async with self.transaction() as conn:
            # A range of rows from the oldest, holding about ``limit`` entries, not "recorded_at < ?"
            # alone: recorded_at has no index, so that alone would walk the whole table to find,
            # most of the time, nothing. Rows are numbered as they are written, so the range holds
            # the oldest; a row stamped late by a member whose clock ran ahead holds the range back
            # by that skew, no more.
            oldest = await conn.fetch("SELECT seq, entries FROM history ORDER BY seq LIMIT ?", max(1, limit))
            if not oldest:
                return 0
            total, last = 0, int(oldest[0][0])
            for seq, entries in oldest:
                if total and total + int(entries) > limit:
                    break
                total += int(entries)
                last = int(seq)
            rows = await conn.fetch(
                "DELETE FROM history WHERE seq >= ? AND seq <= ? AND recorded_at < ? RETURNING entries",
                int(oldest[0][0]), last, _iso(recorded_before),
            )
        return sum(int(n) for (n,) in rows)

    # inspection --------------------------------------------------------------------------------

    _HISTORY_PAGE = 64  # history rows (batches) read per query

    async def history(self, *, brand: str | None = None, user: str | None = None, rule: str | None = None,
                      limit: int = 1000) -> list[HistoryEntry]:
        wanted = [(field, value) for field, value in ((0, brand), (1, user), (2, rule)) if value is not None]
        # A batch without the value's bytes anywhere holds no matching entry: skipped undecoded.
        needles = [needle for _, value in wanted if (needle := _needle(value)) is not None]
        found: list[HistoryEntry] = []
        after = -1
        async with self.connection() as conn:
            while len(found) < limit:
                rows = await conn.fetch("SELECT seq, body FROM history WHERE seq > ? ORDER BY seq LIMIT ?",
                                        after, self._HISTORY_PAGE)
                for seq, body in rows:
                    after = int(seq)
                    blob = bytes(body)
                    if any(needle not in blob for needle in needles):
                        continue
                    found += [history_entry(fields) for fields in history_fields(blob)
                              if all(fields[index] == value for index, value in wanted)]
                if len(rows) < self._HISTORY_PAGE:
                    break
        return found[:limit]

    async def all_actions(self) -> list[Action]:
        async with self.connection() as conn:
            rows = await conn.fetch("SELECT body FROM outbox ORDER BY seq")
        return [Action.from_json(document) for (body,) in rows for document in unpack_actions(bytes(body))]

    async def all_users(self) -> list[UserState]:
        async with self.connection() as conn:
            rows = await conn.fetch(f"SELECT {STATE_COLUMNS} FROM users ORDER BY brand, user_id")
        return [UserState.from_stored_parts(*row) for row in rows]



def _dedup_window(packed: Sequence[tuple[Any, ...]], since: float) -> list[tuple[int, float]]:
    """The dedup keys of a partition's rows (oldest row first) first seen at or after ``since``,
    oldest first. A digest written again by a later batch takes that batch's time."""
    latest: dict[int, float] = {}
    for digests, seen in packed:
        latest.update(unpack_dedup(bytes(digests), bytes(seen)))
    return sorted(((d, t) for d, t in latest.items() if t >= since), key=lambda key: key[1])


def _needle(value: str) -> bytes | None:
    """Bytes every JSON encoding of ``value`` contains (its UTF-8), unless it holds characters JSON
    escapes (then ``None``: no prefilter)."""
    if any(ch in '"\\' or ord(ch) < 0x20 for ch in value):
        return None
    return value.encode()
