"""A view's reading position and the rows read from it: pure functions, no I/O.

A position is the values of the view's order columns (cursor column, then the id columns) of the
last row handled, kept with the driver's own types (a naive ``timestamp`` stays naive, so it is bound
back to the query as the same type the column has). It is stored as text in the batch's store
transaction (``source_cursors``), like a Kafka offset.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from typing import Any

import orjson

_INT64 = 1 << 63


@dataclass(frozen=True, slots=True)
class Position:
    """Where reading a view resumes: after the row whose order columns had ``values``; or, when
    ``inclusive`` (a configured start), at rows whose cursor column is at least ``values[0]``."""

    values: tuple[Any, ...]
    inclusive: bool = False

    @property
    def cursor(self) -> Any:
        """The cursor column's value (a time or an id)."""
        return self.values[0]


class CursorError(ValueError):
    """A stored cursor that cannot be read back (written by a newer version, or edited by hand)."""


def _typed(value: Any) -> Any:
    # bool before int: a bool is an int to Python, never a cursor value here but kept exact anyway.
    if isinstance(value, bool):
        return {"t": "bool", "v": value}
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else {"t": "int", "v": str(value)}
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return {"t": "datetime", "v": value.isoformat()}
    if isinstance(value, date):
        return {"t": "date", "v": value.isoformat()}
    if isinstance(value, Decimal):
        return {"t": "decimal", "v": str(value)}
    if isinstance(value, uuid.UUID):
        return {"t": "uuid", "v": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"t": "bytes", "v": bytes(value).hex()}
    raise CursorError(f"a cursor or id column holds a {type(value).__name__}, which cannot be a cursor")


_READERS: dict[str, Any] = {
    "bool": bool,
    "int": int,
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "decimal": Decimal,
    "uuid": uuid.UUID,
    "bytes": bytes.fromhex,
}


def _untyped(item: Any) -> Any:
    if isinstance(item, dict):
        reader = _READERS.get(str(item.get("t")))
        if reader is None or "v" not in item:
            raise CursorError(f"unknown cursor value type {item.get('t')!r}")
        return reader(item["v"])
    return item


def encode_position(position: Position) -> str:
    """The text stored for ``position`` (read back by :func:`decode_position`, types included)."""
    document = {"v": [_typed(v) for v in position.values], "inclusive": position.inclusive}
    return orjson.dumps(document).decode()


BEGINNING = '{"v":[],"inclusive":false}'
"""A stored cursor that says "from the first row" (written by ``replica reset-cursor``)."""


def decode_position(text: str) -> Position | None:
    """The stored position; ``None`` for :data:`BEGINNING`."""
    try:
        document = orjson.loads(text)
        values = tuple(_untyped(item) for item in document["v"])
        return Position(values, bool(document.get("inclusive", False))) if values else None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CursorError(f"stored cursor is not readable: {exc}") from None


def position_of(row: Mapping[str, Any], order: Sequence[str]) -> Position:
    """The position just after ``row``. Raises KeyError naming a missing order column."""
    return Position(tuple(row[column] for column in order))


def aware(moment: datetime, zone: tzinfo) -> datetime:
    """``moment`` with a zone: a naive value is read in ``zone`` (``replica.db_timezone``), then both
    kinds are given in UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


def native_row(row: Mapping[str, Any], zone: tzinfo, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The row as the adapter receives it: native types, every time with a zone (naive ones read in
    ``zone``), a ``date`` as midnight UTC of that day; ``defaults`` fill columns the view lacks or
    leaves null (a deposits view has no ``type`` column: ``{type: deposit}``)."""
    native: dict[str, Any] = dict(defaults)
    for column, value in row.items():
        if isinstance(value, datetime):
            value = aware(value, zone)
        elif isinstance(value, date):
            value = datetime(value.year, value.month, value.day, tzinfo=UTC)
        if value is not None or column not in native:
            native[column] = value
    return native


def cursor_time(position: Position | None, zone: tzinfo) -> datetime | None:
    """The position's cursor as an aware time, when the cursor is a time (for the cursor lag)."""
    if position is None or not isinstance(position.cursor, datetime):
        return None
    return aware(position.cursor, zone)
