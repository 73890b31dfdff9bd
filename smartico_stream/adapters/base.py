"""The adapter contract: one decoded operator record in, zero or more canonical event drafts out.

A *draft* is a plain mapping of a canonical model's field names (``type`` included) to the values
the operator sent: the adapter maps and renames, the pipeline validates every draft of a batch
against the canonical models in one call (events/records.py). An adapter may still return model
instances (the older contract); they are accepted and revalidated, at a cost per event.

Adapters are pure functions of their input (no I/O, no clock, no randomness) so that golden files
pin them down exactly and the hot path stays fast. They signal bad input by raising an
``AdapterError``; a draft that does not validate is reported with the ``pydantic.ValidationError``
the model would raise. The pipeline turns either into a dead letter.

This module is the adapter authors' API (docs/adapters.md): everything an adapter imports from the
service, besides the canonical models of ``smartico_stream.events``, comes from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from smartico_stream.events.models import CanonicalEvent
from smartico_stream.events.raw import Stream
from smartico_stream.events.records import EventRecord, validate_event

__all__ = [
    "Adapter",
    "AdapterError",
    "EventDraft",
    "InvalidField",
    "MissingField",
    "RecordContext",
    "Stream",
    "UnknownEventType",
    "canonical_events",
]

EventDraft = Mapping[str, Any]
"""Canonical field names (``type`` included) to values, not yet validated."""


@dataclass(frozen=True, slots=True)
class RecordContext:
    """What an adapter may know about a record besides its JSON body."""

    stream: Stream
    topic: str
    key: str | None = None
    # None: a Kafka header sent without a value.
    headers: Mapping[str, bytes | None] = field(default_factory=dict)


class AdapterError(ValueError):
    """A record the adapter cannot map. The message must say what is wrong and must not quote
    personal data (emails, phones, names)."""


class UnknownEventType(AdapterError):
    """The record's type is not one this adapter maps."""


class MissingField(AdapterError):
    """A field the mapping requires is absent or null. The message names the operator's field
    (e.g. ``'transaction_id'`` or ``'payment.id'``), never its value."""


class InvalidField(AdapterError):
    """A field is present but unusable before canonical validation (e.g. a nested object that is a
    string, or an unknown numeric code). The message names the field, not its value."""


@runtime_checkable
class Adapter(Protocol):
    """What the ``smartico_stream.adapters`` entry points must produce (called with no arguments)."""

    name: str

    def adapt(self, message: Mapping[str, Any], context: RecordContext) -> Sequence[EventDraft | CanonicalEvent]:
        """Map one decoded record to canonical event drafts, in the order they happened."""
        ...


def canonical_events(adapter: Adapter, message: Mapping[str, Any], context: RecordContext) -> list[EventRecord]:
    """``adapter.adapt`` and validation, one record at a time: what the pipeline does for a batch.
    For adapter authors' tests and tools; raises what the pipeline would dead-letter."""
    return [validate_event(draft) for draft in adapter.adapt(message, context)]
