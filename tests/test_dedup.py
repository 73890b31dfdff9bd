"""The short-window dedup, on an injectable clock (no sleeping)."""

from hypothesis import given
from hypothesis import strategies as st

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
