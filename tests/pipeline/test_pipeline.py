"""The pipeline's verdicts, without a broker: ``Pipeline`` fed ``RawRecord``s built here, with the
reference adapter and a recording engine.

Every record ends in exactly one verdict: ``ok`` (its events reached the engine), ``deduplicated``
(all its events were repeats inside the window) or ``dead_lettered`` (with the stage and error class
the dead-letter headers carry). Bad records never take their neighbours down; ``next_offsets`` is
the last offset seen + 1 on every partition (dead letters included: they are committed past); each
user's events reach the engine in source order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartico_stream.adapters.base import AdapterError, RecordContext
from smartico_stream.events.models import CanonicalEvent
from smartico_stream.events.raw import RawRecord, Stream
from smartico_stream.pipeline.dedup import DedupWindow
from smartico_stream.pipeline.pipeline import (
    DEAD_LETTERED,
    DEDUPLICATED,
    OK,
    BatchResult,
    Pipeline,
    PipelineLimits,
    RecordId,
)
from smartico_stream_adapters.reference import ReferenceAdapter
from tests.support.common import BASE_MS
from tests.support.service import RecordingEngine

PAY = "payments-topic"
CASINO = "casino-topic"
STREAMS = {PAY: Stream.PAYMENTS, CASINO: Stream.CASINO}
MAX_BYTES = 2_000
BRAND = "b1"


# -- input ----------------------------------------------------------------------------------------


def deposit(user: str, tx: str, **changes: Any) -> dict[str, Any]:
    message = {
        "type": "deposit",
        "dt_finalized": BASE_MS,
        "ext_brand_id": BRAND,
        "user_ext_id": user,
        "transaction_id": tx,
        "amount": "10.50",
    }
    message.update(changes)
    return message


def bet(user: str, tx: str) -> dict[str, Any]:
    return {
        "type": "bet",
        "bet_date": BASE_MS,
        "ext_brand_id": BRAND,
        "user_ext_id": user,
        "transaction_id": tx,
        "bet_amount": "1.00",
        "game_name": "Book of Ra",
        "game_id": "g-1",
    }


def record(topic: str, partition: int, offset: int, value: bytes | dict[str, Any] | None,
           key: bytes | None = b"u1") -> RawRecord:
    body = orjson.dumps(value) if isinstance(value, dict) else value
    return RawRecord("kafka", topic, partition, offset, key, body, timestamp_ms=BASE_MS + offset)


@dataclass(frozen=True)
class Bad:
    """One class of bad record and the dead letter it must become."""

    name: str
    value: bytes | dict[str, Any] | None
    stage: str
    error_class: str
    message_part: str
    key: bytes | None = b"u1"


BAD_RECORDS = (
    Bad("no value (tombstone)", None, "decode", "DecodeError", "no value"),
    Bad("empty value", b"", "decode", "DecodeError", "no value"),
    Bad("too large", b'{"pad": "' + b"x" * MAX_BYTES + b'"}', "decode", "MessageTooLarge", "max_message_bytes"),
    Bad("missing key", deposit("u1", "no-key"), "decode", "MissingKey", "no key", key=None),
    Bad("invalid JSON", b"{not json", "decode", "DecodeError", "not valid JSON"),
    Bad("invalid UTF-8", b'{"user_ext_id": "\xff\xfe"}', "decode", "DecodeError", "UTF-8"),
    Bad("not an object", b"[1, 2, 3]", "decode", "NotAnObject", "an array"),
    Bad("adapter error", deposit("u1", "boom", explode=True), "adapt", "AdapterError", "refused on purpose"),
    Bad("missing field", deposit("u1", "no-amount", amount=None), "adapt", "MissingField", "'amount'"),
    Bad("validation error", deposit("u1", "negative", amount="-5"), "adapt", "ValidationError",
        "amount: Input should be greater than or equal to 0"),
    Bad("unknown type", deposit("u1", "spin", type="spin"), "adapt", "UnknownEventType", "an unknown 'type'"),
)


class ExplodingAdapter:
    """The reference adapter, except that it refuses any message with ``"explode": true``, as an
    operator's adapter does for input it recognises as unusable."""

    name = "exploding-reference"

    def __init__(self) -> None:
        self._reference = ReferenceAdapter()

    def adapt(self, message: Mapping[str, Any], context: RecordContext) -> Sequence[CanonicalEvent]:
        if message.get("explode"):
            raise AdapterError("refused on purpose")
        return self._reference.adapt(message, context)


class Windows:
    """One dedup window per partition, on a fixed clock; ``commit`` adds a batch's staged keys
    (what the service does once the batch is in the store)."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now
        self.windows: dict[tuple[str, int], DedupWindow] = {}

    def __call__(self, topic: str, partition: int) -> DedupWindow:
        key = (topic, partition)
        if key not in self.windows:
            self.windows[key] = DedupWindow(600.0, 10_000, lambda: self.now)
        return self.windows[key]

    def commit(self, result: BatchResult) -> None:
        for partition, keys in result.dedup_added.items():
            window = self(*partition)
            for digest, first_seen in keys:
                window.add(digest, first_seen)


def make_pipeline(windows: Windows | None = None, require_key: bool = True) -> Pipeline:
    return Pipeline(
        adapter=ExplodingAdapter(),
        stream_of_topic=STREAMS,
        dedup_window_for=windows,
        limits=PipelineLimits(max_message_bytes=MAX_BYTES, require_key=require_key),
    )


def verdicts(records: Sequence[RawRecord], result: BatchResult) -> dict[RecordId, str]:
    """Each record's verdict, from the result's own lists (dead letters, accepted records); a record
    in neither list was deduplicated."""
    ids = [(r.topic, r.partition, r.offset) for r in records]
    assert len(set(ids)) == len(ids), "a test bug: record coordinates repeat"
    dead = [(d.record.topic, d.record.partition, d.record.offset) for d in result.dead_letters]
    ok = [(a.record.topic, a.record.partition, a.record.offset) for a in result.accepted]
    assert len(set(dead)) == len(dead) and len(set(ok)) == len(ok), "a record listed twice"
    assert not set(dead) & set(ok), "a record both dead-lettered and accepted"
    assert not result.engine_failures
    return {rid: DEAD_LETTERED if rid in dead else OK if rid in ok else DEDUPLICATED for rid in ids}


def counted(result: BatchResult) -> Counter[str]:
    return Counter({outcome: result.count(outcome) for outcome in (OK, DEDUPLICATED, DEAD_LETTERED)})


# -- each bad-record class ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_RECORDS, ids=[b.name for b in BAD_RECORDS])
def test_each_bad_record_is_one_dead_letter_with_its_stage_and_class_and_its_neighbours_are_ok(bad: Bad) -> None:
    records = [
        record(PAY, 0, 10, deposit("u1", "before")),
        record(PAY, 0, 11, bad.value, key=bad.key),
        record(PAY, 0, 12, deposit("u1", "after")),
    ]
    engine = RecordingEngine()

    result = make_pipeline(Windows()).process(records, engine)

    assert verdicts(records, result) == {(PAY, 0, 10): OK, (PAY, 0, 11): DEAD_LETTERED, (PAY, 0, 12): OK}
    [letter] = result.dead_letters
    assert letter.record is records[1]
    assert (letter.stage, letter.error_class) == (bad.stage, bad.error_class)
    assert bad.message_part in letter.message
    assert result.results == Counter({(PAY, OK): 2, (PAY, DEAD_LETTERED): 1})
    assert engine.event_ids() == ["before", "after"]
    assert result.next_offsets == {(PAY, 0): 13}, "committed past the dead letter"
    assert result.last_timestamps == {(PAY, 0): BASE_MS + 12}


def test_a_bad_record_last_in_its_partition_still_moves_the_offset_past_it() -> None:
    records = [record(PAY, 1, 40, deposit("u1", "fine")), record(PAY, 1, 41, b"{not json")]
    result = make_pipeline().process(records, RecordingEngine())
    assert result.next_offsets == {(PAY, 1): 42}
    assert counted(result) == Counter({OK: 1, DEAD_LETTERED: 1, DEDUPLICATED: 0})


def test_a_record_without_a_key_is_accepted_when_keys_are_not_required() -> None:
    records = [record(PAY, 0, 0, deposit("u1", "keyless"), key=None)]
    result = make_pipeline(require_key=False).process(records, RecordingEngine())
    assert verdicts(records, result) == {(PAY, 0, 0): OK}


def test_a_record_the_engine_failed_on_before_is_dead_lettered_at_the_engine_stage() -> None:
    records = [record(PAY, 0, 0, deposit("u1", "a")), record(PAY, 0, 1, deposit("u1", "b"))]
    poisoned: dict[RecordId, Exception] = {(PAY, 0, 1): RuntimeError("rule evaluation blew up")}
    pipeline = make_pipeline()
    engine = RecordingEngine()

    result = pipeline.apply(pipeline.protect_and_dedup(pipeline.adapt(records, poisoned)), engine)

    assert verdicts(records, result) == {(PAY, 0, 0): OK, (PAY, 0, 1): DEAD_LETTERED}
    [letter] = result.dead_letters
    # Not one of the project's own exceptions, so its message (which may quote the record) is withheld.
    assert (letter.stage, letter.error_class) == ("engine", "RuntimeError")
    assert letter.message == "RuntimeError (message withheld: it may quote the record)"
    assert engine.event_ids() == ["a"]
    assert result.next_offsets == {(PAY, 0): 2}


# -- repeats --------------------------------------------------------------------------------------


def test_repeats_in_the_batch_and_after_a_commit_are_deduplicated_and_never_reach_the_engine() -> None:
    windows = Windows()
    pipeline = make_pipeline(windows)
    engine = RecordingEngine()
    first = [
        record(PAY, 0, 0, deposit("u1", "dep-1")),
        record(PAY, 0, 1, deposit("u1", "dep-1")),  # the same bytes right after the original
        record(PAY, 0, 2, deposit("u1", "dep-1", amount="99.00")),  # same id, other content: a repeat too
        record(CASINO, 2, 0, bet("u1", "dep-1")),  # same id, another event type: not a repeat
    ]

    one = pipeline.process(first, engine)

    assert verdicts(first, one) == {(PAY, 0, 0): OK, (PAY, 0, 1): DEDUPLICATED, (PAY, 0, 2): DEDUPLICATED,
                                    (CASINO, 2, 0): OK}
    assert one.results == Counter({(PAY, OK): 1, (PAY, DEDUPLICATED): 2, (CASINO, OK): 1})
    assert one.duplicates_by_topic == Counter({PAY: 2})
    assert one.next_offsets == {(PAY, 0): 3, (CASINO, 2): 1}
    assert sum(len(keys) for keys in one.dedup_added.values()) == 2, "only first sightings are staged"

    # Nothing is remembered until the batch is committed: a batch redone sees the same windows.
    again = make_pipeline(windows).process(first, RecordingEngine())
    assert verdicts(first, again) == verdicts(first, one)

    windows.commit(one)
    second = [record(PAY, 0, 3, deposit("u1", "dep-1")), record(PAY, 0, 4, deposit("u1", "dep-2"))]
    two = pipeline.process(second, engine)

    assert verdicts(second, two) == {(PAY, 0, 3): DEDUPLICATED, (PAY, 0, 4): OK}
    assert engine.event_ids() == ["dep-1", "dep-1", "dep-2"]  # the deposit and the bet, then dep-2
    assert [e.type for e in engine.events] == ["deposit", "casino_bet", "deposit"]


def test_without_a_window_nothing_is_deduplicated() -> None:
    records = [record(PAY, 0, 0, deposit("u1", "d")), record(PAY, 0, 1, deposit("u1", "d"))]
    result = make_pipeline(windows=None).process(records, RecordingEngine())
    assert verdicts(records, result) == {(PAY, 0, 0): OK, (PAY, 0, 1): OK}


# -- offsets and per-user order -------------------------------------------------------------------


def test_each_users_events_reach_the_engine_in_source_order_across_topics_and_partitions() -> None:
    records: list[RawRecord] = []
    offsets: Counter[tuple[str, int]] = Counter()
    for seq in range(6):
        for user in ("u1", "u2", "u3"):
            topic = PAY if seq % 2 == 0 else CASINO
            partition = int(user[1:]) % 2
            message = deposit(user, f"{user}-{seq}") if topic == PAY else bet(user, f"{user}-{seq}")
            records.append(record(topic, partition, 100 + offsets[(topic, partition)], message, key=user.encode()))
            offsets[(topic, partition)] += 1
    records.insert(5, record(PAY, 7, 0, b"{broken"))  # a dead letter in the middle changes nobody's order
    engine = RecordingEngine()

    result = make_pipeline(Windows()).process(records, engine)

    by_user: dict[str, list[str]] = {}
    for applied in engine.applied:
        assert applied.user == (BRAND, applied.event.user_id)
        by_user.setdefault(applied.event.user_id, []).append(applied.event.event_id)
    assert by_user == {user: [f"{user}-{seq}" for seq in range(6)] for user in ("u1", "u2", "u3")}
    assert result.next_offsets == {**{tp: 100 + n for tp, n in offsets.items()}, (PAY, 7): 1}
    assert [entry.coordinates for entry in engine.applied if entry.event.user_id == "u2"] == [
        (r.topic, r.partition, r.offset) for r in records if r.key == b"u2"
    ]
    assert result.users() == [(BRAND, "u1"), (BRAND, "u2"), (BRAND, "u3")]


# -- any mix of records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """A generated record and the verdict it must get."""

    record: RawRecord
    verdict: str
    bad: Bad | None = None


USERS = ("u1", "u2", "u3", "u4")


@st.composite
def batches(draw: st.DrawFn) -> list[Planned]:
    """Good deposits and bets of four users (each keyed to one partition of its topic), exact
    repeats of earlier good records, and bad records of every class (on the payments topic), in any
    order; offsets grow by 1 or more (Kafka offsets may have gaps) per partition."""
    kinds = st.one_of(st.just("good"), st.just("repeat"), st.sampled_from(BAD_RECORDS))
    plan: list[Planned] = []
    next_offset: dict[tuple[str, int], int] = {}
    good: list[tuple[str, int, dict[str, Any]]] = []
    for n in range(draw(st.integers(1, 40))):
        kind = draw(kinds)
        user = draw(st.sampled_from(USERS))
        topic = draw(st.sampled_from((PAY, CASINO)))
        value: bytes | dict[str, Any] | None
        key: bytes | None = user.encode()
        if kind == "repeat" and good:
            topic, partition, value = draw(st.sampled_from(good))  # same user, so same partition
            verdict = DEDUPLICATED
        elif isinstance(kind, Bad):
            # Bad records are shaped for the payments stream (their expected errors say so).
            topic, partition, value, key, verdict = PAY, USERS.index(user) % 2, kind.value, kind.key, DEAD_LETTERED
        else:
            partition = USERS.index(user) % 2
            value = deposit(user, f"tx-{n}") if topic == PAY else bet(user, f"tx-{n}")
            good.append((topic, partition, value))
            verdict = OK
        offset = next_offset.get((topic, partition), draw(st.integers(0, 1_000)))
        next_offset[(topic, partition)] = offset + draw(st.integers(1, 3))
        plan.append(Planned(record(topic, partition, offset, value, key=key), verdict,
                            kind if isinstance(kind, Bad) else None))
    return plan


@settings(max_examples=150, deadline=None)
@given(batches())
def test_any_mix_gets_one_verdict_per_record_offsets_past_the_last_and_per_user_order(plan: list[Planned]) -> None:
    records = [p.record for p in plan]
    engine = RecordingEngine()

    result = make_pipeline(Windows()).process(records, engine)

    got = verdicts(records, result)
    assert got == {(p.record.topic, p.record.partition, p.record.offset): p.verdict for p in plan}
    assert counted(result) == Counter(p.verdict for p in plan)
    assert sum(result.results.values()) == len(records), "every record counted exactly once"
    letters = {(d.record.topic, d.record.partition, d.record.offset): d for d in result.dead_letters}
    for p in plan:
        if p.bad is not None:
            letter = letters[(p.record.topic, p.record.partition, p.record.offset)]
            assert (letter.stage, letter.error_class) == (p.bad.stage, p.bad.error_class)

    last: dict[tuple[str, int], int] = {}
    for r in records:
        last[(r.topic, r.partition)] = r.offset
    assert result.next_offsets == {tp: offset + 1 for tp, offset in last.items()}

    expected_order: dict[str, list[str]] = {}
    for p in plan:
        if p.verdict == OK:
            message = orjson.loads(p.record.value or b"")
            expected_order.setdefault(message["user_ext_id"], []).append(message["transaction_id"])
    applied_order: dict[str, list[str]] = {}
    for entry in engine.applied:
        applied_order.setdefault(entry.event.user_id, []).append(entry.event.event_id)
    assert applied_order == expected_order
