"""``simulate`` equals the live service: the same records through the embedded Kafka and through
``simulate`` give the same actions, byte for byte, and simulate is byte-deterministic.

The input is the project's synthetic operator stream (smartico_stream/demo/synthetic.py): 400
records for 30 users of two brands on all four streams (profiles, payments, casino, sport), with
exact repeats (duplicates within 50 records of their original) and malformed records of every
defect (each becomes a dead letter), keyed by user id. The rules are the benchmark's 50 rules,
which fire every kind of action on this stream.

- Live: the records are produced to the embedded Kafka and run through an in-process
  :class:`~smartico_stream.service.Service` with a JSONL sink; its actions are the sink's lines
  and the store's outbox.
- Offline: the same records (same bytes, same keys, in produced order) through
  :func:`smartico_stream.simulate.simulate`, twice, and the envelope form through the
  ``smartico-stream simulate`` CLI, twice.

Compared as canonical JSON bytes (``Action.to_json()``): the sorted lists, and every user's
actions in order.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson
import pytest

from smartico_stream.adapters.registry import load_adapter
from smartico_stream.bench.rules import write_rules
from smartico_stream.demo.synthetic import DEFECTS, RecordKind, StreamSpec, SyntheticRecord, synthetic_stream
from smartico_stream.engine.actions import Action, ActionKind
from smartico_stream.engine.rules import load_rules
from smartico_stream.events.raw import RawRecord, Stream
from smartico_stream.pii.guard import PiiGuard
from smartico_stream.pipeline.pipeline import PipelineLimits
from smartico_stream.service import Service
from smartico_stream.simulate import SimulationSummary, simulate
from smartico_stream.store.sqlite import SqliteStore
from tests.support.common import CLI
from tests.support.kafka import TestProducer

pytestmark = [pytest.mark.kafka, pytest.mark.any_kafka]  # topics through kafka.topic()

MAX_MESSAGE_BYTES = 64 * 1024
# Repeats are measured on source time: live on the Kafka record timestamps (the produce time, a few
# seconds apart here), in simulate on the event time (the file carries no timestamp_ms, and a
# repeat is an exact copy of its original). The generator keeps each duplicate within
# synthetic.DUPLICATE_WINDOW (50) records of its original, so both are well inside the 120 s window
# and both drop the same records.
SPEC = StreamSpec(
    users=30,
    events=400,
    seed=11,
    duplicate_share=0.06,
    malformed_share=0.05,
    # The embedded cluster keeps only a few MB per partition: an oversized record just above the
    # service's (lowered) limit is enough to be dead-lettered.
    oversized_bytes=MAX_MESSAGE_BYTES + 4096,
)
TIMEOUT_S = 60.0


def ordered_segments(records: Sequence[SyntheticRecord]) -> list[list[SyntheticRecord]]:
    """Consecutive runs of ``records`` in which every key's records are on one stream.

    Kafka orders a user's records only within a partition, and a user's streams are different
    topics: the consumer may read a later casino bet before an earlier deposit of another topic.
    Simulate reads the file in order, and the rules depend on each user's order across streams
    (a deposit qualifies later bets). So the records are produced one run at a time, each once
    the service has handled the one before: within a run each user's records share a partition
    (keyed by user id), hence keep their order, and runs follow each other."""
    segments: list[list[SyntheticRecord]] = [[]]
    streams_of_key: dict[bytes, Stream] = {}
    for record in records:
        if record.key is not None and streams_of_key.get(record.key, record.stream) is not record.stream:
            segments.append([])
            streams_of_key.clear()
        if record.key is not None:
            streams_of_key[record.key] = record.stream
        segments[-1].append(record)
    return segments


def raw_records(records: Iterable[SyntheticRecord]) -> list[RawRecord]:
    """The records as simulate reads a file: the stream name as the topic, one partition, the
    position as the offset (no action depends on source coordinates)."""
    return [
        RawRecord("file", record.stream.value, 0, offset, record.key, record.value)
        for offset, record in enumerate(records, start=1)
    ]


def run_simulate(
    records: Sequence[RawRecord], rules_path: Path, limits: PipelineLimits, guard: PiiGuard
) -> tuple[list[bytes], SimulationSummary]:
    """simulate() on ``records``: the actions' canonical JSON in emission order, and the summary."""
    lines: list[bytes] = []

    def collect(actions: list[Action]) -> None:
        lines.extend(action.to_json() for action in actions)

    summary = asyncio.run(
        simulate(records, load_adapter("reference"), load_rules(rules_path), collect, limits=limits, guard=guard)
    )
    return lines, summary


def per_user(lines: Iterable[bytes]) -> dict[tuple[str, str], list[bytes]]:
    """Each user's actions, in the order given."""
    users: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    for line in lines:
        document = orjson.loads(line)
        users[(document["brand"], document["user"])].append(line)
    return dict(users)


def first_difference(live: Sequence[bytes], offline: Sequence[bytes]) -> str:
    """The first differing line of two action lists (the failure message)."""
    for index, (a, b) in enumerate(zip(live, offline, strict=False)):
        if a != b:
            return f"at {index}:\nlive:     {a.decode()}\nsimulate: {b.decode()}"
    return f"lengths differ: live {len(live)}, simulate {len(offline)}"


def assert_same_actions(live: Sequence[bytes], offline: Sequence[bytes], what: str) -> None:
    missing, extra = set(offline) - set(live), set(live) - set(offline)
    assert sorted(live) == sorted(offline), (
        f"{what}: {len(live)} live vs {len(offline)} simulated actions; only simulated: {len(missing)} "
        f"(e.g. {sorted(missing)[:2]}), only live: {len(extra)} (e.g. {sorted(extra)[:2]})"
    )
    live_users, offline_users = per_user(live), per_user(offline)
    assert live_users.keys() == offline_users.keys()
    wrong = [user for user in offline_users if live_users[user] != offline_users[user]]
    assert not wrong, (
        f"{what}: {len(wrong)} user(s) got their actions in another order, first {wrong[0]}, "
        + first_difference(live_users[wrong[0]], offline_users[wrong[0]])
    )


def envelope(record: SyntheticRecord) -> bytes | None:
    """The record as an envelope line for the CLI, its value as a JSON string (the exact bytes);
    ``None`` for a value that is not UTF-8 (a JSON line cannot carry it)."""
    try:
        value = record.value.decode()
    except UnicodeDecodeError:
        return None
    key = None if record.key is None else record.key.decode()
    return orjson.dumps({"stream": record.stream.value, "key": key, "value": value})


def test_simulate_gives_the_live_services_actions_byte_for_byte(
    kafka, make_settings, producer, run_service, tmp_path: Path
) -> None:
    records = list(synthetic_stream(SPEC))
    kinds = {record.kind for record in records}
    assert kinds == set(RecordKind)
    assert {record.defect for record in records if record.defect} == set(DEFECTS)
    assert {record.stream for record in records} == set(Stream)
    segments = ordered_segments(records)
    assert sum(map(len, segments)) == len(records)

    rules_path = write_rules(tmp_path / "rules.yaml")
    sink_path = tmp_path / "actions.jsonl"
    topics = {stream: kafka.topic(stream.value) for stream in Stream}
    settings = make_settings(
        topics={stream.value: [topic] for stream, topic in topics.items()},
        # Each run waits for the one before: a broker that answers an empty fetch at once, rather
        # than after librdkafka's default 500 ms, keeps the ~90 runs to seconds.
        kafka={"config": {"fetch.wait.max.ms": 10}},
        limits={"max_message_bytes": MAX_MESSAGE_BYTES},
        engine={"rules": str(rules_path)},
        sinks=[{"type": "jsonl", "path": str(sink_path), "fsync": False}],
        outbox={"poll_interval_s": 0.05},
    )
    assert settings.limits.require_key and settings.dedup.window_seconds == 120.0
    service = Service(settings)
    p: TestProducer = producer()
    p.ensure_topics(*topics.values())

    def produce(segment: list[SyntheticRecord]) -> None:
        for record in segment:
            p.send(topics[record.stream], record.key, record.value)
        p.flush()

    def sink_lines() -> list[bytes]:
        return sink_path.read_bytes().splitlines() if sink_path.exists() else []

    async def live() -> None:
        loop = asyncio.get_running_loop()
        async with run_service(service) as running:
            produced = 0
            for number, segment in enumerate(segments, start=1):
                await loop.run_in_executor(None, produce, segment)
                produced += len(segment)
                await running.wait_until(
                    lambda n=produced: service.stats.consumed >= n,
                    f"run {number}/{len(segments)} handled ({produced} records)", TIMEOUT_S,
                )
            await running.wait_until(
                lambda: len(sink_lines()) >= service.stats.actions, "every action in the sink", TIMEOUT_S
            )

    asyncio.run(live())

    stats = service.stats
    offline, summary = run_simulate(
        raw_records(records), rules_path,
        PipelineLimits(settings.limits.max_message_bytes, settings.limits.require_key), service.pii.guard,
    )
    # Every record handled once, with the same verdicts.
    assert stats.consumed == summary.records == len(records), (stats, summary)
    assert (stats.processed, stats.deduplicated, stats.dead_lettered) == (
        summary.processed, summary.deduplicated, summary.dead_lettered,
    ), (stats, summary)
    assert summary.deduplicated == sum(r.kind is RecordKind.DUPLICATE for r in records)
    assert summary.dead_lettered == sum(r.kind is RecordKind.MALFORMED for r in records)
    assert summary.actions == len(offline)

    # A realistic rule run: many users, nearly every kind of action.
    kinds_fired = {orjson.loads(line)["action"] for line in offline}
    assert len(kinds_fired) >= 8, kinds_fired
    assert kinds_fired <= {kind.value for kind in ActionKind}
    assert len(per_user(offline)) >= 20

    # What left the service (the sink) and what it committed (the outbox) are simulate's actions.
    sunk = sink_lines()
    assert_same_actions(sunk, offline, "JSONL sink")
    assert stats.actions == len(sunk)  # each action delivered once

    async def outbox() -> list[bytes]:
        store = SqliteStore(Path(settings.store.url.removeprefix("sqlite:///")))
        await store.open()
        try:
            return [action.to_json() for action in await store.all_actions()]
        finally:
            await store.close()

    assert_same_actions(asyncio.run(outbox()), offline, "outbox")

    # simulate is byte-deterministic: a second run gives the very same bytes, in the same order.
    again, _ = run_simulate(
        raw_records(records), rules_path,
        PipelineLimits(settings.limits.max_message_bytes, settings.limits.require_key), service.pii.guard,
    )
    assert b"\n".join(again) == b"\n".join(offline)

    # The CLI on the envelope file, given the service's config (its record limits): byte-identical
    # twice, and the same actions as the service. Left out: what a JSON line cannot carry (non-UTF-8
    # values), a dead letter live, so it gives no actions there.
    lines = [line for record in records if (line := envelope(record)) is not None]
    left_out = len(records) - len(lines)
    assert left_out == sum(r.defect == "invalid_utf8" for r in records) > 0
    events = tmp_path / "envelopes.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in lines))
    config = tmp_path / "service.yaml"
    config.write_text(f"limits:\n  max_message_bytes: {MAX_MESSAGE_BYTES}\n")
    outputs = []
    # Two processes with different string hashing: no output may depend on set or dict order.
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("SMARTICO_STREAM_")}
    for run, hash_seed in (("first", "1"), ("second", "2")):
        done = subprocess.run(
            [*CLI, "simulate", "--rules", str(rules_path), "--events", str(events), "--config", str(config),
             "--state", str(tmp_path / f"simulate-{run}.db")],
            capture_output=True, timeout=TIMEOUT_S, check=False, env={**environ, "PYTHONHASHSEED": hash_seed},
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert f"records {len(lines)}, ".encode() in done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0] == b"".join(line + b"\n" for line in offline)
    assert_same_actions(sunk, outputs[0].splitlines(), "CLI simulate")
