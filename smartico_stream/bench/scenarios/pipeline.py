"""``pipeline`` and ``pipeline_postgres`` (the service on SQLite or PostgreSQL against the embedded
Kafka), and the latency part: the same pipeline fed at a paced rate."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import Any

from smartico_stream.bench.backends import drop_pg_schemas
from smartico_stream.bench.machine import cores_per_slice, sample_cpu
from smartico_stream.bench.processes import PACE_START
from smartico_stream.bench.profiles import LATENCY_SLICE_S
from smartico_stream.bench.scenarios.env import Env, completeness, scenario_topics
from smartico_stream.bench.settings import merge_settings


async def scenario_pipeline(env: Env, name: str, store: str, stream: Path | None = None,
                             latency_rate: float | None = None, profile_path: Path | None = None,
                             overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The service on ``store`` (``sqlite`` or ``postgres``) against a producer that stays ahead of
    it; with ``latency_rate``, fed at that many records/s instead, each record's latency measured
    and the cluster process's CPU sampled beside it."""
    env.reset()
    prefix = f"bench-{name.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    topics = scenario_topics(prefix)
    await env.cluster.call("topics", topics, 60)
    scratch = env.workdir / prefix
    scratch.mkdir()
    params: dict[str, Any] = {
        "prefix": prefix, "bootstrap": env.cluster.bootstrap, "rules": str(env.rules), "keys_file": str(env.keys_file),
        "sink_path": str(scratch / "actions.jsonl"), "timeout_s": 1800,
    }
    schema = None
    if store == "postgres":
        schema = prefix.replace("-", "_")
        params.update(store_url=env.pg_dsn, schema=schema, pii_store_url=env.pg_dsn, pii_schema=f"{schema}_pii")
    else:
        params.update(store_url=f"sqlite:///{scratch / 'state.db'}", pii_store_url=f"sqlite:///{scratch / 'pii.db'}")
    production_args: dict[str, Any] = {
        "path": str(stream or env.stream), "topics": topics, "limit": env.profile.events,
        "max_ahead": env.profile.max_ahead, "max_ahead_bytes": env.profile.max_ahead_bytes,
    }
    if latency_rate is not None:
        params.update(latency=True, warmup_s=env.profile.latency_warmup_s)
        production_args.update(mode="paced", rate=latency_rate, seconds=env.profile.latency_seconds, linger_ms=1)
    else:
        production_args.update(mode="lead", seconds=env.profile.pipeline_seconds)
    if profile_path is not None:
        params["profile"] = str(profile_path)
    params["overrides"] = merge_settings(env.overrides, overrides or {})
    env.cluster.start_call("produce", production_args)
    cluster_cpu: list[tuple[float, float]] = []
    sampler = None
    if latency_rate is not None:
        sampler = asyncio.create_task(sample_cpu(env.cluster.process.pid, cluster_cpu))
    try:
        try:
            result = await env.run_worker("pipeline", params, 2400)
        finally:
            production = await env.cluster.call_result("produce", 120)  # the worker's end set STOP
            if sampler is not None:
                sampler.cancel()
    finally:
        if schema is not None:
            await drop_pg_schemas(env.pg_dsn, [schema, f"{schema}_pii"])
        shutil.rmtree(scratch, ignore_errors=True)
    completeness(result, production)
    result["store"] = store
    if latency_rate is not None:
        result["latency"].update(
            target_rate_per_s=round(latency_rate, 1),
            achieved_rate_per_s=round(production["produced"] / production["paced_s"], 1)
            if production["paced_s"] else None,
            produced_for_s=production["paced_s"],
            warmup_s=env.profile.latency_warmup_s,
        )
        result["latency"][f"cluster_cpu_cores_per_{LATENCY_SLICE_S}s"] = cores_per_slice(
            cluster_cpu, env.shared[PACE_START], production["paced_s"] or 0.0)
    return result
