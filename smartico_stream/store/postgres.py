"""PostgreSQL store (asyncpg), for several instances sharing one consumer group."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from smartico_stream.store.sql import SqlStore

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


class PostgresStore(SqlStore):
    dialect = "postgres"
    # Lock the lease rows for the rest of the transaction, so a takeover cannot slip in between
    # the check and the commit.
    _lease_query = "SELECT epoch FROM partition_leases WHERE topic = ? AND part = ? FOR UPDATE"
    _version_query = (
        "SELECT brand, user_id, version FROM users WHERE (brand, user_id) IN (VALUES {rows}) FOR UPDATE"
    )

    def __init__(self, dsn: str, schema: str | None = None, min_size: int = 1, max_size: int = 4) -> None:
        self.dsn = dsn
        self.schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        settings = {"search_path": self.schema} if self.schema else None
        if self.schema:
            conn = await asyncpg.connect(self.dsn)
            try:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            finally:
                await conn.close()
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=self._min_size, max_size=self._max_size, server_settings=settings
        )
        # Two instances starting together must not both apply a migration.
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(74218)")
            try:
                await self.migrate()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(74218)")

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
            raise RuntimeError("store is not open")
        return self._pool
