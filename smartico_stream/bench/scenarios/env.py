"""What every scenario of one run shares, and how a scenario's result is checked and guarded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smartico_stream.bench.cluster import Cluster
from smartico_stream.bench.machine import load_avg
from smartico_stream.bench.processes import SLOTS, STOP, BenchError, receive, stop_process
from smartico_stream.bench.profiles import Profile
from smartico_stream.bench.stream import STREAM_ORDER, TOPICS
from smartico_stream.bench.workers import worker_main

Progress = Callable[[str], None]


@dataclass
class Env:
    """What every scenario of one run shares."""

    profile: Profile
    ctx: Any
    shared: Any
    cluster: Cluster
    cores: dict[str, list[int] | None]
    workdir: Path
    stream: Path
    rules: Path
    keys_file: Path
    say: Progress
    pg_dsn: str
    rabbitmq_url: str
    overrides: dict[str, dict[str, Any]]  # bench --set: service settings for every scenario
    mysql_dsn: str = "mysql://root@127.0.0.1:3306/test"  # the replica_pipeline_mysql scenario's server

    def reset(self) -> None:
        """Zero the shared array before a scenario."""
        for slot in range(SLOTS):
            self.shared[slot] = 0.0

    async def run_worker(self, kind: str, params: dict[str, Any], timeout_s: float,
                         cpus: list[int] | None = None) -> dict[str, Any]:
        """Run one process under test (``kind``: see :func:`worker_main`), pinned to ``cpus`` or the
        service's core, and return its result; the producer is told to stop whatever happens."""
        conn, child = self.ctx.Pipe()
        pinned = cpus if cpus is not None else self.cores["service"]
        process = self.ctx.Process(target=worker_main, args=(kind, params, child, self.shared, pinned),
                                   name=f"bench-{kind}", daemon=True)
        process.start()
        try:
            answer = await receive(conn, process, timeout_s, kind)
        finally:
            self.shared[STOP] = 1  # whatever happened, the producer stops
            await asyncio.to_thread(stop_process, process)
        if not answer.get("ok"):
            raise BenchError(f"{kind}: {answer.get('error')}\n{answer.get('traceback', '')}")
        result: dict[str, Any] = answer["result"]
        return result


def scenario_topics(prefix: str) -> list[str]:
    """A scenario's topic per stream, in the stream file's stream order."""
    return [f"{prefix}.{TOPICS[stream]}" for stream in STREAM_ORDER]


def completeness(result: dict[str, Any], production: dict[str, Any], outcomes: bool = True) -> None:
    """``records`` handled against ``expected_records`` produced; with ``outcomes``, also the
    service's verdicts against the generator's ground truth (ok / duplicate / malformed)."""
    kinds = production["kinds"]
    result["expected_records"] = production["produced"]
    result["expected"] = kinds
    result["complete"] = result.get("records") == production["produced"]
    if outcomes and "processed" in result:
        result["outcomes_match"] = (result["processed"], result["deduplicated"], result["dead_lettered"]) == (
            kinds["ok"], kinds["duplicate"], kinds["malformed"]
        )
    result["distinct_users"] = production.get("distinct_users")
    result["min_lead_records"] = production.get("min_lead_records")


async def guard(work: Any) -> dict[str, Any]:
    """The scenario's result with its wall time (set-up included) and the machine's load average
    around it (other work on the machine shows there), or ``{"error": ...}``."""
    started = time.monotonic()
    load_before = load_avg()
    try:
        result: dict[str, Any] = await work
    except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["load_avg_1m"] = {"before": load_before, "after": load_avg()}
    return result
