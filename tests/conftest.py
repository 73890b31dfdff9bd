"""Shared fixtures for the integration tests against the embedded Kafka (librdkafka's mock cluster).

Everything here is exposed as a fixture (tests never import this module), so the helpers keep
working whatever pytest import mode is configured:

- ``kafka``: one fresh :class:`EmbeddedKafka` per test (cheap; it dies with the test).
- ``make_settings``: service settings pointing at that cluster and a per-test store, metrics on a
  free local port.
- ``recording_engine``: factory of :class:`RecordingEngine` (an engine that remembers every event
  it was given, in order, with the instance that applied it).
- ``producer``: factory of :class:`TestProducer` (records where every message landed).
- ``run_service``: async context manager running a Service in-process until the block ends.
- ``broker``: read-only helpers (committed offsets vs high watermarks, read a whole topic).
- ``scrape``: GET a path of a service's metrics port.

Every wait is a deadline loop; none sleeps for long; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, Consumer, KafkaError, Message, Producer, TopicPartition

from smartico_stream.config import Settings, load_settings
from smartico_stream.demo.embedded_kafka import EmbeddedKafka
from smartico_stream.events.models import CanonicalEvent
from smartico_stream.service import Service

# Business timestamps in the past (2023-11-14T22:13:20Z): the canonical models reject future event times.
BASE_EVENT_MS = 1_700_000_000_000
MOCK_PARTITIONS = 4  # the mock cluster auto-creates every topic with 4 partitions


# -- the cluster ----------------------------------------------------------------------------------


@pytest.fixture
def kafka() -> Iterable[EmbeddedKafka]:
    cluster = EmbeddedKafka()
    try:
        yield cluster
    finally:
        cluster.close()


# -- settings -------------------------------------------------------------------------------------


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
def make_settings(kafka: EmbeddedKafka, tmp_path: Path) -> Callable[..., Settings]:
    """``make_settings(topics={"payments": ["payments"]}, group="g", **overrides)``.

    Defaults: a group id unique to the call, a short poll timeout, metrics on 127.0.0.1 port 0, the
    reference adapter, a SQLite store in the test's own directory. ``overrides`` are deep-merged
    (``kafka={"batch_size": 50}`` keeps the rest)."""

    def make(topics: Mapping[str, Sequence[str]], group: str | None = None, **overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "adapter": "reference",
            "kafka": {
                "config": {
                    "bootstrap.servers": kafka.bootstrap_servers,
                    "group.id": group or f"test-{uuid.uuid4().hex[:8]}",
                },
                "topics": {stream: list(names) for stream, names in topics.items()},
                "poll_timeout_s": 0.1,
                "dead_letter_flush_timeout_s": 10.0,
            },
            "metrics": {"port": 0, "host": "127.0.0.1"},
            # One store per test, shared by every service instance the test starts (like one
            # consumer group sharing one database); never the default path in the working tree.
            "store": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        }
        return load_settings(environ={}, **_merge(base, overrides))

    return make


# -- a recording engine ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    """One event as an engine saw it, with a global sequence number shared by all engines."""

    tick: int
    instance: str
    user: tuple[str, str]
    event: CanonicalEvent

    @property
    def coordinates(self) -> tuple[str, int, int]:
        source = self.event.source
        assert source is not None, "the pipeline must set the source coordinates"
        return (source.topic, source.partition or 0, source.offset or 0)


class RecordingEngine:
    """Appends every event it is given, in order. ``timeline`` may be shared between engines so
    that the order across instances is known too (all services of a test run on one event loop)."""

    _ticks = itertools.count()

    def __init__(self, instance: str = "main", timeline: list[Applied] | None = None) -> None:
        self.instance = instance
        self.applied: list[Applied] = []
        self.timeline = timeline if timeline is not None else []
        self._lock = threading.Lock()

    def apply_user_events(self, user: tuple[str, str], events: Sequence[CanonicalEvent]) -> list[tuple[int, Exception]]:
        with self._lock:
            for event in events:
                entry = Applied(next(self._ticks), self.instance, user, event)
                self.applied.append(entry)
                self.timeline.append(entry)
        return []

    @property
    def events(self) -> list[CanonicalEvent]:
        return [entry.event for entry in self.applied]

    def event_ids(self) -> list[str]:
        return [entry.event.event_id for entry in self.applied]


@pytest.fixture
def recording_engine() -> Callable[..., RecordingEngine]:
    return RecordingEngine


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

    def __init__(self, bootstrap_servers: str, **config: Any) -> None:
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers,
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
            deadline = time.monotonic() + 10
            while True:
                metadata = self._producer.list_topics(topic=topic, timeout=5)
                info = metadata.topics.get(topic)
                if info is not None and info.error is None and len(info.partitions) == MOCK_PARTITIONS:
                    break
                assert time.monotonic() < deadline, f"topic {topic} was not created: {info and info.error}"
                time.sleep(0.05)

    def send(
        self, topic: str, key: bytes | str | None, value: bytes | None, partition: int | None = None, **meta: Any
    ) -> Produced:
        """Produce one message (to ``partition`` if given, else by key); ``meta`` is kept for the test."""
        key_bytes = key.encode() if isinstance(key, str) else key
        where = {} if partition is None else {"partition": partition}
        produced = Produced(topic, key_bytes, value, meta=meta)

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                produced.error = error.str()
            else:
                produced.partition = message.partition()
                produced.offset = message.offset()

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
        remaining = self._producer.flush(timeout_s)
        assert remaining == 0, f"{remaining} message(s) not acknowledged within {timeout_s}s"
        failed = [p for p in self.sent if p.error is not None]
        assert not failed, f"{len(failed)} message(s) refused, first: {failed[0].error}"

    def poll(self, timeout_s: float = 0.0) -> None:
        self._producer.poll(timeout_s)


@pytest.fixture
def producer(kafka: EmbeddedKafka) -> Iterable[Callable[..., TestProducer]]:
    made: list[TestProducer] = []

    def make(**config: Any) -> TestProducer:
        p = TestProducer(kafka.bootstrap_servers, **config)
        made.append(p)
        return p

    yield make
    for p in made:
        p._producer.flush(5)
    made.clear()


# -- running a service ----------------------------------------------------------------------------


class ServiceRun:
    """A Service running as an asyncio task; ``wait_until`` fails fast if the service dies."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(service.run(self.stop_event), name="service")

    async def wait_until(self, predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.task.done():
                self.task.result()  # raises what killed it
                raise AssertionError(f"the service stopped while waiting for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; stats: {self.service.stats}")
            await asyncio.sleep(0.02)

    async def stop(self, timeout_s: float = 60.0) -> None:
        self.stop_event.set()
        await asyncio.wait_for(asyncio.shield(self.task), timeout_s)


@pytest.fixture
def run_service() -> Callable[[Service], contextlib.AbstractAsyncContextManager[ServiceRun]]:
    @contextlib.asynccontextmanager
    async def run(service: Service) -> AsyncIterator[ServiceRun]:
        running = ServiceRun(service)
        try:
            yield running
        finally:
            if not running.task.done():
                await running.stop()
            else:
                running.task.result()

    return run


async def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def eventually() -> Callable[..., Any]:
    """``await eventually(predicate, "what", timeout_s)``: a bounded wait for anything."""
    return wait_for


# -- reading the broker ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
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
    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers

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
            wanted = [TopicPartition(topic, p) for topic in topics for p in self.partitions(topic)]
            committed = consumer.committed(wanted, timeout=10)
            result = {}
            for tp in committed:
                assert tp.error is None, f"committed() failed for {tp.topic}[{tp.partition}]: {tp.error}"
                low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
                result[(tp.topic, tp.partition)] = PartitionOffsets(tp.topic, tp.partition, tp.offset, low, high)
            return result
        finally:
            consumer.close()

    def read_all(self, topic: str, expected: int, timeout_s: float = 30.0) -> list[Message]:
        """Every message of ``topic`` from the beginning; waits (bounded) until ``expected`` arrived."""
        consumer = self._consumer(f"reader-{uuid.uuid4().hex[:8]}")
        try:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in self.partitions(topic)])
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


@pytest.fixture
def broker(kafka: EmbeddedKafka) -> Broker:
    return Broker(kafka.bootstrap_servers)


# -- the metrics port -----------------------------------------------------------------------------


def http_get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def scrape() -> Callable[[int, str], tuple[int, str]]:
    return http_get
