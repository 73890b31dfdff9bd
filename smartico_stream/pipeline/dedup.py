"""Short-window deduplication: drop a repeat of brand + event type + transaction id seen less than
``window`` seconds ago (the spec's "short window deduplication", 2 minutes by default).

Keys are stored as 64-bit BLAKE2b digests, not as strings: memory per key stays small and bounded,
and the digest is stable across processes (a later store can persist it). Two different keys share a
digest with probability ~n²/2⁶⁵, about 4·10⁻⁶ for 12 million keys in a window; such a pair would
drop one genuine event, which is why the bound is documented rather than silent.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from hashlib import blake2b

Clock = Callable[[], float]


def dedup_digest(brand_id: str, event_type: str, event_id: str) -> int:
    """Stable 64-bit digest of a dedup key."""
    # \x1f (unit separator) cannot occur in the normalised ids, so ("a","bc") and ("ab","c") differ.
    raw = f"{brand_id}\x1f{event_type}\x1f{event_id}".encode()
    return int.from_bytes(blake2b(raw, digest_size=8).digest(), "little")


class DedupWindow:
    """Keys first seen within the last ``window_s`` seconds of ``clock`` time, at most ``max_entries``.

    A repeat is measured from the first sighting and does not extend it. When the bound is reached
    the oldest keys go first, so memory never grows past ``max_entries``."""

    __slots__ = ("_clock", "_max_entries", "_seen", "_window_s", "evicted")

    def __init__(self, window_s: float, max_entries: int, clock: Clock = time.time) -> None:
        self._window_s = window_s
        self._max_entries = max_entries
        self._clock = clock
        # Insertion order is time order (one clock, never going back), so the oldest key is first.
        self._seen: OrderedDict[int, float] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._seen)

    def now(self) -> float:
        return self._clock()

    def contains(self, digest: int) -> bool:
        """True when ``digest`` was first seen inside the window."""
        self._expire(self._clock())
        return digest in self._seen

    def add(self, digest: int, first_seen: float) -> None:
        """Remember a key (once its batch is committed); the oldest key goes when the window is full."""
        if digest in self._seen:
            return
        self._seen[digest] = first_seen
        if len(self._seen) > self._max_entries:
            self._seen.popitem(last=False)
            self.evicted += 1

    def check_and_add(self, digest: int) -> bool:
        """True when ``digest`` is a repeat inside the window; otherwise remember it and return False."""
        if self.contains(digest):
            return True
        self.add(digest, self._clock())
        return False

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            first_seen = next(iter(seen.values()))
            if now - first_seen <= self._window_s:
                return
            seen.popitem(last=False)

    def entries(self) -> list[tuple[int, float]]:
        """(digest, first seen) pairs still inside the window, oldest first."""
        self._expire(self._clock())
        return list(self._seen.items())
