"""Short-window deduplication: drop a repeat of brand + event type + transaction id whose source time
is within ``window`` seconds of the sighting held for it (the spec's "short window deduplication", 2
minutes by default).

Time is the record's own source time, never the clock of the process reading it (``dedup_time``):
the broker timestamp (Kafka record timestamp, AMQP ``timestamp``) when there is one, else the
event's own event time. Keys expire by a per-partition *watermark* of that time (the latest
first-seen time added), so a replay of old history deduplicates exactly as the live traffic did,
whatever the processing speed, batch boundaries or restarts. The clock only caps the watermark
(``clock() + window``), so that one record stamped years ahead cannot expire every key at once.

Keys are stored as 64-bit BLAKE2b digests, not as strings: memory per key stays small and bounded,
and the digest is stable across processes (the store persists it). Two different keys share a
digest with probability ~n²/2⁶⁵, about 4·10⁻⁶ for 12 million keys in a window; such a pair would
drop one genuine event, which is why the bound is documented rather than silent.

Memory. A window holds two minutes of keys: 12 million at 100k events/s. In an ``OrderedDict`` a
key costs ~155 bytes (an int object for the digest, a float, the dict's entry and index, the ordered
dict's link node). ``DedupWindow`` keeps flat typed arrays instead, 40 bytes per ring slot:

* a FIFO ring in insertion order: an ``array('Q')`` of digests and an ``array('d')`` of first-seen
  times, 16 bytes per slot. It grows by half when full, up to ``max_entries`` (never preallocated:
  ``max_entries`` may be 10 million for a window that stays small);
* an open-addressing hash index with linear probing, two home buckets per ring slot, so its load
  never exceeds 0.5 (~1.5 buckets probed for a hit, ~2.5 for a miss). A bucket holds the digest
  itself (``array('Q')``, 0 = empty; the digest 0 is kept aside) and the ring slot of its sighting
  (``array('I')``), 12 bytes. Holding the digest means a miss never reads the ring (one cache line
  per lookup); only a hit reads the ring's time, to measure the repeat against the sighting.

So 40 bytes per key when the ring is full (``max_entries`` reached, or right before it grows), 60
right after it grew (the budget is 64). The home bucket is ``digest % homes`` (the digest is already
a uniform hash); probes run forwards without wrapping around, into a few spare buckets past the
homes whose last one is always kept empty to stop them.

A key seen again *after* its window (a new sighting, applied again) takes a new ring slot and the
index points there; the old slot stays in the ring, stale, until it reaches the head. The oldest
slot leaves (expiry or the ``max_entries`` bound) by backward-shift deletion, not a tombstone, so a
window that turns over millions of keys a minute keeps chains as short as a fresh one. Growing the
ring rebuilds the index: ~0.3 µs per key held, amortised ~3 placements per key while a window first
fills, as one stall per growth (~0.35 s at 1.3 million keys, ~3 s at 10 million); never in the
steady state, where expiry frees as many slots as new keys take.

Exactness. Expiry only ever looks at the head of the ring, and a key is never expired before the
watermark has passed its first-seen time by the window, so when source times in a partition do not
go back (Kafka's LogAppendTime; CreateTime and event times nearly so) the decision is exactly
"within ``window`` of the sighting". A record whose time is behind the watermark by more than the
window may miss a sighting that already expired (it is applied, as after any window).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smartico_stream.events.models import CanonicalEvent
    from smartico_stream.events.raw import RawRecord

Clock = Callable[[], float]

_MIN_CAPACITY = 16  # ring slots of a new window
_INDEX_PAD = 64  # spare index buckets past the homes, so that probes need not wrap around
_NO_SLOT = -1
MAX_ENTRIES = (1 << 32) - 1  # the index holds ring slots as 32-bit unsigned ints


def dedup_digest(brand_id: str, event_type: str, event_id: str) -> int:
    """Stable 64-bit digest of a dedup key."""
    # \x1f (unit separator) cannot occur in the normalised ids, so ("a","bc") and ("ab","c") differ.
    raw = f"{brand_id}\x1f{event_type}\x1f{event_id}".encode()
    return int.from_bytes(blake2b(raw, digest_size=8).digest(), "little")


def dedup_time(record: RawRecord, event: CanonicalEvent) -> float:
    """The source time (epoch seconds) a repeat of ``event`` is measured on: the broker's timestamp
    of ``record`` when it has one (``timestamp_ms`` > 0), else the event's own event time. The
    service and ``simulate`` both deduplicate on this, so the same records give the same outcome."""
    if record.timestamp_ms > 0:
        return record.timestamp_ms / 1000
    return event.event_time.timestamp()


class DedupWindow:
    """Sightings of keys within ``window_s`` seconds of source time, at most ``max_entries``.

    ``contains(digest, at)`` is true when the sighting held for ``digest`` is within ``window_s`` of
    ``at`` (either side). A repeat is measured from the sighting and does not extend it; a key added
    again later (it was outside the window, so applied again) is a new sighting. Keys expire once
    the watermark (the latest first-seen time added, capped at ``clock() + window_s``) has passed
    them by ``window_s``. When the bound is reached the oldest keys go first (counted in
    ``evicted``), so memory never grows past ``max_entries`` ring slots. Keys are 64-bit unsigned
    digests (see ``dedup_digest``); storage is 40-60 bytes per key (see the module docstring).

    This runs once per record, so the probes are written out inline: a hit, a miss and a plain
    insert call no helper; only expiry, eviction, growth, new sightings and the digest 0 do."""

    __slots__ = (
        "_capacity",
        "_clock",
        "_head",
        "_homes",
        "_index",
        "_keys",
        "_last",
        "_max_entries",
        "_room",
        "_size",
        "_slots",
        "_stale",
        "_times",
        "_watermark",
        "_window_s",
        "_zero",
        "evicted",
    )

    def __init__(self, window_s: float, max_entries: int, clock: Clock = time.time) -> None:
        if max_entries > MAX_ENTRIES:
            raise ValueError(f"max_entries is at most {MAX_ENTRIES}, not {max_entries}")
        self._window_s = window_s
        self._max_entries = max_entries
        self._clock = clock
        self.evicted = 0
        self._watermark = float("-inf")
        # The ring: slot p holds a digest and its first-seen time. The live slots are head, head+1,
        # ... (size of them, wrapping at the capacity), in insertion order; expiry only ever looks
        # at the head. ``_stale`` of them are sightings superseded by a newer one of the same key.
        capacity = max(1, min(_MIN_CAPACITY, max_entries))
        self._keys = array("Q", [0]) * capacity
        self._times = array("d", [0.0]) * capacity
        self._capacity = capacity
        self._head = 0
        self._size = 0
        self._stale = 0
        # How many keys fit without evicting or growing: min(capacity, max_entries).
        self._room = min(capacity, max_entries)
        # The index (see _rebuild): digests by bucket, 0 = empty, and the ring slot of each; the
        # digest 0 itself is held aside, as the ring slot in _zero (_NO_SLOT when absent).
        self._index = array("Q")
        self._slots = array("I")
        self._homes = self._last = 0
        self._zero = _NO_SLOT
        self._rebuild(_INDEX_PAD)

    def __len__(self) -> int:
        """Keys held (superseded sightings not counted)."""
        return self._size - self._stale

    @property
    def window_s(self) -> float:
        return self._window_s

    @property
    def watermark(self) -> float:
        """The latest first-seen time added (capped at ``clock() + window_s``); -inf when empty."""
        return self._watermark

    def horizon_after(self, latest: float) -> float:
        """The expiry horizon once keys first seen up to ``latest`` are added: keys first seen before
        it are out of the window for good (what the store may delete)."""
        watermark = self._watermark
        if latest > watermark:
            watermark = min(latest, self._clock() + self._window_s)
        return watermark - self._window_s

    def sighting(self, digest: int) -> float | None:
        """The first-seen time held for ``digest``, or None."""
        index = self._index
        bucket = digest % self._homes
        key = index[bucket]
        while key:
            if key == digest:
                return self._times[self._slots[bucket]]
            bucket += 1
            key = index[bucket]
        if digest or self._zero == _NO_SLOT:
            return None
        return self._times[self._zero]

    def contains(self, digest: int, at: float) -> bool:
        """True when ``digest``'s sighting is within the window of source time ``at``."""
        index = self._index
        bucket = digest % self._homes
        key = index[bucket]
        while key:
            if key == digest:
                # `<=`, so that NaN is never a repeat
                return abs(at - self._times[self._slots[bucket]]) <= self._window_s
            bucket += 1
            key = index[bucket]
        if digest or self._zero == _NO_SLOT:
            return False
        return abs(at - self._times[self._zero]) <= self._window_s

    def add(self, digest: int, first_seen: float) -> None:
        """Remember a sighting (once its batch is committed): advance the watermark (expiring what
        it passed), then hold the key, or move it to this sighting when it is newer than the one
        held. The oldest slot goes when the window is full."""
        if first_seen > self._watermark:
            self._advance(first_seen)
        index = self._index
        bucket = digest % self._homes
        key = index[bucket]
        while key:
            if key == digest:
                if first_seen > self._times[self._slots[bucket]]:
                    self._insert(digest, first_seen)
                return
            bucket += 1
            key = index[bucket]
        # Absent (or 0): the empty bucket that ended the probe is where it goes.
        size = self._size
        if size < self._room and digest and bucket < self._last:
            slot = self._head + size
            if slot >= self._capacity:
                slot -= self._capacity
            self._keys[slot] = digest  # OverflowError for anything but a 64-bit unsigned int
            self._times[slot] = first_seen
            index[bucket] = digest
            self._slots[bucket] = slot
            self._size = size + 1
        else:
            self._insert(digest, first_seen)

    def check_and_add(self, digest: int, at: float) -> bool:
        """True when ``digest`` is a repeat at source time ``at``; otherwise remember it and return
        False."""
        # Not on the service's path (it adds keys only once their batch is committed), so composed.
        if self.contains(digest, at):
            return True
        self.add(digest, at)
        return False

    def entries(self) -> list[tuple[int, float]]:
        """(digest, first seen) of the keys held, oldest slot first."""
        keys, times = self._keys, self._times
        found = []
        for i in range(self._size):
            slot = (self._head + i) % self._capacity
            if self._is_current(keys[slot], slot):
                found.append((keys[slot], times[slot]))
        return found

    # -- internals ------------------------------------------------------------------------------

    def _is_current(self, digest: int, slot: int) -> bool:
        """Whether ring ``slot`` (holding ``digest``) is the sighting the index points to."""
        if not digest:
            return self._zero == slot
        index = self._index
        bucket = digest % self._homes
        while index[bucket] != digest:
            bucket += 1
        return self._slots[bucket] == slot

    def _advance(self, first_seen: float) -> None:
        """Move the watermark up to ``first_seen`` (at most ``clock() + window_s``) and expire the
        keys it passed by more than the window."""
        capped = min(first_seen, self._clock() + self._window_s)
        if capped > self._watermark:
            self._watermark = capped
            # `not (age <= window)` rather than `age > window`: exactly the keep rule, NaN included.
            if self._size and not capped - self._times[self._head] <= self._window_s:
                self._drop(capped, self._size)

    def _live(self, column: Any) -> tuple[Any, Any]:
        """The held part of a ring column (an array or a memoryview of one), oldest first, in two
        runs: from the head up to the end of the ring, then the part wrapped to its start."""
        first = min(self._size, self._capacity - self._head)
        return column[self._head : self._head + first], column[: self._size - first]

    def _insert(self, digest: int, first_seen: float) -> None:
        """The rare cases of an insert: a newer sighting of a key held (a new slot, the old one goes
        stale), digest 0, no room (evict down to the bound, or grow), or a probe that ended on the
        last bucket (which must stay empty: it is what stops every probe)."""
        if not digest and self._zero != _NO_SLOT and first_seen <= self._times[self._zero]:
            return
        if not 0 <= digest < 1 << 64:  # before evicting anything for it (the ring would refuse it)
            raise OverflowError(f"a dedup digest is a 64-bit unsigned int, not {digest!r}")
        max_entries = self._max_entries
        if max_entries <= 0:  # the new key would be the oldest one over the bound, and go at once
            self.evicted += 1
            return
        if self._size >= max_entries:
            self._drop(None, max_entries - 1)
        elif self._size >= self._capacity:
            self._grow()
        size = self._size
        slot = self._head + size
        if slot >= self._capacity:
            slot -= self._capacity
        self._keys[slot] = digest
        self._times[slot] = first_seen
        self._size = size + 1
        if not digest:
            if self._zero != _NO_SLOT:
                self._stale += 1
            self._zero = slot
            return
        # Deleting and rebuilding move digests between buckets: probe again, for the key (still
        # held unless the bound just evicted it) or the first empty bucket.
        index = self._index
        bucket = digest % self._homes
        key = index[bucket]
        while key:
            if key == digest:
                self._slots[bucket] = slot
                self._stale += 1
                return
            bucket += 1
            key = index[bucket]
        if bucket < self._last:
            index[bucket] = digest
            self._slots[bucket] = slot
        else:
            # The cluster ran into the last spare bucket: rebuild with twice the spare buckets (the
            # new key is in the ring already, so the rebuild places it).
            self._rebuild(2 * (len(index) - self._homes))

    def _drop(self, now: float | None, keep: int) -> None:
        """Drop the oldest slots while more than ``keep`` are held (evictions, counted unless the
        slot was stale) and then, given ``now``, while the oldest is outside the window (expiry).

        A digest leaves the index by backward-shift deletion: each later digest of the same cluster
        whose home bucket is at or before the hole moves back into it, and its own bucket becomes
        the hole; so every digest stays reachable from its home and no tombstones build up, however
        many keys turn over. A stale slot leaves only the ring (the index points to a newer one)."""
        keys = self._keys
        times = self._times
        index = self._index
        slots = self._slots
        homes = self._homes
        capacity = self._capacity
        window_s = self._window_s
        head = self._head
        size = self._size
        evicted = 0
        while size:
            evicting = size > keep
            if not evicting and (now is None or now - times[head] <= window_s):
                break
            digest = keys[head]
            if digest:
                hole = digest % homes
                while index[hole] != digest:
                    hole += 1
                if slots[hole] != head:
                    self._stale -= 1
                else:
                    evicted += evicting
                    bucket = hole + 1
                    key = index[bucket]
                    while key:
                        if key % homes <= hole:
                            index[hole] = key
                            slots[hole] = slots[bucket]
                            hole = bucket
                        bucket += 1
                        key = index[bucket]
                    index[hole] = 0
            elif self._zero == head:
                evicted += evicting
                self._zero = _NO_SLOT
            else:
                self._stale -= 1
            head += 1
            if head == capacity:
                head = 0
            size -= 1
        self._head = head
        self._size = size
        self.evicted += evicted

    def _grow(self) -> None:
        """Grow the full ring by half (up to ``max_entries``), oldest key to slot 0, and rebuild the
        index to match. Copies go through memoryviews into arrays allocated at their final size: no
        temporary slices and no over-allocation (array.extend would reserve ~6 % more)."""
        keys, times, head, capacity = self._keys, self._times, self._head, self._capacity
        grown = min(max(capacity * 3 // 2, capacity + 1), self._max_entries)
        new_keys = array("Q", [0]) * grown
        new_times = array("d", [0.0]) * grown
        tail = capacity - head  # the ring is full: slots head .. end, then 0 .. head-1
        for new, old in ((new_keys, keys), (new_times, times)):
            with memoryview(new) as dst, memoryview(old) as src:
                dst[:tail] = src[head:]
                dst[tail:capacity] = src[:head]
        self._keys = new_keys
        self._times = new_times
        self._capacity = grown
        self._head = 0
        self._room = min(grown, self._max_entries)
        self._rebuild(len(self._index) - self._homes)

    def _rebuild(self, spare: int) -> None:
        """A fresh index for the ring's digests: 2 home buckets per ring slot (load ≤ 0.5) and
        ``spare`` more after them, of which the last is kept empty, so a probe never wraps around.
        Slots are placed oldest first, so a newer sighting of a key is the one the index keeps."""
        self._index = array("Q")  # let the old index go before the new one is allocated
        self._slots = array("I")
        homes = 2 * self._capacity
        while True:
            index = array("Q", [0]) * (homes + spare)
            slots = array("I", [0]) * (homes + spare)
            last = homes + spare - 1
            zero = _fill(index, slots, self._keys, self._head, self._size, self._capacity, homes, last)
            if zero is not None:
                break
            spare *= 2
        self._index = index
        self._slots = slots
        self._homes = homes
        self._last = last
        self._zero = zero


def _fill(
    index: array[int], slots: array[int], keys: array[int], head: int, size: int, capacity: int, homes: int, last: int
) -> int | None:
    """Place the ring's digests in an empty index, oldest first (a later slot of a digest replaces
    an earlier one); the ring slot of the digest 0 (or _NO_SLOT), or None if a digest would take the
    last bucket."""
    zero = _NO_SLOT
    slot = head
    for _ in range(size):
        digest = keys[slot]
        if digest:
            bucket = digest % homes
            key = index[bucket]
            while key and key != digest:
                bucket += 1
                key = index[bucket]
            if bucket == last:
                return None
            index[bucket] = digest
            slots[bucket] = slot
        else:
            zero = slot
        slot += 1
        if slot == capacity:
            slot = 0
    return zero
