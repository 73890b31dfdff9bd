"""Accepted events become durable before the answer: every request's events wait for one shared
store transaction (group commit), begun when the first of them arrives and ``rest.group_commit_ms``
later, so concurrent requests cost one commit (and one fsync on SQLite) instead of one each. While a
transaction is being written, newly arriving requests gather for the next one.

:class:`BacklogMonitor` reads how far processing is behind acceptance (for 429 answers and the
metrics), and whether the store answers at all (for 503 answers and the health route).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from smartico_stream.failpoints import Failpoints
from smartico_stream.observability.logging import get_logger
from smartico_stream.observability.metrics import Metrics
from smartico_stream.store.rest import Backlog, IdempotentAnswer, InboxEvent, InboxStore

log = get_logger(__name__)

_IDEMPOTENCY_PRUNE_EVERY_S = 60.0


class StoreUnavailable(RuntimeError):
    """The store did not take the write (or did not answer in time): the request gets 503."""


@dataclass
class _Waiting:
    events: list[InboxEvent]
    answer: IdempotentAnswer | None
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class InboxWriter:
    """Group commit of accepted events (see the module docstring)."""

    def __init__(self, inbox: InboxStore, window_s: float, timeout_s: float, idempotency_retention_s: float,
                 clock: Callable[[], float] = time.time,
                 failpoints: Failpoints | None = None) -> None:
        self._inbox = inbox
        self._window_s = window_s
        self._timeout_s = timeout_s
        self._retention_s = idempotency_retention_s
        self._clock = clock
        self._waiting: list[_Waiting] = []
        self._flusher: asyncio.Task[None] | None = None
        self._pruned_at = 0.0
        self._failpoints = failpoints or Failpoints({})

    async def write(self, events: list[InboxEvent], answer: IdempotentAnswer | None) -> None:
        """Return once ``events`` (and ``answer``) are committed; StoreUnavailable if they were not
        (they may still have been, when the store answered too late: a retry is deduplicated)."""
        waiting = _Waiting(events, answer)
        self._waiting.append(waiting)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await asyncio.shield(waiting.done)

    async def _flush(self) -> None:
        while self._waiting:
            if self._window_s:
                await asyncio.sleep(self._window_s)
            group, self._waiting = self._waiting, []
            events = [event for waiting in group for event in waiting.events]
            answers = [waiting.answer for waiting in group if waiting.answer is not None]
            now = self._clock()
            horizon = None
            if now - self._pruned_at >= _IDEMPOTENCY_PRUNE_EVERY_S:
                horizon, self._pruned_at = now - self._retention_s, now
            try:
                await asyncio.wait_for(self._inbox.append(events, answers, now, horizon), self._timeout_s)
            except Exception as exc:  # noqa: BLE001 - any store failure is a 503 for these requests, not a crash
                log.warning("inbox write failed; answering 503", error_class=type(exc).__name__, events=len(events))
                for waiting in group:
                    if not waiting.done.done():
                        waiting.done.set_exception(StoreUnavailable(type(exc).__name__))
                continue
            self._failpoints.hit("rest_after_inbox_commit")  # crash tests: committed, not yet answered
            for waiting in group:
                if not waiting.done.done():
                    waiting.done.set_result(None)

    async def close(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher


class BacklogMonitor:
    """Reads the inbox backlog every ``interval_s``; ``store_ok`` is False after a failed read."""

    def __init__(self, inbox: InboxStore, interval_s: float, timeout_s: float, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self._inbox = inbox
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._clock = clock
        self.backlog = Backlog(0, None)
        self.store_ok = True
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> None:
        """One reading (also the first, before the API answers anything)."""
        try:
            self.backlog = await asyncio.wait_for(self._inbox.backlog(), self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - a store that does not answer is what this watches for
            if self.store_ok:
                log.warning("the store does not answer; the REST API answers 503", error_class=type(exc).__name__)
            self.store_ok = False
            return
        if not self.store_ok:
            log.info("the store answers again")
        self.store_ok = True
        self._metrics.rest_inbox_backlog.set(self.backlog.events)
        oldest = self.backlog.oldest_accepted_at
        self._metrics.rest_inbox_age.set(max(0.0, self._clock() - oldest) if oldest is not None else 0.0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.check()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
