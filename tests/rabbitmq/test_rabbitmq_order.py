"""Invariant 1 (per-user order) on the real RabbitMQ, with the production topology: per stream a
consistent-hash exchange over 4 quorum queues with single-active-consumer, and TWO service instances
(in-process ``Service`` objects with recording engines) sharing one PostgreSQL store.

- Every user's events reach an engine in publish order, none missing, none doubled.
- Single-active-consumer: each queue's messages are applied by exactly one instance, although both
  instances consume every queue (the broker counts 2 consumers per queue: the active one and a
  standby), and the store's lease of each queue names that instance.
- When the active instance stops (a rolling deploy), the standby takes its queues over and each
  user's events keep their order across the handover.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from smartico_stream.service import Service
from smartico_stream.store.postgres import PostgresStore
from tests.support import rabbitmq as rabbit
from tests.support.postgres import PgSchema
from tests.support.rabbitmq import InProcess, Msg, Publisher, Topology, sample
from tests.support.service import RecordingEngine

pytestmark = pytest.mark.rabbitmq  # shares the local broker (tests/fixtures/rabbitmq.py)

CONSUMERS = "smartico_stream_rabbitmq_queue_consumers"
DELIVERIES = "smartico_stream_rabbitmq_deliveries_total"


@pytest.fixture
def topology(rabbitmq: str) -> Iterator[Topology]:
    topo = Topology(rabbit.unique_prefix("order"), streams=("payments", "casino"), queues_per_stream=4)
    try:
        yield topo
    finally:
        rabbit.delete_topology(topo)


@pytest.fixture
def pg_store(postgres_schema: PgSchema) -> dict[str, Any]:
    """A fresh PostgreSQL schema, migrated before any instance starts (two instances would race)."""
    dsn, schema = postgres_schema.dsn, postgres_schema.schema

    async def migrate() -> None:
        store = PostgresStore(dsn, schema=schema)
        await store.open()
        await store.close()

    rabbit.run_sync(migrate())
    return {"url": dsn, "db_schema": schema}


async def committed_ids(service: Service) -> list[str]:
    """Message keys the store committed as handled (the recording engine sees events before the
    commit, so this is what proves they were not only seen but committed)."""
    async with service.store.connection() as conn:
        return [row[0] for row in await conn.fetch("SELECT message_key FROM handled_messages")]


async def lease_owners(service: Service) -> dict[str, str]:
    async with service.store.connection() as conn:
        rows = await conn.fetch("SELECT topic, owner FROM partition_leases")
    return dict(rows)


def per_user_sequences(timeline: list[Any]) -> dict[tuple[str, str, str], list[int]]:
    seen: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for entry in timeline:
        event = entry.event
        assert entry.user == (event.brand_id, event.user_id)
        seen[(event.brand_id, event.user_id, event.type)].append(int(event.extra["seq"]))
    return seen


def test_two_instances_each_queue_has_one_active_consumer_and_every_user_stays_in_order(
    topology: Topology, pg_store: dict[str, Any]
) -> None:
    users = [(f"brand-{i % 2}", f"order-u{i:03d}") for i in range(60)]
    events_per_stream = 20  # per user: 20 deposits + 20 bets, 2400 messages in all
    total = len(users) * events_per_stream * 2
    timeline: list[Any] = []  # shared by both engines: the global application order

    def settings(instance: str) -> Any:
        # Small batches: each user's sequence spans many batches and acks.
        return rabbit.settings_for(topology, pg_store, instance_id=instance,
                                      rabbitmq={"batch_size": 37, "prefetch": 100})

    def messages(seqs: range) -> list[Msg]:
        out = []
        for seq in seqs:
            for brand, user in users:  # round-robin over users: queues and streams interleave
                out.append(Msg(topology.exchange("payments"), user,
                               orjson.dumps(rabbit.deposit(user, seq, brand=brand)), f"dep-{user}-{seq}"))
                out.append(Msg(topology.exchange("casino"), user,
                               orjson.dumps(rabbit.casino_bet(user, seq, brand=brand)), f"bet-{user}-{seq}"))
        return out

    queues = topology.queues()
    broker_consumers: dict[str, list[str]] = {}
    owners: dict[str, str] = {}
    deliveries: dict[str, dict[str, float]] = {}
    handled: list[str] = []

    async def scenario() -> None:
        run = InProcess()
        publisher = Publisher(name=f"{topology.prefix}-publisher")
        try:
            # Both start together: which one becomes the active consumer of a queue is the broker's choice.
            a = run.start("A", Service(settings("A"), engine=RecordingEngine("A", timeline)))
            b = run.start("B", Service(settings("B"), engine=RecordingEngine("B", timeline)))
            await run.joined("A", "B")
            # The broker's view: every queue has two consumers, one active and one waiting (standby).
            await run.wait(
                lambda: all(sorted(statuses) == ["single_active", "waiting"]
                            for statuses in rabbit.consumers_by_queue(topology.prefix).values())
                and set(rabbit.consumers_by_queue(topology.prefix)) == set(queues),
                "an active and a waiting consumer on every queue", 15,
                diagnose=lambda: str(rabbit.consumers_by_queue(topology.prefix)),
            )
            broker_consumers.update(rabbit.consumers_by_queue(topology.prefix))

            await publisher.publish_many(messages(range(events_per_stream // 2)))  # half ...
            await run.wait(lambda: len(timeline) >= total // 2, "the first half applied", 30)
            # ... then the rest
            await publisher.publish_many(messages(range(events_per_stream // 2, events_per_stream)))
            await run.wait(lambda: len(timeline) >= total, f"{total} events applied", 30,
                           diagnose=lambda: f"applied {len(timeline)}, A {a.stats}, B {b.stats}")
            await asyncio.sleep(0.3)  # anything extra (a double) would show up now
            owners.update(await lease_owners(a))
            handled.extend(await committed_ids(a))
            for name, s in (("A", a), ("B", b)):
                deliveries[name] = {q: sample(s, DELIVERIES, queue=q) for q in queues}
        finally:
            await run.stop_all()
            await publisher.close()

    asyncio.run(scenario())

    # Nothing missing, nothing doubled, each user's deposits and bets in publish order.
    seen = per_user_sequences(timeline)
    expected = list(range(events_per_stream))
    wrong = {key: seqs for key, seqs in seen.items() if seqs != expected}
    assert not wrong, f"{len(wrong)} user streams out of order, doubled or incomplete, e.g. {next(iter(wrong.items()))}"
    assert set(seen) == {(b, u, t) for b, u in users for t in ("deposit", "casino_bet")}
    assert len(timeline) == total
    assert len({entry.event.event_id for entry in timeline}) == total
    assert sorted(handled) == sorted(f"id:{m.message_id}" for m in messages(range(events_per_stream)))

    # Consistent hashing: one user's messages of a stream all come from one queue; users spread.
    queue_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for entry in timeline:
        queue_of[(entry.user[1], entry.event.type)].add(entry.coordinates[0])
    assert all(len(qs) == 1 for qs in queue_of.values()), "a user's stream was split over queues"
    used = {entry.coordinates[0] for entry in timeline}
    assert used == set(queues), f"60 users should reach all 8 queues, reached {sorted(used)}"

    # Single active consumer: each queue's messages were applied by exactly one instance ...
    appliers: dict[str, set[str]] = defaultdict(set)
    for entry in timeline:
        appliers[entry.coordinates[0]].add(entry.instance)
    shared = {q: names for q, names in appliers.items() if len(names) != 1}
    assert not shared, f"queues consumed by both instances at once: {shared}"
    # ... the one the broker delivered that queue to (the other, a standby, got nothing) ...
    for q, names in appliers.items():
        (active,) = names
        standby = "B" if active == "A" else "A"
        assert deliveries[active][q] > 0 and deliveries[standby][q] == 0, (q, deliveries)
        # ... and the one holding the queue's lease in the store.
        assert owners[q] == active, (q, owners)
    # While both ran, the broker had two consumers on every queue: the active one and a standby.
    assert len(broker_consumers) == len(queues), broker_consumers


def test_stopping_the_active_instance_mid_stream_hands_its_queues_to_the_standby_in_order(
    topology: Topology, pg_store: dict[str, Any]
) -> None:
    """A rolling deploy: A (active on every queue, holding a full prefetch window) is stopped
    gracefully while messages keep coming; B (standby) takes every queue over. Each user's events
    must stay in publish order across the handover, none missing, none doubled."""
    users = [f"hand-u{i:02d}" for i in range(40)]
    per_user = 75  # 3000 deposits
    total = len(users) * per_user
    timeline: list[Any] = []

    def settings(instance: str) -> Any:
        return rabbit.settings_for(topology, pg_store, instance_id=instance,
                                      rabbitmq={"batch_size": 20, "prefetch": 300})

    msgs = [Msg(topology.exchange("payments"), user, orjson.dumps(rabbit.deposit(user, seq)), f"dep-{user}-{seq}")
            for seq in range(per_user) for user in users]
    queues = topology.queues("payments")
    held_at_stop: dict[str, float] = {}
    handled: list[str] = []

    async def scenario() -> None:
        run = InProcess()
        publisher = Publisher(name=f"{topology.prefix}-publisher")
        try:
            # A first, so that it is the active consumer of every queue; then B, the standby.
            a = run.start("A", Service(settings("A"), engine=RecordingEngine("A", timeline)))
            await run.joined("A")
            b = run.start("B", Service(settings("B"), engine=RecordingEngine("B", timeline)))
            await run.joined("B")
            await run.wait(lambda: all(sorted(rabbit.consumers_by_queue(topology.prefix).get(q, []))
                                       == ["single_active", "waiting"] for q in queues),
                           "B registered as the standby of every queue", 15)
            publishing = asyncio.create_task(publisher.publish_many(msgs, window=100))
            # A is busy and holds more than a batch of prefetched, not yet handled messages.
            await run.wait(lambda: a.stats.consumed >= 300
                           and rabbit.sample_sum(a, "smartico_stream_rabbitmq_unacked_messages", "queue", queues) > 40,
                           "A to hold a prefetch window", 20)
            held_at_stop["unacked"] = rabbit.sample_sum(a, "smartico_stream_rabbitmq_unacked_messages", "queue", queues)
            await run.stop("A")
            await asyncio.wait_for(publishing, 30)
            await run.wait(lambda: len(timeline) >= total, f"{total} events applied", 30,
                           diagnose=lambda: f"applied {len(timeline)}, A {a.stats}, B {b.stats}")
            await asyncio.sleep(0.3)
            handled.extend(await committed_ids(b))
        finally:
            await run.stop_all()
            await publisher.close()

    asyncio.run(scenario())

    by_instance = {name: sum(1 for e in timeline if e.instance == name) for name in ("A", "B")}
    assert by_instance["A"] > 0 and by_instance["B"] > 0, f"the handover must happen mid-stream: {by_instance}"

    seen = per_user_sequences(timeline)
    expected = list(range(per_user))
    doubled = {k: s for k, s in seen.items() if len(s) != len(set(s))}
    missing = {k: sorted(set(expected) - set(s)) for k, s in seen.items() if set(s) != set(expected)}
    assert not doubled and not missing, f"doubled: {list(doubled)[:3]}, missing: {list(missing.items())[:3]}"
    assert sorted(handled) == sorted(f"id:{m.message_id}" for m in msgs), "every message committed once"
    out_of_order = {}
    for key, seqs in seen.items():
        if seqs != expected:
            first = next(i for i, (x, y) in enumerate(zip(seqs, expected, strict=True)) if x != y)
            who = [(e.event.extra["seq"], e.instance) for e in timeline if (e.event.brand_id, e.event.user_id,
                                                                             e.event.type) == key]
            out_of_order[key] = who[max(first - 2, 0): first + 4]
    assert not out_of_order, (
        f"{len(out_of_order)} of {len(users)} users' events were applied out of publish order across the "
        f"handover from A to B (A held {held_at_stop.get('unacked')} unacked messages when it stopped); "
        f"(seq, instance) around the first inversion: {dict(list(out_of_order.items())[:3])}"
    )
    # One instance at a time per queue: A's part, then B's, never back.
    for q in queues:
        order = [e.instance for e in timeline if e.coordinates[0] == q]
        assert order == sorted(order), f"{q}: instances interleaved: {order[:50]}"


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_the_queue_consumers_metric_reports_what_the_broker_counts(
    topology: Topology, pg_store: dict[str, Any], queue_type: str
) -> None:
    """smartico_stream_rabbitmq_queue_consumers comes from the broker's passive declare: classic
    queues count the active consumer and the standby (2), quorum queues with single-active-consumer
    only the active one (1) — documented in the metric's help and docs/rabbitmq.md. The broker's own
    consumer list (rabbitmqctl) is the reference that both instances are registered."""
    topo = Topology(topology.prefix + f"-{queue_type}", streams=("payments",), queues_per_stream=2)
    queues = topo.queues()
    metric: dict[str, tuple[float, float]] = {}
    broker: dict[str, list[str]] = {}

    async def scenario() -> None:
        run = InProcess()
        try:
            a, b = (run.start(name, Service(rabbit.settings_for(topo, pg_store, instance_id=name,
                                                                   rabbitmq={"queue_type": queue_type}),
                                            engine=RecordingEngine(name)))
                    for name in ("A", "B"))
            await run.joined("A", "B")
            await run.wait(lambda: sorted(itertools.chain.from_iterable(
                               rabbit.consumers_by_queue(topo.prefix).values()
                           )) == ["single_active"] * len(queues) + ["waiting"] * len(queues),
                           "an active and a waiting consumer on every queue (rabbitmqctl list_consumers)", 15)
            broker.update(rabbit.consumers_by_queue(topo.prefix))
            # Several statistics rounds (every 0.2 s) after both registered.
            await asyncio.sleep(1.0)
            metric.update({q: (sample(a, CONSUMERS, queue=q), sample(b, CONSUMERS, queue=q)) for q in queues})
        finally:
            await run.stop_all()
            rabbit.delete_topology(topo)

    asyncio.run(scenario())
    assert all(sorted(v) == ["single_active", "waiting"] for v in broker.values()), broker
    expected = (1.0, 1.0) if queue_type == "quorum" else (2.0, 2.0)
    wrong = {q: v for q, v in metric.items() if v != expected}
    assert not wrong, (
        f"{queue_type} queues: smartico_stream_rabbitmq_queue_consumers (instance A, instance B) = {wrong}, "
        f"expected {expected}; the broker lists {broker}"
    )
