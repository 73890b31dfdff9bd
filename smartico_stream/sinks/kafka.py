"""The Kafka sink: actions produced to a topic by an idempotent producer, keyed by user."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException, Producer
from pydantic import Field, field_validator, model_validator

from smartico_stream.engine.actions import Action
from smartico_stream.observability.logging import RateLimiter, get_logger
from smartico_stream.sinks.base import SinkError, SinkSettingsBase, closed_error, setting_errors, setting_problem

log = get_logger(__name__)

__all__ = ["KafkaActionSink", "KafkaSinkSettings", "kafka_key"]

# Errors that resending cannot fix; everything else (broker down, leader moves, timeouts) can be.
_KAFKA_PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError._INVALID_ARG,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
    }
)
_FLUSH_MARGIN_S = 5.0  # beyond message.timeout.ms: every delivery report has arrived by then


_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")  # what Kafka accepts as a topic name
_TIMEOUT_KEYS = ("message.timeout.ms", "delivery.timeout.ms")


def kafka_key(action: Action) -> bytes:
    """The Kafka key of an action: ``brand:user``, so one user's actions share a partition (and so
    keep their order) and two brands' users with the same id do not collide."""
    return f"{action.brand}:{action.user}".encode()


def _producer_config_problems(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, what is wrong) for the producer settings the sink refuses: the at-least-once guarantee
    rests on an idempotent producer waiting for all in-sync replicas."""
    problems = []
    if str(config.get("enable.idempotence", True)).lower() not in ("true", "1"):
        problems.append(("enable.idempotence", "cannot be disabled for an action sink"))
    if str(config.get("acks", "all")).lower() not in ("all", "-1"):
        problems.append(("acks", "must be 'all' for an action sink"))
    for key in _TIMEOUT_KEYS:
        if key in config:
            try:
                float(config[key])
            except (TypeError, ValueError):
                problems.append((key, "must be a number of milliseconds"))
    return problems


def _lacks_bootstrap(config: Mapping[str, Any]) -> bool:
    # librdkafka's mock cluster (test.mock.*) needs no bootstrap servers.
    return "bootstrap.servers" not in config and not any(str(k).startswith("test.mock.") for k in config)


class KafkaSinkSettings(SinkSettingsBase):
    """``type: kafka``: produce actions to a Kafka topic."""

    type: Literal["kafka"] = Field(default="kafka", description="selects this sink")
    topic: str = Field(default="smartico-stream.actions", description="the topic the actions go to")
    config: dict[str, Any] | None = Field(
        default=None,
        description="librdkafka producer settings, passed through untouched; default: the Kafka source's "
        "connection settings (`bootstrap.servers`, `security.protocol`, `sasl.*`, `ssl.*`, ...). Given, it "
        "replaces them entirely (not merged); `enable.idempotence` and `acks=all` are enforced",
    )
    delivery_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="bounds one delivery; default: `message.timeout.ms` + 5 s, so the sink never gives up on a "
        "message librdkafka is still trying to deliver",
    )

    @field_validator("topic")
    @classmethod
    def _legal_topic(cls, topic: str) -> str:
        if not _TOPIC_NAME.fullmatch(topic):
            raise setting_problem("a Kafka topic name is 1 to 249 characters of A-Z, a-z, 0-9, '.', '_' and '-'")
        return topic

    @field_validator("config")
    @classmethod
    def _scalar_values(cls, config: dict[str, Any] | None) -> dict[str, Any] | None:
        if config is not None:
            problems = [
                ((key,), "librdkafka takes a string, a number or a boolean here", value)
                for key, value in config.items()
                if not isinstance(value, str | int | float | bool)
            ]
            if problems:
                raise setting_errors(problems)
        return config

    @model_validator(mode="after")
    def _usable_config(self) -> KafkaSinkSettings:
        if self.config is None:
            return self
        config = self.config
        problems: list[tuple[tuple[str | int, ...], str, Any]] = []
        if _lacks_bootstrap(config):
            reason = "required: a given config replaces the source's connection settings"
            problems.append((("config", "bootstrap.servers"), reason, None))
        problems += [(("config", key), reason, config[key]) for key, reason in _producer_config_problems(config)]
        if problems:
            raise setting_errors(problems)
        return self

    def default_name(self) -> str:
        return KafkaActionSink.default_name(self.topic)

    def create(self, kafka_connection: Mapping[str, Any] | None = None) -> KafkaActionSink:
        """Without ``config``, the sink produces with ``kafka_connection`` (the source cluster's
        connection settings); ValueError when there is none either, or librdkafka refuses a setting."""
        config = self.config if self.config is not None else kafka_connection
        if config is None:
            raise ValueError("config: required when no Kafka source connection is configured")
        if _lacks_bootstrap(config):
            raise ValueError("config.bootstrap.servers: required (the source's connection settings have none)")
        return KafkaActionSink(dict(config), self.topic, delivery_timeout_s=self.delivery_timeout_s, name=self.name)


class KafkaActionSink:
    """Produces each action to a Kafka topic with an idempotent producer (``enable.idempotence``,
    ``acks=all``; both enforced: the at-least-once guarantee rests on them).

    Key ``brand:user`` (one user's actions stay in one partition, in order), value
    ``Action.to_json()``, headers ``action_id``, ``rule_id`` and ``action`` (UTF-8). ``deliver``
    produces and flushes in a worker thread and returns when every delivery report is a success.
    ``producer_config`` passes to librdkafka untouched (bootstrap servers, SASL/SSL, linger, ...);
    ``delivery_timeout_s`` bounds one ``deliver`` and defaults to ``message.timeout.ms`` plus a
    margin, so the sink never gives up on a message librdkafka is still trying to deliver."""

    def __init__(
        self,
        producer_config: Mapping[str, Any],
        topic: str,
        delivery_timeout_s: float | None = None,
        *,
        name: str | None = None,
    ) -> None:
        if not topic:
            raise ValueError("topic: must not be empty")
        problems = _producer_config_problems(producer_config)
        if problems:
            raise ValueError("; ".join(f"config.{key}: {reason}" for key, reason in problems))
        self.topic = topic
        self.name = name or self.default_name(topic)
        self._config: dict[str, Any] = {
            "linger.ms": 5,
            "logger": logging.getLogger("smartico_stream.rdkafka.action_sink"),
            **producer_config,
            "enable.idempotence": True,
            "acks": "all",
            "error_cb": self._on_error,
        }
        if delivery_timeout_s is None:
            message_timeout_ms = producer_config.get(
                "message.timeout.ms", producer_config.get("delivery.timeout.ms", 300_000)
            )
            delivery_timeout_s = float(message_timeout_ms) / 1000 + _FLUSH_MARGIN_S
        self.delivery_timeout_s = float(delivery_timeout_s)
        self._fatal: str | None = None
        self._closed = False
        self._lock = asyncio.Lock()
        self._log_limiter = RateLimiter(burst=5, period_s=60)
        try:
            # Created now so a bad setting fails at start-up, not at the first action.
            self._producer: Producer | None = Producer(self._config)
        except KafkaException as exc:
            raise ValueError(f"config: {exc.args[0].str() if exc.args else exc}") from exc

    @staticmethod
    def default_name(topic: str) -> str:
        """The sink's name without ``name``: ``kafka:<topic>``."""
        return f"kafka:{topic}"

    @property
    def producer_config(self) -> dict[str, Any]:
        """The librdkafka settings in effect (without the callbacks the sink installs)."""
        return {k: v for k, v in self._config.items() if k not in ("logger", "error_cb")}

    async def deliver(self, actions: Sequence[Action]) -> None:
        if self._closed:
            raise closed_error(self.name)
        if not actions:
            return
        async with self._lock:
            await asyncio.to_thread(self._deliver_blocking, list(actions))

    def _producer_ready(self) -> Producer:
        if self._producer is not None and self._fatal is not None:
            # An idempotent producer that hit a fatal error (e.g. a sequence gap) refuses every
            # further message; a new instance gets a new producer id and starts clean.
            log.warning("recreating the producer after a fatal error", sink=self.name, error=self._fatal)
            self._producer = None
        if self._producer is None:
            self._fatal = None
            self._producer = Producer(self._config)
        return self._producer

    def _deliver_blocking(self, actions: list[Action]) -> None:
        producer = self._producer_ready()
        deadline = time.monotonic() + self.delivery_timeout_s
        # Per call, so a late report from an earlier, abandoned batch is never counted here.
        failures: list[KafkaError] = []

        def report(error: KafkaError | None, _message: Any) -> None:
            if error is not None:
                failures.append(error)
                if error.fatal():
                    self._fatal = error.str()

        for action in actions:
            headers: list[tuple[str, str | bytes | None]] = [
                ("action_id", action.action_id.encode()),
                ("rule_id", action.rule_id.encode()),
                ("action", action.action.value.encode()),
            ]
            while True:
                try:
                    producer.produce(
                        self.topic, key=kafka_key(action), value=action.to_json(), headers=headers, on_delivery=report
                    )
                    break
                except BufferError:
                    # Local queue full (the cluster is slow or away): let reports drain it.
                    if time.monotonic() >= deadline:
                        raise SinkError(
                            f"{self.name}: local producer queue still full after {self.delivery_timeout_s}s",
                            retryable=True,
                        ) from None
                    producer.poll(0.1)
                except KafkaException as exc:
                    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                    if error is not None and error.fatal():
                        self._fatal = error.str()
                    raise SinkError(
                        f"{self.name}: produce refused for action {action.action_id}: {error.str() if error else exc}",
                        retryable=error is None or error.code() not in _KAFKA_PERMANENT,
                    ) from exc
        remaining = producer.flush(max(0.0, deadline - time.monotonic()))
        if failures:
            permanent = any(f.code() in _KAFKA_PERMANENT for f in failures)
            reasons = "; ".join(sorted({f"{f.name()}: {f.str()}" for f in failures})[:3])
            raise SinkError(
                f"{self.name}: {len(failures)} of {len(actions)} action(s) refused: {reasons}",
                retryable=not permanent,
            )
        if remaining:
            raise SinkError(
                f"{self.name}: {remaining} message(s) unacknowledged after {self.delivery_timeout_s}s",
                retryable=True,
            )

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error.str()
            log.error("fatal producer error", sink=self.name, error=error.str())
            return
        allowed, suppressed = self._log_limiter.allow(error.name())
        if allowed:
            log.warning("producer error", sink=self.name, error=error.str(), suppressed=suppressed)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is still queued (bounded by ``timeout_s``) and destroy the producer."""
        self._closed = True
        async with self._lock:
            producer, self._producer = self._producer, None
            if producer is not None:
                await asyncio.to_thread(producer.flush, timeout_s)
