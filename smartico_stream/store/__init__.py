"""State store: per-user state, outbox, history, dedup keys and source offsets in one transaction."""

from __future__ import annotations

from smartico_stream.store.base import BatchWrite, FencedError, Lease, OutboxRow, QueuedAction, Store
from smartico_stream.store.sql import Database


def open_database(url: str, schema: str | None = None) -> Database:
    """``sqlite:///path/to/file.db`` (or a bare path) or ``postgresql://...`` (optionally in ``schema``)."""
    if url.startswith(("postgresql://", "postgres://")):
        from smartico_stream.store.postgres import PostgresDatabase

        return PostgresDatabase(url, schema=schema)
    from smartico_stream.store.sqlite import SqliteDatabase

    return SqliteDatabase(url.removeprefix("sqlite:///").removeprefix("sqlite://"))


def open_store_from_url(url: str, schema: str | None = None) -> Store:
    """The state store at ``url`` (see :func:`open_database`)."""
    db = open_database(url, schema)
    if db.dialect == "postgres":
        from smartico_stream.store.postgres import PostgresStore

        return PostgresStore(url, schema=schema)
    from smartico_stream.store.sqlite import SqliteStore

    return SqliteStore(db.path)  # type: ignore[attr-defined]


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
