"""What the service needs from a broker, in one shape for Kafka and RabbitMQ: fetch a batch, make
its dead letters durable, and tell the broker the batch is handled (Kafka commit / RabbitMQ ack).

Kafka's client is blocking, so its calls run on one dedicated thread (librdkafka then invokes the
rebalance, commit and statistics callbacks there, never concurrently with the batch in hand).
aio-pika is asyncio-native and runs on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from smartico_stream.config import Settings
from smartico_stream.events.raw import PartitionId, RawRecord, Stream
from smartico_stream.observability.metrics import Metrics
from smartico_stream.pii.payloads import Protector
from smartico_stream.pipeline.errors import DeadLetter
from smartico_stream.sinks.dead_letters import KafkaDeadLetterSink, RabbitMqDeadLetterSink
from smartico_stream.sources.kafka import KafkaSource, PartitionListener, connection_config
from smartico_stream.sources.rabbitmq import RabbitMqSource

T = TypeVar("T")


class Transport(Protocol):
    name: str
    # True when partition ownership is learnt from deliveries (RabbitMQ single-active-consumer),
    # False when the broker assigns it (Kafka rebalance callbacks).
    claims_on_delivery: bool
    # True when redelivered records must be checked against the store's handled ids.
    redelivers: bool

    @property
    def stream_of_topic(self) -> Mapping[str, Stream]: ...

    @property
    def joined(self) -> bool: ...

    async def start(self) -> None: ...

    async def poll(self) -> list[RawRecord]: ...

    async def publish_dead_letters(self, letters: Sequence[DeadLetter], timeout_s: float) -> None: ...

    async def handled(
        self, next_offsets: Mapping[PartitionId, int], last_timestamps: Mapping[PartitionId, int]
    ) -> bool:
        """The batch in hand is durable: commit / ack it. False if the broker could not be told."""

    async def idle(self) -> None: ...

    def still_owner(self) -> bool:
        """Whether the batch in hand is still this instance's to handle."""
        ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def close(self) -> None: ...

    def lag_messages(self) -> int | None:
        """Messages waiting in the source for this instance, as last reported by the client; None
        when the transport does not track it."""
        ...


class KafkaTransport:
    name = "kafka"
    claims_on_delivery = False
    redelivers = False

    def __init__(self, settings: Settings, listener: PartitionListener, metrics: Metrics, protect: Protector) -> None:
        kafka = settings.kafka
        self._stream_of_topic = kafka.stream_of_topic()
        self.source = KafkaSource(
            kafka.config,
            self._stream_of_topic,
            listener=listener,
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

    async def handled(
        self, next_offsets: Mapping[PartitionId, int], last_timestamps: Mapping[PartitionId, int]
    ) -> bool:
        await self._call(self.source.commit, next_offsets, last_timestamps)
        return True

    def still_owner(self) -> bool:
        return True  # ownership changes arrive through the rebalance callbacks

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
    name = "rabbitmq"
    claims_on_delivery = True
    redelivers = True

    def __init__(self, settings: Settings, metrics: Metrics, protect: Protector) -> None:
        rabbit = settings.rabbitmq
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

    async def handled(
        self, next_offsets: Mapping[PartitionId, int], last_timestamps: Mapping[PartitionId, int]
    ) -> bool:
        return await self.source.acknowledge()

    def still_owner(self) -> bool:
        return self.source.batch_alive()

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


def transport_for(settings: Settings, listener: PartitionListener, metrics: Metrics, protect: Protector) -> Transport:
    if settings.source == "rabbitmq":
        return RabbitMqTransport(settings, metrics, protect)
    return KafkaTransport(settings, listener, metrics, protect)
