"""Invariant 1 (per-user order) against the embedded Kafka: every user's events reach the engine in
exactly the order they were produced, none missing, none doubled, across topics and partitions and
across many small batches."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import orjson
import pytest

from smartico_stream.service import Service

pytestmark = [pytest.mark.kafka, pytest.mark.any_kafka]  # topics through kafka.topic()

USERS = 50
EVENTS_PER_STREAM = 24  # per user and stream: 48 events per user, 2400 records in all
BRANDS = ("brand-a", "brand-b")
BASE_MS = 1_700_000_000_000


def deposit(brand: str, user: str, seq: int) -> bytes:
    return orjson.dumps(
        {
            "dt_finalized": BASE_MS + seq * 1000,
            "ext_brand_id": brand,
            "user_ext_id": user,
            "transaction_id": f"dep-{user}-{seq}",
            "type": "deposit",
            "amount": f"{10 + seq}.50",
            "core_wallet_currency": "EUR",
            "seq": seq,  # a custom property: lands in event.extra
        }
    )


def casino_bet(brand: str, user: str, seq: int) -> bytes:
    return orjson.dumps(
        {
            "ext_brand_id": brand,
            "user_ext_id": user,
            "transaction_id": f"bet-{user}-{seq}",
            "type": "bet",
            "bet_date": BASE_MS + seq * 1000 + 500,
            "bet_amount": "1.00",
            "game_name": "Book of Ra",
            "game_id": "game-1",
            "core_wallet_currency": "EUR",
            "seq": seq,
        }
    )


def test_each_users_events_reach_the_engine_in_produced_order_exactly_once(
    kafka, make_settings, producer, recording_engine, run_service
):
    topics = {"payments": kafka.topic("payments"), "casino": kafka.topic("casino")}
    users = [(BRANDS[i % 2], f"order-user-{i}") for i in range(USERS)]
    p = producer()
    p.ensure_topics(*topics.values())
    # Small batches: every user's sequence spans many batches and several consume() calls.
    settings = make_settings(topics={s: [t] for s, t in topics.items()}, kafka={"batch_size": 97})
    engine = recording_engine()
    service = Service(settings, engine=engine)

    def produce_round(seqs: range) -> None:
        # Round-robin over users so that partitions and topics interleave.
        for seq in seqs:
            for brand, user in users:
                p.send(topics["payments"], user, deposit(brand, user, seq))
                p.send(topics["casino"], user, casino_bet(brand, user, seq))
        p.flush()

    total = USERS * EVENTS_PER_STREAM * 2

    async def scenario() -> None:
        produce_round(range(EVENTS_PER_STREAM // 2))  # half before the service starts ...
        async with run_service(service) as running:
            await running.wait_until(lambda: service.stats.consumed > 0, "the first batch")
            await asyncio.get_running_loop().run_in_executor(
                None, produce_round, range(EVENTS_PER_STREAM // 2, EVENTS_PER_STREAM)
            )  # ... and half while it runs
            await running.wait_until(lambda: service.stats.consumed >= total, f"{total} records consumed")

    asyncio.run(scenario())

    # Where the messages went: each user's records of a topic share one partition (keyed by user).
    partitions_of = defaultdict(set)
    for sent in p.sent:
        partitions_of[(sent.topic, sent.key)].add(sent.partition)
    assert all(len(parts) == 1 for parts in partitions_of.values())
    used_partitions = {(s.topic, s.partition) for s in p.sent}
    assert len(used_partitions) > 2, f"the keys should spread over several partitions, got {used_partitions}"

    assert service.stats.consumed == total
    assert service.stats.processed == total
    assert service.stats.dead_lettered == 0
    assert service.stats.deduplicated == 0
    assert service.stats.batches > 1

    seen: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for entry in engine.applied:
        event = entry.event
        assert entry.user == (event.brand_id, event.user_id)
        seen[(event.brand_id, event.user_id, event.type)].append(event.extra["seq"])
    expected = list(range(EVENTS_PER_STREAM))
    wrong = {
        user_stream: seqs for user_stream, seqs in seen.items() if seqs != expected
    }
    assert not wrong, f"{len(wrong)} user streams out of order, doubled or incomplete, e.g. {next(iter(wrong.items()))}"
    assert set(seen) == {(b, u, t) for b, u in users for t in ("deposit", "casino_bet")}
    assert len(engine.applied) == total
    assert len(set(engine.event_ids())) == total
