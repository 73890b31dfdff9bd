"""``smartico-stream simulate``: raw operator records from a JSONL file through the real pipeline,
rules and store, offline and on event time. The same input always gives byte-identical output.

Input lines are either envelopes ``{"stream": "payments", "key": "u1", "value": {...}}`` (the
golden-file input format; an optional ``"timestamp_ms"`` is the broker timestamp the record had,
which the dedup window then measures on, as the service does) or bare operator messages, which then
need ``stream`` to be given.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from smartico_stream.adapters.base import Adapter
from smartico_stream.config import DedupSettings
from smartico_stream.engine.actions import Action
from smartico_stream.engine.batch import BatchEngine
from smartico_stream.engine.evaluator import RuleEngine
from smartico_stream.engine.payments import PaymentDedup
from smartico_stream.engine.rules import RuleSet
from smartico_stream.engine.state import UserState
from smartico_stream.events.raw import RawRecord, Stream
from smartico_stream.pii.guard import PiiGuard
from smartico_stream.pii.vault import PiiVault
from smartico_stream.pipeline.dedup import DedupWindow
from smartico_stream.pipeline.pipeline import (
    DEAD_LETTERED,
    DEDUPLICATED,
    OK,
    Pipeline,
    PipelineLimits,
    load_json_keeping_literals,
)
from smartico_stream.store import BatchWrite
from smartico_stream.store.sqlite import SqliteStore

# A fresh store holds no dedup keys: load them all (there are none).
_OFFLINE_NOW = 0.0
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
) -> SimulationSummary:
    """Run ``records`` through the pipeline (with the PII ``guard``; encrypted values go to
    ``vault``), the rules and an SQLite store; report actions per batch. Repeats are dropped as the
    service drops them (``dedup``, default settings): on the records' source time."""
    with tempfile.TemporaryDirectory(prefix="smartico-simulate-") as scratch:
        store = SqliteStore(state_path or Path(scratch) / "state.db")
        await store.open()
        if vault is not None:
            await vault.open()
        try:
            return await _run(records, adapter, rules, on_actions, store, limits, batch_size,
                              guard or PiiGuard(None), vault, dedup or DedupSettings())
        finally:
            await store.close()
            if vault is not None:
                await vault.close()


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
) -> SimulationSummary:
    windows: dict[tuple[str, int], DedupWindow] = {}
    epochs: dict[tuple[str, int], int] = {}

    def window_for(topic: str, partition: int) -> DedupWindow:
        return windows.setdefault((topic, partition), DedupWindow(dedup.window_seconds, dedup.max_entries))

    pipeline = Pipeline(adapter, {s.value: s for s in Stream}, window_for, limits, guard=guard)
    engine = RuleEngine(rules)
    summary = SimulationSummary()
    for batch_records in _batches(records, batch_size):
        missing = sorted({(r.topic, r.partition) for r in batch_records} - set(epochs))
        if missing:
            leases = await store.acquire(missing, "simulate", dedup_since=_OFFLINE_NOW)
            epochs.update({tp: lease.epoch for tp, lease in leases.items()})
        adapted = pipeline.adapt(batch_records)
        needing = await store.load_users(adapted.users_needing_region())
        countries = {key: state.country for key, state in needing.items()}
        result = pipeline.protect_and_dedup(adapted, countries.get)
        users = result.users()
        loaded = await store.load_users(users)
        states = {key: loaded.get(key) or UserState(brand=key[0], user=key[1]) for key in users}
        batch = BatchEngine(engine, states, PaymentDedup.from_settings(dedup))
        pipeline.apply(result, batch)
        if result.engine_failures:
            # Offline, an engine failure is a bug to see, not to hide behind a dead letter.
            (record_id, error), *_ = result.engine_failures.items()
            raise RuntimeError(f"engine failed on record {record_id}: {error!r}") from error
        if vault is not None:
            await vault.write(result.pii)
        await store.commit(
            BatchWrite(
                epochs={tp: epochs[tp] for tp in result.next_offsets},
                users=list(batch.touched.values()),
                actions=batch.actions,
                history=batch.history,
                dedup_added=result.dedup_added,
                dedup_horizon=result.dedup_horizon,
            )
        )
        for tp, keys in result.dedup_added.items():
            for digest, first_seen in keys:
                window_for(*tp).add(digest, first_seen)
        on_actions([action for _, action in batch.actions])
        summary.records += len(batch_records)
        summary.actions += len(batch.actions)
        summary.processed += result.count(OK)
        summary.deduplicated += result.count(DEDUPLICATED)
        summary.dead_lettered += result.count(DEAD_LETTERED)
    return summary
