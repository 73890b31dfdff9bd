"""The replica database as the service's transport: views polled in cycles, each view a partition
(topic = view name, partition 0) whose cursor is stored in the batch's own store transaction.

One poll is one page of one view. A cycle reads the views in the spec's order (profiles, payments,
casino, sport), each until a page comes back short, then starts again at once (or after
``replica.cycle_wait_s``; after ``replica.idle_wait_s`` when a whole cycle found nothing).

* **One poller**: the views' leases (epochs, as for Kafka partitions) are taken only when no other
  instance renewed them within ``replica.lease_timeout_s``; the holder renews them while it polls. A
  holder that was taken over is fenced at its next commit and stands by again.
* **Exactly once**: the position after a batch's last row is written with the batch's state and
  actions (``Progress.cursors``); a restart resumes there. The position read ahead of the commit is
  kept in memory only while this instance holds the lease.
* **Errors**: a connection or query error is retried with backoff and never moves the cursor; a row
  that fails to map is a dead letter (kept in the store, with the view's coordinates) and the
  cursor moves past it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from smartico_stream.batch.checkpoint import Handled, Progress
from smartico_stream.batch.ownership import Ownership
from smartico_stream.config import Settings
from smartico_stream.events.raw import PartitionId, RawRecord, Stream
from smartico_stream.observability.logging import get_logger
from smartico_stream.observability.metrics import Metrics
from smartico_stream.pii.payloads import PROTECTION_HEADER, Protector
from smartico_stream.pipeline.errors import DeadLetter
from smartico_stream.sources.replica.cursor import (
    Position,
    cursor_time,
    decode_position,
    encode_position,
    native_row,
    position_of,
)
from smartico_stream.sources.replica.dialect import (
    ConnectOptions,
    Dialect,
    ReplicaConnection,
    ReplicaError,
    load_dialect,
)
from smartico_stream.sources.replica.settings import ViewSettings, server_of
from smartico_stream.store.base import BatchWrite, FencedError, Store, StoredDeadLetter

log = get_logger(__name__)

TRANSPORT = "replica"
_PART = 0
_LONGEST_SLEEP_S = 1.0  # waits are cut into turns of the service loop, so its heartbeat keeps beating


class ViewMismatch(RuntimeError):
    """A view lacks a configured column: every row would fail the same way. Stops the service with
    the setting to fix (the cursor cannot move past rows it cannot place)."""


class ReplicaTransport:
    """See the module docstring."""

    name = TRANSPORT

    def __init__(
        self,
        settings: Settings,
        ownership: Ownership,
        metrics: Metrics,
        protect: Protector,
        store: Store,
        *,
        dialect: Dialect | None = None,
        clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        replica = settings.replica
        self._settings = replica
        self._ownership = ownership
        self._metrics = metrics
        self._protect = protect
        self._store = store
        self._instance = settings.instance_id
        self._clock = clock
        self._views = replica.cycle()
        self._view_of = {view.name: view for view in self._views}
        self._stream_of_topic = {view.name: view.stream for view in self._views}
        self._partitions: list[PartitionId] = [(view.name, _PART) for view in self._views]
        self._dsn = replica.dsn_with_password(os.environ if environ is None else environ)
        self._dialect = dialect or load_dialect(replica.dialect_name())
        self._zone = replica.zone()
        self._options = ConnectOptions(replica.statement_timeout_s, replica.db_timezone, replica.connect_timeout_s)
        self._conn: ReplicaConnection | None = None
        self._started = False
        self._leading = False
        self._paused = False
        self._renewed_at = 0.0
        self._resume_at = 0.0  # monotonic: no query before this (cycle wait, backoff, standby)
        self._failures = 0
        # Per view: where the next page starts (ahead of the commit), the position after each row
        # read and not yet committed (by its offset), the committed position, whether drained.
        self._read: dict[str, Position | None] = {}
        self._pending: dict[PartitionId, dict[int, Position]] = {}
        self._committed: dict[str, Position | None] = {}
        self._drained: dict[str, bool] = {}
        self._next_offset: dict[str, int] = {view.name: 0 for view in self._views}
        # Id views: the id horizon. (monotonic time, the view's highest id then) samples, one per
        # cycle; a sample older than replica.visibility_delay_s becomes the highest id read.
        self._horizon_samples: dict[str, deque[tuple[float, Any]]] = {}
        self._horizon: dict[str, Any] = {}
        self._sampled_in_cycle: dict[str, int] = {}
        self._cycle_number = 0
        self._cycle_index = 0
        self._cycle_rows = 0
        self._cycle_started = time.monotonic()

    # the Transport protocol --------------------------------------------------------------------

    @property
    def stream_of_topic(self) -> Mapping[str, Stream]:
        return self._stream_of_topic

    @property
    def joined(self) -> bool:
        """Ready once started: a standby instance is healthy, it waits for the lease."""
        return self._started

    @property
    def leading(self) -> bool:
        """This instance holds the views' leases and polls them."""
        return self._leading

    async def start(self) -> None:
        # Nothing to wait for: the database is connected to at the first poll, and retried there.
        log.info("replica source", server=server_of(self._dsn), dialect=self._dialect.name,
                 views=[view.name for view in self._views])
        self._started = True

    async def poll(self) -> list[RawRecord]:
        if self._paused:
            await asyncio.sleep(_LONGEST_SLEEP_S)  # outbox backpressure: nothing is read meanwhile
            return []
        remaining = self._resume_at - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(min(_LONGEST_SLEEP_S, remaining))
            return []
        try:
            if not self._leading:
                if not await self._lead():
                    self._wait(min(self._settings.lease_timeout_s / 3, _LONGEST_SLEEP_S))
                    return []
            elif time.monotonic() - self._renewed_at >= self._settings.lease_timeout_s / 3 and not await self._renew():
                return []
            records = await self._next_page()
        except ReplicaError as exc:
            await self._failed(exc)
            return []
        self._failures = 0
        return records

    async def idle(self) -> None:
        """Nothing to retry between polls: a batch's progress is in the store already."""

    async def pause(self) -> None:
        self._paused = True

    async def resume(self) -> None:
        self._paused = False

    async def close(self) -> None:
        """Release the views' leases (a standby takes over at once, not after
        ``replica.lease_timeout_s``) and close the reading connection. The service calls this after
        its last batch is committed and the outbox relay has stopped, so nothing of this instance
        writes for the views afterwards."""
        if self._leading:
            epochs = {tp: self._ownership.epochs[tp] for tp in self._partitions if tp in self._ownership.epochs}
            try:
                await self._store.release_leases(self._instance, epochs)
                log.info("replica views released", instance=self._instance)
            except Exception as exc:  # noqa: BLE001 - shutting down: the lease then simply times out
                log.warning("releasing the replica views failed; a standby takes over after the lease timeout",
                            error=f"{type(exc).__name__}: {exc}")
            self._lose()
        await self._disconnect()

    def lag_messages(self) -> int | None:
        return None  # a view's lag is in seconds (smartico_stream_replica_cursor_lag_seconds)

    # the BatchTransport protocol (the checkpoint's part) ---------------------------------------

    async def claim(self, records: Sequence[RawRecord]) -> None:
        """The views' leases are taken before polling, never from a batch."""

    async def already_handled(self, records: Sequence[RawRecord], store: Store) -> list[RawRecord]:
        return []  # a row is never read again past the stored cursor

    def progress(self, records: Sequence[RawRecord], next_offsets: Mapping[PartitionId, int]) -> Progress:
        """The position after each view's last row of the batch (dead letters included: the cursor
        moves past them)."""
        cursors: dict[PartitionId, str] = {}
        for tp, next_offset in next_offsets.items():
            position = self._pending.get(tp, {}).get(next_offset - 1)
            if position is not None:
                cursors[tp] = encode_position(position)
        return Progress(cursors=cursors)

    async def publish_dead_letters(self, letters: Sequence[DeadLetter], timeout_s: float) -> None:
        """Kept in the store (there is no broker), payload protected as on the other transports;
        keyed by the row's position in its view, so a redone batch writes each letter once."""
        if not letters:
            return
        kept = []
        for letter in letters:
            record = letter.record
            tp = (record.topic, record.partition)
            position = self._pending.get(tp, {}).get(record.offset)
            coordinates = encode_position(position) if position is not None else f"offset:{record.offset}"
            payload = orjson.dumps(record.row, default=str) if record.row is not None else record.value
            value, headers = self._protect(payload, record.topic, record.partition, record.offset)
            protection = dict(headers).get(PROTECTION_HEADER, b"none").decode()
            kept.append(StoredDeadLetter(tp, coordinates, record.offset, letter.stage, letter.error_class,
                                         letter.message, value, protection))
        await asyncio.wait_for(self._store.write_dead_letters(kept), timeout_s)

    async def fenced(self, error: FencedError) -> bool:
        log.warning("replica views taken over by another instance; standing by", error=str(error))
        self._lose()
        return False  # the new holder reads these rows again from the stored cursor

    async def handled(self, batch: Handled) -> bool:
        for tp, next_offset in batch.next_offsets.items():
            pending = self._pending.get(tp)
            if not pending:
                continue
            position = pending.get(next_offset - 1)
            if position is not None:
                self._committed[tp[0]] = position
            for offset in [o for o in pending if o < next_offset]:
                del pending[offset]
        return True

    # leadership --------------------------------------------------------------------------------

    async def _lead(self) -> bool:
        """Take the views' leases if nobody else holds them; then load where each view resumes."""
        holders = await self._store.lease_holders(self._partitions)
        now = datetime.fromtimestamp(self._clock(), UTC)
        for tp in self._partitions:
            holder = holders.get(tp)
            if holder is None or holder.owner == self._instance:
                continue
            if (now - holder.renewed_at).total_seconds() < self._settings.lease_timeout_s:
                return False  # another instance polls; stand by until its lease runs out
        conn = await self._connection()  # before taking over: a standby that cannot read must not
        await self._ownership.claim(list(self._partitions))
        self._renewed_at = time.monotonic()
        stored = await self._store.source_cursors(self._partitions)
        starts: dict[PartitionId, str] = {}
        for view in self._views:
            tp = (view.name, _PART)
            text = stored.get(tp)
            position = decode_position(text) if text is not None else await self._start(view, conn)
            if text is None and position is not None:
                starts[tp] = encode_position(position)
            self._read[view.name] = self._committed[view.name] = position
            self._pending[tp] = {}
            self._drained[view.name] = False
        if starts:
            # A start resolved from "now" is stored at once: a restart must not resolve it again later.
            await self._store.commit(BatchWrite(epochs={tp: self._ownership.epochs[tp] for tp in starts},
                                                cursors=starts))
        self._leading = True
        self._cycle_index, self._cycle_rows, self._cycle_started = 0, 0, time.monotonic()
        self._metrics.replica_leader.set(1)
        log.info("polling the replica views", instance=self._instance,
                 epochs={f"{t}[{p}]": e for (t, p), e in self._ownership.epochs.items()})
        return True

    async def _start(self, view: ViewSettings, conn: ReplicaConnection) -> Position | None:
        """Where a view with no stored cursor starts (``start``)."""
        start = view.start
        if start == "beginning":
            return None
        if isinstance(start, datetime):
            # Bound as the column is read: naive, in the database's zone.
            return Position((start.astimezone(self._zone).replace(tzinfo=None),), inclusive=True)
        if start == "now":
            if view.kind == "id":
                rows = await conn.fetch(self._dialect.max_query(view.query()), [])
                high = rows[0]["high"] if rows else None
                return Position((high,)) if high is not None else None
            now = await conn.now()
            moment = now.astimezone(self._zone).replace(tzinfo=None)
            return Position((moment,), inclusive=True)
        return Position((start,), inclusive=True)  # an id

    async def _renew(self) -> bool:
        """Renew the views' leases; False (and standing by) when they were taken over."""
        epochs = {tp: self._ownership.epochs[tp] for tp in self._partitions if tp in self._ownership.epochs}
        missing = [tp for tp in self._partitions if tp not in epochs]
        lost = missing or await self._store.renew_leases(self._instance, epochs)
        if lost:
            log.warning("replica lease lost; standing by", lost=[t for t, _ in lost])
            self._lose()
            return False
        self._renewed_at = time.monotonic()
        return True

    def _lose(self) -> None:
        self._ownership.partitions_revoked(list(self._partitions), lost=True)
        self._leading = False
        self._read.clear()
        self._pending.clear()
        self._committed.clear()
        self._metrics.replica_leader.set(0)

    # reading -----------------------------------------------------------------------------------

    async def _next_page(self) -> list[RawRecord]:
        if self._cycle_index >= len(self._views):
            await self._end_cycle()
            return []
        view = self._views[self._cycle_index]
        if not view.scanned_at(datetime.fromtimestamp(self._clock(), UTC)):
            self._cycle_index += 1
            return []
        conn = await self._connection()
        settings = self._settings
        up_to = None
        if view.kind == "id":
            up_to = await self._id_horizon(view, conn)
            if up_to is None:  # nothing old enough to be read safely yet
                self._drained[view.name] = True
                self._cycle_index += 1
                return []
        sql, args = self._dialect.page_query(view.query(), self._read.get(view.name), settings.page_size,
                                             settings.visibility_delay_s, up_to)
        started = time.perf_counter()
        rows = await conn.fetch(sql, args)
        self._metrics.replica_query_seconds.labels(view.name).observe(time.perf_counter() - started)
        self._metrics.replica_rows.labels(view.name).inc(len(rows))
        drained = len(rows) < settings.page_size
        self._drained[view.name] = drained
        if drained:
            self._cycle_index += 1
        if not rows:
            return []
        self._cycle_rows += len(rows)
        return self._records(view, rows)

    async def _id_horizon(self, view: ViewSettings, conn: ReplicaConnection) -> Any:
        """The highest id of ``view`` that may be read: the view's highest id as it was at least
        ``replica.visibility_delay_s`` ago. An id below one that was already visible was taken
        before it; so once the delay (the longest write transaction) has passed, a missing id
        below that horizon will never appear (rolled back), and one that commits late is not
        skipped. Without it, id N+1 committing before id N moves the cursor past N for good.
        ``None`` while no sample is old enough (or the view is empty)."""
        samples = self._horizon_samples.setdefault(view.name, deque())
        if self._sampled_in_cycle.get(view.name) != self._cycle_number:
            self._sampled_in_cycle[view.name] = self._cycle_number
            rows = await conn.fetch(self._dialect.max_query(view.query()), [])
            high = rows[0]["high"] if rows else None
            if high is not None:
                # Taken after the answer: the highest id was visible by then at the latest.
                samples.append((time.monotonic(), high))
        ripe = time.monotonic() - self._settings.visibility_delay_s
        while samples and samples[0][0] <= ripe:
            self._horizon[view.name] = samples.popleft()[1]
        return self._horizon.get(view.name)

    def _records(self, view: ViewSettings, rows: list[dict[str, Any]]) -> list[RawRecord]:
        order = view.query().order
        tp = (view.name, _PART)
        pending = self._pending.setdefault(tp, {})
        offset = self._next_offset[view.name]
        records = []
        position: Position | None = None
        for row in rows:
            try:
                position = position_of(row, order)
            except KeyError as exc:
                raise ViewMismatch(f"replica.views ({view.name}): the view has no column {exc.args[0]!r} "
                                   f"(cursor {view.cursor!r}, id {view.id!r})") from None
            native = native_row(row, self._zone, view.defaults)
            user = native.get(view.user_column)
            moment = cursor_time(position, self._zone)
            records.append(RawRecord(
                transport=TRANSPORT, topic=view.name, partition=_PART, offset=offset,
                key=None if user is None else str(user).encode(), value=None,
                timestamp_ms=int(moment.timestamp() * 1000) if moment is not None else 0, row=native,
            ))
            pending[offset] = position
            offset += 1
        self._next_offset[view.name] = offset
        self._read[view.name] = position
        return records

    async def _end_cycle(self) -> None:
        settings = self._settings
        self._metrics.replica_cycle_seconds.observe(time.monotonic() - self._cycle_started)
        self._metrics.replica_cycles.inc()
        await self._observe_lag()
        wait = settings.cycle_wait_s if self._cycle_rows else max(settings.cycle_wait_s, settings.idle_wait_s)
        self._cycle_index, self._cycle_rows = 0, 0
        self._cycle_number += 1
        self._wait(wait)
        self._cycle_started = time.monotonic() + wait

    async def _observe_lag(self) -> None:
        """Per view, the database's now minus the committed cursor's time; 0 for a view read to its
        end with everything committed (a quiet view is not behind)."""
        conn = await self._connection()
        now = await conn.now()
        for view in self._views:
            tp = (view.name, _PART)
            caught_up = self._drained.get(view.name, False) and not self._pending.get(tp)
            moment = cursor_time(self._committed.get(view.name), self._zone)
            lag = 0.0 if caught_up or moment is None else max(0.0, (now - moment).total_seconds())
            self._metrics.replica_cursor_lag.labels(view.name).set(lag)

    # the connection ----------------------------------------------------------------------------

    async def _connection(self) -> ReplicaConnection:
        if self._conn is None:
            self._conn = await self._dialect.connect(self._dsn, self._options)
        return self._conn

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except ReplicaError as exc:
                log.debug("closing the replica connection failed", error=str(exc))

    async def _failed(self, exc: ReplicaError) -> None:
        """Retried with backoff; the read position stays where it was (nothing was handed over)."""
        view = self._views[self._cycle_index].name if self._cycle_index < len(self._views) else "-"
        self._metrics.replica_errors.labels(view, type(exc.__cause__ or exc).__name__).inc()
        delay = min(self._settings.max_backoff_s, self._settings.retry_backoff_s * 2 ** min(self._failures, 16))
        self._failures += 1
        log.warning("replica read failed; retrying", view=view, error=str(exc), retry_in_s=delay,
                    attempt=self._failures)
        await self._disconnect()
        self._wait(delay)

    def _wait(self, seconds: float) -> None:
        self._resume_at = time.monotonic() + seconds
