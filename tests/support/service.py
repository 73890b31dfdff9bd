"""Running the service in-process: a recording engine, a service task with bounded waits, GETs
on its metrics port."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from smartico_stream.events.models import CanonicalEvent
from smartico_stream.service import Service


@dataclass(frozen=True, slots=True)
class Applied:
    """One event as an engine saw it, with a global sequence number shared by all engines."""

    tick: int
    instance: str
    user: tuple[str, str]
    event: CanonicalEvent

    @property
    def coordinates(self) -> tuple[str, int, int]:
        source = self.event.source
        assert source is not None, "the pipeline must set the source coordinates"
        return (source.topic, source.partition or 0, source.offset or 0)


class RecordingEngine:
    """Appends every event it is given, in order. ``timeline`` may be shared between engines so
    that the order across instances is known too (all services of a test run on one event loop)."""

    _ticks = itertools.count()

    def __init__(self, instance: str = "main", timeline: list[Applied] | None = None) -> None:
        self.instance = instance
        self.applied: list[Applied] = []
        self.timeline = timeline if timeline is not None else []
        self._lock = threading.Lock()

    def apply_user_events(self, user: tuple[str, str], events: Sequence[CanonicalEvent]) -> list[tuple[int, Exception]]:
        with self._lock:
            for event in events:
                entry = Applied(next(self._ticks), self.instance, user, event)
                self.applied.append(entry)
                self.timeline.append(entry)
        return []

    @property
    def events(self) -> list[CanonicalEvent]:
        return [entry.event for entry in self.applied]

    def event_ids(self) -> list[str]:
        return [entry.event.event_id for entry in self.applied]


class ServiceRun:
    """A Service running as an asyncio task; ``wait_until`` fails fast if the service dies."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(service.run(self.stop_event), name="service")

    async def wait_until(self, predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.task.done():
                self.task.result()  # raises what killed it
                raise AssertionError(f"the service stopped while waiting for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; stats: {self.service.stats}")
            await asyncio.sleep(0.02)

    async def stop(self, timeout_s: float = 60.0) -> None:
        self.stop_event.set()
        await asyncio.wait_for(asyncio.shield(self.task), timeout_s)


async def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


def http_get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
