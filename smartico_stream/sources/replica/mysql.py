"""The MySQL / MariaDB replica dialect (asyncmy): ``%s`` placeholders, backtick quoting, the
session's ``time_zone`` set to ``replica.db_timezone`` (``+00:00`` for UTC, which needs no zone
tables), a statement timeout (MariaDB ``max_statement_time``, MySQL ``max_execution_time``) and one
read-only transaction per page."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import asyncmy
from asyncmy.cursors import DictCursor

from smartico_stream.observability.logging import get_logger
from smartico_stream.sources.replica.dialect import ConnectOptions, ReplicaConnection, ReplicaError, SqlDialect

log = get_logger(__name__)

_READ_ERRORS = (asyncmy.errors.MySQLError, OSError, TimeoutError, ConnectionError)


def _offset(name: str) -> str:
    """The zone's current UTC offset as MySQL writes one (``+01:00``)."""
    offset = datetime.now(ZoneInfo(name)).utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02}:{abs(minutes) % 60:02}"


class _MyReader:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def now(self) -> datetime:
        # UTC_TIMESTAMP does not depend on the session zone: the one unambiguous clock reading.
        rows = await self._query("SELECT UTC_TIMESTAMP(6) AS now", ())
        moment: datetime = rows[0]["now"]
        return moment.replace(tzinfo=UTC)

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        return await self._query(sql, args, transaction=True)

    async def _query(self, sql: str, args: Sequence[Any], transaction: bool = False) -> list[dict[str, Any]]:
        try:
            async with self._conn.cursor(DictCursor) as cursor:
                if transaction:
                    await cursor.execute("START TRANSACTION READ ONLY")
                await cursor.execute(sql, tuple(args))
                rows = list(await cursor.fetchall())
                if transaction:
                    await cursor.execute("COMMIT")
        except _READ_ERRORS as exc:
            raise ReplicaError(f"MySQL: {type(exc).__name__}: {exc}") from exc
        return [dict(row) for row in rows]

    async def close(self) -> None:
        try:
            await self._conn.ensure_closed()
        except _READ_ERRORS:
            self._conn.close()


class MySqlDialect(SqlDialect):
    """MySQL 8 and MariaDB 10.3 or later."""

    name = "mysql"

    def quote(self, identifier: str) -> str:
        return ".".join(f"`{part}`" for part in identifier.split("."))

    def placeholder(self, index: int) -> str:
        return "%s"

    def visible_before(self, placeholder: str) -> str:
        # NOW(6) is in the session's zone (set to replica.db_timezone), as DATETIME columns are read.
        return f"NOW(6) - INTERVAL ({placeholder} * 1000000) MICROSECOND"

    async def connect(self, dsn: str, options: ConnectOptions) -> ReplicaConnection:
        parts = urlsplit(dsn)
        try:
            conn = await asyncmy.connect(
                host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                user=unquote(parts.username or "root"), password=unquote(parts.password or ""),
                database=parts.path.lstrip("/") or None, connect_timeout=options.connect_timeout_s,
                autocommit=True, charset="utf8mb4",
            )
        except _READ_ERRORS as exc:
            raise ReplicaError(f"MySQL: cannot connect: {type(exc).__name__}") from exc
        reader = _MyReader(conn)
        try:
            version = (await reader._query("SELECT VERSION() AS v", ()))[0]["v"]
            timeout = (f"SET SESSION max_statement_time = {float(options.statement_timeout_s)}"
                       if "mariadb" in str(version).lower()
                       else f"SET SESSION max_execution_time = {int(options.statement_timeout_s * 1000)}")
            await reader._query(timeout, ())
            await self._set_zone(reader, options.db_timezone)
        except ReplicaError:
            await reader.close()
            raise
        return reader

    @staticmethod
    async def _set_zone(reader: _MyReader, zone: str) -> None:
        """The session's zone: by name when the server has its zone tables; else (MariaDB and MySQL
        ship without them) the zone's offset at connect time, which is exact for UTC and for zones
        without daylight saving time; for a zone with it, load the zone tables (docs/replica.md)."""
        try:
            await reader._query("SET SESSION time_zone = %s", (zone,))
        except ReplicaError:
            offset = _offset(zone)
            if zone.upper() not in ("UTC", "ETC/UTC"):
                log.warning("the MySQL server has no time zone tables; using the zone's current offset",
                            zone=zone, offset=offset)
            await reader._query("SET SESSION time_zone = %s", (offset,))
