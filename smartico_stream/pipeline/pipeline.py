"""decode -> adapt -> dedup -> engine, one batch of raw records at a time.

Every record ends in exactly one of three results, counted per topic: ``ok`` (its events were
applied), ``deduplicated`` (all its events were repeats inside the window) or ``dead_lettered``.
Nothing here raises for a bad record: the worst a record can do is become a dead letter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from smartico_stream.adapters.base import Adapter, RecordContext
from smartico_stream.engine.base import Engine, UserKey
from smartico_stream.events.models import CanonicalEvent, SourceCoordinates
from smartico_stream.events.raw import RawRecord, Stream
from smartico_stream.pipeline.dedup import DedupWindow, dedup_digest
from smartico_stream.pipeline.errors import (
    DeadLetter,
    DecodeError,
    MessageTooLarge,
    MissingKey,
    NotAnObject,
    describe_error,
)

OK = "ok"
DEDUPLICATED = "deduplicated"
DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True, slots=True)
class PipelineLimits:
    max_message_bytes: int = 1_000_000
    require_key: bool = True


@dataclass(slots=True)
class BatchResult:
    """What happened to one batch."""

    results: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, result) -> records
    dead_letters: list[DeadLetter] = field(default_factory=list)
    events_applied: int = 0
    events_by_type: Counter[str] = field(default_factory=Counter)
    duplicates_by_topic: Counter[str] = field(default_factory=Counter)  # events dropped as repeats
    # (topic, partition) -> offset of the next record to read: every record before it is handled.
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    # (topic, partition) -> broker timestamp (ms) of the last record handled
    last_timestamps: dict[tuple[str, int], int] = field(default_factory=dict)


@dataclass(slots=True)
class _Accepted:
    record: RawRecord
    events: list[CanonicalEvent]


DedupLookup = Callable[[str, int], DedupWindow | None]


class Pipeline:
    """Turns raw records into applied events. Owns no I/O: the caller publishes dead letters and
    commits ``next_offsets`` only after that (checkpoint order: dead letters, state, offsets)."""

    def __init__(
        self,
        adapter: Adapter,
        engine: Engine,
        stream_of_topic: Mapping[str, Stream],
        dedup_window_for: DedupLookup | None = None,
        limits: PipelineLimits = PipelineLimits(),
    ) -> None:
        self._adapter = adapter
        self._engine = engine
        self._stream_of_topic = dict(stream_of_topic)
        self._dedup_window_for = dedup_window_for
        self._limits = limits

    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        result = BatchResult()
        accepted: list[_Accepted] = []
        for record in records:
            coordinates = (record.topic, record.partition)
            result.next_offsets[coordinates] = record.offset + 1
            if record.timestamp_ms:
                result.last_timestamps[coordinates] = record.timestamp_ms
            try:
                message, context = self._decode(record)
            except Exception as exc:  # noqa: BLE001 - any failure on one record dead-letters it
                self._dead_letter(result, record, "decode", exc)
                continue
            try:
                events = self._adapt(record, message, context)
            except Exception as exc:  # noqa: BLE001 - an adapter bug is a dead letter, not a crash
                self._dead_letter(result, record, "adapt", exc)
                continue
            fresh = self._drop_repeats(record, events)
            if len(fresh) < len(events):
                result.duplicates_by_topic[record.topic] += len(events) - len(fresh)
            if events and not fresh:
                result.results[(record.topic, DEDUPLICATED)] += 1
                continue
            accepted.append(_Accepted(record, fresh))
        self._apply(accepted, result)
        return result

    def _decode(self, record: RawRecord) -> tuple[dict[str, object], RecordContext]:
        value = record.value
        if value is None or not value:
            raise DecodeError("record has no value (a tombstone or an empty message)")
        if len(value) > self._limits.max_message_bytes:
            raise MessageTooLarge(
                f"record is {len(value)} bytes, over limits.max_message_bytes={self._limits.max_message_bytes}"
            )
        if record.key is None and self._limits.require_key:
            raise MissingKey("record has no key; topics must be keyed by user id to keep per-user order")
        try:
            message = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"not valid JSON: {exc}") from None
        if not isinstance(message, dict):
            raise NotAnObject(f"the JSON value is {_json_kind(message)}, not an object")
        context = RecordContext(
            stream=self._stream_of_topic[record.topic],
            topic=record.topic,
            key=record.key.decode("utf-8", "replace") if record.key is not None else None,
            headers=dict(record.headers),
        )
        return message, context

    def _adapt(self, record: RawRecord, message: dict[str, object], context: RecordContext) -> list[CanonicalEvent]:
        events = list(self._adapter.adapt(message, context))
        coordinates = SourceCoordinates.model_construct(
            transport=record.transport,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=None,
        )
        for event in events:
            event.source = coordinates
        return events

    def _drop_repeats(self, record: RawRecord, events: list[CanonicalEvent]) -> list[CanonicalEvent]:
        window = self._dedup_window_for(record.topic, record.partition) if self._dedup_window_for else None
        if window is None:
            return events
        return [e for e in events if not window.check_and_add(dedup_digest(e.brand_id, e.type, e.event_id))]

    def _apply(self, accepted: list[_Accepted], result: BatchResult) -> None:
        # Group by user, keeping each user's events in source order; users are independent.
        by_user: dict[UserKey, list[tuple[_Accepted, CanonicalEvent]]] = {}
        for item in accepted:
            for event in item.events:
                by_user.setdefault(event.user_key, []).append((item, event))
        failed: dict[int, tuple[_Accepted, Exception]] = {}
        for user, pairs in by_user.items():
            try:
                errors = self._engine.apply_user_events(user, [event for _, event in pairs])
            except Exception as exc:  # noqa: BLE001 - an engine bug on one user must not stop the others
                errors = [(index, exc) for index in range(len(pairs))]
            result.events_applied += len(pairs) - len(errors)
            failed_indexes = set()
            for index, exc in errors:
                item = pairs[index][0]
                failed.setdefault(id(item), (item, exc))
                failed_indexes.add(index)
            for index, (_, event) in enumerate(pairs):
                if index not in failed_indexes:
                    result.events_by_type[event.type] += 1
        for item in accepted:
            if id(item) in failed:
                self._dead_letter(result, item.record, "engine", failed[id(item)][1])
            else:
                result.results[(item.record.topic, OK)] += 1

    @staticmethod
    def _dead_letter(result: BatchResult, record: RawRecord, stage: str, exc: Exception) -> None:
        error_class, message = describe_error(exc)
        result.dead_letters.append(DeadLetter(record, stage, error_class, message))
        result.results[(record.topic, DEAD_LETTERED)] += 1


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )
