"""Events of a request, checked as the pipeline checks a batch: decoded, mapped by the configured
adapter and validated, so a rejected event carries the same reason (stage, error class, field-by-field
message, never a value) as a dead letter of any other source. Accepted events keep their bytes as
sent; the batch that processes them later runs the same pipeline on the same bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import orjson

from smartico_stream.adapters.base import Adapter, RecordContext
from smartico_stream.events.raw import RawRecord, Stream
from smartico_stream.pipeline.pipeline import Pipeline, PipelineLimits
from smartico_stream.store.rest import INBOX_TOPIC

STREAM_HEADER = "x-smartico-stream"


def stream_of(record: RawRecord) -> Stream | None:
    for name, value in record.headers:
        if name == STREAM_HEADER and value is not None:
            return Stream(value.decode())
    return None


class RestPipeline(Pipeline):
    """The pipeline, with each record's stream taken from the record (an inbox partition holds
    every stream of its users, in the order they were accepted) rather than from its topic."""

    def _decode(self, record: RawRecord) -> tuple[dict[str, object], RecordContext]:
        message, context = super()._decode(record)
        stream = stream_of(record)
        return message, (context if stream is None else replace(context, stream=stream))


def rest_pipeline(adapter: Adapter, max_message_bytes: int) -> RestPipeline:
    """A pipeline for checking requests: no dedup, no guard (nothing of it is kept), no key needed
    (the user id comes out of the adapter)."""
    return RestPipeline(adapter=adapter, stream_of_topic={INBOX_TOPIC: Stream.PROFILE},
                        limits=PipelineLimits(max_message_bytes, require_key=False))


def partition_of(brand: str, user: str, partitions: int) -> int:
    """A user's inbox partition: stable across processes and versions (not Python's ``hash``)."""
    digest = hashlib.blake2b(f"{brand}\x1f{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


@dataclass(frozen=True, slots=True)
class Checked:
    """One event of a request: accepted (with its body, brand and user) or rejected (with why)."""

    index: int
    body: bytes
    brand: str | None = None
    user: str | None = None
    rejected: tuple[str, str, str] | None = None  # stage, error class, message

    @property
    def ignored(self) -> bool:
        """Accepted, but the adapter maps it to no event: nothing to keep."""
        return self.rejected is None and self.user is None


def check_events(pipeline: Pipeline, items: Sequence[object], stream: Stream) -> list[Checked]:
    """Each item (a decoded JSON value, numbers kept as sent) through decode, adapt and validate."""
    header: list[tuple[str, bytes | None]] = [(STREAM_HEADER, stream.value.encode())]
    records = [
        RawRecord(transport="rest", topic=INBOX_TOPIC, partition=0, offset=index, key=None,
                  value=orjson.dumps(item), headers=header)
        for index, item in enumerate(items)
    ]
    adapted = pipeline.adapt(records)
    checked: dict[int, Checked] = {}
    for letter in adapted.result.dead_letters:
        record = letter.record
        checked[record.offset] = Checked(record.offset, record.value or b"",
                                         rejected=(letter.stage, letter.error_class, letter.message))
    for record, events in adapted.items:
        first = events[0] if events else None
        checked[record.offset] = Checked(record.offset, record.value or b"",
                                         brand=first.brand_id if first else None,
                                         user=first.user_id if first else None)
    return [checked[index] for index in range(len(records))]
