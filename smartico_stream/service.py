"""The service: one consumer-group member running the pipeline, batch by batch.

Per batch, the checkpoint order is fixed (as in Quix Streams): process every record, make the dead
letters durable, then commit the offsets. A crash anywhere before the commit re-reads the batch; a
committed offset never passes a record that was not handled (invariant 2).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from smartico_stream.adapters.base import Adapter
from smartico_stream.adapters.registry import load_adapter
from smartico_stream.config import Settings
from smartico_stream.engine.base import Engine
from smartico_stream.engine.totals import UserTotalsEngine
from smartico_stream.observability.health import Health
from smartico_stream.observability.http import MetricsServer
from smartico_stream.observability.logging import RateLimiter, get_logger
from smartico_stream.observability.metrics import Metrics
from smartico_stream.pipeline.dedup import Clock, DedupWindow
from smartico_stream.pipeline.pipeline import DEAD_LETTERED, DEDUPLICATED, OK, BatchResult, Pipeline, PipelineLimits
from smartico_stream.sinks.dead_letters import DeadLetterDeliveryError, KafkaDeadLetterSink
from smartico_stream.sources.kafka import KafkaSource, PartitionId, connection_config

log = get_logger(__name__)
T = TypeVar("T")

_DEAD_LETTER_RETRY_S = (0.5, 1, 2, 5, 10)


@dataclass
class ServiceStats:
    """Running totals since start (what the demo summarises)."""

    consumed: int = 0
    processed: int = 0
    deduplicated: int = 0
    dead_lettered: int = 0
    events_applied: int = 0
    batches: int = 0
    first_record_at: float | None = None
    last_batch_at: float | None = None


class PartitionWindows:
    """Dedup windows of the partitions this instance owns; created on assign, dropped on revoke."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self._window_s = settings.dedup.window_seconds
        self._max_entries = settings.dedup.max_entries
        self._enabled = settings.dedup.enabled
        self._clock = clock
        self.windows: dict[PartitionId, DedupWindow] = {}

    def partitions_assigned(self, partitions: list[PartitionId]) -> None:
        if self._enabled:
            for tp in partitions:
                self.windows.setdefault(tp, DedupWindow(self._window_s, self._max_entries, self._clock))

    def partitions_revoked(self, partitions: list[PartitionId], lost: bool) -> None:
        for tp in partitions:
            self.windows.pop(tp, None)

    def window_for(self, topic: str, partition: int) -> DedupWindow | None:
        return self.windows.get((topic, partition))

    def size(self) -> int:
        return sum(len(w) for w in self.windows.values())

    def evicted(self) -> int:
        return sum(w.evicted for w in self.windows.values())


class Service:
    """Build with :meth:`from_settings`; run with ``await service.run(stop_event)``."""

    def __init__(
        self,
        settings: Settings,
        adapter: Adapter | None = None,
        engine: Engine | None = None,
        metrics: Metrics | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.health = Health(heartbeat_timeout_s=settings.metrics.heartbeat_timeout_s)
        self.engine = engine or UserTotalsEngine()
        self.stats = ServiceStats()
        self.windows = PartitionWindows(settings, clock)
        kafka = settings.kafka
        self.pipeline = Pipeline(
            adapter=adapter or load_adapter(settings.adapter),
            engine=self.engine,
            stream_of_topic=kafka.stream_of_topic(),
            dedup_window_for=self.windows.window_for,
            limits=PipelineLimits(settings.limits.max_message_bytes, settings.limits.require_key),
        )
        self.source = KafkaSource(
            kafka.config,
            kafka.stream_of_topic(),
            listener=self.windows,
            metrics=self.metrics,
            batch_size=kafka.batch_size,
            poll_timeout_s=kafka.poll_timeout_s,
            statistics_interval_ms=kafka.statistics_interval_ms,
        )
        self.dead_letters = KafkaDeadLetterSink(
            {**connection_config(kafka.config), **kafka.producer_config}, kafka.dead_letter_topic
        )
        self.metrics_server: MetricsServer | None = None
        # librdkafka clients are used from this one thread only, so their callbacks never race.
        self._kafka_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka")
        self._log_limiter = RateLimiter()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish the batch in hand, commit and leave the group."""
        if self.settings.metrics.enabled and self.metrics_server is None:
            self.metrics_server = MetricsServer(
                self.metrics, self.health, self.settings.metrics.host, self.settings.metrics.port
            ).start()
            log.info("metrics listening", port=self.metrics_server.port)
        await self._in_kafka_thread(self.source.start)
        try:
            while not stop.is_set():
                records = await self._in_kafka_thread(self.source.poll_batch)
                self.health.beat()
                self.metrics.beat()
                self._update_readiness()
                if records:
                    await self._handle(records, stop)
                self.metrics.dedup_keys.set(self.windows.size())
        finally:
            self.health.set_ready(False, "shutting down")
            await self._in_kafka_thread(self.source.close)
            await self._in_kafka_thread(self.dead_letters.close)
            self._kafka_thread.shutdown(wait=True)
            if self.metrics_server is not None:
                self.metrics_server.stop()
            log.info("stopped", consumed=self.stats.consumed, dead_lettered=self.stats.dead_lettered)

    async def _handle(self, records: list[Any], stop: asyncio.Event) -> None:
        started = time.perf_counter()
        evicted_before = self.windows.evicted()
        result = self.pipeline.process(records)
        if not await self._publish_dead_letters(result, stop):
            return  # stopping with dead letters unacknowledged: leave the offsets uncommitted
        await self._in_kafka_thread(self.source.commit, result.next_offsets, result.last_timestamps)
        self._record(records, result, time.perf_counter() - started, self.windows.evicted() - evicted_before)

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
                await self._in_kafka_thread(
                    self.dead_letters.publish, result.dead_letters, self.settings.kafka.dead_letter_flush_timeout_s
                )
                return True
            except DeadLetterDeliveryError as exc:
                delay = _DEAD_LETTER_RETRY_S[min(attempt, len(_DEAD_LETTER_RETRY_S) - 1)]
                log.error("dead letters not acknowledged; retrying before commit", error=str(exc), retry_in_s=delay)
                attempt += 1
                if stop.is_set():
                    return False
                await asyncio.sleep(delay)

    def _record(self, records: list[Any], result: BatchResult, seconds: float, evicted: int) -> None:
        stats, m = self.stats, self.metrics
        now = time.time()
        stats.first_record_at = stats.first_record_at or now
        stats.last_batch_at = now
        stats.batches += 1
        stats.consumed += len(records)
        for (topic, outcome), count in result.results.items():
            m.records.labels(topic, outcome).inc(count)
            if outcome == OK:
                stats.processed += count
            elif outcome == DEDUPLICATED:
                stats.deduplicated += count
            elif outcome == DEAD_LETTERED:
                stats.dead_lettered += count
        for letter in result.dead_letters:
            m.dead_letters.labels(letter.record.topic, letter.stage, letter.error_class).inc()
        for topic, count in result.duplicates_by_topic.items():
            m.dedup_hits.labels(topic).inc(count)
        for event_type, count in result.events_by_type.items():
            m.events.labels(event_type).inc(count)
        stats.events_applied += result.events_applied
        if evicted:
            m.dedup_evictions.inc(evicted)
        m.batch_seconds.observe(seconds)
        m.batch_records.observe(len(records))

    def _update_readiness(self) -> None:
        if not self.health.ready()[0] and self.source.joined:
            self.health.set_ready(True)
            self.metrics.ready.set(1)

    async def _in_kafka_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._kafka_thread, fn, *args)
