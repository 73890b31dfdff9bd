"""The outbox relay and backpressure.

- A failing sink delays actions without losing them; once it recovers every action is delivered, in
  outbox order per partition (first the relay alone over a store, with a real JSONL sink whose
  directory cannot be created and later can, and a sink double that fails half-way through a batch).
- Each sink has its own delivery loop: one waiting out a long backoff holds back neither the other
  sinks nor shutdown; a sink raising something other than SinkError stops the relay with that error.
- The service in-process: while its sink is down the outbox backlog grows to ``outbox.max_backlog``,
  consumption pauses (``smartico_stream_consumption_paused 1``, nothing more is read), and after the
  sink recovers the backlog drains, consumption resumes and every record and action gets through.

The sink doubles below are sinks we own (they implement the ActionSink protocol); the broker and the
store are real.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from smartico_stream.engine.actions import Action, ActionKind
from smartico_stream.engine.rules import load_rules
from smartico_stream.observability.metrics import Metrics
from smartico_stream.service import Service
from smartico_stream.sinks.base import SinkError
from smartico_stream.sinks.jsonl import JsonlSink
from smartico_stream.sinks.relay import OutboxRelay
from smartico_stream.store import BatchWrite, QueuedAction
from smartico_stream.store.sqlite import SqliteStore

P0 = ("payments", 0)
P1 = ("payments", 1)
BASE_MS = 1_700_000_000_000


class FlakySink:
    """A sink double: records every action it acknowledged, in order. While ``broken`` it raises
    SinkError; with ``fail_after=k`` it accepts the first k actions of the next batch and then fails
    (a partial delivery, as a webhook or broker may do)."""

    def __init__(self, name: str = "flaky", broken: bool = False) -> None:
        self.name = name
        self.broken = broken
        self.fail_after: int | None = None
        self.received: list[Action] = []
        self.calls = 0
        self.failures = 0

    async def deliver(self, actions: Sequence[Action]) -> None:
        self.calls += 1
        if self.broken:
            self.failures += 1
            raise SinkError(f"{self.name}: down", retryable=True)
        if self.fail_after is not None:
            accepted, self.fail_after = self.fail_after, None
            self.received.extend(actions[:accepted])
            self.failures += 1
            raise SinkError(f"{self.name}: failed after {accepted} of {len(actions)}", retryable=True)
        self.received.extend(actions)

    async def close(self) -> None:
        pass

    def ids(self) -> list[str]:
        return [a.action_id for a in self.received]


def action(n: int, partition: tuple[str, int]) -> Action:
    return Action(
        action_id=f"b1/ev-{n}/r1/0", rule_id="r1", action=ActionKind.GIVE_POINTS, params={"amount": Decimal(1)},
        brand="b1", user=f"u{partition[1]}", event_id=f"ev-{n}", event_type="deposit",
        event_time="2024-03-01T12:00:00Z", executions=1,
    )


async def outbox_by_partition(store: Any) -> dict[tuple[str, int], list[str]]:
    async with store.connection() as conn:
        rows = await conn.fetch("SELECT topic, part, body FROM outbox ORDER BY seq")
    order: dict[tuple[str, int], list[str]] = {}
    for topic, part, body in rows:  # a row per partition per batch: its actions as JSON lines
        order.setdefault((topic, int(part)), []).extend(
            orjson.loads(line)["action_id"] for line in bytes(body).split(b"\n"))
    return order


def first_occurrences(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def per_partition(ids: Sequence[str], partition_of: dict[str, tuple[str, int]]) -> dict[tuple[str, int], list[str]]:
    order: dict[tuple[str, int], list[str]] = {}
    for action_id in ids:
        order.setdefault(partition_of[action_id], []).append(action_id)
    return order


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        await asyncio.sleep(0.02)


# -- the relay over a store -------------------------------------------------------------------------


async def _owned_store(
    tmp_path: Path, partitions: Sequence[tuple[str, int]] = (P0, P1)
) -> tuple[SqliteStore, dict[tuple[str, int], int]]:
    """An open store, with this member holding the leases of ``partitions``: their epochs."""
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    return store, {tp: lease.epoch for tp, lease in (await store.acquire(list(partitions), "me", 0.0)).items()}


async def _commit_actions(store: SqliteStore, epochs: dict[tuple[str, int], int], numbers: range) -> None:
    # Interleaved partitions: the global seq order mixes them, per-partition order must still hold.
    await store.commit(BatchWrite(
        epochs=epochs, actions=[QueuedAction(P0 if n % 3 else P1, action(n, P0 if n % 3 else P1)) for n in numbers]
    ))


def test_a_failing_sink_delays_actions_without_losing_them_and_delivers_all_in_order_once_it_recovers(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        store, epochs = await _owned_store(tmp_path)
        for start in (0, 10, 20):
            await _commit_actions(store, epochs, range(start, start + 10))

        # A real JSONL sink that cannot write: its directory cannot be created (a file is in the way;
        # a read-only directory would not stop root).
        blocker = tmp_path / "blocked"
        blocker.write_text("not a directory")
        jsonl = JsonlSink(blocker / "actions.jsonl", name="jsonl")
        healthy = FlakySink("healthy")
        metrics = Metrics()
        relay = OutboxRelay(store, [jsonl, healthy], lambda: dict(epochs), metrics, batch_size=7,
                            poll_interval_s=0.02, retry_backoff_s=0.01, max_backoff_s=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            # The healthy sink gets everything; the broken one nothing, and its cursor stays put.
            await until(lambda: len(healthy.received) == 30, "the healthy sink to get the 30 actions")
            await asyncio.sleep(0.2)  # several retries of the broken sink
            assert await store.outbox_backlog(["jsonl"], [P0, P1]) == 30
            assert await store.outbox_backlog(["healthy"], [P0, P1]) == 0
            assert metrics.sink_deliveries.labels("jsonl", "failure")._value.get() >= 14  # >= 2 failed batches
            assert metrics.sink_deliveries.labels("jsonl", "success")._value.get() == 0
            assert not blocker.is_dir()

            # More actions are committed during the outage: they queue up too.
            await _commit_actions(store, epochs, range(30, 40))
            relay.wake()
            await until(lambda: len(healthy.received) == 40, "the healthy sink to get the new actions")
            assert await store.outbox_backlog(["jsonl"], [P0, P1]) == 40

            # The sink recovers.
            blocker.unlink()
            path = blocker / "actions.jsonl"
            await until(lambda: path.exists() and path.read_bytes().count(b"\n") >= 40, "the JSONL sink to catch up")
            await until(lambda: metrics.sink_deliveries.labels("jsonl", "success")._value.get() == 40,
                        "the JSONL cursor to advance")
        finally:
            stop.set()
            relay.wake()
            await asyncio.wait_for(task, 10)

        expected = await outbox_by_partition(store)
        partition_of = {i: tp for tp, ids in expected.items() for i in ids}
        written = [orjson.loads(line)["action_id"] for line in path.read_bytes().splitlines()]
        assert len(written) == len(set(written)) == 40, "a failed write left nothing behind; nothing repeated"
        assert per_partition(written, partition_of) == expected, "outbox order per partition"
        assert per_partition(healthy.ids(), partition_of) == expected
        assert await store.outbox_backlog(["jsonl", "healthy"], [P0, P1]) == 0
        assert await relay.drain(1.0) is True
        await jsonl.close()
        await store.close()

    asyncio.run(scenario())


def test_a_sink_in_backoff_does_not_hold_back_the_other_sinks(tmp_path: Path) -> None:
    """Each sink is served by its own loop: a broken sink waiting out its backoff (here up to 30 s)
    neither delays the healthy one nor the relay's shutdown."""
    async def scenario() -> None:
        store, epochs = await _owned_store(tmp_path)
        broken, healthy = FlakySink("broken", broken=True), FlakySink("healthy")
        relay = OutboxRelay(store, [broken, healthy], lambda: dict(epochs), Metrics(), poll_interval_s=0.02,
                            retry_backoff_s=30.0, max_backoff_s=30.0)
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            for start in (0, 10, 20):  # three rounds, each well inside the broken sink's backoff
                await _commit_actions(store, epochs, range(start, start + 10))
                relay.wake()
                await until(lambda start=start: len(healthy.received) == start + 10, "the healthy sink's actions",
                            timeout_s=3.0)
            assert broken.calls >= 1 and broken.received == []
            assert await store.outbox_backlog(["broken"], [P0, P1]) == 30
        finally:
            stop.set()
            relay.wake()
            started = time.monotonic()
            await asyncio.wait_for(task, 10)
        assert time.monotonic() - started < 2.0, "stop cut the backoff short"
        await store.close()

    asyncio.run(scenario())


def test_a_sink_raising_something_unexpected_stops_the_relay_with_that_error(tmp_path: Path) -> None:
    """Not a SinkError (a bug, not an outage): the relay stops every loop and raises it, unwrapped,
    so that the service stops rather than deliver to some sinks only."""
    class BuggySink(FlakySink):
        async def deliver(self, actions: Sequence[Action]) -> None:
            raise ZeroDivisionError("a bug in a sink")

    async def scenario() -> None:
        store, epochs = await _owned_store(tmp_path)
        await _commit_actions(store, epochs, range(5))
        relay = OutboxRelay(store, [FlakySink("healthy"), BuggySink("buggy")], lambda: dict(epochs), Metrics(),
                            poll_interval_s=0.02)
        with pytest.raises(ZeroDivisionError, match="a bug in a sink"):
            await asyncio.wait_for(relay.run(asyncio.Event()), 10)
        assert [t for t in asyncio.all_tasks() if t.get_name().startswith("relay:")] == []
        await store.close()

    asyncio.run(scenario())


def test_the_relay_prunes_what_every_sink_delivered_once_it_is_older_than_the_retention(tmp_path: Path) -> None:
    async def scenario() -> None:
        store, epochs = await _owned_store(tmp_path)
        await _commit_actions(store, epochs, range(12))
        fast, slow = FlakySink("fast"), FlakySink("slow", broken=True)
        metrics = Metrics()
        relay = OutboxRelay(store, [fast, slow], lambda: dict(epochs), metrics, poll_interval_s=0.02,
                            retry_backoff_s=0.01, max_backoff_s=0.02, retention_s=0.0, prune_interval_s=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            await until(lambda: len(fast.received) == 12, "the fast sink to get every action")
            await asyncio.sleep(0.2)  # several prune rounds: the slow sink still owes every row
            assert len(await store.all_actions()) == 12
            slow.broken = False
            await until(lambda: metrics.outbox_pruned._value.get() == 12, "the delivered rows to be pruned")
        finally:
            stop.set()
            relay.wake()
            await asyncio.wait_for(task, 10)
        assert await store.all_actions() == []
        assert fast.ids() == slow.ids() and len(set(slow.ids())) == 12
        await store.close()

    asyncio.run(scenario())


# Two outbox rows as the version before one action per firing wrote them: executions 1 and 2 of one
# firing, with "execution" and the execution index in the id.
PRE_UPGRADE_ROWS = [
    b'{"action":"give_points","action_id":"b1/old-1/r1/%d/0","brand":"b1","event_id":"old-1",'
    b'"event_time":"2024-03-01T12:00:00.000Z","event_type":"deposit","execution":%d,"params":{"amount":"1"},'
    b'"rule_id":"r1","user":"u0"}' % (n, n)
    for n in (1, 2)
]


def test_rows_written_before_one_action_per_firing_are_delivered_unchanged_after_the_upgrade(tmp_path: Path) -> None:
    async def scenario() -> None:
        store, epochs = await _owned_store(tmp_path)
        # The store writes an action's stored bytes as they are: these rows hold the old documents.
        await store.commit(BatchWrite(epochs=epochs, actions=[
            QueuedAction(P0, Action.from_json(row)) for row in PRE_UPGRADE_ROWS]))
        await _commit_actions(store, epochs, range(3, 5))  # rows of this version after them
        path = tmp_path / "out" / "actions.jsonl"
        jsonl, double = JsonlSink(path, name="jsonl"), FlakySink("double")
        relay = OutboxRelay(store, [jsonl, double], lambda: dict(epochs), Metrics(), poll_interval_s=0.02)
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            await until(lambda: len(double.received) == 4, "every row to be delivered")
            await until(lambda: path.exists() and path.read_bytes().count(b"\n") == 4, "the JSONL file")
        finally:
            stop.set()
            relay.wake()
            await asyncio.wait_for(task, 10)
        lines = path.read_bytes().splitlines()
        assert lines[:2] == PRE_UPGRADE_ROWS  # byte for byte: one action per execution, as written
        assert [orjson.loads(line)["executions"] for line in lines[2:]] == [1, 1]
        old = [a for a in double.received if a.event_id == "old-1"]
        assert [(a.action_id, a.executions, a.params) for a in old] == [
            ("b1/old-1/r1/1/0", 1, {"amount": "1"}), ("b1/old-1/r1/2/0", 1, {"amount": "1"})]
        await jsonl.close()
        await store.close()

    asyncio.run(scenario())


def test_a_partial_delivery_is_resent_so_the_receiver_sees_repeats_but_no_gap_and_no_reordering(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        store, epochs = await _owned_store(tmp_path)
        await _commit_actions(store, epochs, range(25))
        sink = FlakySink()
        sink.fail_after = 3
        relay = OutboxRelay(store, [sink], lambda: dict(epochs), Metrics(), batch_size=10,
                            poll_interval_s=0.02, retry_backoff_s=0.01, max_backoff_s=0.02)
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            await until(lambda: len(set(sink.ids())) == 25, "all 25 actions to arrive")
            await until(lambda: sink.calls >= 4, "the relay to finish its batches")
            sink.fail_after = 4  # once more, half-way through a later batch
            await _commit_actions(store, epochs, range(25, 40))
            relay.wake()
            await until(lambda: len(set(sink.ids())) == 40, "all 40 actions to arrive")
            await until(lambda: sink.failures == 2, "the second failure")
        finally:
            stop.set()
            relay.wake()
            await asyncio.wait_for(task, 10)

        expected = await outbox_by_partition(store)
        partition_of = {i: tp for tp, ids in expected.items() for i in ids}
        ids = sink.ids()
        assert len(ids) == 40 + 3 + 4, "exactly the partially delivered actions were repeated"
        assert per_partition(first_occurrences(ids), partition_of) == expected
        # Every repeat is a resend of a prefix: within a partition, delivery never goes backwards
        # past an action not yet delivered.
        for tp, order in per_partition(ids, partition_of).items():
            position = {a: i for i, a in enumerate(expected[tp])}
            seen = -1
            for action_id in order:
                assert position[action_id] <= seen + 1, f"{tp}: {action_id} delivered before its predecessors"
                seen = max(seen, position[action_id])
        assert await store.outbox_backlog([sink.name], [P0, P1]) == 0
        await store.close()

    asyncio.run(scenario())


# -- the service: backpressure ----------------------------------------------------------------------


RULES = """
rules:
  - id: every-deposit
    name: One point per deposit
    trigger: {event: deposit}
    actions:
      - {action: give_points, amount: 1}
"""


def deposit(user: str, n: int) -> bytes:
    return orjson.dumps({
        "type": "deposit", "dt_finalized": BASE_MS + n, "ext_brand_id": "relay-brand", "user_ext_id": user,
        "transaction_id": f"relay-dep-{n}", "amount": "15.00", "core_wallet_currency": "EUR",
    })


def paused_metric(scrape: Callable[[int, str], tuple[int, str]], service: Service) -> float | None:
    assert service.metrics_server is not None
    status, body = scrape(service.metrics_server.port, "/metrics")
    assert status == 200
    for line in body.splitlines():
        if line.startswith("smartico_stream_consumption_paused "):
            return float(line.split()[1])
    return None


@pytest.mark.kafka
def test_consumption_pauses_while_the_backlog_is_over_the_limit_and_resumes_once_it_drains(
    tmp_path: Path, make_settings: Any, producer: Any, run_service: Any, scrape: Any
) -> None:
    topic = "relay-payments"
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(RULES)
    p = producer()
    p.ensure_topics(topic)
    settings = make_settings(
        topics={"payments": [topic]},
        kafka={"batch_size": 20},
        outbox={"max_backlog": 60, "poll_interval_s": 0.05, "retry_backoff_s": 0.05, "max_backoff_s": 0.2},
    )
    store = SqliteStore(tmp_path / "state.db")
    sink = FlakySink("flaky", broken=True)
    service = Service(settings, store=store, rules=load_rules(rules_path), sinks=[sink])
    users = [f"relay-user-{i}" for i in range(12)]

    async def scenario() -> None:
        async with run_service(service) as running:
            # 100 deposits, 100 actions: over the limit of 60 while the sink is down.
            for n in range(100):
                p.send(topic, users[n % len(users)], deposit(users[n % len(users)], n))
            p.flush()
            await running.wait_until(lambda: service.stats.consumed == 100, "the first 100 records")
            await running.wait_until(lambda: paused_metric(scrape, service) == 1.0, "consumption to pause", 10)
            assert sink.received == [] and sink.failures > 0
            backlog = await store.outbox_backlog([sink.name], list(service.ownership.epochs))
            assert backlog == 100

            # While paused, new records wait in Kafka: none is consumed.
            for n in range(100, 300):
                p.send(topic, users[n % len(users)], deposit(users[n % len(users)], n))
            p.flush()
            await asyncio.sleep(2.5)  # more than two backlog checks (one per second)
            assert service.stats.consumed == 100, "nothing is consumed while paused"
            assert paused_metric(scrape, service) == 1.0

            # The sink recovers: the backlog drains, consumption resumes, everything gets through.
            sink.broken = False
            await running.wait_until(lambda: service.stats.consumed == 300, "the remaining 200 records", 30)
            await running.wait_until(lambda: len(set(sink.ids())) == 300, "all 300 actions delivered", 30)
            await running.wait_until(lambda: paused_metric(scrape, service) == 0.0, "the paused gauge to drop", 10)
            expected = await outbox_by_partition(store)
            assert sum(len(ids) for ids in expected.values()) == 300
            partition_of = {i: tp for tp, ids in expected.items() for i in ids}
            assert per_partition(first_occurrences(sink.ids()), partition_of) == expected
            assert len(sink.ids()) == 300, "a sink that fails whole batches gets no repeats"

    asyncio.run(scenario())


@pytest.mark.kafka
def test_with_a_backlog_limit_of_one_consumption_resumes_once_the_sink_recovers(
    tmp_path: Path, make_settings: Any, producer: Any, run_service: Any, scrape: Any
) -> None:
    """``outbox.max_backlog`` accepts 1 (the setting's lower bound). Consumption pauses at a backlog of
    1 and must resume once the sink has delivered everything (a backlog of 0)."""
    topic = "relay-one"
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(RULES)
    p = producer()
    p.ensure_topics(topic)
    settings = make_settings(
        topics={"payments": [topic]},
        outbox={"max_backlog": 1, "poll_interval_s": 0.05, "retry_backoff_s": 0.05, "max_backoff_s": 0.1},
    )
    store = SqliteStore(tmp_path / "state.db")
    sink = FlakySink("flaky", broken=True)
    service = Service(settings, store=store, rules=load_rules(rules_path), sinks=[sink])

    async def scenario() -> None:
        async with run_service(service) as running:
            for n in range(5):
                p.send(topic, "relay-user", deposit("relay-user", n))
            p.flush()
            await running.wait_until(lambda: service.stats.consumed == 5, "the first 5 records")
            await running.wait_until(lambda: paused_metric(scrape, service) == 1.0, "consumption to pause", 10)
            sink.broken = False
            await running.wait_until(lambda: len(sink.received) == 5, "the 5 actions delivered", 10)
            for n in range(5, 10):
                p.send(topic, "relay-user", deposit("relay-user", n))
            p.flush()
            await running.wait_until(
                lambda: service.stats.consumed == 10, "consumption to resume with an empty backlog", 6
            )
            await running.wait_until(lambda: paused_metric(scrape, service) == 0.0, "the paused gauge to drop", 5)

    asyncio.run(scenario())


@pytest.mark.kafka
def test_partitions_assigned_while_paused_stay_paused_until_the_backlog_drains(
    tmp_path: Path, make_settings: Any, producer: Any, run_service: Any, scrape: Any, broker: Any
) -> None:
    """A rebalance while backpressure holds: the other member leaves, so the paused member is
    assigned partitions it never owned. Those must not be read either until the sinks catch up."""
    topic = "relay-rebalance"
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(RULES)
    p = producer()
    p.ensure_topics(topic)
    partitions = len(broker.partitions(topic))
    group = "relay-rebalance-group"
    # See test_kafka_rebalance: the mock coordinator holds every rebalance for session.timeout.ms - 1 s.
    kafka = {"batch_size": 20, "config": {"session.timeout.ms": 3000, "heartbeat.interval.ms": 250}}
    outbox = {"poll_interval_s": 0.05, "retry_backoff_s": 0.05, "max_backoff_s": 0.2}
    store = SqliteStore(tmp_path / "state.db")
    sink_a, sink_b = FlakySink("flaky", broken=True), FlakySink("flaky", broken=True)
    service_a = Service(
        make_settings(topics={"payments": [topic]}, group=group, kafka=kafka, outbox={**outbox, "max_backlog": 60},
                      instance_id="A"),
        store=store, rules=load_rules(rules_path), sinks=[sink_a],
    )
    service_b = Service(make_settings(topics={"payments": [topic]}, group=group, kafka=kafka, outbox=outbox,
                                      instance_id="B"), rules=load_rules(rules_path), sinks=[sink_b])
    users = [f"relay-user-{i}" for i in range(24)]

    def send(numbers: range) -> None:
        for n in numbers:
            p.send(topic, users[n % len(users)], deposit(users[n % len(users)], n))
        p.flush()

    def consumed() -> int:
        return service_a.stats.consumed + service_b.stats.consumed

    async def scenario() -> None:
        async with run_service(service_b) as running_b:
            await running_b.wait_until(lambda: len(service_b.ownership.epochs) == partitions, "B's partitions")
            async with run_service(service_a) as running_a:
                await running_a.wait_until(
                    lambda: service_a.ownership.epochs and len(service_b.ownership.epochs) < partitions,
                    "A to take some of B's partitions", 60,
                )
                send(range(200))
                await running_a.wait_until(lambda: consumed() == 200, "the first 200 records")
                await running_a.wait_until(lambda: paused_metric(scrape, service_a) == 1.0, "A to pause", 10)
                await running_b.stop()
                await running_a.wait_until(lambda: len(service_a.ownership.epochs) == partitions,
                                           "A to get B's partitions, which it never owned", 60)
                read_by_a = service_a.stats.consumed

                send(range(200, 400))
                await asyncio.sleep(2.5)  # more than two backlog checks (one per second)
                assert service_a.stats.consumed == read_by_a, "nothing is read while paused, from new partitions too"
                assert paused_metric(scrape, service_a) == 1.0

                sink_a.broken = False
                await running_a.wait_until(lambda: consumed() == 400, "the remaining 200 records", 30)
                await running_a.wait_until(lambda: len(set(sink_a.ids())) == 400, "all 400 actions delivered", 30)

    asyncio.run(scenario())


@pytest.mark.parametrize(("linger_s", "deliveries"), [(1.0, 1), (0.0, 5)])
def test_after_a_commit_wakes_it_the_relay_lingers_so_one_delivery_carries_several_commits(
    tmp_path: Path, linger_s: float, deliveries: int
) -> None:
    """``outbox.linger_s``: at low load every batch is a few records, and delivering each batch on
    its own costs a sink write and a cursor transaction per batch. Five commits within the linger
    are one delivery; without a linger, each is its own."""

    async def scenario() -> None:
        store, epochs = await _owned_store(tmp_path)
        sink = FlakySink("gathered")
        relay = OutboxRelay(store, [sink], lambda: dict(epochs), Metrics(), poll_interval_s=60.0, linger_s=linger_s)
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            await asyncio.sleep(0.1)  # the relay found nothing and waits to be woken
            for n in range(5):
                await _commit_actions(store, epochs, range(2 * n, 2 * n + 2))
                relay.wake()
                await until(lambda n=n: linger_s or len(sink.received) == 2 * n + 2, f"commit {n} delivered")
            await until(lambda: len(sink.received) == 10, "all 10 actions delivered")
            assert sink.calls == deliveries
            assert [a.action_id for a in sink.received] == [a.action_id for a in await store.all_actions()]
        finally:
            stop.set()
            relay.wake()
            await asyncio.wait_for(task, 5)
            await store.close()

    asyncio.run(scenario())


def test_stopping_the_relay_cuts_its_linger_short(tmp_path: Path) -> None:
    async def scenario() -> None:
        store, epochs = await _owned_store(tmp_path, [P0])
        relay = OutboxRelay(store, [FlakySink("slow")], lambda: dict(epochs), Metrics(), linger_s=3600.0)
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            await asyncio.sleep(0.1)
            relay.wake()
            await asyncio.sleep(0.1)  # lingering now
            stop.set()
            done, _ = await asyncio.wait({task}, timeout=3.0)
            assert done, "the relay waited out its linger after the stop"
        finally:
            task.cancel()
            await store.close()

    asyncio.run(scenario())


def test_stopping_the_relay_while_a_sink_is_down_does_not_wait_out_the_retry_backoff(tmp_path: Path) -> None:
    """The service stops its relay on SIGTERM, then calls ``drain(timeout_s=5)``. With a sink down the
    relay sleeps up to ``outbox.max_backoff_s`` (30 s by default) between attempts; neither the stop
    nor the drain deadline may wait that sleep out, or a pod overruns its termination grace period
    and is SIGKILLed."""

    async def scenario() -> None:
        store, epochs = await _owned_store(tmp_path)
        await _commit_actions(store, epochs, range(5))
        sink = FlakySink("down", broken=True)
        relay = OutboxRelay(store, [sink], lambda: dict(epochs), Metrics(), retry_backoff_s=3600.0,
                            max_backoff_s=3600.0)
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            await until(lambda: sink.failures >= 1, "the first failed delivery")
            stop.set()
            relay.wake()
            started = time.monotonic()
            done, _ = await asyncio.wait({task}, timeout=3.0)
            assert done, "relay.run() did not return within 3 s of being stopped: it sleeps out the retry backoff"
            drained = asyncio.create_task(relay.drain(timeout_s=1.0))
            done, _ = await asyncio.wait({drained}, timeout=3.0)
            assert done, "relay.drain(timeout_s=1) did not return within 3 s: it sleeps out the retry backoff"
            assert drained.result() is False  # the sink is still down: not drained, and nothing lost
            assert await store.outbox_backlog([sink.name], [P0, P1]) == 5
            assert time.monotonic() - started < 6
        finally:
            for pending in asyncio.all_tasks() - {asyncio.current_task()}:
                pending.cancel()
            await store.close()

    asyncio.run(scenario())
