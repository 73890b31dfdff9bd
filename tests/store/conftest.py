"""Store fixtures: the same tests on an SQLite file and on a PostgreSQL schema of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from smartico_stream.store.postgres import PostgresStore
from smartico_stream.store.sqlite import SqliteStore
from tests.support import postgres
from tests.support.store_backends import Backend


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    b = Backend(request.param, tmp_path)
    try:
        yield b
    finally:
        await b.close_all()
        if b.schema:
            await postgres.drop_schema_async(b.schema)


@pytest_asyncio.fixture
async def store(backend: Backend) -> SqliteStore | PostgresStore:
    return await backend.open()


@pytest_asyncio.fixture
async def pg() -> AsyncIterator[Backend]:
    """PostgreSQL only (concurrency between members)."""
    b = Backend("postgres", Path("/nonexistent"))
    try:
        yield b
    finally:
        await b.close_all()
        assert b.schema is not None
        await postgres.drop_schema_async(b.schema)
