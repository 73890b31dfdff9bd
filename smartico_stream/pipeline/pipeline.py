"""decode -> adapt -> guard -> dedup -> engine, one batch of raw records at a time.

Every record ends in exactly one of three results, counted per topic: ``ok`` (its events were
applied), ``deduplicated`` (all its events were repeats: inside the window on source time, or money
events the engine found among the user's remembered transactions) or ``dead_lettered``.
Nothing here raises for a bad record: the worst a record can do is become a dead letter.

Nothing here is durable either: new dedup keys are *staged* in the result, and the caller adds them
to the windows only once the batch is committed, so a batch that must be redone sees the same
windows the second time.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import orjson

from smartico_stream.adapters.base import Adapter, RecordContext
from smartico_stream.engine.base import AlreadyApplied, Engine, Outcome
from smartico_stream.events.models import CanonicalEvent, EventType, UserProfile
from smartico_stream.events.raw import PartitionId, RawRecord, Stream, UserKey
from smartico_stream.events.records import validate_drafts
from smartico_stream.events.types import MAX_NESTING, is_field_name
from smartico_stream.pii.guard import PiiGuard
from smartico_stream.pii.vault import PiiRecord
from smartico_stream.pipeline.dedup import DedupWindow, dedup_digest, dedup_time
from smartico_stream.pipeline.errors import (
    DeadLetter,
    DecodeError,
    InvalidText,
    MessageTooLarge,
    MissingKey,
    NotAnObject,
    RecordRejected,
    TooDeep,
    describe_error,
)
from smartico_stream.tracebacks import detached

OK = "ok"
DEDUPLICATED = "deduplicated"
DEAD_LETTERED = "dead_lettered"

RecordId = tuple[str, int, int]  # topic, partition, offset
_PROFILE = EventType.USER_PROFILE.value


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
    # persisted keys first seen before this (source time) are out of every window of the batch's
    # partitions for good: the lowest of their watermarks after this batch, minus the window
    dedup_horizon: float | None = None
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
                if event.type == _PROFILE and cast(UserProfile, event).phone and not cast(UserProfile, event).country
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
        guard: PiiGuard | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._adapter = adapter
        self._clock = clock  # "in the past" is checked against one reading per batch
        self._guard = guard
        self._stream_of_topic = dict(stream_of_topic)
        self._dedup_window_for = dedup_window_for
        self._limits = limits

    def adapt(self, records: Sequence[RawRecord], poisoned: Mapping[RecordId, Exception] = {}) -> Adapted:
        """Decode and adapt every record, then validate all their drafts in one call (see
        events/records.py). ``poisoned`` records (the engine failed on them in an earlier attempt at
        this batch) are dead-lettered with that error instead."""
        adapted = Adapted(BatchResult())
        result = adapted.result
        drafts: list[Any] = []
        failed: dict[int, tuple[str, Exception]] = {}  # record position -> (stage, error)
        spans: dict[int, tuple[int, int]] = {}  # record position -> its drafts' slice of `drafts`
        for position, record in enumerate(records):
            coordinates = (record.topic, record.partition)
            result.next_offsets[coordinates] = record.offset + 1
            if record.timestamp_ms:
                result.last_timestamps[coordinates] = record.timestamp_ms
            error = poisoned.get((record.topic, record.partition, record.offset))
            if error is not None:
                failed[position] = (getattr(error, "stage", "engine"), error)  # store: refused
                continue
            try:
                message, context = self._decode(record)
            except Exception as exc:  # noqa: BLE001 - any failure on one record dead-letters it
                failed[position] = ("decode", detached(exc))
                continue
            try:
                produced = list(self._adapter.adapt(message, context))
            except Exception as exc:  # noqa: BLE001 - an adapter bug is a dead letter, not a crash
                failed[position] = ("adapt", detached(exc))
                continue
            spans[position] = (len(drafts), len(drafts) + len(produced))
            drafts.extend(produced)
        validated = validate_drafts(drafts, datetime.fromtimestamp(self._clock(), UTC))
        events, invalid = validated.events, validated.errors
        for position, record in enumerate(records):
            if position in failed:
                stage, error = failed[position]
                self._dead_letter(result, record, stage, error)
                continue
            first, last = spans[position]
            error = next((invalid[i] for i in range(first, last) if i in invalid), None)
            if error is not None:
                self._dead_letter(result, record, "adapt", error)
                continue
            mine = [event for event in events[first:last] if event is not None]
            for event in mine:
                # The record is the event's coordinates (same attribute names): no object per event.
                event.source = record  # type: ignore[assignment]
            adapted.items.append((record, mine))
        return adapted

    def protect_and_dedup(self, adapted: Adapted, region_of: RegionLookup | None = None) -> BatchResult:
        """Strip personal data from every event (the guard), then drop repeats. ``region_of`` gives
        a user's known country, for phones in profile updates that do not repeat it."""
        result = adapted.result
        # the newest sighting of each key in this batch (or before it), until the windows get them
        seen_now: dict[tuple[PartitionId, int], float] = {}
        countries: dict[UserKey, str] = {}
        for record, events in adapted.items:
            protected: dict[int, list[PiiRecord]] = {}
            if self._guard is not None:
                try:
                    for event in events:
                        # Only profiles carry a country.
                        country = cast(UserProfile, event).country if event.type == _PROFILE else None
                        if country:
                            countries[event.user_key] = country
                        region = countries.get(event.user_key) or (region_of(event.user_key) if region_of else None)
                        protected[id(event)] = self._guard.protect(event, default_region=region)
                except Exception as exc:  # noqa: BLE001 - a guard failure must not let plaintext through
                    self._dead_letter(result, record, "guard", exc)
                    continue
            fresh = self._drop_repeats(record, events, result, seen_now)
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
        result.dedup_horizon = self._dedup_horizon(result)
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
        repeats: Counter[int] = Counter()  # accepted item -> its events the engine found applied before
        for user, pairs in by_user.items():
            try:
                outcomes: Sequence[tuple[int, Outcome]] = engine.apply_user_events(user, [e for _, e in pairs])
            except Exception as exc:  # noqa: BLE001 - an engine bug on one user must not stop the others
                outcomes = [(0, detached(exc))]
            skipped = set()
            for index, outcome in outcomes:
                item = pairs[index][0]
                if isinstance(outcome, AlreadyApplied):
                    repeats[id(item)] += 1
                else:
                    failed.setdefault(id(item), outcome)
                skipped.add(index)
            for index, (_, event) in enumerate(pairs):
                if index not in skipped:
                    result.events_by_type[event.type] += 1
            result.events_applied += len(pairs) - len(skipped)
        for item in result.accepted:
            record = item.record
            failure = failed.get(id(item))
            repeated = repeats.get(id(item), 0)
            if repeated:
                # As a repeat inside the window: counted per event, and a record with nothing
                # else in it is a deduplicated record.
                result.duplicates_by_topic[record.topic] += repeated
            if failure is not None:
                result.engine_failures[(record.topic, record.partition, record.offset)] = failure
            elif repeated and repeated == len(item.events):
                result.results[(record.topic, DEDUPLICATED)] += 1
            else:
                result.results[(record.topic, OK)] += 1
        return result

    def process(self, records: Sequence[RawRecord], engine: Engine) -> BatchResult:
        """prepare + apply, for callers with no store to consult in between."""
        return self.apply(self.prepare(records), engine)

    def _decode(self, record: RawRecord) -> tuple[dict[str, object], RecordContext]:
        """The record's message and its context. A row (a replica view's, ``RawRecord.row``) is its
        own message, with the driver's native types; bytes are JSON."""
        row = record.row
        if row is not None:
            return self._decode_row(record, row)
        value = record.value
        if value is None or not value:
            raise DecodeError("record has no value (a tombstone or an empty message)")
        if len(value) > self._limits.max_message_bytes:
            raise MessageTooLarge(
                f"record is {len(value)} bytes, over limits.max_message_bytes={self._limits.max_message_bytes}"
            )
        if record.key is None and self._limits.require_key:
            raise MissingKey("record has no key; topics must be keyed by user id to keep per-user order")
        message = decode_json(value)
        if not isinstance(message, dict):
            raise NotAnObject(f"the JSON value is {_json_kind(message)}, not an object")
        check_storable(value, message)
        return message, self._context(record)

    def _decode_row(self, record: RawRecord, row: Mapping[str, Any]) -> tuple[dict[str, object], RecordContext]:
        if record.key is None and self._limits.require_key:
            raise MissingKey("row has no user id; every view needs its user id column (user_column)")
        message = dict(row)
        check_row(message)
        return message, self._context(record)

    def _context(self, record: RawRecord) -> RecordContext:
        return RecordContext(
            stream=self._stream_of_topic[record.topic],
            topic=record.topic,
            key=record.key.decode("utf-8", "replace") if record.key is not None else None,
            headers=dict(record.headers),
        )

    def _drop_repeats(
        self,
        record: RawRecord,
        events: list[CanonicalEvent],
        result: BatchResult,
        seen_now: dict[tuple[PartitionId, int], float],
    ) -> list[CanonicalEvent]:
        window = self._dedup_window_for(record.topic, record.partition) if self._dedup_window_for else None
        if window is None:
            return events
        partition = (record.topic, record.partition)
        window_s = window.window_s
        fresh = []
        for event in events:
            digest = dedup_digest(event.brand_id, event.type, event.event_id)
            at = dedup_time(record, event)
            key = (partition, digest)
            # The sighting this batch would leave in the window if it committed now: the same rule
            # whether a repeat comes in the same batch or a later one.
            held = seen_now.get(key)
            if held is None:
                held = window.sighting(digest)
            if held is not None and abs(at - held) <= window_s:
                continue
            if held is None or at > held:
                seen_now[key] = at
                result.dedup_added.setdefault(partition, []).append((digest, at))
            # else: a record far behind the sighting; applied, and the newer sighting stays (the
            # window and the store keep one per key)
            fresh.append(event)
        return fresh

    def _dedup_horizon(self, result: BatchResult) -> float | None:
        """The lowest expiry horizon of the batch's partitions once its keys are added (the store
        keeps one horizon per batch); None when nothing may be deleted yet."""
        if self._dedup_window_for is None:
            return None
        horizon: float | None = None
        for partition in result.next_offsets:
            window = self._dedup_window_for(*partition)
            if window is None:
                continue
            staged = result.dedup_added.get(partition)
            latest = max(at for _, at in staged) if staged else float("-inf")
            mark = window.horizon_after(latest)
            horizon = mark if horizon is None else min(horizon, mark)
        return horizon if horizon is not None and horizon > float("-inf") else None

    @staticmethod
    def _dead_letter(result: BatchResult, record: RawRecord, stage: str, exc: Exception) -> None:
        error_class, message = describe_error(exc)
        result.dead_letters.append(DeadLetter(record, stage, error_class, message))
        result.results[(record.topic, DEAD_LETTERED)] += 1


# -- decoding ---------------------------------------------------------------------------------------
#
# orjson is the fast path. It reads every number with a fraction or an exponent as a binary double,
# an integer beyond 64 bits as a double too, and 1e-400 as 0.0, so a record with such a literal is
# read again exactly (the stdlib parser, with Decimal). To find those records without a regex (one
# costs several microseconds per record), the bytes are mapped to a "shape" in one C pass: digits
# and "." become "0", "e"/"E" become "e", "-"/"+" become "-", everything else a space. A double
# holds every decimal of 15 digits, so only a run of 16 digits (with its point) or an exponent of
# three digits below zero (after a mantissa digit) can lose anything. Strings can match too (a long
# digit string, say); that costs only the slower path, which reads strings the same. The mantissa
# digit matters: without it every id like "game-1010" matched, and half of a casino stream took the
# slow path.
_SHAPE = bytes(
    ord("0") if chr(byte) in "0123456789." else ord("e") if chr(byte) in "eE" else ord("-") if chr(byte) in "-+"
    else ord(" ")
    for byte in range(256)
)
_LONG_NUMBER = b"0" * 16
_TINY_EXPONENT = b"0e-000"
_NUL_ESCAPE = b"\\u0000"  # the only way a NUL can be in valid JSON text
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_NUL_REASON = "contains a NUL character (\\u0000), which stores refuse"
_ROW_NUL_REASON = "contains a NUL character, which stores refuse"
_SURROGATE_REASON = "contains a lone surrogate (a \\ud800-\\udfff escape not in a pair), which stores refuse"
# Deep enough for any real message; pydantic's JSON validation breaks (as "cyclic reference") at 255.
_DEPTH_REASON = f"nested deeper than {MAX_NESTING} levels"


def decode_json(value: bytes) -> object:
    """The JSON value in ``value`` with every number as written: orjson first, the exact path for
    the rare record whose numbers a double would round. Raises a RecordRejected naming what is wrong
    (and where, when that is a field), never quoting the record."""
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
        if reason.startswith("number is infinity"):  # a literal beyond the double range: read it exactly
            return _decode_exact(value)
        raise _decode_failure(value, reason) from None
    if _may_lose_numbers(value):
        return _decode_exact(value)
    return message


def _may_lose_numbers(value: bytes) -> bool:
    shape = value.translate(_SHAPE)
    # "e-" first: a search for a needle ending in "0" is slow in a shape full of zeros.
    return _LONG_NUMBER in shape or (b"0e-" in shape and _TINY_EXPONENT in shape)


def load_json_keeping_literals(value: bytes) -> object:
    """JSON to be written again with orjson (a file of records read by ``simulate``, say): numbers
    a double or a 64-bit integer would change stay ``orjson.Fragment``s of their literal text, so
    ``orjson.dumps`` writes them back exactly as sent. Raises ``orjson.JSONDecodeError``."""
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        if not str(exc).startswith("number is infinity"):
            raise
    else:
        if not _may_lose_numbers(value):
            return message
    text = value.decode("utf-8")  # orjson checks UTF-8 before anything else
    try:
        return json.loads(text, parse_float=_fragment, parse_int=_int_or_fragment, parse_constant=_fragment)
    except json.JSONDecodeError as exc:
        raise orjson.JSONDecodeError(exc.msg, exc.doc, exc.pos) from None


def _fragment(text: str) -> orjson.Fragment:
    return orjson.Fragment(text.encode())


def _int_or_fragment(text: str) -> int | orjson.Fragment:
    return int(text) if len(text) < 19 else orjson.Fragment(text.encode())  # 18 digits fit 64 bits


def _int_literal(text: str) -> int | Decimal:
    try:
        return int(text)
    except ValueError:  # longer than sys.get_int_max_str_digits(): let the field say what is wrong
        return Decimal(text)


def _no_constant(name: str) -> object:
    raise DecodeError(f"not valid JSON: {name if name in ('NaN', 'Infinity', '-Infinity') else 'a constant'} "
                      "is not a JSON number")


def _decode_exact(value: bytes) -> object:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise _decode_failure(value, "not valid UTF-8") from None
    try:
        message = json.loads(text, parse_float=Decimal, parse_int=_int_literal, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc}") from None
    except RecursionError:  # orjson read it, so it is nested over a thousand levels deep
        raise TooDeep(f"the record is {_DEPTH_REASON}") from None
    # orjson refuses lone surrogates; the stdlib parser reads them, so look for them here.
    if _SURROGATE_ESCAPE.search(value) is not None:
        bad = _paths(message, _has_lone_surrogate)
        if bad:
            raise InvalidText(_describe(bad, _SURROGATE_REASON))
    return message


def _decode_failure(value: bytes, reason: str) -> RecordRejected:
    """A true reason for an orjson failure (its own says "surrogates not allowed" for any invalid
    UTF-8, for instance)."""
    if "UTF-8" in reason:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            where = _paths(_loads_lenient(value.decode("utf-8", "surrogateescape")), _has_undecodable_byte)
            subject = f"{where[0]} " if where else ""
            return DecodeError(f"{subject}not valid UTF-8 (at byte offset {exc.start})")
    elif "surrogate" in reason:
        bad = _paths(_loads_lenient(value), _has_lone_surrogate)
        return InvalidText(_describe(bad, _SURROGATE_REASON) if bad else f"a string {_SURROGATE_REASON}")
    elif reason.startswith("depth limit exceeded"):
        return TooDeep(f"the record is {_DEPTH_REASON}")
    return DecodeError(f"not valid JSON: {reason}")


def _loads_lenient(text: str | bytes) -> object:
    """The stdlib parser, which accepts lone surrogates, for finding where a bad string is."""
    try:
        return json.loads(text, parse_float=str, parse_int=str, parse_constant=str)
    except (ValueError, RecursionError):
        return None


def check_storable(value: bytes, message: dict[str, object]) -> None:
    """Refuse what one of the stores would refuse, on every store: NUL in any string or key (the
    PostgreSQL text and JSONB types cannot hold it). The raw bytes are looked at first: a record
    without a backslash (almost every one) pays one byte search. (orjson and _decode_exact already
    refused invalid UTF-8 and lone surrogates; extra's nesting is bounded by the models.)"""
    if b"\\" in value and _NUL_ESCAPE in value:
        bad = _paths(message, _has_nul)
        if bad:
            raise InvalidText(_describe(bad, _NUL_REASON))


def check_row(row: Mapping[str, object]) -> None:
    """Refuse what a store would refuse in a view's row (as :func:`check_storable` does for JSON): a
    NUL in a text column. Names the column, never the value."""
    bad = [column for column, value in row.items() if isinstance(value, str) and "\x00" in value]
    if bad:
        raise InvalidText("; ".join(f"column {column} {_ROW_NUL_REASON}" for column in bad[:3]))


def _has_nul(text: str) -> bool:
    return "\x00" in text


def _has_lone_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _has_undecodable_byte(text: str) -> bool:
    # surrogateescape decoding maps each byte that is not UTF-8 to U+DC80..U+DCFF.
    return any("\udc80" <= char <= "\udcff" for char in text)


_MAX_REPORTED = 3


def _paths(value: object, bad: Callable[[str], bool]) -> list[str]:
    """Where (at most a few) strings or keys for which ``bad`` is true are, as the subjects of a
    reason: ``slip.legs[1].id:`` for a value, ``a key in attributes`` for a key. A key not shaped
    like a field name is never quoted."""
    found: list[str] = []
    stack: list[tuple[object, str]] = [(value, "")]
    while stack and len(found) < _MAX_REPORTED:
        item, path = stack.pop()
        if isinstance(item, str):
            if bad(item):
                found.append(f"{path}:" if path else "the JSON string")
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                if isinstance(key, str) and bad(key):
                    found.append(f"a key in {path}" if path else "a top-level key")
                stack.append((child, f"{path}.{_part(key)}" if path else _part(key)))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{index}]") for index, child in reversed(list(enumerate(item))))
    return found[:_MAX_REPORTED]


def _part(key: object) -> str:
    return key if isinstance(key, str) and is_field_name(key) else "<key>"


def _describe(subjects: list[str], reason: str) -> str:
    return "; ".join(f"{subject} {reason}" for subject in subjects)


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )

