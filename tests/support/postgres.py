"""The test PostgreSQL: one fresh schema per test, dropped afterwards.

An unreachable server FAILS the test with a message saying so (CI starts it); it is never a skip.
Schemas carry a random suffix, so any number of tests (and xdist workers) share the one database.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from dataclasses import dataclass

import pytest

PG_DSN = os.environ.get("SMARTICO_STREAM_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True, slots=True)
class PgSchema:
    """A schema of the test database that belongs to one test."""

    dsn: str
    schema: str


def unique_schema(prefix: str = "t") -> str:
    """A schema name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def _pg_check(dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    await conn.close()


def require_postgres(dsn: str = PG_DSN) -> str:
    """The DSN, after checking the server answers; FAILS the test (never skips) when it does not."""
    try:
        # In a thread of its own: callers may be inside a running event loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _pg_check(dsn)).result(timeout=30)
    except Exception as exc:  # noqa: BLE001 - whatever the reason, say it
        pytest.fail(
            f"PostgreSQL is unreachable at {dsn} ({type(exc).__name__}: {exc}); these tests need it "
            "(CI starts it; locally: start PostgreSQL with trust auth and a database named 'test')",
            pytrace=False,
        )
    return dsn


async def drop_schema_async(schema: str, dsn: str = PG_DSN) -> None:
    """``DROP SCHEMA ... CASCADE`` (teardown; a missing schema is fine)."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("SET lock_timeout = '10s'")
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def drop_schema(schema: str, dsn: str = PG_DSN) -> None:
    """:func:`drop_schema_async` from synchronous code (also from inside a running loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, drop_schema_async(schema, dsn)).result(timeout=60)


def pg_dsn_with_schema(schema: str, dsn: str = PG_DSN) -> str:
    """A DSN whose sessions use ``schema`` (for tools that take only a URL)."""
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}options=-csearch_path%3D{schema}"
