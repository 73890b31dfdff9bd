"""The replica demo's operator database: the synthetic stream written as rows into tables of a
scratch schema on a PostgreSQL server, one table per stream behind a view (as an operator exposes
them), while the service polls the views (``smartico-stream demo --transport replica``).

Each stream's table has the columns the synthetic records carry, typed as an operator's would be
(times as ``timestamptz``, money as ``numeric``, ids as text), plus ``seq``, an always-increasing id:
the views are read by id (kind ``id``), in the order the rows were written. Records that are not rows
at all (invalid JSON, not an object, no key, a value of the wrong type for its column) cannot be
written to a table and are counted as skipped; the others, the defective ones included (a negative
amount, an unknown type, a date in the future, a missing field), are written and reach the service
as a replica would give them.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from smartico_stream.demo.synthetic import StreamSpec, synthetic_stream
from smartico_stream.events.raw import Stream

TIME_COLUMNS = frozenset({"dt_update", "dt_finalized", "bet_date", "event_date", "core_registration_date",
                          "user_birthdate"})
_TEXT_COLUMNS = frozenset({"user_ext_id", "ext_brand_id", "transaction_id", "bet_id", "selection_id"})
SQL_TYPES = {
    "postgresql": {"time": "timestamptz", "numeric": "numeric", "bigint": "bigint", "boolean": "boolean",
                   "text": "text", "seq": "bigserial PRIMARY KEY"},
    # DATETIME holds naive UTC (the replica session's zone is UTC); DECIMAL with few enough places
    # that its trailing zeros stay within the models' 18 digits after the point.
    "mysql": {"time": "DATETIME(6)", "numeric": "DECIMAL(36,6)", "bigint": "BIGINT", "boolean": "BOOLEAN",
              "text": "LONGTEXT", "seq": "BIGINT AUTO_INCREMENT PRIMARY KEY"},
}
VIEW_NAMES = {Stream.PROFILE: "users", Stream.PAYMENTS: "payments", Stream.CASINO: "casino", Stream.SPORT: "sport"}


class NotARow(ValueError):
    """A synthetic record that no table column could hold."""


def _kind_of(column: str, types: set[str]) -> str:
    if column in TIME_COLUMNS:
        return "time"
    if column in _TEXT_COLUMNS:
        return "text"
    if "Decimal" in types:
        return "numeric"  # money, sometimes written as a string by the operator
    if types == {"bool"}:
        return "boolean"
    if types == {"int"}:
        return "bigint"
    return "text"


def _convert(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "time":
        if isinstance(value, int) and not isinstance(value, bool):
            return datetime.fromtimestamp(value / 1000, UTC)
    elif kind == "numeric":
        if isinstance(value, str | int | Decimal) and not isinstance(value, bool):
            try:
                number = Decimal(value)
            except InvalidOperation:
                number = None
            if number is not None and number.is_finite():  # no SQL DECIMAL holds NaN or infinity
                return number
    elif kind == "bigint":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "boolean":
        if isinstance(value, bool):
            return value
    elif isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    raise NotARow(f"{type(value).__name__} in a {kind} column")


def _document(value: bytes | None) -> dict[str, Any]:
    try:
        document = json.loads(value or b"", parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        raise NotARow("not JSON") from None
    if not isinstance(document, dict):
        raise NotARow("not an object")
    return document


@dataclass
class Schema:
    """Per stream, its columns and their kinds (from a first pass over the synthetic stream)."""

    columns: dict[Stream, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: StreamSpec) -> Schema:
        return cls.of_records((record.stream, record.value) for record in synthetic_stream(spec))

    @classmethod
    def of_records(cls, records: Iterable[tuple[Stream, bytes | None]]) -> Schema:
        """The columns of every record that is a JSON object, by stream."""
        seen: dict[Stream, dict[str, set[str]]] = {}
        for stream, value in records:
            try:
                document = _document(value)
            except NotARow:
                continue
            types = seen.setdefault(stream, {})
            for column, value in document.items():
                types.setdefault(column, set()).add(type(value).__name__)
        return cls({stream: {c: _kind_of(c, t) for c, t in sorted(cols.items())} for stream, cols in seen.items()})

    def row(self, stream: Stream, key: bytes | None, value: bytes | None) -> tuple[Any, ...]:
        """The record as a row of its stream's table (columns in :attr:`columns` order)."""
        if not key:
            raise NotARow("no key")
        document = _document(value)
        columns = self.columns[stream]
        unknown = set(document) - set(columns)
        if unknown:
            raise NotARow(f"no column {sorted(unknown)[0]}")
        return tuple(_convert(kind, document.get(column)) for column, kind in columns.items())

    def create_statements(self, kind: str, schema: str) -> list[str]:
        """``CREATE TABLE`` and ``CREATE VIEW`` per stream in ``schema`` (a MySQL database), for
        ``kind`` ``postgresql`` or ``mysql``: table ``<view>_rows`` with ``seq`` first, view ``<view>``."""
        types, quote = SQL_TYPES[kind], (_q if kind == "postgresql" else _bq)
        statements = []
        for stream, name in VIEW_NAMES.items():
            columns = self.columns.get(stream, {"user_ext_id": "text"})
            defs = ", ".join(f"{quote(c)} {types[k]}" for c, k in columns.items())
            table = f"{quote(schema)}.{quote(name + '_rows')}"
            statements.append(f"CREATE TABLE {table} ({quote('seq')} {types['seq']}, {defs})")
            statements.append(f"CREATE VIEW {quote(schema)}.{quote(name)} AS SELECT * FROM {table}")  # noqa: S608
        return statements

    def insert_statement(self, kind: str, schema: str, stream: Stream) -> str:
        """The parameterised ``INSERT`` of one row of ``stream`` (columns in :attr:`columns` order)."""
        quote = _q if kind == "postgresql" else _bq
        columns = list(self.columns[stream])
        marks = ", ".join(f"${i + 1}" if kind == "postgresql" else "%s" for i in range(len(columns)))
        table = f"{quote(schema)}.{quote(VIEW_NAMES[stream] + '_rows')}"
        return f"INSERT INTO {table} ({', '.join(quote(c) for c in columns)}) VALUES ({marks})"  # noqa: S608


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _bq(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class ReplicaFeeder:
    """Creates the scratch schema and writes the synthetic stream into it, never more than
    ``max_ahead`` rows ahead of what the service consumed. Runs as a task on the demo's loop."""

    def __init__(self, dsn: str, schema: str, spec: StreamSpec, consumed: Callable[[], int], deadline: float | None,
                 max_ahead: int, batch: int = 500) -> None:
        self._dsn = dsn
        self.schema = schema
        self._spec = spec
        self._consumed = consumed
        self._deadline = deadline
        self._max_ahead = max_ahead
        self._batch = batch
        self._tables: Schema | None = None
        self.produced = 0
        self.kinds: Counter[str] = Counter()
        self.error: BaseException | None = None
        self.done = asyncio.Event()

    def view(self, stream: Stream) -> str:
        return f"{self.schema}.{VIEW_NAMES[stream]}"

    async def create(self) -> None:
        """The schema, one table and one view per stream."""
        import asyncpg

        self._tables = await asyncio.to_thread(Schema.of, self._spec)
        conn = await asyncpg.connect(self._dsn)
        try:
            await conn.execute(f"CREATE SCHEMA {_q(self.schema)}")
            for statement in self._tables.create_statements("postgresql", self.schema):
                await conn.execute(statement)
        finally:
            await conn.close()

    async def drop(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {_q(self.schema)} CASCADE")
        finally:
            await conn.close()

    async def run(self) -> None:
        """Write the stream; errors are kept in :attr:`error` for the demo to report."""
        import asyncpg

        try:
            if self._tables is None:
                raise RuntimeError("create() first")
            conn = await asyncpg.connect(self._dsn)
            try:
                await self._write(conn, self._tables, synthetic_stream(self._spec))
            finally:
                await conn.close()
        except Exception as exc:  # noqa: BLE001 - reported by the demo instead of dying silently
            self.error = exc
        finally:
            self.done.set()

    async def _write(self, conn: Any, tables: Schema, records: Iterable[Any]) -> None:
        import time

        pending: dict[Stream, list[tuple[Any, ...]]] = {}
        waiting = 0
        for record in records:
            if self._deadline is not None and time.monotonic() > self._deadline:
                break
            try:
                row = tables.row(record.stream, record.key, record.value)
            except NotARow:
                self.kinds["skipped:not_a_row"] += 1
                continue
            self.kinds[record.kind.value] += 1
            if record.defect:
                self.kinds[f"malformed:{record.defect}"] += 1
            pending.setdefault(record.stream, []).append(row)
            waiting += 1
            if waiting >= self._batch:
                await self._flush(conn, tables, pending)
                waiting = 0
        await self._flush(conn, tables, pending)

    async def _flush(self, conn: Any, tables: Schema, pending: dict[Stream, list[tuple[Any, ...]]]) -> None:
        # How far ahead: the service's consumed count, a plain counter with no event to wait on.
        while self.produced - self._consumed() > self._max_ahead:  # noqa: ASYNC110 - a counter, no event
            await asyncio.sleep(0.01)
        # Streams in the cycle's order, so a user's profile row is never newer than its payments.
        async with conn.transaction():
            for stream in VIEW_NAMES:
                rows = pending.pop(stream, [])
                if not rows:
                    continue
                await conn.executemany(tables.insert_statement("postgresql", self.schema, stream), rows)
                self.produced += len(rows)
