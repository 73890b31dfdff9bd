"""Kafka for the tests: the cluster handle, a producer that records where messages landed, and
read-only broker helpers (committed offsets against watermarks, a whole topic).

The ``kafka`` fixture (tests/fixtures/kafka.py) yields a :class:`KafkaCluster`: by default an
:class:`EmbeddedCluster` (librdkafka's mock cluster, fresh per test; what CI uses), or, when
``SMARTICO_STREAM_TEST_KAFKA_BROKERS`` is set, an :class:`ExternalCluster` on that real cluster.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from smartico_stream.demo.embedded_kafka import EmbeddedKafka

BROKERS_ENV = "SMARTICO_STREAM_TEST_KAFKA_BROKERS"
MOCK_PARTITIONS = 4  # the mock cluster auto-creates every topic with 4 partitions; real topics get as many


class KafkaCluster(Protocol):
    """What tests may use of the cluster they run against."""

    bootstrap_servers: str
    embedded: bool

    def topic(self, name: str) -> str:
        """The topic to use for ``name`` in this test (exists, with MOCK_PARTITIONS partitions, on
        a real cluster; auto-created on first use on the embedded one)."""
        ...

    def check_topic(self, topic: str) -> None:
        """Fail when ``topic`` is not safe to use on this cluster (see ExternalCluster)."""
        ...

    def close(self) -> None:
        """The embedded cluster disappears (tests simulate an outage so); a real one is left alone."""
        ...


class EmbeddedCluster:
    """librdkafka's mock cluster, private to one test: any topic name is free to use."""

    embedded = True

    def __init__(self) -> None:
        self._cluster: EmbeddedKafka | None = EmbeddedKafka()
        self.bootstrap_servers = self._cluster.bootstrap_servers

    def topic(self, name: str) -> str:
        return name

    def check_topic(self, topic: str) -> None:
        return None

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


class ExternalCluster:
    """A real cluster shared with other tests, other workers and earlier runs.

    Every topic a test uses must come from :meth:`topic`: a name unique to the test, created with
    MOCK_PARTITIONS partitions (so the tests' partition arithmetic holds), deleted at :meth:`close`.
    The producer and broker helpers refuse any other name, so a test that still hard-codes one
    fails loudly instead of reading another test's records."""

    embedded = False

    def __init__(self, bootstrap_servers: str, test_name: str = "t") -> None:
        self.bootstrap_servers = bootstrap_servers
        self.prefix = f"smartico-test-{uuid.uuid4().hex[:10]}"
        admin_config: dict[str, Any] = {"bootstrap.servers": bootstrap_servers,
                                        "logger": logging.getLogger("tests.rdkafka.admin")}
        self._admin = AdminClient(admin_config)
        self._topics: dict[str, str] = {}
        self.test_name = test_name

    def topic(self, name: str) -> str:
        if name not in self._topics:
            real = f"{self.prefix}.{name}"
            futures = self._admin.create_topics([NewTopic(real, num_partitions=MOCK_PARTITIONS, replication_factor=-1)])
            try:
                futures[real].result(timeout=30)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            self._topics[name] = real
        return self._topics[name]

    def check_topic(self, topic: str) -> None:
        assert topic in self._topics.values(), (
            f"{self.test_name}: topic {topic!r} was not made by kafka.topic(); on a real cluster every "
            "topic must be unique to the test (another test, or an earlier run, may hold records in it)"
        )

    def close(self) -> None:
        if self._topics:
            futures = self._admin.delete_topics(list(self._topics.values()), operation_timeout=30)
            for future in futures.values():
                try:
                    future.result(timeout=60)
                except KafkaException:
                    logging.getLogger(__name__).warning("could not delete a test topic", exc_info=True)
            self._topics.clear()


# -- producing ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Produced:
    """One produced message; ``partition``/``offset`` are filled in by its delivery report."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int = -1
    offset: int = -1
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class TestProducer:
    """An idempotent producer that remembers where each message landed."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, cluster: KafkaCluster, **config: Any) -> None:
        self._cluster = cluster
        self._producer = Producer(
            {
                "bootstrap.servers": cluster.bootstrap_servers,
                "enable.idempotence": True,
                "linger.ms": 2,
                "message.max.bytes": 4_000_000,
                # librdkafka's own log lines (e.g. reconnects once a test's cluster is gone) go to a
                # Python logger instead of straight to stderr.
                "logger": logging.getLogger("tests.rdkafka.producer"),
                **config,
            }
        )
        self.sent: list[Produced] = []

    def ensure_topics(self, *topics: str) -> None:
        """Auto-create ``topics`` (a producer's metadata request creates them on the mock cluster), so
        a consumer subscribing afterwards sees every partition from the start."""
        for topic in topics:
            self._cluster.check_topic(topic)
            deadline = time.monotonic() + 10
            while True:
                metadata = self._producer.list_topics(topic=topic, timeout=5)
                info = metadata.topics.get(topic)
                if info is not None and info.error is None and len(info.partitions) == MOCK_PARTITIONS:
                    break
                assert time.monotonic() < deadline, f"topic {topic} was not created: {info and info.error}"
                time.sleep(0.05)

    def send(
        self,
        topic: str,
        key: bytes | str | None,
        value: bytes | None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        **meta: Any,
    ) -> Produced:
        """Produce one message (to ``partition`` if given, else by key; with the record timestamp
        ``timestamp_ms`` if given, else the producer's clock); ``meta`` is kept for the test."""
        self._cluster.check_topic(topic)
        key_bytes = key.encode() if isinstance(key, str) else key
        where: dict[str, Any] = {} if partition is None else {"partition": partition}
        if timestamp_ms is not None:
            where["timestamp"] = timestamp_ms
        produced = Produced(topic, key_bytes, value, meta=meta)

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                produced.error = error.str()
            else:
                produced.partition = message.partition() or 0
                produced.offset = message.offset() or 0

        while True:
            try:
                self._producer.produce(topic, key=key_bytes, value=value, on_delivery=delivered, **where)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)
        self.sent.append(produced)
        return produced

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for every delivery report; fail on anything unacknowledged or refused."""
        remaining = self._producer.flush(timeout_s)
        assert remaining == 0, f"{remaining} message(s) not acknowledged within {timeout_s}s"
        failed = [p for p in self.sent if p.error is not None]
        assert not failed, f"{len(failed)} message(s) refused, first: {failed[0].error}"

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery reports."""
        self._producer.poll(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is still queued (teardown; never raises for what was not delivered)."""
        self._producer.flush(timeout_s)


# -- reading the broker ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """A group's committed offset and a partition's watermarks."""

    topic: str
    partition: int
    committed: int  # OFFSET_INVALID (-1001) when the group never committed
    low: int
    high: int

    @property
    def drained(self) -> bool:
        """Every record of the partition is committed (an empty partition needs no commit)."""
        if self.high == self.low:
            return self.committed in (OFFSET_INVALID, self.high)
        return self.committed == self.high


class Broker:
    """Read-only views of the cluster, each through a short-lived consumer that never joins a group."""

    def __init__(self, cluster: KafkaCluster) -> None:
        self._cluster = cluster
        self.bootstrap_servers = cluster.bootstrap_servers

    def _consumer(self, group: str) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "group.id": group,
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "logger": logging.getLogger("tests.rdkafka.broker"),
            }
        )

    def partitions(self, topic: str) -> list[int]:
        """The partition numbers of ``topic``."""
        self._cluster.check_topic(topic)
        consumer = self._consumer(f"meta-{uuid.uuid4().hex[:8]}")
        try:
            return sorted(consumer.list_topics(topic=topic, timeout=10).topics[topic].partitions)
        finally:
            consumer.close()

    def offsets(self, group: str, topics: Iterable[str]) -> dict[tuple[str, int], PartitionOffsets]:
        """The group's committed offset and the watermarks of every partition of ``topics``, read
        with a fresh consumer of the same group (it never subscribes, so it never joins)."""
        consumer = self._consumer(group)
        try:
            wanted = [KafkaTopicPartition(topic, p) for topic in topics for p in self.partitions(topic)]
            committed = consumer.committed(wanted, timeout=10)
            result = {}
            for tp in committed:
                assert tp.error is None, f"committed() failed for {tp.topic}[{tp.partition}]: {tp.error}"
                low, high = consumer.get_watermark_offsets(KafkaTopicPartition(tp.topic, tp.partition), timeout=10)
                result[(tp.topic, tp.partition)] = PartitionOffsets(tp.topic, tp.partition, tp.offset, low, high)
            return result
        finally:
            consumer.close()

    def read_all(self, topic: str, expected: int, timeout_s: float = 30.0) -> list[Message]:
        """Every message of ``topic`` from the beginning; waits (bounded) until ``expected`` arrived."""
        consumer = self._consumer(f"reader-{uuid.uuid4().hex[:8]}")
        try:
            consumer.assign([KafkaTopicPartition(topic, p, OFFSET_BEGINNING) for p in self.partitions(topic)])
            messages: list[Message] = []
            deadline = time.monotonic() + timeout_s
            while len(messages) < expected and time.monotonic() < deadline:
                for message in consumer.consume(1000, 0.2):
                    if message.error() is None:
                        messages.append(message)
            # A short extra drain so that "more than expected" shows up too.
            for message in consumer.consume(1000, 0.3):
                if message.error() is None:
                    messages.append(message)
            return messages
        finally:
            consumer.close()
