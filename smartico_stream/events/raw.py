"""A raw record as a source hands it to the pipeline: bytes plus where they came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# Defined here, beside RawRecord, because every stage downstream of the source (pipeline, engine,
# store, relay, transports) keys its work by them and this is the lowest module they all import.
PartitionId = tuple[str, int]
"""A source partition: (topic or queue, partition number)."""
UserKey = tuple[str, str]
"""A user: (brand, user id)."""


class Stream(StrEnum):
    """The operator streams the spec names. A topic (or queue) is configured as one of them."""

    PROFILE = "profile"
    PAYMENTS = "payments"
    CASINO = "casino"
    SPORT = "sport"


@dataclass(slots=True)
class RawRecord:
    """One broker record, transport-neutral. For Kafka, ``topic``/``partition``/``offset`` are the
    record's coordinates; for RabbitMQ, ``topic`` is the queue, ``partition`` 0 and ``offset`` the
    delivery tag; for a replica view, ``topic`` is the view, ``partition`` 0 and ``offset`` the row's
    place in this process's reading. ``timestamp_ms`` is the broker timestamp (0 when the broker gives
    none; a view's cursor time)."""

    transport: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
    # A Kafka header may carry no value (None).
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    # RabbitMQ: the broker may deliver a message again after a crash; the id tells it was handled.
    message_id: str | None = None
    redelivered: bool = False
    # A replica view: the row itself, with the driver's native types (datetime, Decimal, int), which
    # the pipeline hands to the adapter as the decoded message (``value`` is None then).
    row: Mapping[str, Any] | None = None
