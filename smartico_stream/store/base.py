"""The state store: what one batch writes, all or nothing, and what a partition owner reads back.

One transaction per batch holds the users' state, the emitted actions (outbox), the execution
history, the dedup keys still inside the window, and the source offsets. A writer must hold the
current lease (epoch) of every partition it writes for: a consumer that lost a partition is fenced
off even if it wakes up late (invariant 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, Protocol

from smartico_stream.engine.actions import Action
from smartico_stream.engine.evaluator import HistoryEntry
from smartico_stream.engine.state import UserState
from smartico_stream.events.raw import PartitionId, UserKey


class FencedError(RuntimeError):
    """Another instance took over these partitions; this writer's batch was rolled back."""

    def __init__(self, partitions: Sequence[PartitionId]) -> None:
        self.partitions = list(partitions)
        names = ", ".join(f"{t}[{p}]" for t, p in self.partitions)
        super().__init__(f"fenced: partitions {names} are owned by a newer lease")


class ConflictError(RuntimeError):
    """Users changed in the store since this writer loaded them (another instance wrote them: their
    topics are spread over several members). The batch was rolled back; reload and redo it."""

    def __init__(self, users: Sequence[UserKey]) -> None:
        self.users = list(users)
        super().__init__(f"{len(self.users)} user(s) changed concurrently; batch rolled back")


class RowEncodingError(ValueError):
    """A row of the batch could not be encoded for the store (e.g. a user's state holding an integer
    beyond 64 bits, which JSON encoding refuses). Raised before the database sees the row; the
    message names the table and column and never quotes a value."""


class StoreRefusedRecord(Exception):
    """The store refused the content of one record (found by bisecting its batch, see
    docs/exactly-once.md): the record becomes a dead letter with stage ``store``. The message says
    what was refused (an error class, a SQLSTATE, a column), never the value."""

    error_class = "StoreRefused"
    stage = "store"


@dataclass(frozen=True, slots=True)
class Lease:
    """A partition's lease as acquired: the epoch to write with, where to resume, the dedup window."""

    epoch: int
    next_offset: int | None  # None: nothing stored yet, start from the broker's committed offset
    dedup_keys: list[tuple[int, float]]  # (digest, first seen), oldest first


class QueuedAction(NamedTuple):
    """An action and the source partition whose outbox it is written to. The store takes any
    ``(partition, action)`` pair: the engine's own pairs go in as they are, without a copy."""

    partition: PartitionId
    action: Action


@dataclass(slots=True)
class BatchWrite:
    """Everything one batch changes; committed atomically by :meth:`Store.commit`."""

    epochs: dict[PartitionId, int] = field(default_factory=dict)
    offsets: dict[PartitionId, int] = field(default_factory=dict)
    users: list[UserState] = field(default_factory=list)
    actions: Sequence[tuple[PartitionId, Action]] = field(default_factory=list)  # QueuedAction or plain pairs
    history: list[HistoryEntry] = field(default_factory=list)
    dedup_added: dict[PartitionId, list[tuple[int, float]]] = field(default_factory=dict)
    dedup_horizon: float | None = None  # keys first seen before this are deleted
    # RabbitMQ has no offsets: the ids of handled messages make a redelivery harmless
    handled_messages: dict[PartitionId, list[str]] = field(default_factory=dict)
    handled_at: float = 0.0
    handled_horizon: float | None = None  # ids handled before this are deleted
    # Sources whose progress is not an offset (a replica view's cursor, as encoded text)
    cursors: dict[PartitionId, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Who holds a partition's lease, since when (the last acquire or renewal), and its epoch."""

    owner: str
    epoch: int
    renewed_at: datetime


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A dead letter of a source without a broker to publish it to (a replica view), kept in the
    store. ``coordinates`` names the record in its source (a view's cursor value and id) and is
    unique per partition, so writing the same letter again (a redone batch) is harmless."""

    partition: PartitionId
    coordinates: str
    offset: int
    stage: str
    error_class: str
    message: str
    payload: bytes | None
    protection: str


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One pending action: the outbox row of its batch and partition (``seq``), its place in that
    row (``index``), and the action. Rows sort in delivery order by ``(seq, index)``."""

    seq: int
    partition: PartitionId
    action: Action
    index: int = 0


@dataclass(frozen=True, slots=True)
class HistoryRow:
    entry: HistoryEntry
    recorded_at: datetime | None = None


class Store(Protocol):
    """Implemented by :class:`SqliteStore` and :class:`PostgresStore` over the same schema."""

    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None: ...

    async def acquire(
        self, partitions: Sequence[PartitionId], owner: str, dedup_since: float
    ) -> dict[PartitionId, Lease]:
        """Take over partitions: bump each lease's epoch (fencing the previous owner) and return
        where to resume and the dedup keys first seen at or after ``dedup_since``."""

    async def load_users(self, keys: Sequence[UserKey]) -> dict[UserKey, UserState]:
        """Stored state of the users that have one."""

    async def handled(self, partition: PartitionId, message_keys: Sequence[str]) -> set[str]:
        """Which of these messages were already handled (a redelivery after a crash)."""

    async def commit(self, batch: BatchWrite) -> None:
        """Write the batch atomically; raise FencedError (and write nothing) if any epoch is stale."""

    async def probe(self, batch: BatchWrite) -> None:
        """Dry run of :meth:`commit`: write the batch in a transaction and roll it back. Raises what
        ``commit`` would raise; leaves the store as it was either way."""

    def refusal(self, exc: BaseException) -> str | None:
        """A value-free description when ``exc`` (raised by :meth:`commit` or :meth:`probe`) means the
        store refused the batch's content (bad data, not a lost connection, a fence or a conflict);
        else ``None``."""

    async def source_cursors(self, partitions: Sequence[PartitionId]) -> dict[PartitionId, str]:
        """The stored cursors (see ``BatchWrite.cursors``) of those of ``partitions`` that have one."""

    async def lease_holders(self, partitions: Sequence[PartitionId]) -> dict[PartitionId, LeaseHolder]:
        """The current lease of each of ``partitions`` that has one."""

    async def renew_leases(self, owner: str, epochs: dict[PartitionId, int]) -> list[PartitionId]:
        """Refresh the renewal time of the leases ``owner`` still holds at these epochs; the
        partitions it no longer holds (taken over: their epoch moved on)."""

    async def release_leases(self, owner: str, epochs: dict[PartitionId, int]) -> None:
        """Give up the leases ``owner`` still holds at these epochs (a clean shutdown): they keep
        their epoch but read as never renewed, so a standby takes them over at once instead of
        after the lease timeout. A lease taken over meanwhile is left alone."""

    async def reset_source_cursor(self, partition: PartitionId, cursor: str, owner: str, actor: str,
                                  reason: str) -> str | None:
        """Move a partition's cursor by hand, audited (``cursor_resets``): takes the partition's lease
        (fencing the current holder, which reloads the cursor when it takes the lease back), writes
        ``cursor`` and returns the previous one."""

    async def write_dead_letters(self, letters: Sequence[StoredDeadLetter]) -> None:
        """Keep dead letters, in one transaction; a letter already kept is left as it is."""

    async def dead_letters(self, partition: PartitionId | None = None) -> list[StoredDeadLetter]:
        """The dead letters kept (of one partition, or all), for inspection and tests."""

    async def pending_actions(self, sink: str, partitions: Sequence[PartitionId], limit: int) -> list[OutboxRow]:
        """Actions of these partitions not yet delivered to ``sink``, at most ``limit``, in
        ``(seq, index)`` order (each partition's own order; one batch's partitions follow each other)."""

    async def mark_delivered(self, sink: str, rows: Sequence[OutboxRow], epochs: dict[PartitionId, int]) -> None:
        """Advance the sink's cursor of each partition past its last action among ``rows``, in one
        transaction (fenced like commit)."""

    async def outbox_backlog(self, sinks: Sequence[str], partitions: Sequence[PartitionId]) -> int:
        """Actions not yet delivered to every sink, for these partitions (counted from the cursors)."""

    async def prune_outbox(
        self, sinks: Sequence[str], partitions: Sequence[PartitionId], committed_before: datetime
    ) -> int:
        """Delete the batch rows of these partitions that every one of ``sinks`` has delivered in full
        and that were committed before ``committed_before``; the number of actions they held. With
        no sinks, nothing."""

    async def prune_history(self, recorded_before: datetime, limit: int) -> int:
        """Delete history batch rows recorded before ``recorded_before``, from the oldest, holding
        about ``limit`` entries (at least one row); the number of entries deleted (0: none of the
        oldest is due yet)."""

    async def history(self, *, brand: str | None = None, user: str | None = None, rule: str | None = None,
                      limit: int = 1000) -> list[HistoryEntry]: ...

    async def all_actions(self) -> list[Action]:
        """Every action in the outbox, in emission order (for inspection and tests)."""

    async def all_users(self) -> list[UserState]: ...
