"""``raw``: the confluent-kafka ceiling, timed only while a flushed backlog is drained."""

from __future__ import annotations

import uuid
from typing import Any

from smartico_stream.bench.scenarios.env import Env, completeness, scenario_topics


async def scenario_raw(env: Env) -> dict[str, Any]:
    """``raw``: a bare consumer draining flushed backlogs, timed per round."""
    env.reset()
    prefix = f"bench-raw-{uuid.uuid4().hex[:6]}"
    topics = scenario_topics(prefix)
    partitions = (await env.cluster.call("topics", topics, 60))["partitions"]
    env.cluster.start_call("produce", {
        "path": str(env.stream), "topics": topics, "mode": "rounds", "limit": env.profile.events,
        "max_ahead": env.profile.raw_round, "max_ahead_bytes": env.profile.raw_round_bytes,
    })
    try:
        result = await env.run_worker("kafka_raw", {"bootstrap": env.cluster.bootstrap, "partitions": partitions}, 600)
    finally:
        production = await env.cluster.call_result("produce", 120)  # the worker's end set STOP
    completeness(result, production)
    result["method"] = ("rounds: a backlog of up to max_ahead records is produced and flushed, then only "
                        "draining it is timed")
    return result
