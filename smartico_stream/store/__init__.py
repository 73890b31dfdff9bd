"""State store: per-user state, outbox, history, dedup keys and source offsets in one transaction."""

from __future__ import annotations

from smartico_stream.store.base import BatchWrite, FencedError, Lease, OutboxRow, QueuedAction, Store
from smartico_stream.store.sql import Database


def open_database(
    url: str, schema: str | None = None, sqlite_synchronous: str = "FULL", connect_timeout_s: float = 10.0
) -> Database:
    """``sqlite:///path/to/file.db`` (or a bare path) or ``postgresql://...`` (optionally in ``schema``).
    ``sqlite_synchronous`` is SQLite's ``PRAGMA synchronous`` (PostgreSQL's is the server's choice)."""
    if _is_postgres(url):
        from smartico_stream.store.postgres import PostgresDatabase

        return PostgresDatabase(url, schema=schema, connect_timeout_s=connect_timeout_s)
    from smartico_stream.store.sqlite import SqliteDatabase

    return SqliteDatabase(_sqlite_path(url), sqlite_synchronous)


def open_store_from_url(
    url: str, schema: str | None = None, sqlite_synchronous: str = "FULL", connect_timeout_s: float = 10.0
) -> Store:
    """The state store at ``url`` (see :func:`open_database`; PostgreSQL: connecting gives up after
    ``connect_timeout_s``)."""
    if _is_postgres(url):
        from smartico_stream.store.postgres import PostgresStore

        return PostgresStore(url, schema=schema, connect_timeout_s=connect_timeout_s)
    from smartico_stream.store.sqlite import SqliteStore

    return SqliteStore(_sqlite_path(url), sqlite_synchronous)


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///").removeprefix("sqlite://")


__all__ = [
    "BatchWrite",
    "Database",
    "FencedError",
    "Lease",
    "OutboxRow",
    "QueuedAction",
    "Store",
    "open_database",
    "open_store_from_url",
]
