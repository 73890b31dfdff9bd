"""The service: one consumer-group member running the pipeline, batch by batch.

The service owns the loop (poll, backpressure, readiness, history pruning, the outbox relay beside
it) and the retry policy; a batch's life, from records in hand to committed, is the
:class:`~smartico_stream.batch.checkpoint.Checkpoint`'s (its steps are in its docstring).
Metrics and the running totals hear about batches through observers (smartico_stream/batch/observer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from smartico_stream.adapters.base import Adapter
from smartico_stream.adapters.registry import load_adapter
from smartico_stream.batch.checkpoint import RETRY_S, Checkpoint, CheckpointEnv, Outcome
from smartico_stream.batch.metrics import MetricsObserver
from smartico_stream.batch.observer import (
    BaseObserver,
    BatchObserver,
    BatchReport,
    DeadLetterLog,
    Observers,
    ServiceStats,
    StatsObserver,
)
from smartico_stream.batch.ownership import Ownership
from smartico_stream.batch.states import StateCache
from smartico_stream.config import EXIT_CONFIG, Settings, StartupError
from smartico_stream.engine.base import Engine
from smartico_stream.engine.evaluator import RuleEngine
from smartico_stream.engine.payments import PaymentDedup
from smartico_stream.engine.rule_files import LoadedRules, load_rule_files
from smartico_stream.engine.rules import RuleSet
from smartico_stream.engine.scheduled.spec import load_scheduled_rules
from smartico_stream.events.raw import RawRecord
from smartico_stream.failpoints import Failpoints
from smartico_stream.observability.collector import FrozenHeap
from smartico_stream.observability.health import Health
from smartico_stream.observability.http import MetricsServer
from smartico_stream.observability.logging import get_logger
from smartico_stream.observability.metrics import Metrics
from smartico_stream.pii.setup import pii_components
from smartico_stream.pipeline.dedup import Clock
from smartico_stream.pipeline.pipeline import Pipeline, PipelineLimits
from smartico_stream.scheduler.control import RuleControl
from smartico_stream.scheduler.metrics import RuleControlMetrics, SchedulerMetrics
from smartico_stream.scheduler.runner import Scheduler
from smartico_stream.sinks.base import ActionSink
from smartico_stream.sinks.registry import build_sinks
from smartico_stream.sinks.relay import OutboxRelay
from smartico_stream.sources.kafka import connection_config
from smartico_stream.store import Store, open_store_from_url
from smartico_stream.store.sql import SqlStore
from smartico_stream.transports import transport_for

log = get_logger(__name__)

# Expired history is deleted between batches, this many rows at a time (tens of milliseconds on
# SQLite, so batches keep flowing), again at the next turn while there is more, else after the
# interval.
_HISTORY_PRUNE_ROWS = 5_000
_HISTORY_PRUNE_INTERVAL_S = 60.0
_BACKLOG_CHECK_EVERY_S = 1.0
# A scheduler that failed (the store unreachable for a moment) starts again after this pause: a
# scheduled run must not take the consumer down with it, and resumes where it stopped.
_SCHEDULER_RESTART_S = 5.0


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


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile (a stopping service does not wait)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


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


class Service:
    """Build, then ``await service.run(stop_event)``.

    ``engine`` replaces the rule engine with any object implementing the pipeline's Engine protocol
    (tests use a recording engine); everything else (store, offsets, dedup keys) stays as in
    production. ``failpoints`` (crash tests only) makes the process SIGKILL itself at a checkpoint.
    ``observers`` hear about every batch (the demo's and the bench's figures)."""

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
        observers: Sequence[BatchObserver] = (),
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.health = Health(heartbeat_timeout_s=settings.metrics.heartbeat_timeout_s)
        self.stats = ServiceStats()
        self.store = store or open_store_from_url(
            settings.store.url, settings.store.db_schema, settings.store.sqlite_synchronous,
            settings.store.connect_timeout_s,
        )
        self.states = StateCache(self.store, settings.engine.state_cache_size)
        rules_path = settings.engine.rules
        if rules is None:
            loaded = load_rule_files(rules_path) if rules_path else LoadedRules.given(RuleSet.of(()))
        else:  # rules built by the caller; scheduled rules still come from the files, if any
            loaded = LoadedRules.given(rules, load_scheduled_rules(rules_path) if rules_path else None)
        self.rule_engine = RuleEngine(loaded.real_time)
        sql_store = self.store if isinstance(self.store, SqlStore) else None
        self.scheduler: Scheduler | None = None
        self._scheduler_stop = asyncio.Event()
        scheduling = settings.scheduler
        # Registered whether or not this instance schedules: /metrics shows the same families everywhere.
        scheduler_metrics = SchedulerMetrics(self.metrics.registry)
        if sql_store is not None and scheduling.enabled:
            stopping = self._scheduler_stop
            self.scheduler = Scheduler(
                sql_store, loaded.scheduled, owner=settings.instance_id, clock=lambda: datetime.now(UTC),
                lease_ttl=timedelta(seconds=scheduling.lease_ttl_s), step_users=scheduling.step_users,
                metrics=scheduler_metrics, idle=timedelta(seconds=scheduling.idle_s),
                sleep=lambda seconds: _sleep_unless(stopping, seconds), on_written=self.states.forget,
            )
        # Rule changes without a restart (stops, starts, reloads) between batches.
        self.rule_control = RuleControl(
            loaded=loaded, engine=self.rule_engine, rules_path=rules_path, store=sql_store,
            instance_id=settings.instance_id, metrics=RuleControlMetrics(self.metrics.registry),
            interval_s=settings.engine.control_interval_s, scheduler=self.scheduler,
        )
        self.ownership = Ownership(self.store, settings.instance_id, settings.dedup, clock,
                                   on_revoke=self.states.clear)
        self.pii = pii_components(settings.pii)
        # Crash points only ever come from the caller (the crash tests' entry point), never from
        # the configuration or the environment: a live service cannot be told to kill itself.
        self.failpoints = failpoints if failpoints is not None else Failpoints({})
        self.transport = transport_for(settings, self.ownership, self.metrics, self.pii.protect_dead_letters,
                                       self.store, self.pii.ring, self.failpoints)
        # A REST inbox record names its own stream (smartico_stream/sources/rest/validation.py).
        pipeline_class: type[Pipeline] = Pipeline
        if settings.source == "rest":
            from smartico_stream.sources.rest.validation import RestPipeline

            pipeline_class = RestPipeline
        self.pipeline = pipeline_class(
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
        self.relay = OutboxRelay(
            self.store, sinks, self._leases, self.metrics,
            batch_size=outbox.batch_size, poll_interval_s=outbox.poll_interval_s, linger_s=outbox.linger_s,
            retry_backoff_s=outbox.retry_backoff_s, max_backoff_s=outbox.max_backoff_s,
            failpoints=self.failpoints, retention_s=outbox.retention_s, prune_interval_s=outbox.prune_interval_s,
        )
        self._heap = FrozenHeap(settings.engine.full_gc_interval_s, self.metrics)
        # Metrics and totals first, then the caller's observers (the demo, the bench), then the
        # service's own reactions to a commit.
        self.observers = Observers([
            MetricsObserver(self.metrics), StatsObserver(self.stats), DeadLetterLog(), *observers,
            _AfterCommit(self._heap, self.relay, self.health),
        ])
        self._env = CheckpointEnv(
            pipeline=self.pipeline, store=self.store, states=self.states, ownership=self.ownership,
            transport=self.transport, observer=self.observers, rules=self.rule_engine, clock=clock,
            handled_retention_s=settings.rabbitmq.handled_retention_s,
            dead_letter_timeout_s=kafka.dead_letter_flush_timeout_s,
            vault=self.pii.vault, payments=PaymentDedup.from_settings(settings.dedup), engine=engine,
            failpoints=self.failpoints,
        )
        self.sinks = sinks
        self.metrics_server: MetricsServer | None = None
        self._paused = False
        self._backlog_checked_at = 0.0
        self._history_prune_due = 0.0

    def _leases(self) -> dict[tuple[str, int], int]:
        """What the relay delivers: the consumed partitions' outbox, and the scheduled rules' while
        this instance leads the scheduler (both fenced by their epochs)."""
        leases = dict(self.ownership.epochs)
        if self.scheduler is not None:
            leases.update(self.scheduler.leases())
        return leases

    def request_reload(self) -> None:
        """Reload the rule files between the next two batches (SIGHUP)."""
        self.rule_control.request_reload()

    async def _run_scheduler(self, scheduler: Scheduler) -> None:
        """The scheduler until the service stops; restarted after a failure (logged)."""
        while not self._scheduler_stop.is_set():
            try:
                await scheduler.run(self._scheduler_stop)
            except Exception as exc:  # noqa: BLE001 - the store away for a moment: the run resumes where it stopped
                log.error("scheduler_failed", error_class=type(exc).__name__, error=str(exc)[:500])
                await _sleep_unless(self._scheduler_stop, _SCHEDULER_RESTART_S)

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
        self._scheduler_stop.clear()
        scheduler_task: asyncio.Task[None] | None = None
        try:
            await self.rule_control.start()
            if self.scheduler is not None:
                scheduler_task = asyncio.create_task(self._run_scheduler(self.scheduler))
            # Inside the try: a failed start still closes what opened. A broker unreachable at start is
            # retried by the transport; a signal meanwhile stops the service without waiting for it.
            if not await _started(self.transport.start(), stop):
                return
            while not stop.is_set():
                await self.rule_control.refresh()  # between two batches: a batch has one rule set
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
            # The scheduler first: it resigns its lease, so the relay's drain below leaves the
            # scheduled actions to the next leader's relay (two deliverers would repeat actions).
            self._scheduler_stop.set()
            if scheduler_task is not None:
                await asyncio.gather(scheduler_task, return_exceptions=True)
            with contextlib.suppress(Exception):  # the store may be what failed
                await self.rule_control.close()
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
        try:
            deleted = await self.store.prune_history(datetime.now(UTC) - timedelta(seconds=retention),
                                                     _HISTORY_PRUNE_ROWS)
        except Exception as exc:  # noqa: BLE001 - housekeeping: a store that does not answer is met by the
            # batch path (which stops the service) or, for the REST source, answered with 503 until it is back
            log.warning("pruning history failed; retrying later", error_class=type(exc).__name__)
            self._history_prune_due = now + _HISTORY_PRUNE_INTERVAL_S
            return
        self.metrics.history_pruned.inc(deleted)
        self._history_prune_due = now if deleted else now + _HISTORY_PRUNE_INTERVAL_S

    # one batch ---------------------------------------------------------------------------------

    async def _handle(self, records: list[RawRecord], stop: asyncio.Event) -> None:
        """One batch through its checkpoint, with the retry policy: a redo at once, a conflict after
        a growing pause (unless stopping: nothing is committed and the batch is read again)."""
        self.observers.polled(records)
        checkpoint = Checkpoint(self._env, records, stop)
        conflicts = 0
        while True:
            outcome = await checkpoint.attempt()
            if outcome in (Outcome.COMMITTED, Outcome.LEFT):
                return
            if outcome is Outcome.CONFLICT:
                if stop.is_set():
                    return
                await asyncio.sleep(RETRY_S[min(conflicts, len(RETRY_S) - 1)])
                conflicts += 1
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

    def _beat(self) -> None:
        self.health.beat()
        self.metrics.beat()

    def _update_readiness(self) -> None:
        if not self.health.ready()[0] and self.transport.joined:
            self.health.set_ready(True)
            self.metrics.ready.set(1)



class _AfterCommit(BaseObserver):
    """The service's own reactions to a commit: the heap's collection policy, the relay's wake-up
    and the liveness beat."""

    def __init__(self, heap: FrozenHeap, relay: OutboxRelay, health: Health) -> None:
        self._heap = heap
        self._relay = relay
        self._health = health

    def committed(self, report: BatchReport) -> None:
        self._heap.after_batch()
        if report.records:
            self._relay.wake()

    def alive(self) -> None:
        self._health.beat()
