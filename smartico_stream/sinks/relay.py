"""The outbox relay: delivers committed actions to every configured sink, in outbox order.

Each sink has its own cursor per partition, advanced only after the sink acknowledged the actions
(and only while this instance still holds the partition's lease), and its own delivery loop, so a
sink that is down, or waiting out its backoff, holds back nobody but itself. A sink outage delays
its actions; it never loses them: they stay in the outbox until delivered. Delivery is
at-least-once; the deterministic action id lets receivers drop repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from smartico_stream.events.raw import PartitionId
from smartico_stream.failpoints import Failpoints
from smartico_stream.observability.logging import get_logger
from smartico_stream.observability.metrics import Metrics
from smartico_stream.sinks.base import ActionSink, SinkError
from smartico_stream.store.base import FencedError, Store

log = get_logger(__name__)


class OutboxRelay:
    def __init__(
        self,
        store: Store,
        sinks: Sequence[ActionSink],
        leases: Callable[[], dict[PartitionId, int]],
        metrics: Metrics,
        batch_size: int = 500,
        poll_interval_s: float = 0.5,
        linger_s: float = 0.0,
        retry_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        failpoints: Failpoints | None = None,
        retention_s: float = 86_400.0,
        prune_interval_s: float = 60.0,
    ) -> None:
        self._store = store
        self._sinks = list(sinks)
        self._leases = leases
        self._metrics = metrics
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._linger_s = linger_s
        self._retry_backoff_s = retry_backoff_s
        self._max_backoff_s = max_backoff_s
        self._wakes = {sink.name: asyncio.Event() for sink in self._sinks}
        self._failures: dict[str, int] = {}
        self._rng = random.Random()  # noqa: S311 - backoff jitter, not cryptography
        self._failpoints = failpoints or Failpoints({})
        self._deadline: float | None = None
        self._stop: asyncio.Event | None = None
        self._retention = timedelta(seconds=retention_s)
        self._prune_interval_s = prune_interval_s

    @property
    def sink_names(self) -> list[str]:
        return [s.name for s in self._sinks]

    def wake(self) -> None:
        """New actions were committed: deliver now rather than at the next poll."""
        for wake in self._wakes.values():
            wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver to every sink, each in its own loop, and prune, until ``stop`` is set (then call
        :meth:`wake`). A loop that fails stops the others and raises here."""
        self._stop = stop
        try:
            async with asyncio.TaskGroup() as loops:
                loops.create_task(self._prune_periodically(stop), name="relay:prune")
                for sink in self._sinks:
                    loops.create_task(self._serve(sink, stop), name=f"relay:{sink.name}")
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from failed  # what went wrong, not the group that carried it

    async def _serve(self, sink: ActionSink, stop: asyncio.Event) -> None:
        wake = self._wakes[sink.name]
        while not stop.is_set():
            # Cleared before reading, not after: a commit that lands during this round wakes the next.
            wake.clear()
            if await self._deliver_once(sink):
                continue  # there may be more
            try:
                await asyncio.wait_for(wake.wait(), self._poll_interval_s)
            except TimeoutError:
                continue
            if self._linger_s:
                # Woken by a commit. At low load batches are a few records each, and a delivery per
                # batch would cost a sink write and a cursor transaction (an fsync each) per batch.
                await self._pause(self._linger_s)

    async def drain(self, timeout_s: float) -> bool:
        """Deliver what is pending (used at shutdown); True when nothing is left. Never takes much
        longer than ``timeout_s``, even while a sink is failing."""
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout_s
        try:
            while loop.time() < self._deadline:
                progressed = False
                for sink in self._sinks:
                    progressed |= await self._deliver_once(sink)
                if not progressed:
                    return await self.backlog() == 0
            return False
        finally:
            self._deadline = None

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` (a failing sink's backoff, or the linger after a wake-up); cut short by
        shutdown (not by new work, which would hammer a failing sink), never past a drain's deadline."""
        if self._deadline is not None:
            delay = min(delay, max(0.0, self._deadline - asyncio.get_running_loop().time()))
        stop = self._stop
        if stop is None or stop.is_set():
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):  # the delay ran out before shutdown: the usual case
            await asyncio.wait_for(stop.wait(), delay)

    async def prune(self) -> int:
        """Delete what every sink has delivered and is older than the retention; how many rows."""
        leases = self._leases()
        if not self._sinks or not leases:
            return 0
        deleted = await self._store.prune_outbox(self.sink_names, list(leases), datetime.now(UTC) - self._retention)
        self._metrics.outbox_pruned.inc(deleted)
        return deleted

    async def _prune_periodically(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            deleted = await self.prune()
            if deleted:
                log.debug("delivered actions pruned from the outbox", rows=deleted)
            await self._pause(self._prune_interval_s)

    async def backlog(self) -> int:
        leases = self._leases()
        if not self._sinks or not leases:
            return 0
        return await self._store.outbox_backlog(self.sink_names, list(leases))

    async def _deliver_once(self, sink: ActionSink) -> bool:
        leases = self._leases()
        if not leases:
            return False
        rows = await self._store.pending_actions(sink.name, list(leases), self._batch_size)
        if not rows:
            return False
        try:
            await sink.deliver([row.action for row in rows])
        except SinkError as exc:
            failures = self._failures.get(sink.name, 0) + 1
            self._failures[sink.name] = failures
            self._metrics.sink_deliveries.labels(sink.name, "failure").inc(len(rows))
            delay = min(self._max_backoff_s, self._retry_backoff_s * 2 ** min(failures - 1, 10))
            delay = self._rng.uniform(0, delay)  # full jitter: many pods must not retry in step
            # A non-retryable error (a refused request, an unroutable message) needs a human, but the
            # actions are still never dropped: it is logged at error level on every attempt.
            report = log.warning if exc.retryable else log.error
            report("sink delivery failed; actions stay in the outbox", sink=sink.name, error=str(exc),
                   retryable=exc.retryable, retry_in_s=round(delay, 2), pending=len(rows))
            await self._pause(delay)
            return False
        self._failures.pop(sink.name, None)
        self._failpoints.hit("after_sink_delivery")
        try:
            await self._store.mark_delivered(sink.name, rows, {tp: leases[tp] for tp in {r.partition for r in rows}})
        except FencedError:
            return False  # the new owner delivers from its own cursor; receivers dedupe by action id
        self._metrics.sink_deliveries.labels(sink.name, "success").inc(len(rows))
        return True
