"""The processes under test: each runs one consumer (or the dedup window) pinned to its core and
sends one result dict back."""

from __future__ import annotations

import os
import resource
import traceback
from typing import Any

from smartico_stream.bench.processes import pin_cpus
from smartico_stream.bench.workers.audience import audience_count
from smartico_stream.bench.workers.dedup import dedup_memory
from smartico_stream.bench.workers.raw import kafka_raw, rabbit_raw
from smartico_stream.bench.workers.replica import replica_raw
from smartico_stream.bench.workers.service import run_pipeline


def worker_main(kind: str, params: dict[str, Any], conn: Any, shared: Any, cpus: list[int] | None) -> None:
    """A consumer under test, in a (pinned) process of its own; sends one result dict."""
    pin_cpus(cpus)
    try:
        if kind == "kafka_raw":
            result = kafka_raw(params, shared)
        elif kind == "pipeline":
            import uvloop

            result = uvloop.run(run_pipeline(params, shared))
        elif kind == "rabbit_raw":
            import uvloop

            result = uvloop.run(rabbit_raw(params, shared))
        elif kind == "replica_raw":
            import uvloop

            result = uvloop.run(replica_raw(params, shared))
        elif kind == "dedup":
            result = dedup_memory(params)
        elif kind == "audience":
            import uvloop

            result = uvloop.run(audience_count(params))
        else:
            raise ValueError(f"unknown worker {kind}")
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        pinned = cpus and hasattr(os, "sched_getaffinity")
        result["pinned_to_cores"] = sorted(os.sched_getaffinity(0)) if pinned else None
        conn.send({"ok": True, "result": result})
    except BaseException as exc:  # noqa: BLE001 - reported to the orchestrator
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
