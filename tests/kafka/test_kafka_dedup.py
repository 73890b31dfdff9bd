"""Short-window deduplication against the embedded Kafka, on the records' own timestamps (the service's
clock stands still): a repeat inside the window is dropped and counted, one outside it is applied
again, the window is measured from the first sighting, and the per-partition bound
(dedup.max_entries) holds with its evictions counted."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from smartico_stream.service import Service

pytestmark = [pytest.mark.kafka, pytest.mark.any_kafka]  # topics through kafka.topic()

BASE_MS = 1_700_000_000_000
WINDOW_S = 120.0


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def deposit(tx: str, user: str = "dd-u1", brand: str = "b1", kind: str = "deposit", when_ms: int = BASE_MS) -> bytes:
    return orjson.dumps(
        {
            "dt_finalized": when_ms,
            "ext_brand_id": brand,
            "user_ext_id": user,
            "transaction_id": tx,
            "type": kind,
            "amount": "10.00",
            "core_wallet_currency": "EUR",
        }
    )


def sample(service: Service, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


def test_repeat_inside_window_is_dropped_and_counted_and_outside_window_is_applied_again(
    kafka, make_settings, producer, recording_engine, run_service
):
    topic = kafka.topic("payments")
    p = producer()
    p.ensure_topics(topic)
    settings = make_settings(topics={"payments": [topic]}, dedup={"window_seconds": WINDOW_S})
    clock = FakeClock()
    engine = recording_engine()
    service = Service(settings, engine=engine, clock=clock)
    original = deposit("dep-1")

    def applied() -> list[tuple[str, str, str]]:
        return [(e.brand_id, e.type, e.event_id) for e in engine.events]

    async def produce_and_wait(running, records: list[tuple[str, bytes]], what: str, after_s: float = 0) -> None:
        """Produce ``records`` with a Kafka timestamp ``after_s`` after the first ones'."""
        target = service.stats.consumed + len(records)
        for key, value in records:
            p.send(topic, key, value, timestamp_ms=BASE_MS + int(after_s * 1000))
        p.flush()
        await running.wait_until(lambda: service.stats.consumed >= target, what)

    async def scenario() -> None:
        async with run_service(service) as running:
            # t=0: the original, its exact copy, and three records that only look alike.
            await produce_and_wait(
                running,
                [
                    ("dd-u1", original),
                    ("dd-u1", original),
                    ("dd-u1", deposit("dep-2")),  # another transaction of the same user
                    ("dd-u1", deposit("dep-1", kind="withdrawal_requested")),  # same id, another type
                    ("dd-u1", deposit("dep-1", brand="b2")),  # same id, another brand
                ],
                "the first five records",
            )
            assert service.stats.deduplicated == 1
            assert service.stats.processed == 4
            assert applied() == [
                ("b1", "deposit", "dep-1"),
                ("b1", "deposit", "dep-2"),
                ("b1", "withdrawal_requested", "dep-1"),
                ("b2", "deposit", "dep-1"),
            ]
            assert sample(service, "smartico_stream_dedup_hits_total", topic=topic) == 1
            assert sample(service, "smartico_stream_records_total", topic=topic, result="deduplicated") == 1

            # t=60 s: still inside the window -> dropped again.
            await produce_and_wait(running, [("dd-u1", original)], "the copy at half the window", WINDOW_S / 2)
            assert service.stats.deduplicated == 2
            assert len(engine.events) == 4
            assert sample(service, "smartico_stream_dedup_hits_total", topic=topic) == 2

            # t=121 s: past the window measured from the FIRST sighting (a repeat does not extend
            # it, although the last copy was seen only 61 s ago) -> applied again.
            await produce_and_wait(running, [("dd-u1", original)], "the copy after the window", WINDOW_S + 1)
            assert service.stats.deduplicated == 2
            assert service.stats.processed == 5
            assert applied()[-1] == ("b1", "deposit", "dep-1")
            assert len(engine.events) == 5

            # ... and that re-applied event opened a new window: its copy is a repeat again.
            await produce_and_wait(running, [("dd-u1", original)], "a copy inside the new window", WINDOW_S + 2)
            assert service.stats.deduplicated == 3
            assert len(engine.events) == 5

    asyncio.run(scenario())
    assert sample(service, "smartico_stream_dedup_hits_total", topic=topic) == 3
    assert sample(service, "smartico_stream_records_total", topic=topic, result="ok") == 5


def test_dedup_window_holds_at_most_max_entries_and_counts_evictions(
    kafka, make_settings, producer, recording_engine, run_service
):
    topic = kafka.topic("payments")
    p = producer()
    p.ensure_topics(topic)
    settings = make_settings(topics={"payments": [topic]}, dedup={"max_entries": 10})
    clock = FakeClock()
    engine = recording_engine()
    service = Service(settings, engine=engine, clock=clock)

    async def scenario() -> None:
        async with run_service(service) as running:
            # 30 distinct events of one user: one partition, one window.
            for i in range(30):
                p.send(topic, "dd-bound", deposit(f"bound-{i}", user="dd-bound"))
            p.flush()
            await running.wait_until(lambda: service.stats.consumed >= 30, "30 records")
            assert service.stats.processed == 30
            assert len(engine.events) == 30
            sizes = {tp: len(w) for tp, w in service.ownership.windows.items() if len(w)}
            assert list(sizes.values()) == [10], sizes
            assert service.ownership.dedup_size() == 10
            assert service.ownership.dedup_evicted() == 20
            assert sample(service, "smartico_stream_dedup_evictions_total") == 20
            await running.wait_until(
                lambda: sample(service, "smartico_stream_dedup_window_keys") == 10, "the window-keys gauge"
            )

            # The oldest keys went first: a copy of #0 is applied again, a copy of #29 is not.
            p.send(topic, "dd-bound", deposit("bound-0", user="dd-bound"))
            p.send(topic, "dd-bound", deposit("bound-29", user="dd-bound"))
            p.flush()
            await running.wait_until(lambda: service.stats.consumed >= 32, "the two copies")
            assert [e.event_id for e in engine.events[30:]] == ["bound-0"]
            assert service.stats.deduplicated == 1
            assert service.ownership.dedup_size() == 10  # still bounded after the re-insert
            assert service.ownership.dedup_evicted() == 21

    asyncio.run(scenario())
    assert sample(service, "smartico_stream_dedup_evictions_total") == 21


def test_profile_updates_of_two_users_at_the_same_millisecond_are_not_repeats(
    kafka, make_settings, producer, recording_engine, run_service
):
    """Two different users' profile records are different events, even when their ``dt_update`` is
    equal (e.g. a bulk import stamping every row with the same time). Profiles carry no id of their
    own, so the adapter derives one, and the dedup key is brand + type + that id: it must include the
    user, or the second profile is dropped as a repeat. Users share a partition whenever their keys
    hash alike (with 4 partitions, a quarter of all user pairs); here both are put on partition 0."""
    topic = kafka.topic("user_profile")
    p = producer()
    p.ensure_topics(topic)
    settings = make_settings(topics={"profile": [topic]})
    engine = recording_engine()
    service = Service(settings, engine=engine, clock=FakeClock())

    def profile(user: str) -> bytes:
        return orjson.dumps(
            {
                "dt_update": BASE_MS,
                "ext_brand_id": "b1",
                "user_ext_id": user,
                "core_registration_date": BASE_MS - 86_400_000,
                "core_user_language": "EN",
                "core_wallet_currency": "EUR",
            }
        )

    async def scenario() -> None:
        async with run_service(service) as running:
            p.send(topic, "alice", profile("alice"), partition=0)
            p.send(topic, "bob", profile("bob"), partition=0)
            p.flush()
            await running.wait_until(lambda: service.stats.consumed >= 2, "both profiles")

    asyncio.run(scenario())
    assert sorted(e.user_id for e in engine.events) == ["alice", "bob"], (
        f"deduplicated={service.stats.deduplicated}: a profile of one user was dropped as a repeat of another's"
    )
    assert service.stats.deduplicated == 0
