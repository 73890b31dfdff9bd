"""The memory one dedup window holds."""

from __future__ import annotations

import time
from typing import Any

from smartico_stream.bench.machine import rss_bytes


def dedup_memory(params: dict[str, Any]) -> dict[str, Any]:
    """Fill one DedupWindow with ``keys`` realistic keys (brand + event type + transaction id, as the
    pipeline digests them), arriving at 100k/s in batches of 2000 that share one first-seen time
    (as the service adds them after each commit); measure the memory it holds."""
    import gc
    import tracemalloc

    from smartico_stream.pipeline.dedup import DedupWindow, dedup_digest

    keys, traced = params["keys"], params["traced"]
    types = ("casino_bet", "casino_win", "casino_bet", "casino_win", "deposit", "sport_bet_open",
             "sport_bet_selection_open", "user_profile")
    prefixes = ("cb", "cw", "cb", "cw", "dep", "sbo", "sso", "")
    brands = ("brand-eu", "brand-latam")
    clock = [1_767_600_000.0]
    window = DedupWindow(120.0, keys + 1, lambda: clock[0])
    gc.collect()
    if traced:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes()
    started = time.perf_counter()
    batch = 2000
    for start in range(0, keys, batch):
        first_seen = 1_767_600_000.0 + start / 100_000
        clock[0] = first_seen
        for i in range(start, min(keys, start + batch)):
            slot = i & 7
            event_id = f"{prefixes[slot]}-{i}" if prefixes[slot] else f"{brands[i & 1]}:{i}:{i * 7919 % 1_000_003}"
            window.add(dedup_digest(brands[(i >> 3) & 1], types[slot], event_id), first_seen)
    seconds = time.perf_counter() - started
    after = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
    if traced:
        tracemalloc.stop()
    if len(window) != keys:  # the window evicted keys: the figure would not be per key held
        raise RuntimeError(f"the dedup window holds {len(window)} keys, not {keys}")
    return {"keys": keys, "method": "tracemalloc" if traced else "rss", "bytes": after - before,
            "bytes_per_key": round((after - before) / keys, 1), "fill_s": round(seconds, 2)}
