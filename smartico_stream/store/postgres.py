"""PostgreSQL (asyncpg), for several instances sharing one consumer group."""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from smartico_stream.config import EXIT_CONFIG, StartupError
from smartico_stream.store.base import ConflictError
from smartico_stream.store.schema import Dialect, Migrations, apply_migrations
from smartico_stream.store.sql import SqlStore


def user_lock_id(brand: str, user: str) -> int:
    """A stable signed 64-bit advisory-lock id for one user."""
    digest = hashlib.blake2b(f"{brand}\x1f{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)

_PLACEHOLDER = re.compile(r"\?")
# What PostgreSQL raises when it refuses what was written rather than how (see PostgresDatabase.refusal).
# UnicodeEncodeError: text Python cannot encode (a lone surrogate) fails in the store's own code first.
_CONTENT_ERRORS = (
    asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.ProgramLimitExceededError, UnicodeEncodeError,
)


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


def server_of(dsn: str) -> str:
    """``HOST:PORT/DATABASE`` of a DSN, without user or password (for messages)."""
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    database = parts.path.lstrip("/") or parts.username or "postgres"
    return f"{host}:{port}/{database}"


async def connect(dsn: str, timeout_s: float) -> asyncpg.Connection:
    """One connection, within ``timeout_s``; a refusal, a timeout or a login problem is a StartupError
    naming the server (never the password): unreachable (exit 3), or a database, role or password the
    server refuses (exit 2, the configuration is wrong)."""
    where = f"PostgreSQL at {server_of(dsn)}"
    try:
        return await asyncpg.connect(dsn, timeout=timeout_s)
    except TimeoutError:
        raise StartupError(f"{where} did not answer within {timeout_s:g} s", timed_out=True) from None
    except asyncpg.InvalidCatalogNameError:
        raise StartupError(f"{where}: the database does not exist", EXIT_CONFIG) from None
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError) as exc:
        raise StartupError(f"{where} refused the login: {type(exc).__name__}", EXIT_CONFIG) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StartupError(f"{where} is unreachable: {reason.lower()}") from None
    except asyncpg.PostgresError as exc:
        raise StartupError(f"{where} refused the connection: {type(exc).__name__}", EXIT_CONFIG) from None


class PostgresDatabase:
    """A connection pool with transactions; ``schema`` (created if missing) isolates one deployment.
    Connecting at ``open`` gives up after ``connect_timeout_s``."""

    dialect: Dialect = "postgres"

    def __init__(
        self, dsn: str, schema: str | None = None, min_size: int = 1, max_size: int = 4,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout_s = connect_timeout_s
        self._pool: asyncpg.Pool | None = None

    async def open(self, migrations: Migrations) -> None:
        # Instances starting together must not both create the schema or apply a migration: one
        # session-level advisory lock covers both.
        lock = zlib.crc32(f"smartico-stream:{self.schema or ''}".encode())
        guard = await connect(self.dsn, self._connect_timeout_s)
        try:
            await guard.execute("SELECT pg_advisory_lock($1)", lock)
            if self.schema:
                await guard.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            settings = {"search_path": self.schema} if self.schema else None
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=self._min_size, max_size=self._max_size, server_settings=settings,
                timeout=self._connect_timeout_s,
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

    def refusal(self, exc: BaseException) -> str | None:
        """Data errors (class 22: a NUL or an invalid encoding in text, a number out of range, also
        asyncpg's own refusal to encode an argument), integrity violations (class 23) and program
        limits (class 54: an index row over the btree maximum), text Python cannot encode. Only the
        class, the SQLSTATE and the table are named: PostgreSQL's and asyncpg's messages may quote
        the value."""
        if not isinstance(exc, _CONTENT_ERRORS):
            return None
        details = [type(exc).__name__]
        if sqlstate := getattr(exc, "sqlstate", None):
            details.append(f"SQLSTATE {sqlstate}")
        if table := getattr(exc, "table_name", None):
            details.append(f"table {table}")
        return f"PostgreSQL refused a value of this record ({', '.join(details)})"


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

    # The keys asked for, as arrays, each looked up on the whole primary key. OFFSET 0 keeps the
    # LATERAL subquery from being turned into a join, so the plan is an index probe per key whatever
    # the planner knows of the table. ``brand = $1 AND user_id IN (...)`` was planned, on a table
    # without statistics (never analysed: autovacuum off, or a store just loaded), as a scan of every
    # row of the brand with ``user_id`` as a filter, and a plain join as one pass over the table: a
    # cost that grew with the number of users (the version check of 1,200 users took 59 ms at the
    # start of a load and 400 ms after 100k users; docs/performance.md, "PostgreSQL lookups").
    _USER_ROWS = ("SELECT k.brand, k.user_id, found.* FROM unnest(?::text[], ?::text[]) AS k(brand, user_id), "
                  "LATERAL (SELECT {columns} FROM users u WHERE u.brand = k.brand AND u.user_id = k.user_id "
                  "OFFSET 0) AS found")

    async def _user_rows(self, conn: Any, keys: Sequence[tuple[str, str]], columns: str) -> list[tuple[Any, ...]]:
        """``(brand, user_id, *columns)`` of the stored users among ``keys``, in one statement."""
        if not keys:
            return []
        rows: list[tuple[Any, ...]] = await conn.fetch(
            self._USER_ROWS.format(columns=columns), [brand for brand, _ in keys], [user for _, user in keys]
        )
        return rows

    async def _upsert_users(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        """All users in one statement over arrays (``unnest``): one round trip and one plan instead
        of a bound statement per user."""
        if not rows:
            return
        columns = [list(column) for column in zip(*rows, strict=True)]
        brands, users = columns[0], columns[1]
        if len(set(zip(brands, users, strict=True))) < len(rows):
            # One statement cannot update a row twice; a user given twice is written in order.
            await super()._upsert_users(conn, rows)
            return
        await conn.execute(
            "INSERT INTO users AS u (brand, user_id, state, profile, progress, payments, version, updated_at) "
            "SELECT * FROM unnest(?::text[], ?::text[], ?::bytea[], ?::bytea[], ?::bytea[], ?::bytea[], "
            "?::bigint[], ?::text[]) "
            "ON CONFLICT (brand, user_id) DO UPDATE SET state = excluded.state, "
            "profile = COALESCE(excluded.profile, u.profile), progress = COALESCE(excluded.progress, u.progress), "
            "payments = COALESCE(excluded.payments, u.payments), "
            "version = excluded.version, updated_at = excluded.updated_at",
            *columns,
        )

    async def commit(self, batch: Any) -> None:
        try:
            await super().commit(batch)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
            # Should not happen with the ordered locks; if it does, it is a conflict to redo.
            raise ConflictError([(u.brand, u.user) for u in batch.users]) from exc

    async def probe(self, batch: Any) -> None:
        try:
            await super().probe(batch)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
            raise ConflictError([(u.brand, u.user) for u in batch.users]) from exc

    def __init__(
        self, dsn: str, schema: str | None = None, min_size: int = 1, max_size: int = 4,
        connect_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(PostgresDatabase(dsn, schema, min_size, max_size, connect_timeout_s))
        self.dsn = dsn
        self.schema = schema
