"""Dead-letter sinks: where records that could not be handled go, with why and where from.

A dead letter keeps the original key and headers, the value encrypted with the PII key ring (or
redacted: see smartico_stream/pii/payloads.py), and adds ``x-smartico-*`` headers with the error
class, the message, the stage and the source coordinates. The service commits a record's
offset only after its dead letter is acknowledged (invariant 2)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import HeadersType
from confluent_kafka import KafkaError, Producer

from smartico_stream.pii.payloads import Protector, redacting
from smartico_stream.pipeline.errors import DeadLetter

HEADER_PREFIX = "x-smartico-"


class DeadLetterDeliveryError(RuntimeError):
    """Dead letters were not acknowledged; the batch's offsets must not be committed."""


def dead_letter_headers(letter: DeadLetter, failed_at_ms: int) -> list[tuple[str, bytes | None]]:
    """The original headers (a Kafka header may have no value: None) plus the error and
    source-coordinate headers."""
    record = letter.record
    key = [(HEADER_PREFIX + "source-key", record.key)] if record.key is not None else []
    return [
        *record.headers,
        *key,
        (HEADER_PREFIX + "error-class", letter.error_class.encode()),
        (HEADER_PREFIX + "error-message", letter.message.encode()[:4096]),
        (HEADER_PREFIX + "stage", letter.stage.encode()),
        (HEADER_PREFIX + "source-transport", record.transport.encode()),
        (HEADER_PREFIX + "source-topic", record.topic.encode()),
        (HEADER_PREFIX + "source-partition", str(record.partition).encode()),
        (HEADER_PREFIX + "source-offset", str(record.offset).encode()),
        (HEADER_PREFIX + "source-timestamp-ms", str(record.timestamp_ms).encode()),
        (HEADER_PREFIX + "failed-at-ms", str(failed_at_ms).encode()),
    ]


def bounded_value(value: bytes | None, limit: int) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """The value to carry, truncated to ``limit`` bytes (an oversized record would be refused by the
    dead-letter topic too) with a header giving the original size."""
    if value is None or len(value) <= limit:
        return value, []
    return value[:limit], [(HEADER_PREFIX + "value-truncated-from-bytes", str(len(value)).encode())]


class KafkaDeadLetterSink:
    """Produces dead letters to a Kafka topic with an idempotent producer."""

    def __init__(
        self,
        producer_config: Mapping[str, Any],
        topic: str,
        protect: Protector = redacting,
        max_value_bytes: int = 512 * 1024,
    ) -> None:
        config = {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "logger": logging.getLogger("smartico_stream.rdkafka"),
            **producer_config,
        }
        self._producer: Producer | None = Producer(config)
        self._topic = topic
        self._protect = protect
        self._max_value_bytes = max_value_bytes
        self._failures: list[str] = []

    def publish(self, letters: Sequence[DeadLetter], timeout_s: float) -> None:
        """Produce and wait for every acknowledgement; raise DeadLetterDeliveryError otherwise."""
        if not letters:
            return
        if self._producer is None:
            raise DeadLetterDeliveryError("the dead-letter sink is closed")
        self._failures.clear()
        now_ms = int(time.time() * 1000)
        for letter in letters:
            record = letter.record
            value, extra = bounded_value(record.value, self._max_value_bytes)
            value, protection = self._protect(value, record.topic, record.partition, record.offset)
            headers: list[tuple[str, str | bytes | None]] = [*dead_letter_headers(letter, now_ms), *extra, *protection]
            self._produce(record.key, value, headers)
        remaining = self._producer.flush(timeout_s)
        if remaining or self._failures:
            raise DeadLetterDeliveryError(
                f"{remaining} dead letter(s) unacknowledged after {timeout_s}s, "
                f"{len(self._failures)} refused: {'; '.join(self._failures[:3])}"
            )

    def _produce(self, key: bytes | None, value: bytes | None, headers: list[tuple[str, str | bytes | None]]) -> None:
        if self._producer is None:
            raise DeadLetterDeliveryError("the dead-letter sink is closed")
        while True:
            try:
                self._producer.produce(self._topic, key=key, value=value, headers=headers, on_delivery=self._delivered)
                return
            except BufferError:
                self._producer.poll(0.1)  # local queue full: let deliveries drain

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._failures.append(error.str())

    def close(self, timeout_s: float = 2.0) -> None:
        """Flush and destroy the producer; the sink cannot publish afterwards. Short: letters still
        unacknowledged here belong to a batch that was not committed, so they are produced again."""
        if self._producer is not None:
            self._producer.flush(timeout_s)
            self._producer = None


class RabbitMqDeadLetterSink:
    """Publishes dead letters to the dead-letter exchange (routing key: the source queue) with
    publisher confirms, carrying the same headers as the Kafka dead letters."""

    def __init__(self, channel_factory: Any, exchange: str, protect: Protector = redacting,
                 max_value_bytes: int = 512 * 1024) -> None:
        self._channel_factory = channel_factory
        self._exchange_name = exchange
        self._protect = protect
        self._max_value_bytes = max_value_bytes
        self._channel: Any = None

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        try:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._channel_factory()
            exchange = await self._channel.get_exchange(self._exchange_name, ensure=False)
            now_ms = int(time.time() * 1000)
            for letter in letters:
                record = letter.record
                value, extra = bounded_value(record.value, self._max_value_bytes)
                value, protection = self._protect(value, record.topic, record.partition, record.offset)
                # AMQP header values are text here (the Kafka letters carry the same values as bytes);
                # a header without a value stays one (AMQP void).
                headers: HeadersType = {
                    name: content.decode("utf-8", "replace") if content is not None else None
                    for name, content in [*dead_letter_headers(letter, now_ms), *extra, *protection]
                }
                await exchange.publish(
                    aio_pika.Message(
                        body=value or b"",
                        headers=headers,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=record.message_id,
                    ),
                    routing_key=record.topic,
                    mandatory=True,
                )
        except Exception as exc:
            self._channel = None
            raise DeadLetterDeliveryError(f"dead letters not confirmed by RabbitMQ: {exc}") from exc

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
