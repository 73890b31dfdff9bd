"""State store: per-user state, outbox, history, dedup keys and source offsets in one transaction."""

from __future__ import annotations

from smartico_stream.store.base import BatchWrite, FencedError, Lease, OutboxRow, QueuedAction, Store


def open_store_from_url(url: str, schema: str | None = None) -> Store:
    """``sqlite:///path/to/file.db`` (or a bare path) or ``postgresql://...`` (optionally in ``schema``)."""
    if url.startswith(("postgresql://", "postgres://")):
        from smartico_stream.store.postgres import PostgresStore

        return PostgresStore(url, schema=schema)
    from smartico_stream.store.sqlite import SqliteStore

    return SqliteStore(url.removeprefix("sqlite:///").removeprefix("sqlite://"))


__all__ = ["BatchWrite", "FencedError", "Lease", "OutboxRow", "QueuedAction", "Store", "open_store_from_url"]
