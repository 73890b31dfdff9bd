"""What every action sink shares: the :class:`ActionSink` protocol, :class:`SinkError`, and the base
of the sinks' settings models.

Delivery is at-least-once. The relay calls ``deliver`` with a batch read from the outbox and deletes
(marks) the rows only after ``deliver`` returned; a crash, a timeout or an error between "the
destination has it" and "the outbox row is gone" sends the same actions again. Every action carries
a deterministic ``action_id`` (same event + rule + action index -> same id), and every sink puts
that id where the receiver sees it, so receivers deduplicate and the effect is once:

==============  ===========================================================================
sink            where the action_id is
==============  ===========================================================================
JSONL           the ``action_id`` field of each line
webhook         the ``Idempotency-Key`` header, and the body's ``action_id`` field(s)
Kafka           the ``action_id`` header, and the value's ``action_id`` field
RabbitMQ        the AMQP ``message_id`` property, an ``action_id`` header and the body
==============  ===========================================================================

A sink is all-or-error: ``deliver`` returns only when the destination acknowledged every action of
the batch, and raises :class:`SinkError` otherwise (some actions may have been delivered anyway; the
relay resends the whole batch and the receivers drop the repeats). See ``docs/sinks.md``.

One module per sink (``jsonl``, ``webhook``, ``kafka``, ``rabbitmq``) holds the sink class and its
settings model; ``registry`` joins the models into the ``sinks`` setting and builds sinks from them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from smartico_stream.engine.actions import Action

__all__ = [
    "ActionSink",
    "SinkConfigError",
    "SinkError",
    "SinkSettingsBase",
    "closed_error",
    "setting_error",
    "setting_errors",
    "setting_problem",
]


class SinkError(RuntimeError):
    """A batch was not (entirely) acknowledged by the destination.

    ``retryable`` says whether resending can succeed without anybody changing anything: True for
    outages, timeouts, throttling and server errors; False for errors only a person can fix (the
    receiver rejects the request as malformed or unauthorised, a message is too large, a RabbitMQ
    message is unroutable, the exchange does not exist). The relay retries both kinds, because an
    action is never dropped, but it backs off and logs a non-retryable error loudly (error level,
    every time) so somebody fixes the configuration or the receiver."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable

    def __repr__(self) -> str:
        return f"SinkError({str(self)!r}, retryable={self.retryable})"


class SinkConfigError(ValueError):
    """A sink could not be built from settings that passed validation: something only the client
    library can judge (librdkafka refusing a producer setting), or a Kafka sink without any connection
    settings. The message starts with the setting's path (``sinks.0.kafka.config: ...``)."""


@runtime_checkable
class ActionSink(Protocol):
    """A destination for actions. One ``deliver`` call at a time per sink (the relay is sequential;
    the implementations here also serialise concurrent calls themselves)."""

    name: str

    async def deliver(self, actions: Sequence[Action]) -> None:
        """Return once the destination acknowledged every action, in order; raise :class:`SinkError`
        otherwise. Some actions may have been delivered before the error: the relay resends the
        batch and the receiver deduplicates by ``action_id``."""
        ...

    async def close(self) -> None:
        """Release connections and files. Idempotent; the sink cannot deliver afterwards."""
        ...


def closed_error(name: str) -> SinkError:
    """What ``deliver`` raises on a closed sink: nothing will change that by retrying."""
    return SinkError(f"{name}: the sink is closed", retryable=False)


def setting_problem(reason: str) -> PydanticCustomError:
    """A validation error whose message is ``reason`` as written (pydantic would prefix a ValueError's
    message with "Value error, "). The reason travels in the context, so braces in it (a routing key
    template) are not read as placeholders."""
    return PydanticCustomError("sink_setting", "{reason}", {"reason": reason})


def setting_error(loc: tuple[str | int, ...], reason: str, value: Any) -> ValidationError:
    """A validation error at ``loc`` below the validated value: raised from a model or list validator,
    pydantic prefixes the validator's own location, so a cross-field problem is reported at the field
    it concerns (``sinks.1.webhook.name``) rather than at the whole entry."""
    return setting_errors([(loc, reason, value)])


def setting_errors(problems: Sequence[tuple[tuple[str | int, ...], str, Any]]) -> ValidationError:
    """Like :func:`setting_error`, for several problems (location, reason, offending value) at once."""
    return ValidationError.from_exception_data(
        "sink settings",
        [InitErrorDetails(type=setting_problem(reason), loc=loc, input=value) for loc, reason, value in problems],
    )


class SinkSettingsBase(BaseModel, ABC):
    """Settings shared by every sink type; each sink module subclasses it with ``type`` (the tag of the
    ``sinks`` union) and its own options.

    Strict: a config file gives native YAML types, and a quoted ``"5"`` or ``yes`` where a number or
    a boolean belongs is more likely a mistake than a wish. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    name: str | None = Field(
        default=None,
        min_length=1,
        description="names the sink in logs, metrics and the outbox cursors; default: a description of the "
        "destination without credentials or query string",
    )

    @abstractmethod
    def default_name(self) -> str:
        """The name the sink gets without ``name``; must match what the sink class computes itself, because
        the outbox keeps each sink's delivery cursors under its name."""

    def sink_name(self) -> str:
        """The name the built sink will have."""
        return self.name if self.name is not None else self.default_name()

    @abstractmethod
    def create(self, kafka_connection: Mapping[str, Any] | None = None) -> ActionSink:
        """Build the sink. Raises ValueError for what only the client library can refuse."""
