"""Stores over one database for the store tests: an SQLite file, or one PostgreSQL schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smartico_stream.store.postgres import PostgresStore
from smartico_stream.store.sqlite import SqliteStore
from tests.support import postgres


class Backend:
    """Makes stores over one database: an SQLite file, or one PostgreSQL schema."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.path = tmp_path / "state.db"
        self.schema = postgres.unique_schema("t_store") if kind == "postgres" else None
        self.dsn = postgres.require_postgres() if kind == "postgres" else None
        self.opened: list[Any] = []

    def new(self) -> SqliteStore | PostgresStore:
        if self.kind == "sqlite":
            return SqliteStore(self.path)
        assert self.dsn is not None
        return PostgresStore(self.dsn, schema=self.schema)

    async def open(self) -> SqliteStore | PostgresStore:
        store = self.new()
        await store.open()
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in self.opened:
            await store.close()
        self.opened.clear()
