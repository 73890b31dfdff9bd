"""A batch with bad records leaves no reference cycle behind (smartico_stream/tracebacks.py).

The service freezes its heap after every batch (observability/collector.py), so a cycle is kept
until the next full collection, minutes later: a kept exception's traceback once held every batch
with a dead letter in memory. The synthetic stream has every defect kind (decode, adapter and
validation failures)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from smartico_stream.adapters.registry import load_adapter
from smartico_stream.demo.synthetic import StreamSpec, synthetic_stream
from smartico_stream.engine.batch import BatchEngine
from smartico_stream.engine.rules import RuleSet
from smartico_stream.engine.state import UserState
from smartico_stream.events.raw import RawRecord, Stream
from smartico_stream.pipeline.pipeline import Pipeline


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_a_batch_with_dead_letters_is_freed_by_reference_counting(collector_off: None) -> None:
    records = [
        RawRecord(transport="file", topic=r.stream.value, partition=0, offset=i, key=r.key, value=r.value,
                  timestamp_ms=1_700_000_000_000 + i)
        for i, r in enumerate(synthetic_stream(StreamSpec(users=300, events=3000, malformed_share=0.05)))
    ]
    pipeline = Pipeline(load_adapter("reference"), {stream.value: stream for stream in Stream})
    result = pipeline.prepare(records)
    assert len(result.dead_letters) > 50  # decode, adapter and validation failures alike
    engine = BatchEngine(RuleSet.of(()), {user: UserState(*user) for user in result.users()}, None)
    pipeline.apply(result, engine)
    del records, result, engine
    assert gc.collect() < 100  # a cycle through a traceback holds thousands of objects
