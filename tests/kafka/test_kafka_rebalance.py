"""Rebalances under load against the embedded Kafka: a second instance of the same consumer group
joins mid-stream and later leaves while records keep arriving. Nothing is lost (invariant 2), each
user's events stay in order (invariant 1), every partition ends fully committed, and no event is
applied twice across the two instances: a new owner resumes from the offsets the old owner
committed to the store with its last batch (invariant 4), not from the broker's committed offset,
which may lag behind when commits are refused mid-rebalance."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import orjson
import pytest

from smartico_stream.service import Service

pytestmark = pytest.mark.kafka

TOTAL = 20_000
USERS = 200
MAX_AHEAD = 2_000  # the mock cluster trims old messages: never run far ahead of the consumers
RATE_PER_S = 2_500  # slow enough that records keep arriving through both rebalances
B_STARTS_AT = 4_000  # records produced when instance B is started
HOLD_UNTIL_B_WORKS = 11_000  # the producer waits here until B has handled records of its own
B_STOPS_AT = 13_000  # records produced when instance B is stopped
HOLD_UNTIL_B_LEAVES = 16_000  # the producer waits here until B's stop was requested
TOPICS = ("payments", "casino")
# librdkafka's mock coordinator keeps a rebalance's join phase open for session.timeout.ms - 1 s
# whenever a member joins or leaves a group that is up (rd_kafka_mock_cgrp_classic_rebalance), so
# the default 45 s session would make every rebalance take 44 s. These pass through untouched. Not
# lower: a session shorter than the mock's initial join delay (3 s) times the first member out
# before its first join completes, for ever.
FAST_GROUP_CONFIG = {"session.timeout.ms": 3000, "heartbeat.interval.ms": 250}
BASE_MS = 1_700_000_000_000


def record(i: int) -> tuple[str, str, bytes]:
    """The i-th record: (topic, key, value); user u's n-th record of a topic carries seq n."""
    user = f"rb-user-{i % USERS}"
    seq = i // (USERS * len(TOPICS))
    topic = TOPICS[(i // USERS) % len(TOPICS)]
    common = {"ext_brand_id": "b1", "user_ext_id": user, "seq": seq, "core_wallet_currency": "EUR"}
    if topic == "payments":
        message = {**common, "dt_finalized": BASE_MS + seq, "transaction_id": f"rb-dep-{user}-{seq}",
                   "type": "deposit", "amount": "5.00"}
    else:
        message = {**common, "bet_date": BASE_MS + seq, "transaction_id": f"rb-bet-{user}-{seq}", "type": "bet",
                   "bet_amount": "1.00", "game_name": "Gates of Olympus", "game_id": "g-1"}
    return topic, user, orjson.dumps(message)


class PacedProducer(threading.Thread):
    """Produces TOTAL records at about RATE_PER_S, at most MAX_AHEAD ahead of what the consumers
    handled, pausing at the hold points until the test's events are set."""

    def __init__(self, make_producer: Callable, consumed: Callable[[], int], holds: dict[int, threading.Event]):
        super().__init__(name="paced-producer", daemon=True)
        self.producer = make_producer()
        self.consumed = consumed
        self.holds = holds
        self.produced = 0
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.abort = threading.Event()

    def run(self) -> None:
        try:
            started = time.monotonic()
            for i in range(TOTAL):
                hold = self.holds.get(i)
                while hold is not None and not hold.wait(0.05):
                    if self.abort.is_set():
                        return
                while (self.produced - self.consumed() > MAX_AHEAD
                       or self.produced > (time.monotonic() - started) * RATE_PER_S):
                    if self.abort.is_set():
                        return
                    self.producer.poll(0.005)
                topic, key, value = record(i)
                self.producer.send(topic, key, value)
                self.produced += 1
            self.producer.flush()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.done.set()


def test_instance_joining_and_leaving_mid_stream_loses_nothing_keeps_order_and_repeats_nothing(
    make_settings, producer, recording_engine, run_service, broker
):
    setup = producer()
    setup.ensure_topics(*TOPICS)
    topics = {"payments": ["payments"], "casino": ["casino"]}
    group = "rebalance-group"
    timeline: list = []  # both engines append here, so the order across instances is known too
    engine_a = recording_engine("A", timeline)
    engine_b = recording_engine("B", timeline)
    kafka = {"batch_size": 500, "config": FAST_GROUP_CONFIG}
    # One store for both, as instances of one group share theirs (SQLite serialises the writers).
    service_a = Service(make_settings(topics=topics, group=group, kafka=kafka, instance_id="A"), engine=engine_a)
    service_b = Service(make_settings(topics=topics, group=group, kafka=kafka, instance_id="B"), engine=engine_b)
    b_works, b_leaves = threading.Event(), threading.Event()
    feeder = PacedProducer(
        producer, lambda: service_a.stats.consumed + service_b.stats.consumed,
        {HOLD_UNTIL_B_WORKS: b_works, HOLD_UNTIL_B_LEAVES: b_leaves},
    )
    checkpoints: dict[str, int] = {}

    async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if feeder.error is not None:
                raise AssertionError(f"producer failed: {feeder.error!r}")
            for name in ("A", "B"):
                task = tasks.get(name)
                if task is not None and task.done() and not stopped.get(name):
                    task.result()
                    raise AssertionError(f"instance {name} stopped on its own while waiting for {what}")
            assert time.monotonic() < deadline, (
                f"timed out waiting for {what}: produced={feeder.produced} "
                f"A={service_a.stats} B={service_b.stats}"
            )
            await asyncio.sleep(0.02)

    tasks: dict[str, asyncio.Task] = {}
    stopped: dict[str, bool] = {}

    async def scenario() -> None:
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        tasks["A"] = asyncio.create_task(service_a.run(stop_a))
        try:
            feeder.start()
            await until(lambda: feeder.produced >= B_STARTS_AT and service_a.stats.consumed > 0,
                        "A consuming and the first records produced")
            checkpoints["b_started_at"] = feeder.produced
            tasks["B"] = asyncio.create_task(service_b.run(stop_b))
            await until(lambda: service_b.stats.consumed > 0 and service_b.transport.source.assigned,
                        "B handling records")
            b_works.set()
            await until(lambda: feeder.produced >= B_STOPS_AT, f"{B_STOPS_AT} records produced")
            checkpoints["b_stopped_at"] = feeder.produced
            checkpoints["a_consumed_before_b_left"] = service_a.stats.consumed
            b_leaves.set()
            stop_b.set()
            stopped["B"] = True
            await asyncio.wait_for(asyncio.shield(tasks["B"]), 60)
            await until(lambda: feeder.done.is_set(), "the producer to finish")
            await until(lambda: service_a.stats.consumed + service_b.stats.consumed >= TOTAL
                        and len({e.event.event_id for e in timeline}) >= TOTAL,
                        "every record handled")
        finally:
            feeder.abort.set()
            b_works.set()
            b_leaves.set()
            stop_b.set()
            stop_a.set()
            stopped.update(A=True, B=True)
            await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), 60)
        for task in tasks.values():
            task.result()

    asyncio.run(scenario())
    feeder.join(10)
    assert feeder.error is None, feeder.error
    assert feeder.produced == TOTAL

    # The scenario really happened: B joined and left while records kept being produced, and A
    # took the partitions back afterwards.
    assert checkpoints["b_started_at"] < TOTAL and checkpoints["b_stopped_at"] < TOTAL
    assert service_b.stats.consumed > 0 and engine_b.applied
    assert service_a.stats.consumed > checkpoints["a_consumed_before_b_left"]
    rebalances_a = service_a.metrics.registry.get_sample_value("smartico_stream_rebalances_total", {"kind": "revoked"})
    assert rebalances_a and rebalances_a >= 1, "A never gave partitions up to B"

    # Nothing lost: every produced event was applied by one instance or the other.
    expected_ids = {orjson.loads(record(i)[2])["transaction_id"] for i in range(TOTAL)}
    applied_ids = Counter(entry.event.event_id for entry in timeline)
    missing = expected_ids - set(applied_ids)
    assert not missing, f"{len(missing)} events never applied, e.g. {sorted(missing)[:5]}"
    assert set(applied_ids) == expected_ids

    # After both stopped, every partition is committed up to its high watermark.
    offsets = broker.offsets(group, TOPICS)
    stalled = {tp: o for tp, o in offsets.items() if not o.drained}
    assert not stalled, f"partitions not committed to their end: {stalled}"
    assert sum(o.high for o in offsets.values()) == TOTAL

    # Per-user order within each instance's history: the first application of each event follows
    # the produced order (a re-delivery is a repeat, counted below, not a reordering).
    for engine in (engine_a, engine_b):
        per_user: dict[tuple[str, str], list[int]] = defaultdict(list)
        first_seen: set[str] = set()
        for entry in engine.applied:
            if entry.event.event_id not in first_seen:
                first_seen.add(entry.event.event_id)
                per_user[(entry.event.user_id, entry.event.type)].append(entry.event.extra["seq"])
        disordered = {k: v for k, v in per_user.items() if any(b <= a for a, b in itertools.pairwise(v))}
        assert not disordered, (
            f"instance {engine.instance}: {len(disordered)} user streams out of order, "
            f"e.g. {next(iter(disordered.items()))}"
        )

    # Nothing applied twice, within or across the instances (commit on revoke hands a partition
    # over exactly where the old owner stopped). Detail every repeat: instances, partitions, offsets.
    repeats = {event_id: n for event_id, n in applied_ids.items() if n > 1}
    if repeats:
        detail: dict[str, list] = defaultdict(list)
        for entry in timeline:
            if entry.event.event_id in repeats:
                detail[entry.event.event_id].append((entry.tick, entry.instance, entry.coordinates))
        per_partition: dict[tuple[str, int], dict] = {}
        for applications in detail.values():
            topic, partition, offset = applications[0][2]
            slot = per_partition.setdefault((topic, partition), {"offsets": [], "paths": Counter()})
            slot["offsets"].append(offset)
            slot["paths"]["->".join(a[1] for a in applications)] += 1
        summary = {
            f"{t}[{p}]": {"events": len(v["offsets"]), "offsets": f"{min(v['offsets'])}..{max(v['offsets'])}",
                          "applied_by": dict(v["paths"])}
            for (t, p), v in sorted(per_partition.items())
        }
        commit_failures = {
            name: svc.metrics.registry.get_sample_value("smartico_stream_commits_total", {"result": "failure"})
            for name, svc in (("A", service_a), ("B", service_b))
        }
        pytest.fail(
            f"{len(repeats)} events applied more than once ({sum(repeats.values()) - len(repeats)} extra "
            f"applications); per partition: {summary}; commit failures per instance: {commit_failures}"
        )

    # And the merged history keeps every user's order across the hand-overs.
    merged: dict[tuple[str, str], list[int]] = defaultdict(list)
    for entry in sorted(timeline, key=lambda e: e.tick):
        merged[(entry.event.user_id, entry.event.type)].append(entry.event.extra["seq"])
    per_stream = TOTAL // (USERS * len(TOPICS))
    assert all(seqs == list(range(per_stream)) for seqs in merged.values())
