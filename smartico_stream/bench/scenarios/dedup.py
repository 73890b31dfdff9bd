"""``dedup``: the memory of a dedup window holding two minutes of keys at 100k events/s."""

from __future__ import annotations

from typing import Any

from smartico_stream.bench.scenarios.env import Env


async def scenario_dedup(env: Env) -> dict[str, Any]:
    """The report's ``dedup``: bytes per key from the RSS growth of a fresh process, cross-checked
    with tracemalloc on fewer keys."""
    profile = env.profile
    rss = await env.run_worker("dedup", {"keys": profile.dedup_keys, "traced": False}, 1200)
    traced = await env.run_worker("dedup", {"keys": profile.dedup_traced_keys, "traced": True}, 1200)
    return {
        "keys": profile.dedup_keys,
        "bytes_per_key": rss["bytes_per_key"],
        "method": "RSS growth of a fresh process while one DedupWindow is filled (realistic dedup_digest keys, "
                  "first-seen times shared per 2000-key batch as after a commit)",
        "fill_s": rss["fill_s"],
        "tracemalloc": {"keys": profile.dedup_traced_keys, "bytes_per_key": traced["bytes_per_key"]},
    }
