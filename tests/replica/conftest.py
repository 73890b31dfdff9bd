"""Fixtures of the replica-source tests: the operator's database, on the real PostgreSQL and the
real MariaDB of this machine (a scratch schema or database per test, dropped afterwards), and
settings that point the service at it.

- ``operator_db``: an :class:`OperatorDb` on each server (the test runs once per server)
- ``replica_settings(operator_db, views, **overrides)``: Settings with ``source: replica``
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncmy
import asyncpg
import pytest
import pytest_asyncio

from smartico_stream.config import Settings, load_settings
from tests.support.postgres import PG_DSN, require_postgres

MYSQL_DSN = "mysql://root@127.0.0.1:3306/test"


class OperatorDb:
    """A scratch schema (PostgreSQL) or database (MariaDB) standing in for the operator's replica.
    ``sql`` is run as written except that ``{ts}`` becomes the server's timestamp type."""

    def __init__(self, kind: str, dsn: str, schema: str, conn: Any) -> None:
        self.kind = kind
        self.dsn = dsn
        self.schema = schema
        self._conn = conn

    @property
    def ts(self) -> str:
        return "timestamp(3)" if self.kind == "postgresql" else "DATETIME(3)"

    def qualified(self, table: str) -> str:
        return f"{self.schema}.{table}"

    def _sql(self, sql: str) -> str:
        sql = sql.replace("{ts}", self.ts).replace("{schema}", self.schema)
        if self.kind == "mysql":
            sql = sql.replace('"', "`")
        return sql

    async def execute(self, sql: str, *args: Any) -> None:
        if self.kind == "postgresql":
            await self._conn.execute(self._sql(sql), *args)
        else:
            async with self._conn.cursor() as cursor:
                await cursor.execute(self._sql(sql).replace("$1", "%s"), args or None)

    async def insert(self, table: str, rows: Sequence[dict[str, Any]], conn: Any = None) -> None:
        """Insert ``rows`` (each committed at once unless ``conn``, an open transaction, is given)."""
        if not rows:
            return
        columns = list(rows[0])
        target = conn or self._conn
        if self.kind == "postgresql":
            marks = ", ".join(f"${i + 1}" for i in range(len(columns)))
            names = ", ".join(f'"{c}"' for c in columns)
            await target.executemany(f'INSERT INTO "{self.schema}"."{table}" ({names}) VALUES ({marks})',
                                     [tuple(row[c] for c in columns) for row in rows])
        else:
            names = ", ".join(f"`{c}`" for c in columns)
            marks = ", ".join(["%s"] * len(columns))
            async with target.cursor() as cursor:
                await cursor.executemany(f"INSERT INTO `{self.schema}`.`{table}` ({names}) VALUES ({marks})",
                                         [tuple(row[c] for c in columns) for row in rows])

    async def now_utc(self) -> datetime:
        """The server's current time, naive UTC (as the spec's columns hold it)."""
        if self.kind == "postgresql":
            moment: datetime = await self._conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::timestamp(3)")
            return moment
        async with self._conn.cursor() as cursor:
            await cursor.execute("SELECT UTC_TIMESTAMP(3)")
            (moment,) = await cursor.fetchone()
        return moment

    async def open_transaction(self) -> Any:
        """A second connection inside an open transaction (commit with :meth:`commit`)."""
        if self.kind == "postgresql":
            conn = await asyncpg.connect(PG_DSN)
            await conn.execute("BEGIN")
            return conn
        conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", database="test", autocommit=False)
        return conn

    async def commit(self, conn: Any) -> None:
        if self.kind == "postgresql":
            await conn.execute("COMMIT")
            await conn.close()
        else:
            await conn.commit()
            await conn.ensure_closed()

    async def rollback(self, conn: Any) -> None:
        if self.kind == "postgresql":
            await conn.execute("ROLLBACK")
            await conn.close()
        else:
            await conn.rollback()
            await conn.ensure_closed()

    async def deposits_table(self, name: str = "deposits") -> str:
        """The spec's deposits view (as a table), naive UTC times; returns the qualified name."""
        await self.execute(
            f'CREATE TABLE "{{schema}}"."{name}" (dt_finalized {{ts}} NOT NULL, ext_brand_id varchar(32) NOT NULL, '
            "user_ext_id varchar(64) NOT NULL, transaction_id varchar(64) NOT NULL, deposit_amount decimal(18,2), "
            "deposit_method varchar(32), PRIMARY KEY (transaction_id))"
        )
        await self.execute(f'CREATE INDEX "{name}_cursor" ON "{{schema}}"."{name}" (dt_finalized, transaction_id)')
        return self.qualified(name)


def deposit(moment: datetime, tx: str, user: str = "u1", amount: str = "10.00") -> dict[str, Any]:
    from decimal import Decimal

    return {"dt_finalized": moment, "ext_brand_id": "b1", "user_ext_id": user, "transaction_id": tx,
            "deposit_amount": Decimal(amount), "deposit_method": "card"}


def ago(now: datetime, seconds: float) -> datetime:
    return now - timedelta(seconds=seconds)


@pytest_asyncio.fixture(params=["postgresql", "mysql"])
async def operator_db(request: pytest.FixtureRequest) -> AsyncIterator[OperatorDb]:
    name = f"r_{uuid.uuid4().hex[:10]}"
    if request.param == "postgresql":
        require_postgres()
        conn = await asyncpg.connect(PG_DSN)
        await conn.execute(f'CREATE SCHEMA "{name}"')
        db = OperatorDb("postgresql", PG_DSN, name, conn)
        try:
            yield db
        finally:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            await conn.close()
    else:
        try:
            conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", database="test", autocommit=True)
        except Exception as exc:  # noqa: BLE001 - whatever the reason, say it
            pytest.fail(f"MariaDB is unreachable at 127.0.0.1:3306 ({type(exc).__name__}: {exc})", pytrace=False)
        async with conn.cursor() as cursor:
            await cursor.execute(f"CREATE DATABASE `{name}`")
        db = OperatorDb("mysql", MYSQL_DSN, name, conn)
        try:
            yield db
        finally:
            async with conn.cursor() as cursor:
                await cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            await conn.ensure_closed()


@pytest.fixture
def replica_settings(tmp_path: Path) -> Callable[..., Settings]:
    """``replica_settings(db, views=[...], store=..., **replica_overrides)``: a service reading
    ``views`` of ``db`` (fast cycles, a short visibility delay, no dedup, so that a row handled twice
    would show), storing in SQLite in the test's directory."""

    def make(db: OperatorDb, views: list[dict[str, Any]], store_url: str | None = None,
             instance_id: str = "replica-test", **replica: Any) -> Settings:
        base: dict[str, Any] = {
            "source": "replica",
            "adapter": "reference",
            "instance_id": instance_id,
            "metrics": {"port": 0, "host": "127.0.0.1", "enabled": False},
            "store": {"url": store_url or f"sqlite:///{tmp_path / 'state.db'}"},
            "dedup": {"enabled": False},
            "replica": {
                "dsn": db.dsn, "views": views, "visibility_delay_s": 0.5, "idle_wait_s": 0.05,
                "retry_backoff_s": 0.05, "max_backoff_s": 0.2, **replica,
            },
        }
        return load_settings(environ={}, **base)

    return make
