"""Who owns which partitions: their store leases (epochs, the fencing tokens of invariant 5) and
their dedup windows, rebuilt from the store when a partition is taken."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

from smartico_stream.config import DedupSettings
from smartico_stream.events.raw import PartitionId, RawRecord
from smartico_stream.pipeline.dedup import Clock, DedupWindow
from smartico_stream.store.base import Lease, Store


class Ownership:
    """The partitions this instance owns: their store leases (epochs) and dedup windows.

    Called by the Kafka source from inside its client calls; the store is reached through the event
    loop, which is free at that moment (it is awaiting the very call that runs the callback)."""

    def __init__(self, store: Store, instance_id: str, dedup: DedupSettings, clock: Clock,
                 on_revoke: Callable[[], None]) -> None:
        self._store = store
        self._instance_id = instance_id
        self._dedup = dedup
        self._clock = clock
        self._on_revoke = on_revoke
        self.loop: asyncio.AbstractEventLoop | None = None
        self.epochs: dict[PartitionId, int] = {}
        self.windows: dict[PartitionId, DedupWindow] = {}

    def partitions_assigned(self, partitions: list[PartitionId]) -> Mapping[PartitionId, int]:
        """Kafka assignment (called on the Kafka thread): take the leases, return where to resume."""
        if self.loop is None:
            raise RuntimeError("partitions were assigned before the service's event loop was set")
        acquiring = self._store.acquire(partitions, self._instance_id, self._since())
        return self._adopt(asyncio.run_coroutine_threadsafe(acquiring, self.loop).result(timeout=60))

    async def claim(self, partitions: list[PartitionId]) -> None:
        """Take over partitions (RabbitMQ queues) this instance just started receiving from: with
        single-active-consumer, the first delivery is how a member learns it became the owner."""
        self._adopt(await self._store.acquire(partitions, self._instance_id, self._since()))

    async def claim_unowned(self, records: Sequence[RawRecord]) -> None:
        """:meth:`claim` the partitions of ``records`` this instance holds no lease for yet."""
        unowned = sorted({(r.topic, r.partition) for r in records} - set(self.epochs))
        if unowned:
            await self.claim(unowned)

    def _since(self) -> float:
        return float("-inf")  # every key the store kept: each batch deleted those its watermark passed

    def _adopt(self, leases: Mapping[PartitionId, Lease]) -> dict[PartitionId, int]:
        dedup = self._dedup
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
