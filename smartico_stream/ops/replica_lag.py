"""The replica views' lag for ``smartico-stream lag`` (``source: replica``): per view, the cursor the
store holds, the cursor lag in seconds (the database's ``now()`` minus the cursor's time, 0 when
nothing readable is left after it, as ``smartico_stream_replica_cursor_lag_seconds``), the rows the
poller would still read (counted up to a cap, so a huge backlog costs a bounded index scan) and the
lease holder. Read from the store and the replica, never from the service: it works while the
service is down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from smartico_stream.config import Settings
from smartico_stream.sources.replica.cursor import Position, cursor_time, decode_position
from smartico_stream.sources.replica.dialect import ConnectOptions, ReplicaError, load_dialect
from smartico_stream.sources.replica.settings import ViewSettings, server_of

DEFAULT_COUNT_CAP = 100_000


@dataclass(frozen=True, slots=True)
class ViewLag:
    """One view's position and how far behind it is."""

    view: str
    cursor: list[Any] | None  # the stored position's values (shown as text); None: no stored cursor
    lag_seconds: float | None  # None: the cursor is not a time (id views) and rows are behind
    rows_behind: int  # readable rows after the cursor, at most ``count_cap``
    rows_behind_capped: bool  # True: at least ``rows_behind``
    holder: str | None
    epoch: int | None


class ReplicaLagError(RuntimeError):
    """The store or the replica could not be read."""


def _shown(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value if isinstance(value, int | str | None) else str(value)


def _start(view: ViewSettings, zone: Any) -> Position | str | None:
    """Where a view with no stored cursor starts, as the poller resolves it (``"now"``: nothing is
    behind yet, the poller will start at the head)."""
    if view.start == "beginning":
        return None
    if view.start == "now":
        return "now"
    if isinstance(view.start, datetime):
        return Position((view.start.astimezone(zone).replace(tzinfo=None),), inclusive=True)
    return Position((view.start,), inclusive=True)


async def view_lags(settings: Settings, count_cap: int = DEFAULT_COUNT_CAP) -> tuple[str, list[ViewLag]]:
    """The replica's server (no credentials) and each configured view's lag, in cycle order.
    Raises ReplicaLagError naming what could not be read."""
    from smartico_stream.store import open_store_from_url

    replica = settings.replica
    views = replica.cycle()
    partitions = [(view.name, 0) for view in views]
    store_settings = settings.store
    store = open_store_from_url(store_settings.url, store_settings.db_schema, store_settings.sqlite_synchronous,
                                store_settings.connect_timeout_s)
    try:
        await store.open()
        try:
            cursors = await store.source_cursors(partitions)
            holders = await store.lease_holders(partitions)
        finally:
            await store.close()
    except Exception as exc:  # noqa: BLE001 - any failure to read the store is reported the same way
        raise ReplicaLagError(f"store.url: cannot read the views' cursors ({type(exc).__name__}: {exc})") from None

    dsn = replica.dsn_with_password(os.environ)
    dialect = load_dialect(replica.dialect_name())
    zone = replica.zone()
    options = ConnectOptions(replica.statement_timeout_s, replica.db_timezone, replica.connect_timeout_s)
    try:
        conn = await dialect.connect(dsn, options)
    except ReplicaError as exc:
        raise ReplicaLagError(f"replica.dsn: {server_of(dsn)}: {exc}") from None
    lags: list[ViewLag] = []
    try:
        now = await conn.now()
        for view, tp in zip(views, partitions, strict=True):
            text = cursors.get(tp)
            position: Position | str | None = decode_position(text) if text is not None else _start(view, zone)
            holder = holders.get(tp)
            if position == "now":
                lags.append(ViewLag(view.name, None, 0.0, 0, False, holder.owner if holder else None,
                                    holder.epoch if holder else None))
                continue
            after = position if isinstance(position, Position) else None
            sql, args = dialect.behind_query(view.query(), after, replica.visibility_delay_s, count_cap)
            rows = await conn.fetch(sql, args)
            behind = int(rows[0]["behind"]) if rows else 0
            moment = cursor_time(after, zone)
            lag = 0.0 if behind == 0 else (max(0.0, (now - moment).total_seconds()) if moment is not None else None)
            lags.append(ViewLag(
                view.name, [_shown(v) for v in after.values] if after is not None else None, lag, behind,
                behind >= count_cap, holder.owner if holder else None, holder.epoch if holder else None,
            ))
    except ReplicaError as exc:
        raise ReplicaLagError(f"replica.dsn: {server_of(dsn)}: {exc}") from None
    finally:
        await conn.close()
    return server_of(dsn), lags
