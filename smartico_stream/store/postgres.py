"""PostgreSQL (asyncpg), for several instances sharing one consumer group."""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from smartico_stream.store.base import ConflictError
from smartico_stream.store.schema import Dialect, Migrations, apply_migrations
from smartico_stream.store.sql import SqlStore


def user_lock_id(brand: str, user: str) -> int:
    """A stable signed 64-bit advisory-lock id for one user."""
    digest = hashlib.blake2b(f"{brand}\x1f{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)

_PLACEHOLDER = re.compile(r"\?")


def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class _PgConnection:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._conn.fetch(_numbered(sql), *args)]

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(_numbered(sql), *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(_numbered(sql), rows)

    async def execute_count(self, sql: str, *args: Any) -> int:
        status = await self._conn.execute(_numbered(sql), *args)  # e.g. "DELETE 42"
        return int(status.rsplit(" ", 1)[-1])


class PostgresDatabase:
    """A connection pool with transactions; ``schema`` (created if missing) isolates one deployment."""

    dialect: Dialect = "postgres"

    def __init__(self, dsn: str, schema: str | None = None, min_size: int = 1, max_size: int = 4) -> None:
        self.dsn = dsn
        self.schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self, migrations: Migrations) -> None:
        # Instances starting together must not both create the schema or apply a migration: one
        # session-level advisory lock covers both.
        lock = zlib.crc32(f"smartico-stream:{self.schema or ''}".encode())
        guard = await asyncpg.connect(self.dsn)
        try:
            await guard.execute("SELECT pg_advisory_lock($1)", lock)
            if self.schema:
                await guard.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            settings = {"search_path": self.schema} if self.schema else None
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=self._min_size, max_size=self._max_size, server_settings=settings
            )
            await apply_migrations(self, migrations)
        finally:
            await guard.close()  # also releases the lock

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PgConnection]:
        async with self._require().acquire() as conn, conn.transaction():
            yield _PgConnection(conn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[_PgConnection]:
        async with self._require().acquire() as conn:
            yield _PgConnection(conn)

    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database is not open")
        return self._pool


class PostgresStore(SqlStore):
    """The state store on PostgreSQL."""

    # Lock the lease rows read for the check for the rest of the transaction, so a takeover cannot
    # slip in between the check and the commit.
    _lease_lock = " FOR UPDATE"

    async def _lock_users(self, conn: Any, keys: Sequence[tuple[str, str]]) -> None:
        """Serialise writers of the same users, including users no row exists for yet (a row lock
        cannot cover those), in one global order so two batches never deadlock."""
        locks = sorted({user_lock_id(brand, user) for brand, user in keys})
        await conn.execute("SELECT pg_advisory_xact_lock(h) FROM unnest(?::bigint[]) AS h ORDER BY h", locks)

    async def commit(self, batch: Any) -> None:
        try:
            await super().commit(batch)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
            # Should not happen with the ordered locks; if it does, it is a conflict to redo.
            raise ConflictError([(u.brand, u.user) for u in batch.users]) from exc

    def __init__(self, dsn: str, schema: str | None = None, min_size: int = 1, max_size: int = 4) -> None:
        super().__init__(PostgresDatabase(dsn, schema, min_size, max_size))
        self.dsn = dsn
        self.schema = schema
