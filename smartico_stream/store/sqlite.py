"""Embedded SQLite: one file, WAL journal, one writer at a time."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from smartico_stream.store.schema import Dialect, Migrations, apply_migrations
from smartico_stream.store.sql import SqlStore

# Raised by sqlite3 for what was written rather than how (see SqliteDatabase.refusal).
_CONTENT_ERRORS = (sqlite3.DataError, sqlite3.IntegrityError, OverflowError, UnicodeEncodeError)


class _SqliteConnection:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, args).fetchall()

    async def execute(self, sql: str, *args: Any) -> None:
        self._db.execute(sql, args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    async def execute_count(self, sql: str, *args: Any) -> int:
        return self._db.execute(sql, args).rowcount


class SqliteDatabase:
    """A database file with transactions. Calls run on the event loop's thread: local SQLite calls
    take microseconds, and one connection used from one thread needs no locking."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path | str, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self._synchronous = synchronous
        self._db: sqlite3.Connection | None = None

    async def open(self, migrations: Migrations) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are begun explicitly (BEGIN IMMEDIATE takes the write
        # lock up front, so a second process sharing the file waits instead of failing mid-batch).
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={self._synchronous}")
        await apply_migrations(self, migrations)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteConnection]:
        db = self._require()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield _SqliteConnection(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[_SqliteConnection]:
        yield _SqliteConnection(self._require())

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("database is not open")
        return self._db

    def refusal(self, exc: BaseException) -> str | None:
        """SQLite stores any text (NUL included) and any size up to its 1 GB limit, so few contents
        fail here: a data or integrity error, an integer beyond 64 bits, a string Python cannot
        encode as UTF-8 (a lone surrogate an adapter produced). Only the error class is named."""
        if not isinstance(exc, _CONTENT_ERRORS):
            return None
        return f"SQLite refused a value of this record ({type(exc).__name__})"


class SqliteStore(SqlStore):
    """The state store on SQLite (the default; one instance per consumer group)."""

    def __init__(self, path: Path | str, synchronous: str = "FULL") -> None:
        super().__init__(SqliteDatabase(path, synchronous))
        self.path = Path(path)
