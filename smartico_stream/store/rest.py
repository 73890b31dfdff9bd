"""What the REST source keeps in the state store (migration 7 in schema.py): API keys (hashes
only), the inbox of accepted events, and answers stored under an Idempotency-Key.

Inbox rows are numbered per partition from a counter row (``rest_partitions``) that the accepting
transaction updates first: on PostgreSQL the row stays locked until that transaction commits, so two
instances accepting into one partition commit their numbers in order, and a reader that has seen
number n never meets a smaller number committing later (a shared sequence would allow exactly that,
and the reader would skip the late row for good). On SQLite there is one writer at a time anyway.
A partition's processed position is its ``source_offsets`` row, written in the batch's transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from smartico_stream.events.raw import PartitionId
from smartico_stream.store.sql import SqlStore

INBOX_TOPIC = "rest"
MEMBER_TOPIC_PREFIX = "rest.member:"
_RELEASED_AT = "1970-01-01T00:00:00.000+00:00"  # a lease renewed at the epoch is free for anyone


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored: never the key itself, only its hash."""

    key_id: str
    key_hash: str
    name: str
    brands: tuple[str, ...]
    created_at: str
    revoked_at: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class InboxEvent:
    """One accepted event for the inbox: its partition, stream, user (brand and id) and body."""

    part: int
    stream: str
    user_key: str
    body: bytes


@dataclass(frozen=True, slots=True)
class InboxRow:
    part: int
    seq: int
    stream: str
    user_key: str
    body: bytes
    accepted_at: float


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """An answer kept under an Idempotency-Key, with a digest of the request it answered."""

    request_hash: str
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class IdempotentAnswer:
    key_id: str
    idempotency_key: str
    answer: StoredAnswer


@dataclass(frozen=True, slots=True)
class Backlog:
    """Accepted events not yet processed, and when the oldest of them was accepted (None: none)."""

    events: int
    oldest_accepted_at: float | None


class ApiKeyStore:
    """API keys over an opened :class:`SqlStore`."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    async def create(self, key_id: str, key_hash: str, name: str, brands: Sequence[str]) -> None:
        async with self.store.transaction() as conn:
            await conn.execute(
                "INSERT INTO api_keys (key_id, key_hash, name, brands, created_at) VALUES (?, ?, ?, ?, ?)",
                key_id, key_hash, name, "\x1f".join(brands), _now(),
            )

    async def get(self, key_id: str) -> ApiKey | None:
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                "SELECT key_id, key_hash, name, brands, created_at, revoked_at FROM api_keys WHERE key_id = ?", key_id
            )
        return _key(rows[0]) if rows else None

    async def all(self) -> list[ApiKey]:
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                "SELECT key_id, key_hash, name, brands, created_at, revoked_at FROM api_keys "
                "ORDER BY created_at, key_id"
            )
        return [_key(row) for row in rows]

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key; False when no active key has this id."""
        async with self.store.transaction() as conn:
            changed = await conn.execute_count(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", _now(), key_id
            )
        return bool(changed)


def _key(row: Sequence[Any]) -> ApiKey:
    key_id, key_hash, name, brands, created_at, revoked_at = row
    return ApiKey(str(key_id), str(key_hash), str(name), tuple(str(brands).split("\x1f")), str(created_at),
                  None if revoked_at is None else str(revoked_at))


class InboxStore:
    """The inbox and idempotent answers over an opened :class:`SqlStore`."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._postgres = store.db.dialect == "postgres"

    async def append(self, events: Sequence[InboxEvent], answers: Sequence[IdempotentAnswer], accepted_at: float,
                     idempotency_horizon: float | None = None) -> None:
        """Write ``events`` (numbered per partition, in the order given) and ``answers`` in one
        transaction. An answer already stored under its key is left as it is."""
        by_part: dict[int, list[InboxEvent]] = {}
        for event in events:
            by_part.setdefault(event.part, []).append(event)
        async with self.store.transaction() as conn:
            rows: list[tuple[Any, ...]] = []
            for part in sorted(by_part):  # one lock order for every writer: no deadlocks
                mine = by_part[part]
                reserved = await conn.fetch(
                    "INSERT INTO rest_partitions (part, next_seq) VALUES (?, ?) ON CONFLICT (part) DO UPDATE "
                    "SET next_seq = rest_partitions.next_seq + excluded.next_seq RETURNING next_seq",
                    part, len(mine),
                )
                first = int(reserved[0][0]) - len(mine)
                rows += [(part, first + i, e.stream, e.user_key, e.body, accepted_at) for i, e in enumerate(mine)]
            if rows and self._postgres:
                # One statement over arrays: a bound statement per row costs a round trip each.
                parts, seqs, streams, users, bodies, times = (list(column) for column in zip(*rows, strict=True))
                await conn.execute(
                    "INSERT INTO rest_inbox (part, seq, stream, user_key, body, accepted_at) "
                    "SELECT * FROM unnest(?::integer[], ?::bigint[], ?::text[], ?::text[], ?::bytea[], "
                    "?::double precision[])",
                    parts, seqs, streams, users, bodies, times,
                )
            elif rows:
                await conn.executemany(
                    "INSERT INTO rest_inbox (part, seq, stream, user_key, body, accepted_at) VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
            if answers:
                await conn.executemany(
                    "INSERT INTO rest_idempotency (key_id, idempotency_key, request_hash, status, body, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key_id, idempotency_key) DO NOTHING",
                    [(a.key_id, a.idempotency_key, a.answer.request_hash, a.answer.status, a.answer.body, accepted_at)
                     for a in answers],
                )
            if idempotency_horizon is not None:
                await conn.execute("DELETE FROM rest_idempotency WHERE created_at < ?", idempotency_horizon)

    async def answer(self, key_id: str, idempotency_key: str) -> StoredAnswer | None:
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                "SELECT request_hash, status, body FROM rest_idempotency WHERE key_id = ? AND idempotency_key = ?",
                key_id, idempotency_key,
            )
        return StoredAnswer(str(rows[0][0]), int(rows[0][1]), bytes(rows[0][2])) if rows else None

    async def read(self, positions: Mapping[int, int], limit: int) -> list[InboxRow]:
        """Rows of each partition from its position on, at most ``limit`` in all (shared among the
        partitions, each in its own order)."""
        if not positions:
            return []
        share = max(1, limit // len(positions))
        found: list[InboxRow] = []
        items = sorted(positions.items())
        for start in range(0, len(items), 64):
            chunk = items[start : start + 64]
            sql = " UNION ALL ".join(
                f"SELECT * FROM (SELECT part, seq, stream, user_key, body, accepted_at FROM rest_inbox "
                f"WHERE part = ? AND seq >= ? ORDER BY seq LIMIT {share}) AS p{index}"
                for index in range(len(chunk))
            )
            async with self.store.connection() as conn:
                rows = await conn.fetch(sql, *(arg for part, seq in chunk for arg in (part, seq)))
            found += [InboxRow(int(p), int(s), str(st), str(u), bytes(b), float(a)) for p, s, st, u, b, a in rows]
        found.sort(key=lambda row: (row.part, row.seq))
        return found

    async def prune(self, handled: Mapping[int, int]) -> None:
        """Delete each partition's rows before its handled position (committed with a batch)."""
        if not handled:
            return
        async with self.store.transaction() as conn:
            await conn.executemany("DELETE FROM rest_inbox WHERE part = ? AND seq < ?", sorted(handled.items()))

    async def positions(self, parts: Sequence[int]) -> dict[int, int]:
        """Where each partition resumes: its stored offset, else 0 (the first number)."""
        found = dict.fromkeys(parts, 0)
        async with self.store.connection() as conn:
            rows = await conn.fetch("SELECT part, next_offset FROM source_offsets WHERE topic = ?", INBOX_TOPIC)
        for part, offset in rows:
            if int(part) in found:
                found[int(part)] = int(offset)
        return found

    async def backlog(self) -> Backlog:
        """Accepted minus processed, over every partition, and the oldest unprocessed row's time
        (a primary-key lookup per partition: its next row to process)."""
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                "SELECT p.part, p.next_seq, COALESCE(o.next_offset, 0) FROM rest_partitions p "
                "LEFT JOIN source_offsets o ON o.topic = ? AND o.part = p.part",
                INBOX_TOPIC,
            )
            pending = [(int(part), int(offset)) for part, next_seq, offset in rows if int(next_seq) > int(offset)]
            oldest: float | None = None
            for chunk_start in range(0, len(pending), 64):
                chunk = pending[chunk_start : chunk_start + 64]
                where = " OR ".join(["(part = ? AND seq = ?)"] * len(chunk))
                found = await conn.fetch(f"SELECT MIN(accepted_at) FROM rest_inbox WHERE {where}",
                                         *(arg for pair in chunk for arg in pair))
                if found and found[0][0] is not None:
                    moment = float(found[0][0])
                    oldest = moment if oldest is None else min(oldest, moment)
        events = sum(int(next_seq) - int(offset) for _, next_seq, offset in rows if int(next_seq) > int(offset))
        return Backlog(events, oldest)

    async def live_members(self, since: datetime) -> list[str]:
        """Instances whose membership lease was renewed at or after ``since``."""
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                "SELECT owner, acquired_at FROM partition_leases WHERE topic LIKE ?", MEMBER_TOPIC_PREFIX + "%"
            )
        return sorted({str(owner) for owner, at in rows if datetime.fromisoformat(str(at)) >= since})

    async def release(self, owner: str, epochs: Mapping[PartitionId, int]) -> None:
        """Give up leases at once (marked renewed at the epoch, so any instance may take them)."""
        async with self.store.transaction() as conn:
            for (topic, part), epoch in sorted(epochs.items()):
                await conn.execute(
                    "UPDATE partition_leases SET acquired_at = ? WHERE topic = ? AND part = ? AND owner = ? "
                    "AND epoch = ?",
                    _RELEASED_AT, topic, part, owner, epoch,
                )
