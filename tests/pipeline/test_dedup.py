"""The short-window dedup, on an injectable clock (no sleeping)."""

from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from smartico_stream.pipeline.dedup import DedupWindow, dedup_digest


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_repeat_inside_the_window_is_dropped_and_one_outside_is_not() -> None:
    clock = FakeClock()
    window = DedupWindow(window_s=120, max_entries=100, clock=clock)
    key = dedup_digest("brand", "deposit", "tx-1")
    assert window.check_and_add(key) is False
    clock.now += 119.9
    assert window.check_and_add(key) is True
    clock.now += 0.2  # 120.1 s after the first sighting: the window has passed
    assert window.check_and_add(key) is False


def test_a_repeat_does_not_extend_the_window() -> None:
    clock = FakeClock()
    window = DedupWindow(window_s=10, max_entries=100, clock=clock)
    key = dedup_digest("b", "casino_bet", "1")
    window.check_and_add(key)
    clock.now += 9
    assert window.check_and_add(key) is True
    clock.now += 2  # 11 s after the first, 2 s after the repeat
    assert window.check_and_add(key) is False


def test_memory_is_bounded_by_max_entries_oldest_first() -> None:
    clock = FakeClock()
    window = DedupWindow(window_s=1_000, max_entries=3, clock=clock)
    keys = [dedup_digest("b", "deposit", str(i)) for i in range(5)]
    for key in keys:
        clock.now += 1
        window.check_and_add(key)
    assert len(window) == 3
    assert window.evicted == 2
    assert window.check_and_add(keys[-1]) is True  # newest kept
    assert window.check_and_add(keys[0]) is False  # oldest evicted


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
    """Against a naive model: a key is a repeat iff it was first seen (and not since expired) within
    window_s. Time only moves forward."""
    clock = FakeClock(0.0)
    window = DedupWindow(window_s=window_s, max_entries=10_000, clock=clock)
    first_seen: dict[int, float] = {}
    for key, step in events:
        clock.now += step
        live = key in first_seen and clock.now - first_seen[key] <= window_s
        if not live:
            first_seen[key] = clock.now
        assert window.check_and_add(key) is live


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


class ReferenceWindow:
    """The documented semantics, naively (what DedupWindow was: an OrderedDict)."""

    def __init__(self, window_s: float, max_entries: int, clock: FakeClock) -> None:
        self.window_s, self.max_entries, self.clock = window_s, max_entries, clock
        self.seen: OrderedDict[int, float] = OrderedDict()
        self.evicted = 0

    def _expire(self) -> None:
        now = self.clock()
        while self.seen and not now - next(iter(self.seen.values())) <= self.window_s:
            self.seen.popitem(last=False)

    def contains(self, digest: int) -> bool:
        self._expire()
        return digest in self.seen

    def add(self, digest: int, first_seen: float) -> None:
        if digest in self.seen:
            return
        self.seen[digest] = first_seen
        if len(self.seen) > self.max_entries:
            self.seen.popitem(last=False)
            self.evicted += 1

    def check_and_add(self, digest: int) -> bool:
        if self.contains(digest):
            return True
        self.add(digest, self.clock())
        return False

    def entries(self) -> list[tuple[int, float]]:
        self._expire()
        return list(self.seen.items())


class WindowMachine(RuleBasedStateMachine):
    """Random add / contains / check_and_add / entries / clock moves, small bounds (eviction), bulk
    adds (growth and index rebuilds), colliding digests (long clusters, backward-shift deletion)."""

    @initialize(
        window_s=st.sampled_from([0.0, 1.0, 3.0, 10.0, 1_000.0, float("inf")]),
        max_entries=st.sampled_from([0, 1, 2, 3, 5, 12, 17, 40, 100, 10_000]),
    )
    def start(self, window_s: float, max_entries: int) -> None:
        self.clock = FakeClock(100.0)
        self.window = DedupWindow(window_s, max_entries, self.clock)
        self.model = ReferenceWindow(window_s, max_entries, self.clock)

    @rule(digest=digests)
    def check_and_add(self, digest: int) -> None:
        assert self.window.check_and_add(digest) == self.model.check_and_add(digest)

    @rule(digest=digests)
    def contains(self, digest: int) -> None:
        assert self.window.contains(digest) == self.model.contains(digest)

    @rule(digest=digests, age=st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0, 50.0]))
    def add(self, digest: int, age: float) -> None:
        # Older first-seen times too, as when a window is rebuilt from a store (and insertion order,
        # not the time, decides what goes first).
        self.window.add(digest, self.clock.now - age)
        self.model.add(digest, self.clock.now - age)

    @rule(count=st.integers(min_value=1, max_value=300), start=st.integers(min_value=0, max_value=10**6))
    def add_many(self, count: int, start: int) -> None:
        for i in range(start, start + count):
            digest = dedup_digest("bulk", "deposit", str(i)) if i % 3 else _LCM * (i % 3000 + 1) - 1
            self.window.add(digest, self.clock.now)
            self.model.add(digest, self.clock.now)

    @rule(step=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 7.0]))
    def advance(self, step: float) -> None:
        self.clock.now += step

    @rule()
    def entries(self) -> None:
        assert self.window.entries() == self.model.entries()

    @precondition(lambda self: len(self.model.seen) > 0)
    @rule(data=st.data())
    def a_held_key_is_found(self, data: st.DataObject) -> None:
        digest = data.draw(st.sampled_from(list(self.model.seen)))
        assert self.window.contains(digest) == self.model.contains(digest)

    @invariant()
    def same_size_and_evictions(self) -> None:
        if hasattr(self, "window"):
            assert len(self.window) == len(self.model.seen)
            assert self.window.evicted == self.model.evicted


WindowMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_window_matches_the_reference_model = WindowMachine.TestCase


def test_growth_through_many_resizes_keeps_every_key_findable() -> None:
    clock = FakeClock()
    window = DedupWindow(window_s=float("inf"), max_entries=10_000_000, clock=clock)
    keys = [dedup_digest("b", "deposit", str(i)) for i in range(100_000)]
    keys += [_LCM * k - 1 for k in range(1, 3001)]  # one long cluster at the end of the homes
    keys += [_LCM * k for k in range(1, 3001)] + [0]
    for i, key in enumerate(keys):
        if i % 2:
            window.add(key, float(i))
        else:
            clock.now = float(i)
            assert window.check_and_add(key) is False
    assert len(window) == len(keys) == len(set(keys))
    assert all(window.contains(key) for key in keys)
    assert window.entries() == [(key, float(i)) for i, key in enumerate(keys)]
    assert window.evicted == 0
    assert not window.contains(dedup_digest("b", "deposit", "absent"))
    assert window.check_and_add(keys[12_345]) is True


def test_growing_a_wrapped_ring_keeps_time_order() -> None:
    """The ring grows when full; by then expiry has usually moved its head off slot 0."""
    clock = FakeClock(0.0)
    window = DedupWindow(window_s=10.0, max_entries=10_000, clock=clock)
    model = ReferenceWindow(10.0, 10_000, clock)
    for round_ in range(12):
        for i in range(7 + 5 * round_):
            key = dedup_digest("b", "deposit", f"{round_}-{i}")
            assert window.check_and_add(key) is model.check_and_add(key) is False
            clock.now += 0.25
        assert window.entries() == model.entries()
        clock.now += 6.0  # part of the keys expire, the rest stays at the head of the ring
    assert len(window) == len(model.seen)
    while model.seen:
        clock.now += 0.5
        assert window.entries() == model.entries()


def test_a_cluster_running_past_the_spare_buckets_of_a_wrapped_ring() -> None:
    """White-box: digests that all share the last home bucket of the current index, inserted into a
    ring whose head has moved, overflow the spare buckets and force an index rebuild mid-ring."""
    clock = FakeClock(0.0)
    window = DedupWindow(window_s=10.0, max_entries=10_000, clock=clock)
    for i in range(100):
        window.add(dedup_digest("b", "deposit", str(i)), clock.now)
    clock.now += 20.0
    assert not window.contains(0)  # expires the 100: the head is now mid-ring
    homes = window._homes
    capacity = len(window._keys)
    assert capacity >= 100 and len(window) == 0
    keys = [homes * k - 1 for k in range(1, capacity + 1)]  # all home on bucket homes-1
    for i, key in enumerate(keys):
        clock.now += 0.001
        if i % 2:
            window.add(key, clock.now)
        else:
            assert window.check_and_add(key) is False
    assert len(window._keys) == capacity and window._homes == homes  # no growth: a spare rebuild
    assert len(window._index) > homes + 64
    assert all(window.check_and_add(key) for key in keys)
    assert [key for key, _ in window.entries()] == keys


def test_a_window_that_turns_over_many_times_keeps_its_bound_and_finds_its_keys() -> None:
    clock = FakeClock()
    window = DedupWindow(window_s=5.0, max_entries=1_000, clock=clock)
    model = ReferenceWindow(5.0, 1_000, clock)
    for i in range(50_000):
        clock.now += 0.001 if i < 30_000 else 0.01  # first over the bound (evicting), then expiring
        key = dedup_digest("b", "casino_bet", str(i)) if i % 4 else _LCM * (i % 2_000 + 1)
        assert window.check_and_add(key) == model.check_and_add(key)
    assert len(window) == len(model.seen) > 400
    assert window.evicted == model.evicted > 20_000
    held = window.entries()
    assert held == model.entries()
    assert all(window.contains(digest) for digest, _ in held)


def test_memory_does_not_scale_with_max_entries() -> None:
    window = DedupWindow(window_s=120, max_entries=10_000_000, clock=FakeClock())
    window.check_and_add(1)
    # nothing preallocated for the bound: a new window is a few kilobytes
    assert sum(a.itemsize * len(a) for a in (window._keys, window._times, window._index)) < 4_096
