"""The service: one consumer-group member running the pipeline, batch by batch.

Per batch the checkpoint order is fixed (as in Quix Streams): process every record; make the dead
letters durable; commit one store transaction holding states, actions (outbox), history, dedup keys
and source offsets; then commit the offsets to Kafka (for lag tools). A crash before the store
commit redoes the batch from the stored offsets; a crash after it resumes past the batch, because
on assignment the consumer starts from the offsets in the store, not the broker's (invariant 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cachetools import LRUCache

from smartico_stream.adapters.base import Adapter
from smartico_stream.adapters.registry import load_adapter
from smartico_stream.config import EXIT_CONFIG, Settings, StartupError
from smartico_stream.engine.base import Engine
from smartico_stream.engine.batch import BatchEngine
from smartico_stream.engine.evaluator import RuleEngine
from smartico_stream.engine.payments import PaymentDedup
from smartico_stream.engine.rules import RuleSet, load_rules
from smartico_stream.engine.state import UserState
from smartico_stream.events.raw import PartitionId, RawRecord, UserKey
from smartico_stream.failpoints import Failpoints
from smartico_stream.observability.collector import FrozenHeap
from smartico_stream.observability.health import Health
from smartico_stream.observability.http import MetricsServer
from smartico_stream.observability.logging import RateLimiter, get_logger
from smartico_stream.observability.metrics import Metrics
from smartico_stream.pii.setup import pii_components
from smartico_stream.pipeline.dedup import Clock, DedupWindow
from smartico_stream.pipeline.pipeline import (
    DEAD_LETTERED,
    DEDUPLICATED,
    OK,
    BatchResult,
    Pipeline,
    PipelineLimits,
    RecordId,
)
from smartico_stream.sinks.base import ActionSink
from smartico_stream.sinks.dead_letters import DeadLetterDeliveryError
from smartico_stream.sinks.registry import build_sinks
from smartico_stream.sinks.relay import OutboxRelay
from smartico_stream.sources.kafka import connection_config
from smartico_stream.store import BatchWrite, FencedError, Lease, Store, open_store_from_url
from smartico_stream.store.base import ConflictError, StoreRefusedRecord
from smartico_stream.transports import transport_for

log = get_logger(__name__)

_RETRY_S = (0.2, 0.5, 1, 2, 5, 10)
# Expired history is deleted between batches, this many rows at a time (tens of milliseconds on
# SQLite, so batches keep flowing), again at the next turn while there is more, else after the
# interval.
_HISTORY_PRUNE_ROWS = 5_000
_HISTORY_PRUNE_INTERVAL_S = 60.0
_BACKLOG_CHECK_EVERY_S = 1.0


@dataclass
class ServiceStats:
    """Running totals since start (what the demo summarises)."""

    consumed: int = 0
    processed: int = 0
    deduplicated: int = 0
    dead_lettered: int = 0
    events_applied: int = 0
    actions: int = 0
    batches: int = 0
    first_record_at: float | None = None
    last_batch_at: float | None = None


class Ownership:
    """The partitions this instance owns: their store leases (epochs) and dedup windows.

    Called by the Kafka source from inside its client calls; the store is reached through the event
    loop, which is free at that moment (it is awaiting the very call that runs the callback)."""

    def __init__(self, settings: Settings, store: Store, clock: Clock, on_revoke: Callable[[], None]) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._on_revoke = on_revoke
        self.loop: asyncio.AbstractEventLoop | None = None
        self.epochs: dict[PartitionId, int] = {}
        self.windows: dict[PartitionId, DedupWindow] = {}

    def partitions_assigned(self, partitions: list[PartitionId]) -> Mapping[PartitionId, int]:
        """Kafka assignment (called on the Kafka thread): take the leases, return where to resume."""
        if self.loop is None:
            raise RuntimeError("partitions were assigned before the service's event loop was set")
        acquiring = self._store.acquire(partitions, self._settings.instance_id, self._since())
        return self._adopt(asyncio.run_coroutine_threadsafe(acquiring, self.loop).result(timeout=60))

    async def claim(self, partitions: list[PartitionId]) -> None:
        """Take over partitions (RabbitMQ queues) this instance just started receiving from: with
        single-active-consumer, the first delivery is how a member learns it became the owner."""
        self._adopt(await self._store.acquire(partitions, self._settings.instance_id, self._since()))

    def _since(self) -> float:
        return float("-inf")  # every key the store kept: each batch deleted those its watermark passed

    def _adopt(self, leases: Mapping[PartitionId, Lease]) -> dict[PartitionId, int]:
        dedup = self._settings.dedup
        start: dict[PartitionId, int] = {}
        for tp, lease in leases.items():
            self.epochs[tp] = lease.epoch
            if dedup.enabled:
                window = DedupWindow(dedup.window_seconds, dedup.max_entries, self._clock)
                for digest, first_seen in lease.dedup_keys:
                    window.add(digest, first_seen)
                self.windows[tp] = window
            if lease.next_offset is not None:
                start[tp] = lease.next_offset
        return start

    def partitions_revoked(self, partitions: list[PartitionId], lost: bool) -> None:
        for tp in partitions:
            self.epochs.pop(tp, None)
            self.windows.pop(tp, None)
        self._on_revoke()

    def window_for(self, topic: str, partition: int) -> DedupWindow | None:
        return self.windows.get((topic, partition))

    def dedup_size(self) -> int:
        return sum(len(w) for w in self.windows.values())

    def dedup_evicted(self) -> int:
        return sum(w.evicted for w in self.windows.values())


async def _starting(opening: Awaitable[None], setting: str, timeout_setting: str) -> None:
    """Open a store at start; what stops it is one StartupError naming ``setting`` (and the resource):
    PostgreSQL's are raised by its connect, SQLite's are the file system's (a directory that cannot be
    created or written is the configuration's to fix)."""
    try:
        await opening
    except StartupError as exc:
        raise exc.about(setting, timeout_setting) from None
    except (OSError, sqlite3.Error) as exc:
        where = f" at {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StartupError(f"{setting}: cannot open the SQLite database{where}: {reason}", EXIT_CONFIG) from None


async def _started(starting: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Await ``starting`` unless ``stop`` is set first (then cancel it and return False)."""
    start = asyncio.ensure_future(starting)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait((start, stopped), return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not start.done():
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await start
        return False
    start.result()
    return True


def _refused(poisoned: Mapping[RecordId, Exception], record: RawRecord) -> bool:
    """The store refused this record's content (it is a dead letter with stage "store")."""
    return isinstance(poisoned.get((record.topic, record.partition, record.offset)), StoreRefusedRecord)


class Service:
    """Build, then ``await service.run(stop_event)``.

    ``engine`` replaces the rule engine with any object implementing the pipeline's Engine protocol
    (tests use a recording engine); everything else (store, offsets, dedup keys) stays as in
    production. ``failpoints`` (crash tests only) makes the process SIGKILL itself at a checkpoint."""

    def __init__(
        self,
        settings: Settings,
        adapter: Adapter | None = None,
        engine: Engine | None = None,
        metrics: Metrics | None = None,
        clock: Clock = time.time,
        store: Store | None = None,
        rules: RuleSet | None = None,
        sinks: list[ActionSink] | None = None,
        failpoints: Failpoints | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.health = Health(heartbeat_timeout_s=settings.metrics.heartbeat_timeout_s)
        self.stats = ServiceStats()
        self.store = store or open_store_from_url(
            settings.store.url, settings.store.db_schema, settings.store.sqlite_synchronous,
            settings.store.connect_timeout_s,
        )
        self._custom_engine = engine
        if rules is None:
            rules = load_rules(settings.engine.rules) if settings.engine.rules else RuleSet.of(())
        self.rule_engine = RuleEngine(rules)
        self._cache: LRUCache[UserKey, UserState] = LRUCache(maxsize=max(settings.engine.state_cache_size, 1))
        self._clock = clock
        self.ownership = Ownership(settings, self.store, clock, on_revoke=self._cache.clear)
        self.pii = pii_components(settings.pii)
        self.transport = transport_for(settings, self.ownership, self.metrics, self.pii.protect_dead_letters)
        self.pipeline = Pipeline(
            adapter=adapter or load_adapter(settings.adapter),
            stream_of_topic=self.transport.stream_of_topic,
            dedup_window_for=self.ownership.window_for,
            limits=PipelineLimits(settings.limits.max_message_bytes, settings.limits.require_key),
            guard=self.pii.guard,
        )
        kafka = settings.kafka
        connection = {**connection_config(kafka.config), **kafka.producer_config}
        sinks = sinks if sinks is not None else build_sinks(settings.sinks, connection)
        outbox = settings.outbox
        # Crash points only ever come from the caller (the crash tests' entry point), never from
        # the configuration or the environment: a live service cannot be told to kill itself.
        self.failpoints = failpoints if failpoints is not None else Failpoints({})
        self.relay = OutboxRelay(
            self.store, sinks, lambda: dict(self.ownership.epochs), self.metrics,
            batch_size=outbox.batch_size, poll_interval_s=outbox.poll_interval_s, linger_s=outbox.linger_s,
            retry_backoff_s=outbox.retry_backoff_s, max_backoff_s=outbox.max_backoff_s,
            failpoints=self.failpoints, retention_s=outbox.retention_s, prune_interval_s=outbox.prune_interval_s,
        )
        self.sinks = sinks
        self.metrics_server: MetricsServer | None = None
        self._heap = FrozenHeap(settings.engine.full_gc_interval_s, self.metrics)
        self._log_limiter = RateLimiter()
        self._paused = False
        self._backlog_checked_at = 0.0
        self._history_prune_due = 0.0

    @property
    def paused(self) -> bool:
        """Consumption is paused by outbox backpressure (``outbox.max_backlog``)."""
        return self._paused

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish the batch in hand, commit and leave the group."""
        self.ownership.loop = asyncio.get_running_loop()
        await _starting(self.store.open(), "store.url", "store.connect_timeout_s")
        if self.pii.vault is not None:
            await _starting(self.pii.vault.open(), "pii.store_url", "pii.store_connect_timeout_s")
        if self.settings.metrics.enabled and self.metrics_server is None:
            try:
                metrics = self.settings.metrics
                server = MetricsServer(self.metrics, self.health, metrics.host, metrics.port)
            except StartupError as exc:
                raise exc.about("metrics.port") from None
            self.metrics_server = server.start()
            log.info("metrics listening", port=self.metrics_server.port)
        relay_stop = asyncio.Event()
        relay_task = asyncio.create_task(self.relay.run(relay_stop))
        try:
            # Inside the try: a failed start still closes what opened. A broker unreachable at start is
            # retried by the transport; a signal meanwhile stops the service without waiting for it.
            if not await _started(self.transport.start(), stop):
                return
            while not stop.is_set():
                await self._apply_backpressure()
                records = await self.transport.poll()
                self._beat()
                self._update_readiness()
                if records:
                    await self._handle(records, stop)
                else:
                    await self.transport.idle()
                self.metrics.dedup_keys.set(self.ownership.dedup_size())
                await self._prune_history_when_due()
                if relay_task.done():
                    relay_task.result()  # a relay crash is a service crash, not a silent stall
        finally:
            self.health.set_ready(False, "shutting down")
            relay_stop.set()
            self.relay.wake()
            await asyncio.gather(relay_task, return_exceptions=True)
            await self.relay.drain(timeout_s=5.0)  # only now: two deliverers would repeat actions
            await self.transport.close()
            for sink in self.sinks:
                await sink.close()
            await self.store.close()
            if self.pii.vault is not None:
                await self.pii.vault.close()
            if self.metrics_server is not None:
                self.metrics_server.stop()
            self._heap.close()
            log.info("stopped", consumed=self.stats.consumed, dead_lettered=self.stats.dead_lettered)

    async def _prune_history_when_due(self) -> None:
        retention = self.settings.store.history_retention_s
        now = time.monotonic()
        if not retention or now < self._history_prune_due:
            return
        deleted = await self.store.prune_history(datetime.now(UTC) - timedelta(seconds=retention), _HISTORY_PRUNE_ROWS)
        self.metrics.history_pruned.inc(deleted)
        self._history_prune_due = now if deleted else now + _HISTORY_PRUNE_INTERVAL_S

    # one batch ---------------------------------------------------------------------------------

    async def _handle(self, records: list[RawRecord], stop: asyncio.Event) -> None:
        started = time.perf_counter()
        evicted_before = self.ownership.dedup_evicted()
        poisoned: dict[RecordId, Exception] = {}
        attempt = 0
        consumed = len(records)
        if self.transport.claims_on_delivery:
            unowned = sorted({(r.topic, r.partition) for r in records} - set(self.ownership.epochs))
            if unowned:
                await self.ownership.claim(unowned)
        already: list[RawRecord] = []
        while records:
            if self.transport.redelivers:
                # Checked on every attempt: a redo after a conflict may find that the member this
                # queue just moved from committed some of these messages meanwhile.
                records, skipped = await self._skip_handled(records)
                already += skipped
                if not records:
                    break
            owned = [r for r in records if (r.topic, r.partition) in self.ownership.epochs]
            if len(owned) < len(records):
                records = owned  # partitions revoked meanwhile: their new owner reads them
                continue
            adapted = self.pipeline.adapt(records, poisoned)
            try:
                known = await self._states(adapted.users_needing_region())
                countries = {key: state.country for key, state in known.items()}
                result = self.pipeline.protect_and_dedup(adapted, countries.get)
                batch = await self._apply(result, known)
            except Exception as exc:
                if self._refusal(exc) is None:
                    raise
                await self._isolate_refused(records, poisoned)  # e.g. a user id the store cannot even look up
                continue
            if result.engine_failures:
                poisoned.update(result.engine_failures)
                self._forget(batch.touched if batch else {})
                self.metrics.batch_retries.labels("engine_error").inc()
                continue
            if not await self._publish_dead_letters(result, stop):
                return  # stopping with dead letters unacknowledged: nothing of this batch is committed
            try:
                if result.pii and self.pii.vault is not None:
                    # Its own database, so its own transaction, first: a crash before the state commit
                    # replays the batch, and writing the same encrypted values again is harmless.
                    await self.pii.vault.write(result.pii)
                self.failpoints.hit("before_store_commit")
                # A message id the store refused is not recorded as handled: a redelivery is refused again.
                handled = [r for r in records if not _refused(poisoned, r)] if poisoned else records
                write = self._batch_write(result, batch, handled)
                commit_started = time.perf_counter()
                await self.store.commit(write)
            except FencedError as exc:
                self.metrics.batch_retries.labels("fenced").inc()
                self._forget(batch.touched if batch else {})
                if self.transport.claims_on_delivery:
                    if not self.transport.still_owner():
                        # Our channel died: the broker hands these messages to the new active
                        # consumer. Neither commit nor ack them.
                        log.warning("fenced after losing the channel; leaving the batch to the new owner")
                        return
                    # Still delivering to us on a live channel: the queue moved away and back. Take
                    # the lease anew and redo; acking the batch unhandled would delete it.
                    log.warning("lease was taken meanwhile; claiming the queues again", error=str(exc))
                    await self.ownership.claim(exc.partitions)
                    continue
                log.warning("fenced: dropping partitions taken over by another member", error=str(exc))
                self.ownership.partitions_revoked(exc.partitions, lost=True)
                continue
            except ConflictError as exc:
                self._forget(batch.touched if batch else {})
                self.metrics.batch_retries.labels("conflict").inc()
                if stop.is_set():
                    return  # nothing of this batch is committed; it is read again on restart
                await asyncio.sleep(_RETRY_S[min(attempt, len(_RETRY_S) - 1)])
                self._beat()
                attempt += 1
                log.info("users changed concurrently; redoing the batch", users=len(exc.users))
                continue
            except Exception as exc:
                if self._refusal(exc) is None:
                    raise  # not the content: a lost connection, a bug; the service stops and says so
                self._forget(batch.touched if batch else {})
                await self._isolate_refused(records, poisoned)
                continue
            self.metrics.store_commit_seconds.observe(time.perf_counter() - commit_started)
            self._after_commit(result, batch)
            self._heap.after_batch()
            self.failpoints.hit("after_store_commit")
            await self.transport.handled(result.next_offsets, result.last_timestamps)
            self.relay.wake()
            self._record(records, result, batch, time.perf_counter() - started,
                         self.ownership.dedup_evicted() - evicted_before, already)
            return
        if already or consumed:
            # Everything in the batch was a redelivery of handled messages (or of fenced partitions).
            await self.transport.handled({}, {})
            self._record([], BatchResult(), None, time.perf_counter() - started, 0, already)

    async def _isolate_refused(self, records: list[RawRecord], poisoned: dict[RecordId, Exception]) -> None:
        """Invariant 3 at the store: the records whose content it refuses become dead letters (stage
        "store"), added to ``poisoned`` so the batch is redone without them (docs/exactly-once.md)."""
        try:
            refused = await self._refused_records(records, poisoned)
        except (FencedError, ConflictError):
            return  # the redo meets it again, where it is handled
        poisoned.update(refused)
        self.metrics.batch_retries.labels("store_content").inc()
        self._beat()

    def _refusal(self, exc: BaseException) -> str | None:
        """Why the store or the PII vault refused what was written, if that is what ``exc`` means."""
        reason = self.store.refusal(exc)
        if reason is None and self.pii.vault is not None:
            reason = self.pii.vault.refusal(exc)
        return reason

    async def _refused_records(
        self, records: list[RawRecord], poisoned: Mapping[RecordId, Exception]
    ) -> dict[RecordId, Exception]:
        """The records of a refused batch whose content the store refuses on its own, found by
        bisection with dry-run writes (written, then rolled back): O(k log n) probes for k such
        records among n. Raises when none explains the refusal (it does not happen again, or only
        several records together cause it): a loud stop, never a silent loop."""
        started = time.perf_counter()
        pending = [r for r in records if (r.topic, r.partition, r.offset) not in poisoned]
        reason = await self._probe(pending, poisoned)
        found = await self._bisect(pending, poisoned, reason) if reason is not None else {}
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

    async def _bisect(
        self, subset: list[RawRecord], poisoned: Mapping[RecordId, Exception], reason: str
    ) -> dict[RecordId, str]:
        """``subset`` is refused (for ``reason``): the records of it that are refused alone."""
        if len(subset) == 1:
            record = subset[0]
            return {(record.topic, record.partition, record.offset): reason}
        middle = len(subset) // 2
        found: dict[RecordId, str] = {}
        for half in (subset[:middle], subset[middle:]):
            half_reason = await self._probe(half, poisoned)
            if half_reason is not None:
                found.update(await self._bisect(half, poisoned, half_reason))
        return found

    async def _probe(self, records: list[RawRecord], poisoned: Mapping[RecordId, Exception]) -> str | None:
        """Run ``records`` through the pipeline and the engine as a batch of their own and write it
        as a dry run: why the store refuses it, or ``None``. The cached states it touches are
        dropped, so nothing of it outlives the probe."""
        self._beat()
        adapted = self.pipeline.adapt(records, poisoned)
        batch: BatchEngine | None = None
        try:
            known = await self._states(adapted.users_needing_region())
            countries = {key: state.country for key, state in known.items()}
            result = self.pipeline.protect_and_dedup(adapted, countries.get)
            batch = await self._apply(result, known)
            if result.pii and self.pii.vault is not None:
                await self.pii.vault.probe(result.pii)
            await self.store.probe(self._batch_write(result, batch, records))
        except (FencedError, ConflictError):
            raise
        except Exception as exc:
            reason = self._refusal(exc)
            if reason is None:
                raise
            return reason
        finally:
            self._forget(batch.touched if batch else {})
        return None

    async def _skip_handled(self, records: list[RawRecord]) -> tuple[list[RawRecord], list[RawRecord]]:
        """Redelivered messages whose ids the store has: handled before a crash, ack them only."""
        redelivered: dict[PartitionId, list[str]] = {}
        for record in records:
            # An id with a NUL cannot have been stored (the record was refused), and PostgreSQL
            # would refuse the very lookup: it is fresh, and the batch dead-letters it.
            if record.redelivered and record.message_id and "\x00" not in record.message_id:
                redelivered.setdefault((record.topic, record.partition), []).append(record.message_id)
        if not redelivered:
            return records, []
        done: set[tuple[PartitionId, str]] = set()
        for tp, keys in redelivered.items():
            done.update((tp, key) for key in await self.store.handled(tp, keys))
        fresh = [r for r in records if ((r.topic, r.partition), r.message_id) not in done]
        skipped = [r for r in records if ((r.topic, r.partition), r.message_id) in done]
        return fresh, skipped

    async def _states(
        self, users: Sequence[UserKey], known: Mapping[UserKey, UserState] = {}
    ) -> dict[UserKey, UserState]:
        """The committed states of these users that exist: from ``known``, the cache, else the store."""
        found = {key: state for key in users if (state := known.get(key) or self._cache.get(key)) is not None}
        missing = [key for key in users if key not in found]
        if missing:
            found.update(await self.store.load_users(missing))
        return found

    async def _apply(self, result: BatchResult, known: Mapping[UserKey, UserState]) -> BatchEngine | None:
        if self._custom_engine is not None:
            self.pipeline.apply(result, self._custom_engine)
            return None
        users = result.users()
        found = await self._states(users, known)
        states = {key: found.get(key) or UserState(brand=key[0], user=key[1]) for key in users}
        batch = BatchEngine(self.rule_engine, states, PaymentDedup.from_settings(self.settings.dedup))
        self.pipeline.apply(result, batch)
        return batch

    def _batch_write(self, result: BatchResult, batch: BatchEngine | None, records: list[RawRecord]) -> BatchWrite:
        partitions = set(result.next_offsets)
        handled_ids: dict[PartitionId, list[str]] = {}
        if self.transport.redelivers:
            for record in records:
                if record.message_id:
                    handled_ids.setdefault((record.topic, record.partition), []).append(record.message_id)
        return BatchWrite(
            epochs={tp: self.ownership.epochs[tp] for tp in partitions},
            offsets=dict(result.next_offsets) if not self.transport.redelivers else {},
            users=list(batch.touched.values()) if batch else [],
            actions=batch.actions if batch else [],
            history=list(batch.history) if batch else [],
            dedup_added=result.dedup_added,
            dedup_horizon=result.dedup_horizon,
            handled_messages=handled_ids,
            handled_at=self._clock(),
            handled_horizon=self._clock() - self.settings.rabbitmq.handled_retention_s,
        )

    def _after_commit(self, result: BatchResult, batch: BatchEngine | None) -> None:
        for tp, keys in result.dedup_added.items():
            window = self.ownership.windows.get(tp)
            if window is not None:
                for digest, first_seen in keys:
                    window.add(digest, first_seen)
        if batch is not None:
            for key, state in batch.touched.items():
                state.version += 1
                self._cache[key] = state

    def _forget(self, users: Mapping[UserKey, UserState]) -> None:
        """Drop cached states a failed attempt may have changed; the next attempt reloads them."""
        for key in users:
            self._cache.pop(key, None)

    async def _publish_dead_letters(self, result: BatchResult, stop: asyncio.Event) -> bool:
        for letter in result.dead_letters:
            record = letter.record
            allowed, suppressed = self._log_limiter.allow(letter.error_class)
            if allowed:
                log.warning(
                    "record dead-lettered",
                    topic=record.topic, partition=record.partition, offset=record.offset,
                    stage=letter.stage, error_class=letter.error_class, reason=letter.message,
                    suppressed_since_last=suppressed,
                )
        attempt = 0
        while True:
            try:
                await self.transport.publish_dead_letters(
                    result.dead_letters, self.settings.kafka.dead_letter_flush_timeout_s
                )
                return True
            except (DeadLetterDeliveryError, TimeoutError) as exc:
                delay = _RETRY_S[min(attempt, len(_RETRY_S) - 1)]
                log.error("dead letters not acknowledged; retrying before commit", error=str(exc), retry_in_s=delay)
                attempt += 1
                if stop.is_set():
                    return False
                await asyncio.sleep(delay)
                # The loop is alive, only blocked by the broker: liveness must not restart the pod.
                self._beat()

    async def _apply_backpressure(self) -> None:
        now = time.monotonic()
        if not self.relay.sink_names or now - self._backlog_checked_at < _BACKLOG_CHECK_EVERY_S:
            return
        self._backlog_checked_at = now
        backlog = await self.relay.backlog()
        self.metrics.outbox_backlog.set(backlog)
        limit = self.settings.outbox.max_backlog
        if not self._paused and backlog >= limit:
            log.warning("outbox backlog over the limit; pausing consumption until sinks catch up",
                        backlog=backlog, limit=limit)
            await self.transport.pause()
            self._paused = True
        elif self._paused and backlog <= limit // 2:
            log.info("outbox backlog drained; resuming consumption", backlog=backlog)
            await self.transport.resume()
            self._paused = False
        self.metrics.paused.set(1 if self._paused else 0)

    def _record(self, records: list[RawRecord], result: BatchResult, batch: BatchEngine | None, seconds: float,
                evicted: int, already_handled: list[RawRecord]) -> None:
        stats, m = self.stats, self.metrics
        now = time.time()
        stats.first_record_at = stats.first_record_at or now
        stats.last_batch_at = now
        stats.batches += 1
        stats.consumed += len(records) + len(already_handled)
        stats.deduplicated += len(already_handled)
        if self.transport.name == "rabbitmq":
            for record in already_handled:
                m.rabbitmq_acks.labels(record.topic, "redelivered_handled").inc()
            outcome_of = {(letter.record.topic, letter.record.offset) for letter in result.dead_letters}
            acks = Counter(
                (record.topic, DEAD_LETTERED if (record.topic, record.offset) in outcome_of else OK)
                for record in records
            )
            for (topic, kind), count in acks.items():
                m.rabbitmq_acks.labels(topic, kind).inc(count)
        for (topic, outcome), count in result.results.items():
            m.records.labels(topic, outcome).inc(count)
        stats.processed += result.count(OK)
        stats.deduplicated += result.count(DEDUPLICATED)
        stats.dead_lettered += result.count(DEAD_LETTERED)
        for letter in result.dead_letters:
            m.dead_letters.labels(letter.record.topic, letter.stage, letter.error_class).inc()
        for topic, count in result.duplicates_by_topic.items():
            m.dedup_hits.labels(topic).inc(count)
        for event_type, count in result.events_by_type.items():
            m.events.labels(event_type).inc(count)
        if batch is not None:
            stats.actions += len(batch.actions)
            # Counted here and added once per label: a labelled inc() per action costs more than
            # the action's rule evaluation.
            for kind, count in Counter(action.action.value for _, action in batch.actions).items():
                m.actions.labels(kind).inc(count)
            for outcome, count in Counter(entry.outcome for entry in batch.history).items():
                m.rule_outcomes.labels(outcome).inc(count)
        stats.events_applied += result.events_applied
        if evicted:
            m.dedup_evictions.inc(evicted)
        m.batch_seconds.observe(seconds)
        m.batch_records.observe(len(records))

    def _beat(self) -> None:
        self.health.beat()
        self.metrics.beat()

    def _update_readiness(self) -> None:
        if not self.health.ready()[0] and self.transport.joined:
            self.health.set_ready(True)
            self.metrics.ready.set(1)

