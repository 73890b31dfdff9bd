"""One batch's life, from records in hand to committed (invariants 3 to 5).

A :class:`Checkpoint` is made for every batch the transport hands over and owns it until it is
committed or left. Each :meth:`Checkpoint.attempt` runs these steps, in this order:

1. **claim**: the transport takes over partitions it learns of from deliveries (RabbitMQ
   single-active-consumer); Kafka learns them from rebalances and does nothing here.
2. **skip handled**: redelivered messages the store already holds as handled (RabbitMQ) are only
   acknowledged.
3. **owned only**: records of partitions revoked meanwhile are dropped; their new owner reads them.
4. **adapt**: decode and map to canonical events; what fails becomes a dead letter.
5. **guard and dedup**: personal data leaves the events (with the users' known countries for
   national phone numbers); repeats inside the window (of source time) are dropped.
6. **apply**: per user in order, a money event the user's state already holds is dropped as a
   repeat (``dedup.payments_horizon_s``); the others are folded into the state and run the rules.
7. **dead letters**: published, and acknowledged by the broker, before anything is committed
   (invariant 3: a record is either committed past as a dead letter, or not at all).
8. **write**: the PII vault first (its own database; a replay writes the same values again), then
   one store transaction: states, actions (outbox), history, dedup keys and the progress the
   transport keeps (Kafka offsets or RabbitMQ handled ids), fenced by the partitions' epochs.
9. **after the commit**: dedup windows and cached states advance, the transport commits (Kafka) or
   acknowledges (RabbitMQ), and observers hear ``committed``.

An attempt that does not commit returns why, forgets the states it changed, and the caller's retry
policy decides what comes next:

* ``REDO``: records failed in the engine, or the store refused their content (found by dry-run
  bisection, :meth:`_isolate_refused`): they are dead letters now and the next attempt runs without
  them; or partitions were fenced and dropped (Kafka), or claimed again (RabbitMQ).
* ``CONFLICT``: another member changed some of these users meanwhile; redo after a pause.
* ``LEFT``: the batch is not ours to commit (a fenced RabbitMQ channel, whose messages the broker
  hands to the new owner) or the service is stopping with dead letters unacknowledged. Nothing of
  it is committed; whoever owns it next reads it again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from smartico_stream.batch.observer import BatchObserver, BatchReport
from smartico_stream.batch.ownership import Ownership
from smartico_stream.batch.states import StateCache
from smartico_stream.engine.base import Engine
from smartico_stream.engine.batch import BatchEngine
from smartico_stream.engine.evaluator import RuleEngine
from smartico_stream.engine.payments import PaymentDedup
from smartico_stream.events.raw import PartitionId, RawRecord, UserKey
from smartico_stream.failpoints import Failpoints
from smartico_stream.observability.logging import get_logger
from smartico_stream.pii.vault import PiiVault
from smartico_stream.pipeline.dedup import Clock
from smartico_stream.pipeline.errors import DeadLetter
from smartico_stream.pipeline.pipeline import BatchResult, Pipeline, RecordId
from smartico_stream.sinks.dead_letters import DeadLetterDeliveryError
from smartico_stream.store.base import (
    BatchWrite,
    ConflictError,
    FencedError,
    Store,
    StoreRefusedRecord,
)

log = get_logger(__name__)

RETRY_S = (0.2, 0.5, 1, 2, 5, 10)


class Outcome(Enum):
    COMMITTED = "committed"
    REDO = "redo"
    CONFLICT = "conflict"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class Progress:
    """What the store records as a batch's progress: Kafka offsets, RabbitMQ handled ids, or
    replica views' cursors (encoded text)."""

    offsets: dict[PartitionId, int] = field(default_factory=dict)
    handled_ids: dict[PartitionId, list[str]] = field(default_factory=dict)
    cursors: dict[PartitionId, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Handled:
    """A committed batch, as the transport acknowledges it."""

    next_offsets: Mapping[PartitionId, int]
    last_timestamps: Mapping[PartitionId, int]
    records: Sequence[RawRecord] = ()
    already_handled: Sequence[RawRecord] = ()
    dead_lettered: frozenset[tuple[str, int]] = frozenset()  # (topic, offset)


class BatchTransport(Protocol):
    """What a checkpoint needs from the transport its batch came from."""

    async def claim(self, records: Sequence[RawRecord]) -> None:
        """Take over the partitions of ``records`` this instance does not own yet, where ownership
        is learnt from deliveries; a no-op where the broker assigns partitions."""

    async def already_handled(self, records: Sequence[RawRecord], store: Store) -> list[RawRecord]:
        """Redelivered records an earlier commit handled (to acknowledge only)."""
        ...

    def progress(self, records: Sequence[RawRecord], next_offsets: Mapping[PartitionId, int]) -> Progress:
        """What the commit of ``records`` stores as progress."""
        ...

    async def publish_dead_letters(self, letters: Sequence[DeadLetter], timeout_s: float) -> None: ...

    async def fenced(self, error: FencedError) -> bool:
        """The store fenced these partitions: True to redo the batch, False to leave it."""
        ...

    async def handled(self, batch: Handled) -> bool:
        """The batch is durable: commit / acknowledge it. False if the broker could not be told."""
        ...


@dataclass
class CheckpointEnv:
    """What every checkpoint of one process shares."""

    pipeline: Pipeline
    store: Store
    states: StateCache
    ownership: Ownership
    transport: BatchTransport
    observer: BatchObserver
    rules: RuleEngine
    clock: Clock
    handled_retention_s: float
    dead_letter_timeout_s: float
    vault: PiiVault | None = None
    payments: PaymentDedup | None = None  # money events already applied, per user (dedup.payments_*)
    engine: Engine | None = None  # replaces the rule engine (tests record what reaches it)
    failpoints: Failpoints = field(default_factory=lambda: Failpoints({}))


@dataclass
class _Applied:
    result: BatchResult
    batch: BatchEngine | None

    @property
    def touched(self) -> list[UserKey]:
        return list(self.batch.touched) if self.batch is not None else []


class Checkpoint:
    """Owns one batch until it is committed or left; see the module docstring for its steps."""

    def __init__(self, env: CheckpointEnv, records: list[RawRecord], stop: asyncio.Event) -> None:
        self._env = env
        self._records = records
        self._stop = stop
        self._started = time.perf_counter()
        self._poisoned: dict[RecordId, Exception] = {}
        self._already: list[RawRecord] = []
        self._evicted_before = env.ownership.dedup_evicted()
        self._claimed = False

    async def attempt(self) -> Outcome:
        """Run the steps once; what became of the batch."""
        env = self._env
        if not self._claimed:
            await env.transport.claim(self._records)
            self._claimed = True
        self._already += await env.transport.already_handled(self._records, env.store)
        if self._already:
            done = {id(r) for r in self._already}
            self._records = [r for r in self._records if id(r) not in done]
        owned = [r for r in self._records if (r.topic, r.partition) in env.ownership.epochs]
        if len(owned) < len(self._records):
            self._records = owned  # partitions revoked meanwhile: their new owner reads them
            return Outcome.REDO
        if not self._records:
            return await self._acknowledge_only()
        stages: dict[str, float] = {}
        try:
            applied = await self._process(self._records, stages)
        except Exception as exc:
            if self._refusal(exc) is None:
                raise
            await self._isolate_refused()  # e.g. a user id the store cannot even look up
            return Outcome.REDO
        result = applied.result
        if result.engine_failures:
            self._poisoned.update(result.engine_failures)
            env.states.forget(applied.touched)
            env.observer.retried("engine_error")
            return Outcome.REDO
        started = time.perf_counter()
        if not await self._publish_dead_letters(result):
            return Outcome.LEFT
        stages["dead_letters"] = time.perf_counter() - started
        return await self._write(applied, stages)

    async def _write(self, applied: _Applied, stages: dict[str, float]) -> Outcome:
        env, result = self._env, applied.result
        started = time.perf_counter()
        try:
            if result.pii and env.vault is not None:
                await env.vault.write(result.pii)
            env.failpoints.hit("before_store_commit")
            # A message id the store refused is not recorded as handled: a redelivery is refused again.
            handled = [r for r in self._records if not self._refused(r)] if self._poisoned else self._records
            write = self._batch_write(applied, handled)
            commit_started = time.perf_counter()
            await env.store.commit(write)
            commit_seconds = time.perf_counter() - commit_started
        except FencedError as exc:
            env.states.forget(applied.touched)
            env.observer.retried("fenced")
            return Outcome.REDO if await env.transport.fenced(exc) else Outcome.LEFT
        except ConflictError as exc:
            env.states.forget(applied.touched)
            env.observer.retried("conflict")
            log.info("users changed concurrently; redoing the batch", users=len(exc.users))
            return Outcome.CONFLICT
        except Exception as exc:
            if self._refusal(exc) is None:
                raise  # not the content: a lost connection, a bug; the service stops and says so
            env.states.forget(applied.touched)
            await self._isolate_refused()
            return Outcome.REDO
        stages["write"] = time.perf_counter() - started
        self._after_commit(applied)
        env.failpoints.hit("after_store_commit")
        dead = frozenset((letter.record.topic, letter.record.offset) for letter in result.dead_letters)
        await env.transport.handled(
            Handled(result.next_offsets, result.last_timestamps, self._records, self._already, dead)
        )
        batch = applied.batch
        env.observer.committed(
            BatchReport(
                records=self._records, already_handled=self._already, result=result,
                actions=batch.actions if batch else [], history=batch.history if batch else [],
                seconds=time.perf_counter() - self._started, commit_seconds=commit_seconds,
                stage_seconds=stages, dedup_evicted=env.ownership.dedup_evicted() - self._evicted_before,
            )
        )
        return Outcome.COMMITTED

    async def _acknowledge_only(self) -> Outcome:
        """Everything left was a redelivery of handled messages (or of partitions now fenced)."""
        await self._env.transport.handled(Handled({}, {}, (), self._already))
        self._env.observer.committed(
            BatchReport(records=[], already_handled=self._already, result=BatchResult(),
                        seconds=time.perf_counter() - self._started)
        )
        return Outcome.COMMITTED

    # steps ----------------------------------------------------------------------------------------

    async def _process(self, records: list[RawRecord], stages: dict[str, float]) -> _Applied:
        """Steps 4 to 6 on ``records``: adapt, guard and dedup, apply."""
        env = self._env
        started = time.perf_counter()
        adapted = env.pipeline.adapt(records, self._poisoned)
        adapted_at = time.perf_counter()
        known = await env.states.existing(adapted.users_needing_region())
        countries = {key: state.country for key, state in known.items()}
        result = env.pipeline.protect_and_dedup(adapted, countries.get)
        guarded_at = time.perf_counter()
        batch: BatchEngine | None = None
        if env.engine is not None:
            env.pipeline.apply(result, env.engine)
        else:
            batch = BatchEngine(env.rules, await env.states.for_users(result.users(), known), env.payments)
            env.pipeline.apply(result, batch)
        stages["adapt"] = adapted_at - started
        stages["guard_dedup"] = guarded_at - adapted_at
        stages["apply"] = time.perf_counter() - guarded_at
        return _Applied(result, batch)

    def _batch_write(self, applied: _Applied, records: list[RawRecord]) -> BatchWrite:
        env, result, batch = self._env, applied.result, applied.batch
        progress = env.transport.progress(records, result.next_offsets)
        now = env.clock()
        return BatchWrite(
            epochs={tp: env.ownership.epochs[tp] for tp in result.next_offsets},
            offsets=progress.offsets,
            users=list(batch.touched.values()) if batch else [],
            actions=batch.actions if batch else [],
            history=list(batch.history) if batch else [],
            dedup_added=result.dedup_added,
            dedup_horizon=result.dedup_horizon,
            handled_messages=progress.handled_ids,
            handled_at=now,
            handled_horizon=now - env.handled_retention_s,
            cursors=progress.cursors,
        )

    def _after_commit(self, applied: _Applied) -> None:
        env = self._env
        for tp, keys in applied.result.dedup_added.items():
            window = env.ownership.windows.get(tp)
            if window is not None:
                for digest, first_seen in keys:
                    window.add(digest, first_seen)
        if applied.batch is not None:
            env.states.advance(applied.batch.touched)

    async def _publish_dead_letters(self, result: BatchResult) -> bool:
        """Step 7, retried until the broker acknowledges; False when stopping first."""
        env = self._env
        if result.dead_letters:
            env.observer.dead_lettered(result.dead_letters)
        attempt = 0
        while True:
            try:
                await env.transport.publish_dead_letters(result.dead_letters, env.dead_letter_timeout_s)
                return True
            except (DeadLetterDeliveryError, TimeoutError) as exc:
                delay = RETRY_S[min(attempt, len(RETRY_S) - 1)]
                log.error("dead letters not acknowledged; retrying before commit", error=str(exc), retry_in_s=delay)
                attempt += 1
                if self._stop.is_set():
                    return False
                await asyncio.sleep(delay)
                env.observer.alive()  # blocked by the broker, not stuck: liveness must not restart us

    # records the store refuses (invariant 3 at the store) ------------------------------------------

    def _refused(self, record: RawRecord) -> bool:
        return isinstance(self._poisoned.get((record.topic, record.partition, record.offset)), StoreRefusedRecord)

    def _refusal(self, exc: BaseException) -> str | None:
        """Why the store or the PII vault refused what was written, if that is what ``exc`` means."""
        reason = self._env.store.refusal(exc)
        if reason is None and self._env.vault is not None:
            reason = self._env.vault.refusal(exc)
        return reason

    async def _isolate_refused(self) -> None:
        """The records whose content the store refuses become dead letters (stage "store"), so the
        batch is redone without them (docs/exactly-once.md)."""
        try:
            refused = await self._refused_records()
        except (FencedError, ConflictError):
            return  # the redo meets it again, where it is handled
        self._poisoned.update(refused)
        self._env.observer.retried("store_content")
        self._env.observer.alive()

    async def _refused_records(self) -> dict[RecordId, Exception]:
        """Found by bisection with dry-run writes (written, then rolled back): O(k log n) probes for k
        such records among n. Raises when none explains the refusal (it does not happen again, or
        only several records together cause it): a loud stop, never a silent loop."""
        started = time.perf_counter()
        pending = [r for r in self._records if (r.topic, r.partition, r.offset) not in self._poisoned]
        reason = await self._probe(pending)
        found = await self._bisect(pending, reason) if reason is not None else {}
        if not found:
            # Without the cause chained: a database's message may quote the value.
            raise RuntimeError(
                "the store refused this batch's data and no single record explains it "
                f"({reason or 'not reproduced by a dry run'}); stopping instead of retrying forever"
            ) from None
        log.warning("the store refused records of this batch; dead-lettering them and redoing the batch",
                    records=len(found), reason=next(iter(found.values())), batch=len(pending),
                    search_s=round(time.perf_counter() - started, 3))
        return {record_id: StoreRefusedRecord(why) for record_id, why in found.items()}

    async def _bisect(self, subset: list[RawRecord], reason: str) -> dict[RecordId, str]:
        """``subset`` is refused (for ``reason``): the records of it that are refused alone."""
        if len(subset) == 1:
            record = subset[0]
            return {(record.topic, record.partition, record.offset): reason}
        middle = len(subset) // 2
        found: dict[RecordId, str] = {}
        for half in (subset[:middle], subset[middle:]):
            half_reason = await self._probe(half)
            if half_reason is not None:
                found.update(await self._bisect(half, half_reason))
        return found

    async def _probe(self, records: list[RawRecord]) -> str | None:
        """Steps 4 to 8 on ``records`` as a batch of their own, written as a dry run: why the store
        refuses it, or ``None``. The cached states it touches are dropped afterwards."""
        env = self._env
        env.observer.alive()
        applied: _Applied | None = None
        try:
            applied = await self._process(records, {})
            if applied.result.pii and env.vault is not None:
                await env.vault.probe(applied.result.pii)
            await env.store.probe(self._batch_write(applied, records))
        except (FencedError, ConflictError):
            raise
        except Exception as exc:
            reason = self._refusal(exc)
            if reason is None:
                raise
            return reason
        finally:
            if applied is not None:
                env.states.forget(applied.touched)
        return None
