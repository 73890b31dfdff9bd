"""The dedup window through the pipeline, on source time: whatever the batch boundaries, the clock
of the process, a batch redone, or whether a record has a broker timestamp (else its event time
counts), a repeat is dropped exactly when its source time is within the window of the key's last
applied sighting."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from smartico_stream.adapters.registry import load_adapter
from smartico_stream.events.raw import RawRecord, Stream
from smartico_stream.pipeline.dedup import DedupWindow
from smartico_stream.pipeline.pipeline import DEDUPLICATED, OK, BatchResult, Pipeline
from tests.support.service import RecordingEngine

TOPIC = "payments"
WINDOW_S = 120.0
T0_MS = 1_700_000_000_000
# Gaps between records, in ms: around the window's edge, far beyond it, and ties.
GAPS_MS = [0, 1, 1_000, 60_000, 119_999, 120_000, 120_001, 600_000, 86_400_000]

records_st = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=3),  # which transaction
        st.sampled_from(GAPS_MS),  # source time since the previous record
        st.booleans(),  # has a broker timestamp (else the event time is the source time)
        st.integers(min_value=0, max_value=10**9),  # event time before the broker timestamp (ms)
    ),
    min_size=1,
    max_size=40,
)


def _records(spec: list[tuple[int, int, bool, int]]) -> tuple[list[RawRecord], list[float]]:
    records, times = [], []
    now_ms = T0_MS
    for offset, (tx, gap_ms, has_timestamp, lag_ms) in enumerate(spec):
        now_ms += gap_ms
        # With a broker timestamp the event time is another one (an operator re-sending a
        # transaction keeps its event time): it must not be what the window measures.
        message: dict[str, Any] = {
            "type": "deposit", "ext_brand_id": "b1", "user_ext_id": "u1", "transaction_id": f"tx-{tx}",
            "amount": "1.00", "dt_finalized": now_ms - lag_ms if has_timestamp else now_ms,
        }
        records.append(RawRecord("kafka", TOPIC, 0, offset, b"u1", orjson.dumps(message),
                                 timestamp_ms=now_ms if has_timestamp else 0))
        times.append(now_ms / 1000)
    return records, times


def _expected(spec: list[tuple[int, int, bool, int]], times: list[float]) -> list[str]:
    last: dict[int, float] = {}
    verdicts = []
    for (tx, *_), at in zip(spec, times, strict=True):
        if tx in last and at - last[tx] <= WINDOW_S:
            verdicts.append(DEDUPLICATED)
        else:
            last[tx] = at
            verdicts.append(OK)
    return verdicts


def _verdicts(records: list[RawRecord], result: BatchResult) -> list[str]:
    accepted = {item.record.offset for item in result.accepted}
    return [OK if r.offset in accepted else DEDUPLICATED for r in records]


@settings(max_examples=300, deadline=None)
@given(
    spec=records_st,
    cuts=st.lists(st.integers(min_value=1, max_value=39), max_size=6),
    clocks=st.lists(st.sampled_from([0.0, 1.0e9, 1_700_000_000.0, 2.0e9, 1.0e12]), min_size=8, max_size=8),
    redo=st.integers(min_value=0, max_value=7),
)
def test_repeats_are_decided_on_source_time_whatever_the_batches_and_the_clock(
    spec: list[tuple[int, int, bool, int]], cuts: list[int], clocks: list[float], redo: int
) -> None:
    records, times = _records(spec)
    clock = [clocks[0]]
    window = DedupWindow(WINDOW_S, 10_000, lambda: clock[0])
    pipeline = Pipeline(load_adapter("reference"), {TOPIC: Stream.PAYMENTS}, lambda topic, partition: window)
    bounds = sorted({0, len(records), *(c for c in cuts if c < len(records))})
    verdicts: list[str] = []
    for number, (start, end) in enumerate(pairwise(bounds)):
        clock[0] = clocks[number % len(clocks)]  # processing time: anything at all
        batch = records[start:end]
        if number == redo:  # an attempt that does not commit changes nothing
            pipeline.process(batch, RecordingEngine())
        result = pipeline.process(batch, RecordingEngine())
        verdicts += _verdicts(batch, result)
        for digest, first_seen in result.dedup_added.get((TOPIC, 0), []):
            window.add(digest, first_seen)
        if result.dedup_horizon is not None:
            # nothing the store would delete could still make a later record a repeat
            assert all(at - WINDOW_S >= result.dedup_horizon for at in times[end:])
    assert verdicts == _expected(spec, times)
