"""The RabbitMQ sink: actions published to an exchange with publisher confirms."""

from __future__ import annotations

import asyncio
import contextlib
import string
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import aio_pika
import aiormq.exceptions
from pydantic import Field, field_validator

from smartico_stream.engine.actions import Action
from smartico_stream.sinks.base import SinkError, SinkSettingsBase, closed_error, setting_problem

__all__ = ["ROUTING_KEY_FIELDS", "RabbitMqActionSink", "RabbitMqSinkSettings"]

ROUTING_KEY_FIELDS = frozenset({"action", "brand", "user", "rule_id", "event_type", "event_id"})
_MAX_ROUTING_KEY_BYTES = 255  # AMQP 0-9-1 shortstr


def _check_routing_key_template(template: str) -> None:
    """ValueError (without the setting's name) for a template that names anything but
    :data:`ROUTING_KEY_FIELDS` or that cannot be filled in."""
    try:
        fields = [field for _literal, field, _spec, _conversion in string.Formatter().parse(template)]
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None
    for field in fields:
        if field is not None and field not in ROUTING_KEY_FIELDS:
            # Also rejects "{}" and attribute/index access: the template is configuration, not code.
            raise ValueError(f"unknown field {field!r}; use {', '.join(sorted(ROUTING_KEY_FIELDS))}")
    try:
        # Every field is a string: a format spec that fails here would fail every delivery, outside SinkError.
        template.format(**dict.fromkeys(ROUTING_KEY_FIELDS, "x"))
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(f"scheme must be amqp or amqps, got {parts.scheme!r}")
    try:
        parts.port  # noqa: B018 - parsed for its ValueError
    except ValueError:
        raise ValueError("invalid port") from None


class RabbitMqSinkSettings(SinkSettingsBase):
    """``type: rabbitmq``: publish actions to a RabbitMQ exchange."""

    type: Literal["rabbitmq"] = Field(default="rabbitmq", description="selects this sink")
    url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/",
        description="AMQP URL aio-pika accepts (`amqps://` for TLS, query options included)",
    )
    exchange: str = Field(
        default="smartico-stream.actions",
        description='the exchange; `""` is the default exchange (the routing key names the queue, nothing is '
        "declared)",
    )
    routing_key_template: str = Field(
        default="{action}",
        description="routing key per action, from `{action}`, `{brand}`, `{user}`, `{rule_id}`, `{event_type}`, "
        "`{event_id}`",
    )
    exchange_type: str = Field(
        default="topic",
        min_length=1,
        description="type the exchange is declared with: direct, fanout, topic, headers or a plugin's type",
    )
    declare: bool = Field(default=True, description="declare the (durable) exchange; false: it must exist")
    timeout_s: float = Field(default=30.0, gt=0, description="bounds connecting and each delivery, confirms included")

    @field_validator("url")
    @classmethod
    def _usable_url(cls, url: str) -> str:
        try:
            _check_url(url)
        except ValueError as exc:
            raise setting_problem(str(exc)) from None
        return url

    @field_validator("routing_key_template")
    @classmethod
    def _known_fields(cls, template: str) -> str:
        try:
            _check_routing_key_template(template)
        except ValueError as exc:
            raise setting_problem(str(exc)) from None
        return template

    def default_name(self) -> str:
        return RabbitMqActionSink.default_name(self.url, self.exchange)

    def create(self, kafka_connection: Mapping[str, Any] | None = None) -> RabbitMqActionSink:
        return RabbitMqActionSink(
            self.url,
            self.exchange,
            routing_key_template=self.routing_key_template,
            exchange_type=self.exchange_type,
            declare=self.declare,
            timeout_s=self.timeout_s,
            name=self.name,
        )


class RabbitMqActionSink:
    """Publishes each action to a RabbitMQ exchange with publisher confirms.

    Body ``Action.to_json()``, ``content_type`` application/json, persistent delivery mode,
    ``message_id`` = action_id, headers ``action_id``, ``rule_id`` and ``action``. The routing key
    comes from ``routing_key_template`` (fields: ``action``, ``brand``, ``user``, ``rule_id``,
    ``event_type``, ``event_id``). Messages are published ``mandatory``: one that no queue is bound
    to receive comes back from the broker and fails the batch with a non-retryable
    :class:`SinkError`, instead of vanishing.

    The connection is aio-pika's robust connection (it reconnects and re-declares in the
    background), opened on the first ``deliver``. ``declare`` declares the exchange (durable, of
    ``exchange_type``) when the channel opens; without it the exchange must exist. ``timeout_s``
    bounds connecting and each ``deliver`` (including waiting for a reconnection). ``url`` is any
    AMQP URL aio-pika accepts (``amqps://`` and URL query options included)."""

    def __init__(
        self,
        url: str,
        exchange: str,
        routing_key_template: str = "{action}",
        exchange_type: str = "topic",
        declare: bool = True,
        *,
        timeout_s: float = 30.0,
        name: str | None = None,
    ) -> None:
        try:
            _check_routing_key_template(routing_key_template)
        except ValueError as exc:
            raise ValueError(f"routing_key_template: {exc}") from None
        try:
            _check_url(url)
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from None
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.exchange = exchange
        self.routing_key_template = routing_key_template
        self.exchange_type = exchange_type
        self.declare = declare
        self.timeout_s = float(timeout_s)
        self._url = url
        self.name = name or self.default_name(url, exchange)
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._reset_channel = False  # set by _error, acted on (awaited) at the end of deliver
        self._reset_connection = False
        self._closed = False
        self._lock = asyncio.Lock()

    @staticmethod
    def default_name(url: str, exchange: str) -> str:
        """The sink's name without ``name``: ``rabbitmq:<host>:<port>/<exchange>``, no credentials (it
        ends up in logs)."""
        parts = urllib.parse.urlsplit(url)
        return f"rabbitmq:{parts.hostname or ''}:{parts.port or 5672}/{exchange}"

    def routing_key(self, action: Action) -> str:
        """The routing key of ``action``: ``routing_key_template`` filled in."""
        return self.routing_key_template.format(
            action=action.action.value,
            brand=action.brand,
            user=action.user,
            rule_id=action.rule_id,
            event_type=action.event_type,
            event_id=action.event_id,
        )

    async def deliver(self, actions: Sequence[Action]) -> None:
        if self._closed:
            raise closed_error(self.name)
        if not actions:
            return
        routed: list[tuple[Action, str]] = []
        for action in actions:
            key = self.routing_key(action)
            if len(key.encode()) > _MAX_ROUTING_KEY_BYTES:
                raise SinkError(
                    f"{self.name}: routing key for action {action.action_id} is longer than "
                    f"{_MAX_ROUTING_KEY_BYTES} bytes; change routing_key_template",
                    retryable=False,
                )
            routed.append((action, key))
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout_s):
                    exchange = await self._ready_exchange()
                    await self._publish_all(exchange, routed)
            except SinkError:
                raise
            except TimeoutError as exc:
                raise SinkError(
                    f"{self.name}: not confirmed within {self.timeout_s}s (broker slow or unreachable)",
                    retryable=True,
                ) from exc
            except Exception as exc:
                raise self._error(exc) from exc
            finally:
                await self._apply_resets()

    async def _ready_exchange(self) -> aio_pika.abc.AbstractExchange:
        if self._connection is None:
            self._connection = await aio_pika.connect_robust(self._url, timeout=self.timeout_s)
        if self._channel is None or self._exchange is None:
            # on_return_raises: an unroutable mandatory message fails its publish() with PublishError.
            channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            try:
                if self.exchange == "":
                    exchange = channel.default_exchange
                elif self.declare:
                    exchange = await channel.declare_exchange(self.exchange, self.exchange_type, durable=True)
                else:
                    exchange = await channel.get_exchange(self.exchange, ensure=False)
            except BaseException:
                await _close_quietly(channel)
                raise
            self._channel, self._exchange = channel, exchange
        return self._exchange

    async def _publish_all(self, exchange: aio_pika.abc.AbstractExchange, routed: list[tuple[Action, str]]) -> None:
        # aiormq matches a returned (unroutable) message to its publish by message_id, so one id
        # must not be in flight twice; a repeated action in one batch needs only one copy anyway.
        seen: set[str] = set()
        unique: list[tuple[Action, str]] = []
        for action, key in routed:
            if action.action_id not in seen:
                seen.add(action.action_id)
                unique.append((action, key))
        # Published concurrently so confirms overlap; the frames go out in list order on one
        # channel (aiormq serialises writes FIFO), so the broker receives them in batch order.
        results = await asyncio.gather(
            *(exchange.publish(_message(action), routing_key=key, mandatory=True) for action, key in unique),
            return_exceptions=True,
        )
        errors = [
            (action, key, result)
            for (action, key), result in zip(unique, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if not errors:
            return
        for _a, _k, error in errors:
            if isinstance(error, asyncio.CancelledError):
                raise error
        failed = [self._error(error, action, key) for action, key, error in errors]
        permanent = [e for e in failed if not e.retryable]
        first = (permanent or failed)[0]
        delivered = len(unique) - len(errors)
        raise SinkError(
            f"{first} ({len(errors)} of {len(unique)} failed, {delivered} confirmed)", retryable=not permanent
        )

    def _error(self, exc: BaseException, action: Action | None = None, key: str | None = None) -> SinkError:
        about = f" for action {action.action_id}" if action is not None else ""
        if isinstance(exc, aiormq.exceptions.PublishError):
            routing_key = key if key is not None else "?"
            return SinkError(
                f"{self.name}: unroutable{about}: exchange {self.exchange!r} has no binding for routing key "
                f"{routing_key!r} (bind a queue or change routing_key_template)",
                retryable=False,
            )
        if isinstance(exc, aiormq.exceptions.DeliveryError):  # nack: e.g. a full queue rejecting publishes
            return SinkError(f"{self.name}: broker refused the message{about}: {exc}", retryable=True)
        if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
            self._forget_channel()
            return SinkError(f"{self.name}: exchange {self.exchange!r} does not exist: {exc}", retryable=False)
        if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed | aiormq.exceptions.ChannelAccessRefused):
            self._forget_channel()
            return SinkError(f"{self.name}: exchange {self.exchange!r}: {exc}", retryable=False)
        if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError):
            self._forget_connection()
            return SinkError(f"{self.name}: login refused: {exc}", retryable=False)
        if isinstance(exc, aiormq.exceptions.AMQPChannelError):
            self._forget_channel()
        elif isinstance(exc, ConnectionError | OSError) and self._channel is None:
            return SinkError(f"{self.name}: cannot reach the broker: {type(exc).__name__}: {exc}", retryable=True)
        return SinkError(f"{self.name}: publish failed{about}: {type(exc).__name__}: {exc}", retryable=True)

    def _forget_channel(self) -> None:
        # The robust channel reopens itself after most channel errors, but a fresh channel (and a
        # fresh declare) on the next deliver is the sure way out of a broken one.
        self._reset_channel = True

    def _forget_connection(self) -> None:
        self._reset_connection = True

    async def _apply_resets(self) -> None:
        if self._reset_connection:
            connection, self._connection = self._connection, None
            self._channel = self._exchange = None
            if connection is not None:
                await _close_quietly(connection)
        elif self._reset_channel:
            channel, self._channel, self._exchange = self._channel, None, None
            if channel is not None:
                await _close_quietly(channel)
        self._reset_channel = self._reset_connection = False

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            connection, self._connection = self._connection, None
            self._channel = self._exchange = None
            if connection is not None:
                await _close_quietly(connection)


def _message(action: Action) -> aio_pika.Message:
    return aio_pika.Message(
        body=action.to_json(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=action.action_id,
        headers={"action_id": action.action_id, "rule_id": action.rule_id, "action": action.action.value},
    )


async def _close_quietly(closable: Any) -> None:
    # Closing a broken channel/connection may fail or hang; there is nothing left to do about it.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(closable.close(), 5)
