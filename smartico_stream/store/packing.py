"""How a batch's items are packed into one row per partition (outbox, dedup keys) or per batch
(history), and unpacked again.

A row per item cost the store most of its write time (an index entry, a B-tree insert and the
statement's per-row overhead each, ~6 µs per action on SQLite); one row per partition per batch
costs well under a microsecond per item (docs/performance.md, "Store writes").

- Actions: the actions' JSON documents joined by newlines (JSON-lines). A JSON document never
  holds a raw newline (orjson escapes it inside strings), so splitting on ``\\n`` is exact. The
  store treats a document as opaque bytes.
- History: one JSON array of entries, each an array of the entry's fields (see :func:`pack_history`).
- Dedup keys: the digests as unsigned 64-bit little-endian integers, the first-seen times as
  little-endian doubles, two blobs of the same length in keys.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson

from smartico_stream.engine.evaluator import HistoryEntry
from smartico_stream.store.base import RowEncodingError

_SWAP = sys.byteorder != "little"  # the packed format is little-endian on every host


def pack_actions(documents: Sequence[bytes]) -> bytes:
    """Action documents (each ``Action.to_json()``) as one JSON-lines blob."""
    return b"\n".join(documents)


def unpack_actions(blob: bytes) -> list[bytes]:
    """The action documents of a blob written by :func:`pack_actions`, in order."""
    return blob.split(b"\n")


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def pack_history(entries: Iterable[HistoryEntry]) -> bytes:
    """Entries as one JSON array of ``[brand, user, rule_id, event_id, event_type, event_time,
    outcome, executions, reason, qualified_at, qualified_until]`` (times as ISO-8601 text, the
    columns of the former one-row-per-entry table, so migration 4 builds the same shape in SQL).
    orjson writes the times itself (RFC 3339, to the microsecond): formatting them in Python cost
    more than the rest of the row.
    Text JSON cannot hold (a lone surrogate an adapter produced) is a :class:`RowEncodingError`, so
    the service can isolate its record."""
    try:
        return orjson.dumps([
            [h.brand, h.user, h.rule_id, h.event_id, h.event_type, h.event_time, h.outcome, h.executions,
             h.reason, h.qualified_at, h.qualified_until]
            for h in entries
        ])
    except (TypeError, ValueError) as exc:
        # orjson's messages name the problem ("surrogates not allowed"), never the value.
        raise RowEncodingError(f"history.body: an entry cannot be encoded as JSON ({exc})") from None


def history_fields(blob: bytes) -> list[list[Any]]:
    """The entries of a history blob as field lists (cheap to filter before building entries)."""
    fields: list[list[Any]] = orjson.loads(blob)
    return fields


def history_entry(fields: Sequence[Any]) -> HistoryEntry:
    """One entry from its field list (see :func:`pack_history`)."""
    event_time = datetime.fromisoformat(fields[5])  # every entry has its event's time
    return HistoryEntry(
        brand=fields[0], user=fields[1], rule_id=fields[2], event_id=fields[3], event_type=fields[4],
        event_time=event_time, outcome=fields[6], executions=int(fields[7]), reason=fields[8],
        qualified_at=_dt(fields[9]), qualified_until=_dt(fields[10]),
    )


def pack_dedup(keys: Sequence[tuple[int, float]]) -> tuple[bytes, bytes]:
    """``(digests, times)`` blobs of ``(digest, first seen)`` pairs. A digest outside the unsigned
    64-bit range is a :class:`RowEncodingError` (the message never quotes it)."""
    try:
        digests = array("Q", [digest for digest, _ in keys])
    except (OverflowError, TypeError):
        raise RowEncodingError("dedup_keys.digests: a digest is not an unsigned 64-bit integer") from None
    times = array("d", [seen for _, seen in keys])
    if _SWAP:
        digests.byteswap()
        times.byteswap()
    return digests.tobytes(), times.tobytes()


def unpack_dedup(digests: bytes, times: bytes) -> list[tuple[int, float]]:
    """The ``(digest, first seen)`` pairs of blobs written by :func:`pack_dedup`, in order."""
    d, t = array("Q"), array("d")
    d.frombytes(digests)
    t.frombytes(times)
    if _SWAP:
        d.byteswap()
        t.byteswap()
    return list(zip(d, t, strict=True))
