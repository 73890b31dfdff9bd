"""Batch rows (schema migration 4): the packed formats round-trip, and delivery by cursor over
(row, action index) hands every action to a sink exactly once, in each partition's order, whatever
the batches' shapes and the relay's batch size; the backlog counts exactly what is left.

The delivery property runs on a live SQLite store (a fresh file per example)."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartico_stream.engine.actions import Action, ActionKind
from smartico_stream.engine.evaluator import HistoryEntry
from smartico_stream.store import BatchWrite, QueuedAction
from smartico_stream.store.base import RowEncodingError
from smartico_stream.store.packing import (
    history_entry,
    history_fields,
    pack_actions,
    pack_dedup,
    pack_history,
    unpack_actions,
    unpack_dedup,
)
from smartico_stream.store.sqlite import SqliteStore

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
PARTITIONS = [("payments", 0), ("payments", 1), ("casino", 2)]

digests = st.integers(min_value=0, max_value=(1 << 64) - 1)
times = st.floats(allow_nan=False, allow_infinity=False)


@given(st.lists(st.tuples(digests, times), max_size=300))
def test_dedup_keys_round_trip_exactly(keys: list[tuple[int, float]]) -> None:
    digest_blob, time_blob = pack_dedup(keys)
    assert len(digest_blob) == len(time_blob) == 8 * len(keys)
    assert unpack_dedup(digest_blob, time_blob) == keys


@pytest.mark.parametrize("digest", [-1, 1 << 64])
def test_a_digest_outside_64_unsigned_bits_is_an_encoding_error_without_its_value(digest: int) -> None:
    with pytest.raises(RowEncodingError) as caught:
        pack_dedup([(digest, 1.0)])
    assert str(digest) not in str(caught.value)


@given(st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=20) | st.integers(-(1 << 63), (1 << 63) - 1)),
                         min_size=1, max_size=50))
def test_action_documents_round_trip_even_with_newlines_inside_strings(documents: list[dict[str, object]]) -> None:
    encoded = [orjson.dumps(doc) for doc in documents]  # orjson escapes a newline inside a string
    assert unpack_actions(pack_actions(encoded)) == encoded


@given(st.lists(st.tuples(st.text(max_size=8), st.sampled_from(["executed", "skipped"]),
                          st.none() | st.text(max_size=10), st.integers(0, 10_000)), min_size=1, max_size=40))
def test_history_entries_round_trip(raw: list[tuple[str, str, str | None, int]]) -> None:
    entries = [
        HistoryEntry(brand="b1", user=user, rule_id="r1", event_id=f"ev-{n}", event_type="deposit",
                     event_time=T0 + timedelta(milliseconds=n), outcome=outcome, executions=n, reason=reason,
                     qualified_at=T0 if n % 2 else None)
        for user, outcome, reason, n in raw
    ]
    assert [history_entry(fields) for fields in history_fields(pack_history(entries))] == entries


def test_history_text_json_cannot_hold_is_an_encoding_error() -> None:
    bad = HistoryEntry(brand="b1", user="\ud800", rule_id="r1", event_id="e", event_type="deposit",
                       event_time=T0, outcome="executed")
    with pytest.raises(RowEncodingError, match=r"history\.body"):
        pack_history([bad])


def _action(n: int) -> Action:
    return Action(action_id=f"b1/ev-{n}/r1/0", rule_id="r1", action=ActionKind.GIVE_POINTS,
                  params={"amount": Decimal(1)}, brand="b1", user="u1", event_id=f"ev-{n}", event_type="deposit",
                  event_time=T0, executions=1)


# Batches: each a list of partition indexes, one per action, in emission order.
batches_strategy = st.lists(st.lists(st.integers(0, len(PARTITIONS) - 1), max_size=25), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None)
@given(batches=batches_strategy, limit=st.integers(1, 12), other_sink_first=st.integers(0, 30))
def test_delivery_by_cursor_hands_over_every_action_once_in_partition_order(
    batches: list[list[int]], limit: int, other_sink_first: int
) -> None:
    async def scenario(path: Path) -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            leases = await store.acquire(PARTITIONS, "me", 0.0)
            epochs = {tp: lease.epoch for tp, lease in leases.items()}
            expected: dict[tuple[str, int], list[str]] = {}
            n = 0
            for batch in batches:
                queued = []
                for index in batch:
                    queued.append(QueuedAction(PARTITIONS[index], _action(n)))
                    expected.setdefault(PARTITIONS[index], []).append(f"ev-{n}")
                    n += 1
                await store.commit(BatchWrite(epochs=epochs, actions=queued))
            # Sink "b" takes a prefix first, so the two sinks' cursors differ while "a" delivers.
            head = await store.pending_actions("b", PARTITIONS, other_sink_first) if other_sink_first else []
            await store.mark_delivered("b", head, epochs)
            delivered: dict[tuple[str, int], list[str]] = {}
            left = n
            while rows := await store.pending_actions("a", PARTITIONS, limit):
                assert len(rows) <= limit
                assert [(r.seq, r.index) for r in rows] == sorted((r.seq, r.index) for r in rows)
                for row in rows:
                    delivered.setdefault(row.partition, []).append(row.action.event_id)
                await store.mark_delivered("a", rows, epochs)
                left -= len(rows)
                assert await store.outbox_backlog(["a"], PARTITIONS) == left
            assert delivered == expected
            assert await store.outbox_backlog(["a", "b"], PARTITIONS) == n - len(head)
            later = datetime.now(UTC) + timedelta(seconds=5)
            pruned = await store.prune_outbox(["a", "b"], PARTITIONS, later)
            # Whole rows only: what is left for "b" is still all there.
            assert len(await store.pending_actions("b", PARTITIONS, 10_000)) == n - len(head)
            assert pruned + len(await store.all_actions()) == n
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(Path(directory) / "state.db"))
