"""``smartico-stream simulate``: raw operator records from a JSONL file through the real pipeline,
rules and store, offline and on event time. The same input always gives byte-identical output.

Input lines are either envelopes ``{"stream": "payments", "key": "u1", "value": {...}}`` (the
golden-file input format; an optional ``"timestamp_ms"`` is the broker timestamp the record had,
which the dedup window then measures on, as the service does) or bare operator messages, which then
need ``stream`` to be given.

Scheduled rules in the rule files run on the input's event timeline
(:mod:`smartico_stream.scheduler.offline`): a run fires between the last record before its instant
and the first one at or after it, and ``until`` extends the timeline past the last record.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from smartico_stream.adapters.base import Adapter
from smartico_stream.batch.checkpoint import Checkpoint, CheckpointEnv, Handled, Outcome, Progress
from smartico_stream.batch.observer import BaseObserver, BatchReport, Observers
from smartico_stream.batch.ownership import Ownership
from smartico_stream.batch.states import StateCache
from smartico_stream.config import DedupSettings, EngineSettings
from smartico_stream.engine.actions import Action
from smartico_stream.engine.evaluator import RuleEngine
from smartico_stream.engine.payments import PaymentDedup
from smartico_stream.engine.rules import RuleSet
from smartico_stream.engine.scheduled.spec import ScheduledRule
from smartico_stream.events.raw import PartitionId, RawRecord, Stream
from smartico_stream.observability.collector import FrozenHeap
from smartico_stream.observability.metrics import Metrics
from smartico_stream.pii.guard import PiiGuard
from smartico_stream.pii.vault import PiiVault
from smartico_stream.pipeline.errors import DeadLetter
from smartico_stream.pipeline.pipeline import (
    DEAD_LETTERED,
    DEDUPLICATED,
    OK,
    Pipeline,
    PipelineLimits,
    load_json_keeping_literals,
)
from smartico_stream.scheduler.offline import OfflineSchedule, event_time_of
from smartico_stream.store.base import FencedError, Store
from smartico_stream.store.scheduled import ScheduleStore
from smartico_stream.store.sqlite import SqliteStore

# Offline there is no processing time: the store records this constant as a batch's handled-at
# time, so the same input gives the same store file. Repeats are measured on source time anyway.
_OFFLINE_NOW = 0.0
_STATE_CACHE = 100_000
# Hand-written input files may leave records unkeyed.
_LIMITS = PipelineLimits(require_key=False)


class InputError(ValueError):
    """A line of the input file is not a record; names the line."""


@dataclass
class SimulationSummary:
    records: int = 0
    processed: int = 0
    deduplicated: int = 0
    dead_lettered: int = 0
    actions: int = 0
    scheduled_runs: int = 0


def read_records(path: Path, default_stream: Stream | None) -> Iterator[RawRecord]:
    """Raw records from a JSONL file; the stream name doubles as the topic, the line as the offset."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = load_json_keeping_literals(line)  # numbers reach the pipeline as written
            except orjson.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not a JSON line ({exc})") from None
            yield _record(item, number, default_stream, f"{path}:{number}")


def _record(item: object, number: int, default_stream: Stream | None, where: str) -> RawRecord:
    if isinstance(item, dict) and "value" in item and "stream" in item:
        try:
            stream = Stream(item["stream"])
        except ValueError:
            raise InputError(f"{where}: unknown stream {item['stream']!r}; use one of {', '.join(Stream)}") from None
        value = item["value"]
        raw = value.encode() if isinstance(value, str) else orjson.dumps(value)
        key = item.get("key")
        timestamp_ms = item.get("timestamp_ms", 0)
        if not isinstance(timestamp_ms, int) or isinstance(timestamp_ms, bool) or timestamp_ms < 0:
            raise InputError(f"{where}: timestamp_ms must be a whole number of milliseconds, not {timestamp_ms!r}")
    else:
        timestamp_ms = 0
        if default_stream is None:
            raise InputError(
                f"{where}: a bare message needs --stream (or use {{\"stream\", \"key\", \"value\"}} lines)"
            )
        stream, raw = default_stream, orjson.dumps(item)
        key = item.get("user_ext_id") if isinstance(item, dict) else None
    return RawRecord(
        transport="file",
        topic=stream.value,
        partition=0,
        offset=number,
        key=None if key is None else str(key).encode(),
        value=raw,
        timestamp_ms=timestamp_ms,
    )


def _batches(records: Iterable[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    batch: list[RawRecord] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def simulate(
    records: Iterable[RawRecord],
    adapter: Adapter,
    rules: RuleSet,
    on_actions: Callable[[list[Action]], None],
    state_path: Path | None = None,
    limits: PipelineLimits = _LIMITS,
    batch_size: int = 1000,
    guard: PiiGuard | None = None,
    vault: PiiVault | None = None,
    dedup: DedupSettings | None = None,
    scheduled: Mapping[str, ScheduledRule] | None = None,
    until: datetime | None = None,
    state_cache_size: int = _STATE_CACHE,
) -> SimulationSummary:
    """Run ``records`` through the service's own checkpoint (pipeline with the PII ``guard``, rules,
    dead letters, one SQLite store transaction per batch; encrypted values go to ``vault``) and
    report each committed batch's actions. A record the engine fails on is a dead letter, as in the
    service; repeats are dropped as the service drops them (``dedup``, default settings), on the
    records' source time. ``scheduled`` rules run on the event timeline, extended to ``until``
    (module notes); their actions are reported as they are executed. ``state_cache_size`` is the
    service's ``engine.state_cache_size``: how many users' states stay in memory between batches
    (the others are read back from the store)."""
    with tempfile.TemporaryDirectory(prefix="smartico-simulate-") as scratch:
        store = SqliteStore(state_path or Path(scratch) / "state.db")
        await store.open()
        if vault is not None:
            await vault.open()
        try:
            schedule = OfflineSchedule(store, scheduled or {}, on_actions, until) if scheduled or until else None
            summary = await _run(records, adapter, rules, on_actions, store, limits, batch_size,
                                 guard or PiiGuard(None), vault, dedup or DedupSettings(), schedule,
                                 state_cache_size)
            if schedule is not None:
                summary.actions += schedule.actions
                summary.scheduled_runs = len(await ScheduleStore(store).runs())
            return summary
        finally:
            await store.close()
            if vault is not None:
                await vault.close()


class _FileTransport:
    """A file as the checkpoint's transport: every partition is ours from its first record, nothing
    is read twice, and dead letters are only counted (there is no broker to publish them to)."""

    def __init__(self, ownership: Ownership) -> None:
        self._ownership = ownership

    async def claim(self, records: Sequence[RawRecord]) -> None:
        await self._ownership.claim_unowned(records)

    async def already_handled(self, records: Sequence[RawRecord], store: Store) -> list[RawRecord]:
        return []

    def progress(self, records: Sequence[RawRecord], next_offsets: Mapping[PartitionId, int]) -> Progress:
        return Progress(offsets=dict(next_offsets))

    async def publish_dead_letters(self, letters: Sequence[DeadLetter], timeout_s: float) -> None:
        return None

    async def fenced(self, error: FencedError) -> bool:
        raise RuntimeError(f"the simulation's store was taken over by another process: {error}")

    async def handled(self, batch: Handled) -> bool:
        return True


class _FreezeHeap(BaseObserver):
    """The service's heap policy (observability/collector.py): without it, the collector walks every
    cached state again and again, a third of the CPU of a long simulation."""

    def __init__(self, heap: FrozenHeap) -> None:
        self._heap = heap

    def committed(self, report: BatchReport) -> None:
        self._heap.after_batch()


class _Summarise(BaseObserver):
    def __init__(self, summary: SimulationSummary, on_actions: Callable[[list[Action]], None]) -> None:
        self._summary = summary
        self._on_actions = on_actions

    def committed(self, report: BatchReport) -> None:
        summary, result = self._summary, report.result
        self._on_actions([action for _, action in report.actions])
        summary.records += len(report.records)
        summary.actions += len(report.actions)
        summary.processed += result.count(OK)
        summary.deduplicated += result.count(DEDUPLICATED)
        summary.dead_lettered += result.count(DEAD_LETTERED)


async def _run(
    records: Iterable[RawRecord],
    adapter: Adapter,
    rules: RuleSet,
    on_actions: Callable[[list[Action]], None],
    store: SqliteStore,
    limits: PipelineLimits,
    batch_size: int,
    guard: PiiGuard,
    vault: PiiVault | None,
    dedup: DedupSettings,
    schedule: OfflineSchedule | None = None,
    state_cache_size: int = _STATE_CACHE,
) -> SimulationSummary:
    def offline() -> float:
        return _OFFLINE_NOW

    states = StateCache(store, state_cache_size)
    # The wall clock only caps a partition's watermark (a record stamped far ahead), as in the service.
    ownership = Ownership(store, "simulate", dedup, time.time, on_revoke=states.clear)
    pipeline = Pipeline(
        adapter, {s.value: s for s in Stream}, ownership.window_for, limits, guard=guard
    )
    summary = SimulationSummary()
    heap = FrozenHeap(EngineSettings().full_gc_interval_s, Metrics(CollectorRegistry()))
    env = CheckpointEnv(
        pipeline=pipeline, store=store, states=states, ownership=ownership,
        transport=_FileTransport(ownership), observer=Observers([_Summarise(summary, on_actions), _FreezeHeap(heap)]),
        rules=RuleEngine(rules), clock=offline, handled_retention_s=0.0, dead_letter_timeout_s=0.0, vault=vault,
        payments=PaymentDedup.from_settings(dedup),
    )
    never = asyncio.Event()

    async def commit(batch_records: list[RawRecord]) -> None:
        checkpoint = Checkpoint(env, batch_records, never)
        while (outcome := await checkpoint.attempt()) is not Outcome.COMMITTED:
            if outcome is not Outcome.REDO:  # one process, one store: nobody else can change it
                raise RuntimeError(f"the simulation's batch ended {outcome.value}")

    try:
        if schedule is None:
            for batch_records in _batches(records, batch_size):
                await commit(batch_records)
            return summary
        batch: list[RawRecord] = []
        for record in records:
            moment = event_time_of(record, adapter)
            if moment is not None:
                if schedule.due_before(moment):
                    # The scheduler's work at or before this record's time goes between the records
                    # before it (committed now) and this one.
                    if batch:
                        await commit(batch)
                        batch = []
                    await schedule.advance(moment)
                    states.clear()  # the scheduler wrote users behind the cache's back
                else:
                    await schedule.advance(moment)
            batch.append(record)
            if len(batch) >= batch_size:
                await commit(batch)
                batch = []
        if batch:
            await commit(batch)
        await schedule.finish()
        return summary
    finally:
        heap.close()  # the caller's process goes on with Python's own collection
