"""What the checkpoint tells the rest of the process about batches: one small interface.

Metrics, the running totals (``ServiceStats``, what the demo and the bench read), the dead-letter log
and the relay's wake-up all listen through :class:`BatchObserver`; nothing reaches into the
checkpoint to learn what a batch did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from smartico_stream.engine.actions import Action
from smartico_stream.engine.evaluator import HistoryEntry
from smartico_stream.events.raw import PartitionId, RawRecord
from smartico_stream.observability.logging import RateLimiter, get_logger
from smartico_stream.pipeline.errors import DeadLetter
from smartico_stream.pipeline.pipeline import DEAD_LETTERED, DEDUPLICATED, OK, BatchResult

log = get_logger(__name__)

# The stages a checkpoint times, in their order (BatchReport.stage_seconds).
STAGES = ("adapt", "guard_dedup", "apply", "dead_letters", "write")


@dataclass(slots=True)
class BatchReport:
    """A committed batch, as observers see it."""

    records: list[RawRecord]  # handled by this commit (already-handled redeliveries excluded)
    already_handled: list[RawRecord]  # redeliveries of messages a commit before this one handled
    result: BatchResult
    actions: list[tuple[PartitionId, Action]] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)
    seconds: float = 0.0  # from records in hand to acknowledged, retries included
    commit_seconds: float = 0.0  # the store transaction alone
    stage_seconds: dict[str, float] = field(default_factory=dict)  # STAGES of the attempt that committed
    dedup_evicted: int = 0  # dedup keys the windows dropped to stay within max_entries


class BatchObserver(Protocol):
    """Hears about batches. Every method is called on the event loop and must not block."""

    def polled(self, records: Sequence[RawRecord]) -> None:
        """A batch arrived from the transport."""

    def dead_lettered(self, letters: Sequence[DeadLetter]) -> None:
        """An attempt found these records unusable; they are published before the commit."""

    def retried(self, reason: str) -> None:
        """An attempt did not commit and the batch is redone (engine_error, store_content,
        fenced, conflict)."""

    def committed(self, report: BatchReport) -> None:
        """The batch is durable in the store and the transport was told."""

    def alive(self) -> None:
        """The loop is working (a long retry or probe): liveness must not restart the process."""


class Observers:
    """Several observers as one, called in order."""

    def __init__(self, observers: Sequence[BatchObserver] = ()) -> None:
        self._observers = list(observers)

    def add(self, observer: BatchObserver) -> None:
        self._observers.append(observer)

    def polled(self, records: Sequence[RawRecord]) -> None:
        for observer in self._observers:
            observer.polled(records)

    def dead_lettered(self, letters: Sequence[DeadLetter]) -> None:
        for observer in self._observers:
            observer.dead_lettered(letters)

    def retried(self, reason: str) -> None:
        for observer in self._observers:
            observer.retried(reason)

    def committed(self, report: BatchReport) -> None:
        for observer in self._observers:
            observer.committed(report)

    def alive(self) -> None:
        for observer in self._observers:
            observer.alive()


class BaseObserver:
    """An observer that ignores everything; subclasses override what they need."""

    def polled(self, records: Sequence[RawRecord]) -> None:
        return None

    def dead_lettered(self, letters: Sequence[DeadLetter]) -> None:
        return None

    def retried(self, reason: str) -> None:
        return None

    def committed(self, report: BatchReport) -> None:
        return None

    def alive(self) -> None:
        return None


@dataclass
class ServiceStats:
    """Running totals since start (what the demo and the bench summarise)."""

    consumed: int = 0
    processed: int = 0
    deduplicated: int = 0
    dead_lettered: int = 0
    events_applied: int = 0
    actions: int = 0
    batches: int = 0
    first_record_at: float | None = None
    last_batch_at: float | None = None


class StatsObserver(BaseObserver):
    """Keeps a :class:`ServiceStats` up to date from committed batches."""

    def __init__(self, stats: ServiceStats, clock: Callable[[], float] = time.time) -> None:
        self.stats = stats
        self._clock = clock

    def committed(self, report: BatchReport) -> None:
        stats, result, now = self.stats, report.result, self._clock()
        stats.first_record_at = stats.first_record_at or now
        stats.last_batch_at = now
        stats.batches += 1
        stats.consumed += len(report.records) + len(report.already_handled)
        stats.deduplicated += len(report.already_handled) + result.count(DEDUPLICATED)
        stats.processed += result.count(OK)
        stats.dead_lettered += result.count(DEAD_LETTERED)
        stats.events_applied += result.events_applied
        stats.actions += len(report.actions)


class DeadLetterLog(BaseObserver):
    """One warning per dead letter, rate-limited per error class (a poison flood cannot drown the log)."""

    def __init__(self) -> None:
        self._limiter = RateLimiter()

    def dead_lettered(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            record = letter.record
            allowed, suppressed = self._limiter.allow(letter.error_class)
            if allowed:
                log.warning(
                    "record dead-lettered",
                    topic=record.topic, partition=record.partition, offset=record.offset,
                    stage=letter.stage, error_class=letter.error_class, reason=letter.message,
                    suppressed_since_last=suppressed,
                )
