"""``rabbitmq_raw`` and ``rabbitmq_pipeline``: every record published first, then only consuming
is timed."""

from __future__ import annotations

import shutil
import uuid
from typing import Any

from smartico_stream.bench.backends import rabbit_publish, rabbit_topology
from smartico_stream.bench.processes import DONE, PRODUCED
from smartico_stream.bench.scenarios.env import Env, completeness


async def scenario_rabbit(env: Env, pipeline: bool) -> dict[str, Any]:
    """``rabbitmq_pipeline`` (the service) or ``rabbitmq_raw`` (aio-pika alone) on a fresh topology."""
    env.reset()
    prefix = f"bench-rmq-{'pipe' if pipeline else 'raw'}-{uuid.uuid4().hex[:6]}"
    url = env.rabbitmq_url
    scratch = env.workdir / prefix
    scratch.mkdir()
    try:
        queues = await rabbit_topology(url, prefix, declare=True)
        env.say(f"  publishing {env.profile.rabbit_events} records to RabbitMQ before consuming")
        production = await rabbit_publish(url, prefix, env.stream, env.profile.rabbit_events)
        env.shared[PRODUCED] = production["produced"]
        env.shared[DONE] = 1
        if pipeline:
            params = {
                "prefix": prefix, "rabbitmq_url": url, "rules": str(env.rules), "keys_file": str(env.keys_file),
                "sink_path": str(scratch / "actions.jsonl"), "store_url": f"sqlite:///{scratch / 'state.db'}",
                "pii_store_url": f"sqlite:///{scratch / 'pii.db'}", "timeout_s": 1200, "overrides": env.overrides,
            }
            result = await env.run_worker("pipeline", params, 1500)
            result["store"] = "sqlite"
        else:
            result = await env.run_worker("rabbit_raw", {"url": url, "queues": queues,
                                                         "expected": production["produced"]}, 900)
    finally:
        await rabbit_topology(url, prefix, declare=False)
        shutil.rmtree(scratch, ignore_errors=True)
    # RabbitMQ has no null routing key: the null_key defect gets one, so it is not malformed there.
    completeness(result, production, outcomes=False)
    result["min_lead_records"] = None
    result["method"] = "every record published (with confirms) before the consumer starts; consumer time only"
    return result
