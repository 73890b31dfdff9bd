"""What the service needs from a broker, in one shape for Kafka and RabbitMQ: fetch a batch, make
its dead letters durable, and tell the broker the batch is handled (Kafka commit / RabbitMQ ack).

Kafka's client is blocking, so its calls run on one dedicated thread (librdkafka then invokes the
rebalance, commit and statistics callbacks there, never concurrently with the batch in hand).
aio-pika is asyncio-native and runs on the event loop.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from smartico_stream.batch.checkpoint import BatchTransport, Handled, Progress
from smartico_stream.batch.ownership import Ownership
from smartico_stream.config import Settings
from smartico_stream.events.raw import PartitionId, RawRecord, Stream
from smartico_stream.failpoints import Failpoints
from smartico_stream.observability.logging import get_logger
from smartico_stream.observability.metrics import Metrics
from smartico_stream.pii.keys import KeyRing
from smartico_stream.pii.payloads import Protector
from smartico_stream.pipeline.errors import DeadLetter
from smartico_stream.pipeline.pipeline import DEAD_LETTERED, OK
from smartico_stream.sinks.dead_letters import KafkaDeadLetterSink, RabbitMqDeadLetterSink
from smartico_stream.sources.kafka import KafkaSource, connection_config
from smartico_stream.sources.rabbitmq import RabbitMqSource
from smartico_stream.store.base import FencedError, Store

log = get_logger(__name__)

T = TypeVar("T")


class Transport(BatchTransport, Protocol):
    """A broker as the service sees it; the checkpoint's part is :class:`BatchTransport`."""

    name: str

    @property
    def stream_of_topic(self) -> Mapping[str, Stream]: ...

    @property
    def joined(self) -> bool: ...

    async def start(self) -> None: ...

    async def poll(self) -> list[RawRecord]: ...

    async def idle(self) -> None: ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def close(self) -> None: ...

    def lag_messages(self) -> int | None:
        """Messages waiting in the source for this instance, as last reported by the client; None
        when the transport does not track it."""
        ...


class KafkaTransport:
    """Partitions come from rebalances; progress is the offsets, stored with the batch and then
    committed to Kafka for lag tools."""

    name = "kafka"

    def __init__(self, settings: Settings, ownership: Ownership, metrics: Metrics, protect: Protector) -> None:
        kafka = settings.kafka
        self._ownership = ownership
        self._stream_of_topic = kafka.stream_of_topic()
        self.source = KafkaSource(
            kafka.config,
            self._stream_of_topic,
            listener=ownership,
            metrics=metrics,
            batch_size=kafka.batch_size,
            poll_timeout_s=kafka.poll_timeout_s,
            statistics_interval_ms=kafka.statistics_interval_ms,
        )
        self.connection = {**connection_config(kafka.config), **kafka.producer_config}
        self._dead_letters = KafkaDeadLetterSink(self.connection, kafka.dead_letter_topic, protect)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka")

    @property
    def stream_of_topic(self) -> Mapping[str, Stream]:
        return self._stream_of_topic

    @property
    def joined(self) -> bool:
        return self.source.joined

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def start(self) -> None:
        await self._call(self.source.start)

    async def poll(self) -> list[RawRecord]:
        return await self._call(self.source.poll_batch)

    async def publish_dead_letters(self, letters: Sequence[DeadLetter], timeout_s: float) -> None:
        await self._call(self._dead_letters.publish, letters, timeout_s)

    async def claim(self, records: Sequence[RawRecord]) -> None:
        """Ownership changes arrive through the rebalance callbacks."""

    async def already_handled(self, records: Sequence[RawRecord], store: Store) -> list[RawRecord]:
        return []  # a record is never read again past the stored offset

    def progress(self, records: Sequence[RawRecord], next_offsets: Mapping[PartitionId, int]) -> Progress:
        return Progress(offsets=dict(next_offsets))

    async def fenced(self, error: FencedError) -> bool:
        log.warning("fenced: dropping partitions taken over by another member", error=str(error))
        self._ownership.partitions_revoked(list(error.partitions), lost=True)
        return True

    async def handled(self, batch: Handled) -> bool:
        await self._call(self.source.commit, batch.next_offsets, batch.last_timestamps)
        return True

    def lag_messages(self) -> int | None:
        """The lag summed over the assigned partitions, from the client's last statistics."""
        return sum(p.lag for p in self.source.lag.values())

    async def idle(self) -> None:
        await self._call(self.source.retry_commits)

    async def pause(self) -> None:
        await self._call(self.source.pause)

    async def resume(self) -> None:
        await self._call(self.source.resume)

    async def close(self) -> None:
        try:
            await self._call(self.source.close)
            await self._call(self._dead_letters.close)
        finally:
            self._thread.shutdown(wait=True)


class RabbitMqTransport:
    """A queue's owner is learnt from its first delivery (single-active-consumer); progress is the
    handled message ids, stored with the batch, so a redelivery after a crash is acknowledged only."""

    name = "rabbitmq"

    def __init__(self, settings: Settings, ownership: Ownership, metrics: Metrics, protect: Protector) -> None:
        rabbit = settings.rabbitmq
        self._ownership = ownership
        self._metrics = metrics
        self.source = RabbitMqSource(rabbit, metrics)
        self._poll_timeout_s = rabbit.poll_timeout_s
        self._stream_of_queue = rabbit.queues()
        self._dead_letters = RabbitMqDeadLetterSink(self._publisher_channel, rabbit.dead_letter_exchange, protect)
        self._paused = False

    async def _publisher_channel(self) -> Any:
        connection = self.source.connection_handle()
        return await connection.channel(publisher_confirms=True, on_return_raises=True)

    @property
    def stream_of_topic(self) -> Mapping[str, Stream]:
        return self._stream_of_queue

    @property
    def joined(self) -> bool:
        return self.source.joined

    async def start(self) -> None:
        await self.source.start()

    async def poll(self) -> list[RawRecord]:
        if self._paused:
            # The broker stops delivering once the prefetch window is full: that is the backpressure.
            await asyncio.sleep(self._poll_timeout_s)
            return []
        return await self.source.poll_batch(self._poll_timeout_s)

    async def publish_dead_letters(self, letters: Sequence[DeadLetter], timeout_s: float) -> None:
        await asyncio.wait_for(self._dead_letters.publish(letters), timeout_s)

    async def claim(self, records: Sequence[RawRecord]) -> None:
        """With single-active-consumer, the first delivery is how a member learns it became a
        queue's owner: take the leases of queues not held yet."""
        await self._ownership.claim_unowned(records)

    async def already_handled(self, records: Sequence[RawRecord], store: Store) -> list[RawRecord]:
        """Redelivered messages whose ids the store has: handled before a crash. Checked on every
        attempt: a redo after a conflict may find that the member this queue just moved from
        committed some of them meanwhile."""
        redelivered: dict[PartitionId, list[str]] = {}
        for record in records:
            # An id with a NUL cannot have been stored (the record was refused), and PostgreSQL
            # would refuse the very lookup: it is fresh, and the batch dead-letters it.
            if record.redelivered and record.message_id and "\x00" not in record.message_id:
                redelivered.setdefault((record.topic, record.partition), []).append(record.message_id)
        done: set[tuple[PartitionId, str]] = set()
        for tp, keys in redelivered.items():
            done.update((tp, key) for key in await store.handled(tp, keys))
        return [r for r in records if ((r.topic, r.partition), r.message_id) in done] if done else []

    def progress(self, records: Sequence[RawRecord], next_offsets: Mapping[PartitionId, int]) -> Progress:
        handled_ids: dict[PartitionId, list[str]] = {}
        for record in records:
            if record.message_id:
                handled_ids.setdefault((record.topic, record.partition), []).append(record.message_id)
        return Progress(handled_ids=handled_ids)

    async def fenced(self, error: FencedError) -> bool:
        if not self.source.batch_alive():
            # Our channel died: the broker hands these messages to the new active consumer.
            # Neither commit nor ack them.
            log.warning("fenced after losing the channel; leaving the batch to the new owner")
            return False
        # Still delivering to us on a live channel: the queue moved away and back. Take the lease
        # anew and redo; acking the batch unhandled would delete it.
        log.warning("lease was taken meanwhile; claiming the queues again", error=str(error))
        await self._ownership.claim(list(error.partitions))
        return True

    async def handled(self, batch: Handled) -> bool:
        acks = self._metrics.rabbitmq_acks
        for record in batch.already_handled:
            acks.labels(record.topic, "redelivered_handled").inc()
        counts = Counter(
            (record.topic, DEAD_LETTERED if (record.topic, record.offset) in batch.dead_lettered else OK)
            for record in batch.records
        )
        for (topic, kind), count in counts.items():
            acks.labels(topic, kind).inc(count)
        return await self.source.acknowledge()

    def lag_messages(self) -> int | None:
        return None  # queue depth is read from the broker by the queue metrics, not kept here

    async def idle(self) -> None:
        """Acks are not retried: an unacked message comes back and its handled id skips it."""

    async def pause(self) -> None:
        self._paused = True

    async def resume(self) -> None:
        self._paused = False

    async def close(self) -> None:
        # Deliberately no basic.cancel before this: cancelling activates the standby at once, while
        # our prefetched messages return to the queue only when the channel closes, after newer
        # ones. Closing the connection returns them in order, first.
        await self._dead_letters.close()
        await self.source.close()


def transport_for(settings: Settings, ownership: Ownership, metrics: Metrics, protect: Protector,
                  store: Store | None = None, ring: KeyRing | None = None,
                  failpoints: Failpoints | None = None) -> Transport:
    if settings.source == "rabbitmq":
        return RabbitMqTransport(settings, ownership, metrics, protect)
    if settings.source == "replica":
        from smartico_stream.sources.replica.transport import ReplicaTransport

        if store is None:
            raise ValueError("the replica transport keeps its leases, cursors and dead letters in the store")
        return ReplicaTransport(settings, ownership, metrics, protect, store)
    if settings.source == "rest":
        from smartico_stream.sources.rest.transport import RestTransport

        if store is None:
            raise ValueError("the REST transport keeps its inbox, leases and dead letters in the store")
        return RestTransport(settings, ownership, metrics, protect, store, ring, failpoints)
    return KafkaTransport(settings, ownership, metrics, protect)
