"""A raw record as a source hands it to the pipeline: bytes plus where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Stream(StrEnum):
    """The operator streams the spec names. A topic (or queue) is configured as one of them."""

    PROFILE = "profile"
    PAYMENTS = "payments"
    CASINO = "casino"
    SPORT = "sport"


@dataclass(slots=True)
class RawRecord:
    """One broker record, transport-neutral. ``offset`` is the Kafka offset or, for RabbitMQ, the
    delivery tag; ``timestamp_ms`` is the broker timestamp (0 when the broker gives none)."""

    transport: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=list)
