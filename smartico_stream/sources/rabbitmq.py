"""RabbitMQ source: consistent-hash topology, single active consumer per queue, batched acks.

Per stream, a consistent-hash exchange spreads messages over N queues by routing key (the user id),
so one user's messages always land in one queue; each queue has single-active-consumer, so one
consumer at a time owns it and a standby takes over when it dies. Messages are buffered up to the
prefetch, handed over in batches, and acknowledged with one ``ack(multiple=True)`` per batch, only
after the batch was handled. It knows nothing of adapters, rules or stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import time
from typing import Any
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection, FieldValue
from aiormq.exceptions import (
    AMQPConnectionError,
    AMQPError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ProbableAuthenticationError,
)

from smartico_stream.config import EXIT_CONFIG, RabbitMqSettings, StartupError
from smartico_stream.events.raw import RawRecord
from smartico_stream.observability.logging import get_logger
from smartico_stream.observability.metrics import Metrics

log = get_logger(__name__)

# Connecting at start: first retry after 1 s, doubling to at most 30 s between attempts.
_CONNECT_RETRY_FIRST_S = 1.0
_CONNECT_RETRY_MAX_S = 30.0


class TopologyError(StartupError):
    """The exchanges or queues are missing or declared differently; says what to ask the operator for.
    A configuration error at start (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_CONFIG)


def message_key(message: AbstractIncomingMessage) -> str:
    """What identifies a message across redeliveries: its message id, else a digest of its body."""
    if message.message_id:
        return f"id:{message.message_id}"
    return "sha256:" + hashlib.sha256(message.body).hexdigest()


class RabbitMqSource:
    def __init__(self, settings: RabbitMqSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._queues = settings.queues()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._consumer_tags: dict[str, str] = {}
        # (queue, message) in delivery order; the batch in hand is acked once it is handled
        self._buffer: list[tuple[str, AbstractIncomingMessage]] = []
        self._in_hand: list[tuple[str, AbstractIncomingMessage]] = []
        self._filled = asyncio.Event()
        self._stats_task: asyncio.Task[None] | None = None
        self.connected = False

    @property
    def queue_names(self) -> list[str]:
        return list(self._queues)

    # lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._connection = await self._connect()
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        self._connection.close_callbacks.add(self._on_close)
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self._settings.prefetch)
        queues = await self._topology(self._channel)
        for name, queue in queues.items():
            # Consuming on the queue objects the robust channel declared (and keeps) is what makes
            # aio-pika restore these consumers after a reconnect.
            self._consumer_tags[name] = await queue.consume(functools.partial(self._on_message, name), no_ack=False)
        self._set_connected(True)
        self._stats_task = asyncio.create_task(self._queue_stats_loop())
        log.info("consuming", queues=len(self._queues), prefetch=self._settings.prefetch)

    async def _connect(self) -> AbstractRobustConnection:
        """The first connection. An unreachable broker is retried, as the Kafka client does, with one
        log line per attempt and a backoff doubling to 30 s; a broker that answers but refuses the
        login or the virtual host is a configuration error (StartupError, exit 2), not retried.
        Once connected, aio-pika's robust connection reconnects by itself."""
        where = broker_of(self._settings.url)
        for attempt in itertools.count(1):
            try:
                connection: AbstractRobustConnection = await aio_pika.connect_robust(
                    self._settings.url, **self._settings.connection
                )
                return connection
            except ProbableAuthenticationError:
                raise StartupError(
                    f"rabbitmq.url: RabbitMQ at {where} refused the login (ACCESS_REFUSED); check the user and "
                    "password", EXIT_CONFIG
                ) from None
            except (AMQPConnectionError, OSError) as exc:
                delay = min(_CONNECT_RETRY_FIRST_S * 2 ** (attempt - 1), _CONNECT_RETRY_MAX_S)
                log.warning("RabbitMQ unreachable; retrying", broker=where, attempt=attempt, retry_in_s=delay,
                            error=_reason(exc))
                await asyncio.sleep(delay)
            except AMQPError as exc:  # answered, then closed the connection: a vhost it does not know
                raise StartupError(
                    f"rabbitmq.url: RabbitMQ at {where} refused to open the connection ({type(exc).__name__}); "
                    "check the virtual host and the user's permissions on it", EXIT_CONFIG
                ) from None
        raise AssertionError("unreachable")  # itertools.count never ends

    async def close(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
        if self._connection is not None:
            await self._connection.close()
        self._set_connected(False)

    @property
    def joined(self) -> bool:
        return self.connected

    def connection_handle(self) -> AbstractRobustConnection:
        """The robust connection (for a publisher channel sharing it)."""
        if self._connection is None:
            raise RuntimeError("the RabbitMQ source is not started")
        return self._connection

    # consuming ---------------------------------------------------------------------------------

    async def _on_message(self, queue: str, message: AbstractIncomingMessage) -> None:
        self._buffer.append((queue, message))
        if len(self._buffer) >= self._settings.batch_size:
            self._filled.set()

    async def poll_batch(self, timeout_s: float) -> list[RawRecord]:
        """Up to ``batch_size`` buffered messages in delivery order; waits at most ``timeout_s`` for
        the first, then ``batch_wait_s`` for the batch to fill."""
        deadline = time.monotonic() + timeout_s
        while not self._buffer and time.monotonic() < deadline:
            self._filled.clear()
            with contextlib.suppress(TimeoutError):  # nothing yet: check the deadline again
                await asyncio.wait_for(self._filled.wait(), min(0.05, max(deadline - time.monotonic(), 0.001)))
        if self._buffer and len(self._buffer) < self._settings.batch_size:
            self._filled.clear()
            with contextlib.suppress(TimeoutError):  # a partial batch goes as it is
                await asyncio.wait_for(self._filled.wait(), self._settings.batch_wait_s)
        batch, self._buffer = self._buffer[: self._settings.batch_size], self._buffer[self._settings.batch_size :]
        # Messages from a channel that died are back in the queue (redelivered, flagged): handling
        # them here would be wasted and acking them impossible.
        batch = [(queue, message) for queue, message in batch if not _channel_closed(message)]
        self._in_hand = batch
        for queue, _ in batch:
            self._metrics.rabbitmq_deliveries.labels(queue).inc()
        return [self._record(queue, message) for queue, message in batch]

    @staticmethod
    def _record(queue: str, message: AbstractIncomingMessage) -> RawRecord:
        timestamp = message.timestamp
        return RawRecord(
            transport="rabbitmq",
            topic=queue,
            partition=0,
            offset=int(message.delivery_tag or 0),
            key=message.routing_key.encode() if message.routing_key else None,
            value=message.body,
            timestamp_ms=int(timestamp.timestamp() * 1000) if timestamp else 0,
            headers=[(str(k), _header_bytes(v)) for k, v in (message.headers or {}).items()],
            message_id=message_key(message),
            redelivered=bool(message.redelivered),
        )

    def batch_alive(self) -> bool:
        """True while the channel the batch in hand came on is open: only then is this instance
        still the queue's active consumer for these messages."""
        return not any(_channel_closed(message) for _, message in self._in_hand)

    async def acknowledge(self) -> bool:
        """Ack every message of the batch in hand with one ``multiple=True`` ack (its delivery tags
        are the lowest outstanding on this channel). False when the channel died meanwhile: the
        broker then redelivers them, flagged, and the store's handled ids make that harmless."""
        batch, self._in_hand = self._in_hand, []
        if not batch:
            return True
        _, last = max(batch, key=lambda item: item[1].delivery_tag or 0)
        try:
            await last.ack(multiple=True)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.warning("ack failed; the broker will redeliver this batch and its ids will be skipped",
                        error=str(exc), messages=len(batch))
            return False
        return True

    # topology ----------------------------------------------------------------------------------

    async def _topology(self, channel: AbstractChannel) -> dict[str, Any]:
        """Declare (or, with declare=false, check) the topology; the stream queues by name."""
        settings = self._settings
        arguments: dict[str, FieldValue] = {"x-single-active-consumer": True, "x-queue-type": settings.queue_type}
        queues: dict[str, Any] = {}
        try:
            if settings.declare:
                # Dead letters: a topic exchange (routing key = source queue) and one queue catching all.
                dead_letters = await channel.declare_exchange(
                    settings.dead_letter_exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
                catch_all = await channel.declare_queue(
                    settings.dead_letter_exchange, durable=True, arguments={"x-queue-type": settings.queue_type}
                )
                await catch_all.bind(dead_letters, routing_key="#")
            else:
                await channel.get_exchange(settings.dead_letter_exchange, ensure=True)
            for exchange_name in settings.exchanges.values():
                if settings.declare:
                    exchange = await channel.declare_exchange(exchange_name, "x-consistent-hash", durable=True)
                else:
                    exchange = await channel.get_exchange(exchange_name, ensure=True)
                for n in range(settings.queues_per_stream):
                    name = f"{exchange_name}.{n}"
                    if settings.declare:
                        queue = await channel.declare_queue(name, durable=True, arguments=arguments)
                        await queue.bind(exchange, routing_key="1")  # equal weights
                    else:
                        queue = await channel.declare_queue(name, passive=True)
                    queues[name] = queue
        except (ChannelNotFoundEntity, ChannelPreconditionFailed) as exc:
            raise TopologyError(
                f"RabbitMQ topology does not match the configuration ({exc}); with rabbitmq.declare=false ask "
                "the operator for: per stream a durable x-consistent-hash exchange and "
                f"{settings.queues_per_stream} durable {settings.queue_type} queues <exchange>.<n> with "
                "x-single-active-consumer=true bound with routing key '1' (see docs/rabbitmq.md)"
            ) from None
        return queues

    async def _queue_stats_loop(self) -> None:
        """Queue depth and consumers as the broker sees them (passive declares on a side channel)."""
        while True:
            try:
                if self._connection is not None and not self._connection.is_closed:
                    channel = await self._connection.channel()
                    try:
                        for name in self._queues:
                            declared = await channel.declare_queue(name, passive=True)
                            result = declared.declaration_result
                            self._metrics.rabbitmq_ready.labels(name).set(result.message_count or 0)
                            self._metrics.rabbitmq_consumers.labels(name).set(result.consumer_count or 0)
                    finally:
                        await channel.close()
                held = [queue for queue, _ in [*self._buffer, *self._in_hand]]
                for name in self._queues:
                    self._metrics.rabbitmq_unacked.labels(name).set(held.count(name))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - statistics must never stop consumption
                log.warning("reading queue statistics failed", error=str(exc))
            await asyncio.sleep(self._settings.queue_stats_interval_s)

    # connection events -------------------------------------------------------------------------

    def _on_reconnect(self, *_: Any) -> None:
        # Not clearing the buffer: by now it may hold messages of the new channel too. Those of the
        # dead channel are skipped when a batch is taken (see poll_batch).
        self._metrics.rabbitmq_recoveries.inc()
        self._set_connected(True)
        log.info("reconnected to RabbitMQ; consumers restored")

    def _on_close(self, *_: Any) -> None:
        self._set_connected(False)

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        self._metrics.rabbitmq_connected.set(1 if connected else 0)


def broker_of(url: str) -> str:
    """``HOST:PORT`` of an AMQP URL, without user or password (for messages)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    default = 5671 if parts.scheme == "amqps" else 5672
    return f"{parts.hostname or 'localhost'}:{port or default}"


def _reason(exc: BaseException) -> str:
    args = [a for a in exc.args if isinstance(a, str)]
    return args[-1] if args else type(exc).__name__


def _channel_closed(message: AbstractIncomingMessage) -> bool:
    channel = getattr(message, "channel", None)
    return bool(channel is not None and getattr(channel, "is_closed", False))


def _header_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()
