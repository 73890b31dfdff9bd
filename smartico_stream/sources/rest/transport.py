"""The REST inbox as the service's transport: ``rest.partitions`` partitions (topic ``rest``), each a
user-hashed slice of the accepted events, read in number order into the same batch checkpoint as
the other sources. The position after a batch's last row is its partition's offset, written in the
batch's store transaction (``Progress.offsets``, as Kafka's); processed rows are then pruned.

* **Several instances** (PostgreSQL): every instance serves the API and writes to any partition;
  each partition is read by one instance at a time, under its lease (epochs fence a late writer, as
  for Kafka partitions; ``Ownership`` holds them). Instances announce themselves with a membership
  lease of their own; each takes its fair share (partitions / live members, rounded up) of the
  partitions nobody renewed within ``rest.lease_timeout_s``, and gives back what exceeds its share, so
  a new instance gets partitions within a few lease turns.
* **Privacy**: an inbox body is the event as the operator sent it, personal data included, so it is
  kept encrypted with the PII key ring (bound to the row's brand and user) and decrypted only to be
  processed. ``source: rest`` therefore needs a key ring (docs/pii.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from smartico_stream.adapters.registry import load_adapter
from smartico_stream.batch.checkpoint import Handled, Progress
from smartico_stream.batch.ownership import Ownership
from smartico_stream.config import EXIT_CONFIG, Settings, StartupError
from smartico_stream.events.raw import PartitionId, RawRecord, Stream
from smartico_stream.failpoints import Failpoints
from smartico_stream.observability.logging import get_logger
from smartico_stream.observability.metrics import Metrics
from smartico_stream.pii.crypto import DecryptError, decrypt, encrypt
from smartico_stream.pii.keys import KeyRing
from smartico_stream.pii.payloads import PROTECTION_HEADER, Protector
from smartico_stream.pipeline.errors import DeadLetter
from smartico_stream.sources.rest.app import Api, KeyCache, build_app
from smartico_stream.sources.rest.inbox import BacklogMonitor, InboxWriter
from smartico_stream.sources.rest.server import ApiServer
from smartico_stream.sources.rest.validation import STREAM_HEADER, rest_pipeline
from smartico_stream.store.base import FencedError, Store, StoredDeadLetter
from smartico_stream.store.rest import INBOX_TOPIC, MEMBER_TOPIC_PREFIX, ApiKeyStore, InboxRow, InboxStore
from smartico_stream.store.sql import SqlStore

log = get_logger(__name__)

TRANSPORT = "rest"
_LONGEST_SLEEP_S = 1.0  # waits are cut into turns of the service loop, so its heartbeat keeps beating


def inbox_aad(user_key: str) -> bytes:
    return b"rest-inbox\x1f" + user_key.encode()


class RestTransport:
    """See the module docstring."""

    name = TRANSPORT

    def __init__(self, settings: Settings, ownership: Ownership, metrics: Metrics, protect: Protector,
                 store: Store, ring: KeyRing | None, failpoints: Failpoints | None = None) -> None:
        if not isinstance(store, SqlStore):
            raise TypeError("the REST source keeps its inbox in a SQL store")
        if ring is None:
            raise StartupError("pii.keys_file: source: rest keeps accepted events encrypted in the inbox and needs "
                               "a PII key ring (pii.keys_file, or the variable named by pii.keys_env; docs/pii.md)",
                               EXIT_CONFIG)
        self._settings = settings.rest
        self._instance = settings.instance_id
        self._ownership = ownership
        self._metrics = metrics
        self._protect = protect
        self._store = store
        self._ring = ring
        self._inbox = InboxStore(store)
        self._adapter_name = settings.adapter
        self._max_message_bytes = settings.limits.max_message_bytes
        self._partitions: list[PartitionId] = [(INBOX_TOPIC, n) for n in range(self._settings.partitions)]
        self._member: PartitionId = (MEMBER_TOPIC_PREFIX + self._instance, 0)
        self._member_epoch: int | None = None
        self._positions: dict[int, int] = {}  # partition -> next number to read (ahead of the commit)
        self._wake = asyncio.Event()
        self._lease_turn_at = 0.0
        self._paused = False
        self._started = False
        self._failures = 0
        rest = self._settings
        self.monitor = BacklogMonitor(self._inbox, rest.backlog_check_interval_s, rest.store_timeout_s, metrics)
        self.writer = InboxWriter(self._inbox, rest.group_commit_ms / 1000, rest.store_timeout_s,
                                  rest.idempotency_retention_s,
                                  failpoints=failpoints or Failpoints({}))
        self._server: ApiServer | None = None

    # the Transport protocol --------------------------------------------------------------------

    @property
    def stream_of_topic(self) -> Mapping[str, Stream]:
        return {INBOX_TOPIC: Stream.PROFILE}  # a placeholder: each record names its stream (RestPipeline)

    @property
    def joined(self) -> bool:
        return self._started

    @property
    def port(self) -> int:
        """The port the API listens on (after start)."""
        return self._server.port if self._server is not None else 0

    async def start(self) -> None:
        await self.monitor.check()
        self.monitor.start()
        api = Api(
            settings=self._settings,
            keys=KeyCache(ApiKeyStore(self._inbox.store), self._settings.key_cache_s, self._settings.store_timeout_s),
            pipeline=rest_pipeline(load_adapter(self._adapter_name), self._max_message_bytes),
            inbox=self._inbox, writer=self.writer, monitor=self.monitor,
            seal=lambda body, user_key: encrypt(self._ring, body, inbox_aad(user_key)),
            metrics=self._metrics, on_answered=self._wake.set,
        )
        self._server = ApiServer(build_app(api), self._settings)
        await self._server.start()
        self._started = True
        log.info("REST API listening", host=self._settings.host, port=self._server.port,
                 tls=self._settings.tls_cert_file is not None, partitions=self._settings.partitions)

    async def poll(self) -> list[RawRecord]:
        if self._paused:
            await asyncio.sleep(_LONGEST_SLEEP_S)  # outbox backpressure: nothing is read meanwhile
            return []
        try:
            await self._lease_turn()
            if not self._positions:
                await self._wait(self._settings.poll_interval_s)
                return []
            self._wake.clear()
            rows = await self._inbox.read(self._positions, self._settings.batch_size)
        except Exception as exc:  # noqa: BLE001 - a store that does not answer: retried; the API answers 503
            self._failures += 1
            delay = min(_LONGEST_SLEEP_S, 0.1 * 2 ** min(self._failures, 4))
            log.warning("reading the inbox failed; retrying", error_class=type(exc).__name__, retry_in_s=delay)
            self._lease_turn_at = 0.0  # renew (or learn what was lost) first thing when it answers again
            await asyncio.sleep(delay)
            return []
        self._failures = 0
        if not rows:
            await self._wait(self._settings.poll_interval_s)
            return []
        return [self._record(row) for row in rows]

    def _record(self, row: InboxRow) -> RawRecord:
        self._positions[row.part] = max(self._positions.get(row.part, 0), row.seq + 1)
        try:
            value: bytes | None = decrypt(self._ring, row.body, inbox_aad(row.user_key))
        except DecryptError as exc:
            # A key taken out of the ring: the record is dead-lettered (no value), never skipped silently.
            log.error("an inbox row cannot be decrypted", partition=row.part, seq=row.seq, error=str(exc))
            value = None
        user = row.user_key.partition("\x1f")[2]
        return RawRecord(transport=TRANSPORT, topic=INBOX_TOPIC, partition=row.part, offset=row.seq,
                         key=user.encode(), value=value, timestamp_ms=int(row.accepted_at * 1000),
                         headers=[(STREAM_HEADER, row.stream.encode())])

    async def _wait(self, seconds: float) -> None:
        """Until this instance has answered a request accepting events (that wakes it at once) or ``seconds`` pass."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), min(seconds, _LONGEST_SLEEP_S))

    async def idle(self) -> None:
        """Nothing to retry between polls: a batch's progress is in the store already."""

    async def pause(self) -> None:
        self._paused = True

    async def resume(self) -> None:
        self._paused = False

    async def close(self) -> None:
        # The API first (in-flight requests finish and are committed), then what it writes with.
        if self._server is not None:
            await self._server.close()
        await self.writer.close()
        await self.monitor.close()

    def lag_messages(self) -> int | None:
        """Accepted events not yet processed, in every partition (the inbox backlog)."""
        return self.monitor.backlog.events

    # the BatchTransport protocol (the checkpoint's part) ---------------------------------------

    async def claim(self, records: Sequence[RawRecord]) -> None:
        """The partitions' leases are taken before reading, never from a batch."""

    async def already_handled(self, records: Sequence[RawRecord], store: Store) -> list[RawRecord]:
        return []  # a row is never read again past the stored offset

    def progress(self, records: Sequence[RawRecord], next_offsets: Mapping[PartitionId, int]) -> Progress:
        return Progress(offsets=dict(next_offsets))

    async def publish_dead_letters(self, letters: Sequence[DeadLetter], timeout_s: float) -> None:
        """Kept in the store (there is no broker), payload protected as on the other transports;
        keyed by the row's number, so a redone batch writes each letter once."""
        if not letters:
            return
        kept = []
        for letter in letters:
            record = letter.record
            value, headers = self._protect(record.value, record.topic, record.partition, record.offset)
            protection = dict(headers).get(PROTECTION_HEADER, b"none").decode()
            kept.append(StoredDeadLetter((record.topic, record.partition), f"seq:{record.offset}", record.offset,
                                         letter.stage, letter.error_class, letter.message, value, protection))
        await asyncio.wait_for(self._store.write_dead_letters(kept), timeout_s)

    async def fenced(self, error: FencedError) -> bool:
        log.warning("inbox partitions taken over by another instance; redoing the batch without them",
                    error=str(error))
        self._drop(list(error.partitions))
        return True

    async def handled(self, batch: Handled) -> bool:
        done = {part: offset for (topic, part), offset in batch.next_offsets.items() if topic == INBOX_TOPIC}
        try:
            await self._inbox.prune(done)
        except Exception as exc:  # noqa: BLE001 - pruning is housekeeping: the next batch prunes these rows too
            log.warning("pruning the inbox failed; retried with the next batch", error_class=type(exc).__name__)
        return True

    # leases ------------------------------------------------------------------------------------

    async def _lease_turn(self) -> None:
        """Renew what this instance holds, then move towards its fair share (module docstring)."""
        now = time.monotonic()
        if now < self._lease_turn_at:
            return
        timeout = self._settings.lease_timeout_s
        self._lease_turn_at = now + timeout / 3
        store, me = self._store, self._instance
        if self._member_epoch is None or await store.renew_leases(me, {self._member: self._member_epoch}):
            leases = await store.acquire([self._member], me, float("inf"))
            self._member_epoch = leases[self._member].epoch
        owned = {tp: e for tp, e in self._ownership.epochs.items() if tp[0] == INBOX_TOPIC}
        lost = await store.renew_leases(me, owned) if owned else []
        if lost:
            log.warning("inbox partitions taken over by another instance", partitions=[p for _, p in lost])
            self._drop(lost)
            owned = {tp: e for tp, e in owned.items() if tp not in lost}
        moment = datetime.now(UTC)
        members = await self._inbox.live_members(moment - timedelta(seconds=timeout))
        share = math.ceil(len(self._partitions) / max(1, len(members)))
        if len(owned) > share:
            extra = sorted(owned)[share:]
            await self._inbox.release(me, {tp: owned[tp] for tp in extra})
            log.info("giving inbox partitions to other instances", partitions=[p for _, p in extra], share=share)
            self._drop(extra)
        elif len(owned) < share:
            holders = await store.lease_holders(self._partitions)
            free = [tp for tp in self._partitions if tp not in owned and (
                (holder := holders.get(tp)) is None or holder.owner == me
                or (moment - holder.renewed_at).total_seconds() >= timeout)]
            take = free[: share - len(owned)]
            if take:
                await self._ownership.claim(take)
                self._positions.update(await self._inbox.positions([part for _, part in take]))
                log.info("reading inbox partitions", partitions=[p for _, p in take], instance=me)
        self._metrics.assigned_partitions.labels(INBOX_TOPIC).set(
            sum(1 for tp in self._ownership.epochs if tp[0] == INBOX_TOPIC))

    def _drop(self, partitions: Sequence[PartitionId]) -> None:
        self._ownership.partitions_revoked(list(partitions), lost=True)
        for _, part in partitions:
            self._positions.pop(part, None)
