"""The short-window dedup on source time: a window measures repeats on the times it is given (the
records' own timestamps), never on the clock, which only caps the watermark."""

from collections import deque
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from smartico_stream.pipeline.dedup import DedupWindow, dedup_digest


class FakeClock:
    def __init__(self, now: float = 1e12) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_repeat_inside_the_window_is_dropped_and_one_outside_is_not() -> None:
    window = DedupWindow(window_s=120, max_entries=100, clock=FakeClock())
    key = dedup_digest("brand", "deposit", "tx-1")
    assert window.check_and_add(key, 1_000.0) is False
    assert window.check_and_add(key, 1_119.9) is True
    assert window.check_and_add(key, 1_120.1) is False  # 120.1 s after the first sighting
    # ... which is a new sighting: a copy 80 s after it is a repeat again
    assert window.check_and_add(key, 1_200.0) is True


def test_a_repeat_does_not_extend_the_window() -> None:
    window = DedupWindow(window_s=10, max_entries=100, clock=FakeClock())
    key = dedup_digest("b", "casino_bet", "1")
    window.check_and_add(key, 0.0)
    assert window.check_and_add(key, 9.0) is True
    assert window.check_and_add(key, 11.0) is False  # 11 s after the first, 2 s after the repeat


def test_the_window_is_measured_on_the_times_given_not_on_the_clock() -> None:
    """The clock may stand anywhere: a replay of last year's records, read in a second, dedups on
    their own times (1 s apart: a repeat; 10 minutes apart: not)."""
    clock = FakeClock(2_000_000_000.0)
    window = DedupWindow(window_s=120, max_entries=100, clock=clock)
    key = dedup_digest("b", "deposit", "old")
    assert window.check_and_add(key, 1_600_000_000.0) is False
    clock.now += 3_600  # an hour of processing time changes nothing
    assert window.check_and_add(key, 1_600_000_001.0) is True
    assert window.check_and_add(key, 1_600_000_600.0) is False


def test_a_time_far_ahead_of_the_clock_does_not_expire_every_key() -> None:
    clock = FakeClock(1_000.0)
    window = DedupWindow(window_s=120, max_entries=100, clock=clock)
    window.add(1, 1_000.0)
    window.add(2, 9e9)  # a record stamped centuries ahead
    assert window.watermark == 1_120.0  # capped at clock + window
    assert window.contains(1, 1_010.0)
    assert window.horizon_after(9e9) == 1_000.0


def test_memory_is_bounded_by_max_entries_oldest_first() -> None:
    window = DedupWindow(window_s=1_000, max_entries=3, clock=FakeClock())
    keys = [dedup_digest("b", "deposit", str(i)) for i in range(5)]
    for i, key in enumerate(keys):
        window.check_and_add(key, float(i))
    assert len(window) == 3
    assert window.evicted == 2
    assert window.check_and_add(keys[-1], 5.0) is True  # newest kept
    assert window.check_and_add(keys[0], 5.0) is False  # oldest evicted


def test_digest_separates_fields_and_is_stable_across_processes() -> None:
    assert dedup_digest("a", "deposit", "bc") != dedup_digest("ab", "deposit", "c")
    assert dedup_digest("b", "deposit", "x") != dedup_digest("b", "withdrawal_requested", "x")
    # A fixed value: the digest must not depend on PYTHONHASHSEED (a store may persist it).
    assert dedup_digest("brand", "deposit", "tx-1") == 0xff23f63a6c1495c8


@given(
    events=st.lists(
        st.tuples(st.integers(min_value=0, max_value=20), st.floats(min_value=0, max_value=50)), max_size=200
    ),
    window_s=st.floats(min_value=0.5, max_value=30),
)
def test_matches_a_reference_model(events: list[tuple[int, float]], window_s: float) -> None:
    """Against a naive model: with source times that never go back, a key is a repeat iff its last
    applied sighting is within window_s."""
    window = DedupWindow(window_s=window_s, max_entries=10_000, clock=FakeClock())
    first_seen: dict[int, float] = {}
    now = 0.0
    for key, step in events:
        now += step
        live = key in first_seen and now - first_seen[key] <= window_s
        if not live:
            first_seen[key] = now
        assert window.check_and_add(key, now) is live


# -- the compact window against a reference model ----------------------------------------------------

# Digests that land in the same home bucket: multiples of lcm(1..40) share the home of every index
# size up to 40 and of most sizes up to ~100 (32, 48, 72, ...); one less than such a multiple lands on
# the last home bucket, so its cluster runs into the spare buckets past the homes. Plus digests that
# share their low 40 bits, the extremes (0 is the index's "empty", kept aside) and a few random ones.
_LCM = 5_342_931_457_063_200  # lcm(1..40)
_COLLIDING = [k * _LCM for k in range(1, 40)] + [k * _LCM - 1 for k in range(1, 40)]
_LOW_BITS = [(k << 40) | 0x5A5A5A5A5A for k in range(1, 40)]
_DIGEST_POOL = (
    _COLLIDING
    + _LOW_BITS
    + [0, 1, 2, (1 << 64) - 1, (1 << 63)]
    + [dedup_digest("b", "deposit", str(i)) for i in range(40)]
)
digests = st.sampled_from(_DIGEST_POOL)


@dataclass(eq=False)
class _Slot:
    digest: int
    time: float


class ReferenceWindow:
    """The documented semantics, naively: a deque of sightings in insertion order and the current
    sighting per key; the watermark (capped at clock + window) expires from the oldest."""

    def __init__(self, window_s: float, max_entries: int, clock: FakeClock) -> None:
        self.window_s, self.max_entries, self.clock = window_s, max_entries, clock
        self.ring: deque[_Slot] = deque()
        self.current: dict[int, _Slot] = {}
        self.watermark = float("-inf")
        self.evicted = 0

    def _pop(self, evicting: bool) -> None:
        slot = self.ring.popleft()
        if self.current.get(slot.digest) is slot:
            del self.current[slot.digest]
            self.evicted += evicting

    def contains(self, digest: int, at: float) -> bool:
        slot = self.current.get(digest)
        return slot is not None and abs(at - slot.time) <= self.window_s

    def add(self, digest: int, first_seen: float) -> None:
        capped = min(first_seen, self.clock() + self.window_s)
        if capped > self.watermark:
            self.watermark = capped
            while self.ring and not capped - self.ring[0].time <= self.window_s:
                self._pop(evicting=False)
        held = self.current.get(digest)
        if held is not None and first_seen <= held.time:
            return
        if self.max_entries <= 0:
            self.evicted += 1
            return
        while len(self.ring) >= self.max_entries:
            self._pop(evicting=True)
        slot = _Slot(digest, first_seen)
        self.ring.append(slot)
        self.current[digest] = slot

    def check_and_add(self, digest: int, at: float) -> bool:
        if self.contains(digest, at):
            return True
        self.add(digest, at)
        return False

    def entries(self) -> list[tuple[int, float]]:
        return [(s.digest, s.time) for s in self.ring if self.current.get(s.digest) is s]


class WindowMachine(RuleBasedStateMachine):
    """Random add / contains / check_and_add / entries / time moves (late, early and far-ahead
    times too), small bounds (eviction), bulk adds (growth and index rebuilds), colliding digests
    (long clusters, backward-shift deletion), new sightings of held keys (stale slots)."""

    @initialize(
        window_s=st.sampled_from([0.0, 1.0, 3.0, 10.0, 1_000.0, float("inf")]),
        max_entries=st.sampled_from([0, 1, 2, 3, 5, 12, 17, 40, 100, 10_000]),
    )
    def start(self, window_s: float, max_entries: int) -> None:
        self.now = 100.0  # source time
        self.clock = FakeClock(130.0)  # the cap: some far-ahead times pass it
        self.window = DedupWindow(window_s, max_entries, self.clock)
        self.model = ReferenceWindow(window_s, max_entries, self.clock)

    @rule(digest=digests, offset=st.sampled_from([0.0, 0.0, -0.5, -3.0, -50.0, 2.0, 500.0]))
    def check_and_add(self, digest: int, offset: float) -> None:
        at = self.now + offset
        assert self.window.check_and_add(digest, at) == self.model.check_and_add(digest, at)

    @rule(digest=digests, offset=st.sampled_from([0.0, -1.0, -11.0, 4.0]))
    def contains(self, digest: int, offset: float) -> None:
        at = self.now + offset
        assert self.window.contains(digest, at) == self.model.contains(digest, at)

    @rule(digest=digests, age=st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0, 50.0, -2.0]))
    def add(self, digest: int, age: float) -> None:
        # Older first-seen times too, as when a window is rebuilt from a store (and insertion order,
        # not the time, decides what goes first).
        self.window.add(digest, self.now - age)
        self.model.add(digest, self.now - age)

    @rule(count=st.integers(min_value=1, max_value=300), start=st.integers(min_value=0, max_value=10**6))
    def add_many(self, count: int, start: int) -> None:
        for i in range(start, start + count):
            digest = dedup_digest("bulk", "deposit", str(i)) if i % 3 else _LCM * (i % 3000 + 1) - 1
            self.window.add(digest, self.now)
            self.model.add(digest, self.now)

    @rule(step=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 7.0]))
    def advance(self, step: float) -> None:
        self.now += step
        self.clock.now += step

    @rule()
    def entries(self) -> None:
        assert self.window.entries() == self.model.entries()
        assert self.window.watermark == self.model.watermark

    @precondition(lambda self: len(self.model.current) > 0)
    @rule(data=st.data())
    def a_held_key_is_found(self, data: st.DataObject) -> None:
        digest = data.draw(st.sampled_from(list(self.model.current)))
        assert self.window.sighting(digest) == self.model.current[digest].time
        assert self.window.contains(digest, self.now) == self.model.contains(digest, self.now)

    @invariant()
    def same_size_and_evictions(self) -> None:
        if hasattr(self, "window"):
            assert len(self.window) == len(self.model.current)
            assert self.window.evicted == self.model.evicted


WindowMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_window_matches_the_reference_model = WindowMachine.TestCase


def test_growth_through_many_resizes_keeps_every_key_findable() -> None:
    window = DedupWindow(window_s=float("inf"), max_entries=10_000_000, clock=FakeClock())
    keys = [dedup_digest("b", "deposit", str(i)) for i in range(100_000)]
    keys += [_LCM * k - 1 for k in range(1, 3001)]  # one long cluster at the end of the homes
    keys += [_LCM * k for k in range(1, 3001)] + [0]
    for i, key in enumerate(keys):
        if i % 2:
            window.add(key, float(i))
        else:
            assert window.check_and_add(key, float(i)) is False
    assert len(window) == len(keys) == len(set(keys))
    assert all(window.contains(key, 0.0) for key in keys)
    assert window.entries() == [(key, float(i)) for i, key in enumerate(keys)]
    assert window.evicted == 0
    assert not window.contains(dedup_digest("b", "deposit", "absent"), 0.0)
    assert window.check_and_add(keys[12_345], 1.0) is True


def test_growing_a_wrapped_ring_keeps_time_order() -> None:
    """The ring grows when full; by then expiry has usually moved its head off slot 0."""
    clock = FakeClock()
    window = DedupWindow(window_s=10.0, max_entries=10_000, clock=clock)
    model = ReferenceWindow(10.0, 10_000, clock)
    now = 0.0
    for round_ in range(12):
        for i in range(7 + 5 * round_):
            key = dedup_digest("b", "deposit", f"{round_}-{i}")
            assert window.check_and_add(key, now) is model.check_and_add(key, now) is False
            now += 0.25
        assert window.entries() == model.entries()
        now += 6.0  # part of the keys expire, the rest stays at the head of the ring
    assert len(window) == len(model.current)
    while model.current:
        now += 0.5
        window.add(7, now)
        model.add(7, now)
        assert window.entries() == model.entries()
        if model.entries() == [(7, now)]:
            break


def test_a_cluster_running_past_the_spare_buckets_of_a_wrapped_ring() -> None:
    """White-box: digests that all share the last home bucket of the current index, inserted into a
    ring whose head has moved, overflow the spare buckets and force an index rebuild mid-ring."""
    window = DedupWindow(window_s=10.0, max_entries=10_000, clock=FakeClock())
    for i in range(100):
        window.add(dedup_digest("b", "deposit", str(i)), 0.0)
    now = 20.0
    window.add(1, now)  # moves the watermark: expires the 100, the head is now mid-ring
    homes = window._homes
    capacity = len(window._keys)
    assert capacity >= 100 and len(window) == 1
    keys = [homes * k - 1 for k in range(1, capacity)]  # all home on bucket homes-1
    for i, key in enumerate(keys):
        now += 0.001
        if i % 2:
            window.add(key, now)
        else:
            assert window.check_and_add(key, now) is False
    assert len(window._keys) == capacity and window._homes == homes  # no growth: a spare rebuild
    assert len(window._index) > homes + 64
    assert all(window.check_and_add(key, now) for key in keys)
    assert [key for key, _ in window.entries()] == [1, *keys]


def test_a_window_that_turns_over_many_times_keeps_its_bound_and_finds_its_keys() -> None:
    clock = FakeClock()
    window = DedupWindow(window_s=5.0, max_entries=1_000, clock=clock)
    model = ReferenceWindow(5.0, 1_000, clock)
    now = 0.0
    for i in range(50_000):
        now += 0.001 if i < 30_000 else 0.01  # first over the bound (evicting), then expiring
        key = dedup_digest("b", "casino_bet", str(i)) if i % 4 else _LCM * (i % 2_000 + 1)
        assert window.check_and_add(key, now) == model.check_and_add(key, now)
    assert len(window) == len(model.current) > 400
    assert window.evicted == model.evicted > 20_000
    held = window.entries()
    assert held == model.entries()
    assert all(window.contains(digest, now) for digest, _ in held)


def test_new_sightings_of_held_keys_keep_the_bound_and_the_newest_time() -> None:
    """A key applied again after its window takes a new slot (the old one goes stale): the ring
    never holds more than max_entries slots, stale ones included, and the key is measured from
    its newest sighting."""
    window = DedupWindow(window_s=1.0, max_entries=8, clock=FakeClock())
    for step in range(100):
        assert window.check_and_add(42, step * 1.5) is False  # 1.5 s apart: each outside the window
        window.add(10_000 + step, step * 1.5)
        assert window._size <= 8
    assert window.sighting(42) == 99 * 1.5
    assert window.check_and_add(42, 99 * 1.5 + 0.5) is True


def test_memory_does_not_scale_with_max_entries() -> None:
    window = DedupWindow(window_s=120, max_entries=10_000_000, clock=FakeClock())
    window.check_and_add(1, 0.0)
    # nothing preallocated for the bound: a new window is a few kilobytes
    assert sum(a.itemsize * len(a) for a in (window._keys, window._times, window._index, window._slots)) < 4_096


def test_bytes_per_key_stay_within_the_budget() -> None:
    """40 bytes per key with the ring full, 60 right after it grew (budget: 64)."""
    window = DedupWindow(window_s=float("inf"), max_entries=10_000_000, clock=FakeClock())
    sizes = []
    for i in range(200_000):
        window.add(dedup_digest("b", "deposit", str(i)), float(i))
        arrays = (window._keys, window._times, window._index, window._slots)
        sizes.append(sum(a.itemsize * len(a) for a in arrays) / len(window))
    assert max(sizes[1_000:]) <= 64
    assert min(sizes[1_000:]) < 41
