"""Kafka commits against the embedded Kafka: an offset commit that the group coordinator refuses
while the group rebalances (REBALANCE_IN_PROGRESS / ILLEGAL_GENERATION) must not leave a handled
partition uncommitted on the broker for as long as the service runs. The store holds the offsets the
service resumes from, but the broker's committed offset is what lag tools, dashboards and the
service's own smartico_stream_consumer_lag_messages read: left behind, an idle partition shows lag
forever (a false alert), and a consumer without the store would re-read handled records."""

from __future__ import annotations

import asyncio
import threading
import time

import orjson
import pytest
from confluent_kafka import Consumer

from smartico_stream.service import Service

pytestmark = pytest.mark.kafka

BASE_MS = 1_700_000_000_000
# The mock coordinator's join phase lasts session.timeout.ms - 1 s (see test_kafka_rebalance.py).
GROUP_CONFIG = {"session.timeout.ms": 3000, "heartbeat.interval.ms": 250}


def deposit(n: int) -> bytes:
    return orjson.dumps({"dt_finalized": BASE_MS + n, "ext_brand_id": "b1", "user_ext_id": "commit-user",
                         "transaction_id": f"commit-dep-{n}", "type": "deposit", "amount": "1.00"})


class GroupNeighbour(threading.Thread):
    """A plain consumer of the same group subscribed to an unrelated topic: its arrival rebalances
    the group, yet the service keeps every one of its own partitions (nothing is revoked from it,
    so no commit-on-revoke can paper over a lost commit)."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        super().__init__(name="group-neighbour", daemon=True)
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                   "partition.assignment.strategy": "cooperative-sticky", **GROUP_CONFIG})
        self._topic = topic
        self.stop = threading.Event()

    def run(self) -> None:
        self._consumer.subscribe([self._topic])
        while not self.stop.is_set():
            self._consumer.poll(0.05)
        self._consumer.close()


def test_a_commit_refused_during_a_rebalance_is_made_good_while_the_service_runs(
    make_settings, producer, recording_engine, run_service, broker, kafka
):
    p = producer()
    p.ensure_topics("payments", "unrelated")
    settings = make_settings(topics={"payments": ["payments"]},
                             kafka={"config": GROUP_CONFIG, "statistics_interval_ms": 200})
    group = settings.kafka.config["group.id"]
    service = Service(settings, engine=recording_engine())
    registry = service.metrics.registry

    def count(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    def committed_p0() -> tuple[int, int]:
        o = broker.offsets(group, ["payments"])[("payments", 0)]
        return o.committed, o.high

    neighbour = GroupNeighbour(kafka.bootstrap_servers, group, "unrelated")
    observed: dict[str, object] = {}

    async def scenario() -> None:
        async with run_service(service) as running:
            # Steady state: a few records on partition 0, handled and committed.
            for n in range(3):
                p.send("payments", "commit-user", deposit(n), partition=0)
            p.flush()
            await running.wait_until(lambda: service.stats.consumed >= 3, "the first records")
            await running.wait_until(lambda: committed_p0()[0] == committed_p0()[1] == 3, "the first commit")
            assigned_before = count("smartico_stream_rebalances_total", kind="assigned")

            # A neighbour joins: the group rebalances. Produce one record at a time until the
            # commit of one is refused; that record is the last one the partition ever gets.
            neighbour.start()
            n = 3
            deadline = time.monotonic() + 30
            while count("smartico_stream_commits_total", result="failure") == 0:
                assert time.monotonic() < deadline, "no commit was refused during the rebalance"
                successes = count("smartico_stream_commits_total", result="success")
                p.send("payments", "commit-user", deposit(n), partition=0)
                p.flush()
                n += 1
                await running.wait_until(
                    lambda before=successes: count("smartico_stream_commits_total", result="success") > before
                    or count("smartico_stream_commits_total", result="failure") > 0,
                    "the outcome of a commit",
                )
            observed["records"] = n
            # The rebalance completes without taking anything from the service.
            await running.wait_until(
                lambda: count("smartico_stream_rebalances_total", kind="assigned") > assigned_before,
                "the rebalance to complete",
            )
            assert count("smartico_stream_rebalances_total", kind="revoked") == 0
            assert service.transport.source.assigned == {("payments", q) for q in range(4)}
            assert service.stats.consumed == n

            # Every record is handled, the service keeps running: the partition must end up
            # committed and its lag back at 0 (bounded wait: many commit and statistics periods).
            deadline = time.monotonic() + 5
            while committed_p0() != (n, n) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            observed["while_running"] = committed_p0()
            observed["lag_metric"] = count("smartico_stream_consumer_lag_messages", topic="payments", partition="0")
            neighbour.stop.set()
        neighbour.join(10)

    asyncio.run(scenario())
    n = observed["records"]
    assert broker.offsets(group, ["payments"])[("payments", 0)].drained  # closing commits (on revoke)
    assert observed["while_running"] == (n, n), (
        f"partition 0: {n} records handled but committed/high = {observed['while_running']} after the "
        f"rebalance, and the service never retried while it ran "
        f"(smartico_stream_consumer_lag_messages = {observed['lag_metric']}, "
        f"commits failed = {count('smartico_stream_commits_total', result='failure')})"
    )
