"""decode -> adapt -> guard -> dedup -> engine, one batch of raw records at a time.

Every record ends in exactly one of three results, counted per topic: ``ok`` (its events were
applied), ``deduplicated`` (all its events were repeats inside the window) or ``dead_lettered``.
Nothing here raises for a bad record: the worst a record can do is become a dead letter.

Nothing here is durable either: new dedup keys are *staged* in the result, and the caller adds them
to the windows only once the batch is committed, so a batch that must be redone sees the same
windows the second time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from smartico_stream.adapters.base import Adapter, RecordContext
from smartico_stream.engine.base import Engine
from smartico_stream.events.models import CanonicalEvent, SourceCoordinates, UserProfile
from smartico_stream.events.raw import PartitionId, RawRecord, Stream, UserKey
from smartico_stream.pii.guard import PiiGuard
from smartico_stream.pii.vault import PiiRecord
from smartico_stream.pipeline.dedup import Clock, DedupWindow, dedup_digest
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

RecordId = tuple[str, int, int]  # topic, partition, offset


@dataclass(frozen=True, slots=True)
class PipelineLimits:
    max_message_bytes: int = 1_000_000
    require_key: bool = True


@dataclass(slots=True)
class Accepted:
    record: RawRecord
    events: list[CanonicalEvent]


@dataclass(slots=True)
class BatchResult:
    """What happened to one batch."""

    results: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, result) -> records
    dead_letters: list[DeadLetter] = field(default_factory=list)
    accepted: list[Accepted] = field(default_factory=list)
    events_applied: int = 0
    events_by_type: Counter[str] = field(default_factory=Counter)
    duplicates_by_topic: Counter[str] = field(default_factory=Counter)  # events dropped as repeats
    # (topic, partition) -> offset of the next record to read: every record before it is handled.
    next_offsets: dict[PartitionId, int] = field(default_factory=dict)
    # (topic, partition) -> broker timestamp (ms) of the last record handled
    last_timestamps: dict[PartitionId, int] = field(default_factory=dict)
    # dedup keys first seen in this batch: add them to the windows once the batch is committed
    dedup_added: dict[PartitionId, list[tuple[int, float]]] = field(default_factory=dict)
    # records whose events the engine could not apply (the caller redoes the batch without them)
    engine_failures: dict[RecordId, Exception] = field(default_factory=dict)
    # encrypted personal data the guard took out of the events, for the PII vault
    pii: list[PiiRecord] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        """Records of this batch with ``outcome`` (OK, DEDUPLICATED or DEAD_LETTERED), all topics."""
        return sum(n for (_, result), n in self.results.items() if result == outcome)

    def users(self) -> list[UserKey]:
        """Users with events in this batch, in first-seen order."""
        return list(dict.fromkeys(e.user_key for item in self.accepted for e in item.events))


DedupLookup = Callable[[str, int], DedupWindow | None]
RegionLookup = Callable[[UserKey], str | None]


@dataclass(slots=True)
class Adapted:
    """A batch decoded and adapted, not yet guarded or deduplicated."""

    result: BatchResult
    items: list[tuple[RawRecord, list[CanonicalEvent]]] = field(default_factory=list)

    def users_needing_region(self) -> list[UserKey]:
        """Users with a profile event carrying a phone but no country: the guard needs their
        stored country to read a national number."""
        return list(
            dict.fromkeys(
                event.user_key
                for _, events in self.items
                for event in events
                if isinstance(event, UserProfile) and event.phone and not event.country
            )
        )


class Pipeline:
    """Turns raw records into events and hands them to an engine. Owns no I/O."""

    def __init__(
        self,
        adapter: Adapter,
        stream_of_topic: Mapping[str, Stream],
        dedup_window_for: DedupLookup | None = None,
        limits: PipelineLimits = PipelineLimits(),
        clock: Clock | None = None,
        guard: PiiGuard | None = None,
    ) -> None:
        self._adapter = adapter
        self._guard = guard
        self._stream_of_topic = dict(stream_of_topic)
        self._dedup_window_for = dedup_window_for
        self._limits = limits
        self._clock = clock

    def adapt(self, records: Sequence[RawRecord], poisoned: Mapping[RecordId, Exception] = {}) -> Adapted:
        """Decode and adapt. ``poisoned`` records (the engine failed on them in an earlier attempt at
        this batch) are dead-lettered with that error instead."""
        adapted = Adapted(BatchResult())
        result = adapted.result
        for record in records:
            coordinates = (record.topic, record.partition)
            result.next_offsets[coordinates] = record.offset + 1
            if record.timestamp_ms:
                result.last_timestamps[coordinates] = record.timestamp_ms
            error = poisoned.get((record.topic, record.partition, record.offset))
            if error is not None:
                self._dead_letter(result, record, "engine", error)
                continue
            try:
                message, context = self._decode(record)
            except Exception as exc:  # noqa: BLE001 - any failure on one record dead-letters it
                self._dead_letter(result, record, "decode", exc)
                continue
            try:
                adapted.items.append((record, self._adapt(record, message, context)))
            except Exception as exc:  # noqa: BLE001 - an adapter bug is a dead letter, not a crash
                self._dead_letter(result, record, "adapt", exc)
        return adapted

    def protect_and_dedup(self, adapted: Adapted, region_of: RegionLookup | None = None) -> BatchResult:
        """Strip personal data from every event (the guard), then drop repeats. ``region_of`` gives
        a user's known country, for phones in profile updates that do not repeat it."""
        result = adapted.result
        seen_now: set[tuple[PartitionId, int]] = set()
        now = self._clock() if self._clock else None
        countries: dict[UserKey, str] = {}
        for record, events in adapted.items:
            protected: dict[int, list[PiiRecord]] = {}
            if self._guard is not None:
                try:
                    for event in events:
                        # Only profiles carry a country (and a getattr miss on a pydantic model is slow).
                        if isinstance(event, UserProfile) and event.country:
                            countries[event.user_key] = event.country
                        region = countries.get(event.user_key) or (region_of(event.user_key) if region_of else None)
                        protected[id(event)] = self._guard.protect(event, default_region=region)
                except Exception as exc:  # noqa: BLE001 - a guard failure must not let plaintext through
                    self._dead_letter(result, record, "guard", exc)
                    continue
            fresh = self._drop_repeats(record, events, result, seen_now, now)
            # Only what survives dedup reaches the vault: a late repeat of an old profile must not
            # overwrite newer values.
            for event in fresh:
                result.pii.extend(protected.get(id(event), ()))
            if len(fresh) < len(events):
                result.duplicates_by_topic[record.topic] += len(events) - len(fresh)
            if events and not fresh:
                result.results[(record.topic, DEDUPLICATED)] += 1
                continue
            result.accepted.append(Accepted(record, fresh))
        return result

    def prepare(
        self,
        records: Sequence[RawRecord],
        poisoned: Mapping[RecordId, Exception] = {},
        region_of: RegionLookup | None = None,
    ) -> BatchResult:
        """adapt + protect_and_dedup."""
        return self.protect_and_dedup(self.adapt(records, poisoned), region_of)

    def apply(self, result: BatchResult, engine: Engine) -> BatchResult:
        """Hand each user's events to the engine in source order; count outcomes."""
        by_user: dict[UserKey, list[tuple[Accepted, CanonicalEvent]]] = {}
        for item in result.accepted:
            for event in item.events:
                by_user.setdefault(event.user_key, []).append((item, event))
        failed: dict[int, Exception] = {}
        for user, pairs in by_user.items():
            try:
                errors = engine.apply_user_events(user, [event for _, event in pairs])
            except Exception as exc:  # noqa: BLE001 - an engine bug on one user must not stop the others
                errors = [(0, exc)]
            failed_indexes = set()
            for index, error in errors:
                failed.setdefault(id(pairs[index][0]), error)
                failed_indexes.add(index)
            for index, (_, event) in enumerate(pairs):
                if index not in failed_indexes:
                    result.events_by_type[event.type] += 1
            result.events_applied += len(pairs) - len(failed_indexes)
        for item in result.accepted:
            failure = failed.get(id(item))
            if failure is not None:
                record = item.record
                result.engine_failures[(record.topic, record.partition, record.offset)] = failure
            else:
                result.results[(item.record.topic, OK)] += 1
        return result

    def process(self, records: Sequence[RawRecord], engine: Engine) -> BatchResult:
        """prepare + apply, for callers with no store to consult in between."""
        return self.apply(self.prepare(records), engine)

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

    def _drop_repeats(
        self,
        record: RawRecord,
        events: list[CanonicalEvent],
        result: BatchResult,
        seen_now: set[tuple[PartitionId, int]],
        now: float | None,
    ) -> list[CanonicalEvent]:
        window = self._dedup_window_for(record.topic, record.partition) if self._dedup_window_for else None
        if window is None:
            return events
        partition = (record.topic, record.partition)
        fresh = []
        for event in events:
            digest = dedup_digest(event.brand_id, event.type, event.event_id)
            if (partition, digest) in seen_now or window.contains(digest):
                continue
            seen_now.add((partition, digest))
            result.dedup_added.setdefault(partition, []).append((digest, now if now is not None else window.now()))
            fresh.append(event)
        return fresh

    @staticmethod
    def _dead_letter(result: BatchResult, record: RawRecord, stage: str, exc: Exception) -> None:
        error_class, message = describe_error(exc)
        result.dead_letters.append(DeadLetter(record, stage, error_class, message))
        result.results[(record.topic, DEAD_LETTERED)] += 1


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )

