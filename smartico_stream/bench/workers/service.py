"""The service under test, in-process exactly as ``smartico-stream run`` builds it, with a probe among
its batch observers that sees each batch, the instant it was committed and the checkpoint's stage
times."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smartico_stream.batch.observer import STAGES, BaseObserver, BatchReport
from smartico_stream.bench.processes import DONE, FETCHED, PACE_START, PRODUCED, READY, STARTED_AT
from smartico_stream.bench.profiles import LATENCY_SLICE_S
from smartico_stream.bench.settings import applied_settings, service_settings
from smartico_stream.events.raw import RawRecord


class _Probe(BaseObserver):
    """Sees each batch the service fetches and the instant it was committed, as one of the
    service's batch observers; sums the checkpoint's stage times (µs of CPU per record per stage)."""

    def __init__(self, shared: Any, latency: bool) -> None:
        self.shared = shared
        self.first_at = 0.0
        self.cpu_at_first = 0.0
        self.fetched = 0
        self.last_commit_at = 0.0
        self.commits = 0
        self.latency = latency
        self.committed_records = 0
        self.stage_seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._pending: list[int] = []
        self._polled_at = 0.0
        # (record timestamp ms, ms to commit, ms of that before the service fetched it)
        self.samples: list[tuple[int, float, float]] = []
        self.batches: list[tuple[int, float]] = []  # (records, ms from fetch to commit), latency runs
        self.commit_times: list[tuple[float, int]] = []  # (commit returned, records fetched so far)

    def polled(self, records: Sequence[RawRecord]) -> None:
        if not self.first_at:
            self.first_at, self.cpu_at_first = time.time(), time.process_time()
            self.shared[STARTED_AT] = self.first_at
        self.fetched += len(records)
        self.shared[FETCHED] = self.fetched
        if self.latency:
            self._pending.extend(r.timestamp_ms for r in records)
            self._polled_at = time.time()

    def committed(self, report: BatchReport) -> None:
        if not report.records:
            return
        now = time.time()
        self.last_commit_at = now
        self.commits += 1
        self.committed_records += len(report.records)
        for stage, seconds in report.stage_seconds.items():
            self.stage_seconds[stage] += seconds
        self.commit_times.append((now, self.fetched))
        if self.latency and self._pending:
            now_ms, polled_ms = now * 1000.0, self._polled_at * 1000.0
            self.samples.extend((ts, now_ms - ts, polled_ms - ts) for ts in self._pending if ts > 0)
            self.batches.append((len(self._pending), (now - self._polled_at) * 1000.0))
            self._pending.clear()

    def stage_us_per_record(self) -> dict[str, float]:
        records = self.committed_records or 1
        return {stage: round(seconds * 1e6 / records, 2) for stage, seconds in self.stage_seconds.items()}


async def run_pipeline(params: dict[str, Any], shared: Any) -> dict[str, Any]:
    """The service in-process, as ``smartico-stream run`` builds it; runs until every produced record
    is handled and every action delivered."""
    entered = time.time()
    from smartico_stream.config import load_settings
    from smartico_stream.observability.logging import configure_logging
    from smartico_stream.service import Service
    from smartico_stream.store import open_store_from_url

    configure_logging("ERROR", "console")
    settings = load_settings(environ={}, **service_settings(params))
    store = open_store_from_url(settings.store.url, settings.store.db_schema, settings.store.sqlite_synchronous)
    probe = _Probe(shared, params.get("latency", False))
    service = Service(settings, store=store, observers=[probe])
    profiler: Any = None
    if params.get("profile"):
        # An optional tool (``--profile`` only), not a dependency: imported by name, untyped.
        profiler = importlib.import_module("pyinstrument").Profiler(interval=0.001, async_mode="disabled")
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    deadline = time.monotonic() + params.get("timeout_s", 900)
    source = getattr(service.transport, "source", None)
    paused_s = 0.0  # consumption paused by outbox backpressure (outbox.max_backlog)
    pauses = 0
    was_paused = False
    tick = time.monotonic()
    try:
        while not task.done():
            await asyncio.sleep(0.005)
            now_tick = time.monotonic()
            if service.paused:
                paused_s += now_tick - tick
                pauses += 0 if was_paused else 1
            was_paused = service.paused
            tick = now_tick
            if not shared[READY] and _ready(service.transport, source):
                shared[READY] = 1
            if profiler is not None and probe.first_at and not profiler.is_running:
                profiler.start()
            if shared[DONE] and service.stats.consumed >= shared[PRODUCED]:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"handled {service.stats.consumed} of {int(shared[PRODUCED])} records before the timeout"
                )
        if task.done():
            task.result()
            raise RuntimeError("the service stopped before handling every record")
        # The relay shares the core: the pipeline is done once every action is delivered.
        backlog = await service.relay.backlog()
        while backlog > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            backlog = await service.relay.backlog()
        delivered_at = time.time()
        cpu = time.process_time() - probe.cpu_at_first
    finally:
        if profiler is not None and profiler.is_running:
            profiler.stop()
        stop.set()
        stopping = time.time()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)
        stopped = time.time()
    if profiler is not None:
        await asyncio.to_thread(_write_profile, profiler, Path(params["profile"]))
    stats = service.stats
    records = stats.consumed
    applied = applied_settings(settings, params.get("overrides") or {})
    end = max(delivered_at, probe.last_commit_at)
    measured = end - probe.first_at
    to_commit = probe.last_commit_at - probe.first_at
    result: dict[str, Any] = {
        "records": records,
        "processed": stats.processed,
        "deduplicated": stats.deduplicated,
        "dead_lettered": stats.dead_lettered,
        "events_applied": stats.events_applied,
        "actions": stats.actions,
        "actions_delivered": _count_lines(Path(params["sink_path"])),
        "actions_per_record": round(stats.actions / records, 2) if records else None,
        "actions_delivered_per_s": round(stats.actions / measured, 1) if measured > 0 else None,
        "consumption_paused_s": round(paused_s, 2),
        "consumption_pauses": pauses,
        "outbox_backlog_at_end": backlog,
        "batches": stats.batches,
        "store_commits": probe.commits,
        # wall time of each checkpoint stage per committed record (the service runs on one core)
        "stage_us_per_record": probe.stage_us_per_record(),
        "measured_s": round(measured, 3),
        "events_per_s": round(records / measured, 1) if measured > 0 else None,
        "events_per_s_to_last_commit": round(records / to_commit, 1) if to_commit > 0 else None,
        "delivery_tail_s": round(max(0.0, end - probe.last_commit_at), 3),
        "cpu_s": round(cpu, 3),
        "cpu_cores_used": round(cpu / measured, 2) if measured > 0 else None,
        "timeline": _timeline(probe.first_at, probe.commit_times),
        "startup_s": round(probe.first_at - entered, 2),
        "shutdown_s": round(stopped - stopping, 2),
    }
    if applied:
        result["settings_applied"] = applied
    if probe.latency:
        paced_ms = shared[PACE_START] * 1000.0
        start_ms = paced_ms + params.get("warmup_s", 0.0) * 1000.0
        counted: list[tuple[float, float]] = []
        by_slice: dict[int, list[float]] = {}
        for ts, total, before in probe.samples:
            if ts >= start_ms:
                counted.append((total, before))
                by_slice.setdefault(int((ts - paced_ms) // (LATENCY_SLICE_S * 1000)), []).append(total)
        kept = sorted(total for total, _ in counted)
        before_fetch = sorted(before for _, before in counted)
        in_service = sorted(total - before for total, before in counted)
        result["latency"] = {
            "samples": len(kept),
            "warmup_excluded": len(probe.samples) - len(kept),
            "p50_ms": _percentile(kept, 0.50),
            "p90_ms": _percentile(kept, 0.90),
            "p99_ms": _percentile(kept, 0.99),
            "p999_ms": _percentile(kept, 0.999),
            "max_ms": round(kept[-1], 2) if kept else None,
            # the same records split in two: producer, broker and consumer client until the service
            # had the record in hand, then the service's handling (fetch to commit)
            "before_fetch_ms_p50": _percentile(before_fetch, 0.50),
            "before_fetch_ms_p99": _percentile(before_fetch, 0.99),
            "fetch_to_commit_ms_p50": _percentile(in_service, 0.50),
            "fetch_to_commit_ms_p99": _percentile(in_service, 0.99),
            # where the time goes: waiting in the consumer for a batch to fill (up to batch_size
            # records or poll_timeout_s) happens before the fetch; handling is fetch -> commit
            "batches": len(probe.batches),
            "batch_records_mean": round(sum(n for n, _ in probe.batches) / len(probe.batches), 1)
            if probe.batches else None,
            "batch_fetch_to_commit_ms_p50": _percentile(sorted(ms for _, ms in probe.batches), 0.50),
            "batch_fetch_to_commit_ms_max": round(max(ms for _, ms in probe.batches), 2) if probe.batches else None,
            # the tail over the run, to set beside the embedded cluster's CPU (see scenario_pipeline)
            f"p99_ms_per_{LATENCY_SLICE_S}s": [_percentile(sorted(by_slice[k]), 0.99) for k in sorted(by_slice)],
        }
    return result


def _timeline(first_at: float, commits: list[tuple[float, int]], slices: int = 10) -> list[dict[str, float]]:
    """Records committed per second in ``slices`` equal parts of the run (does the rate hold up as
    the store, the outbox and the caches fill?)."""
    if not commits or commits[-1][0] <= first_at:
        return []
    span = (commits[-1][0] - first_at) / slices
    timeline = []
    done = 0
    for index in range(slices):
        end = first_at + span * (index + 1)
        upto = max((count for at, count in commits if at <= end + 1e-9), default=done)
        timeline.append({"until_s": round(span * (index + 1), 1), "events_per_s": round((upto - done) / span, 1)})
        done = upto
    return timeline


def _ready(transport: Any, source: Any) -> bool:
    """Kafka: partitions assigned (read from the source's own bookkeeping: calling into the consumer
    from the event loop while its thread runs a rebalance callback that waits for the loop would
    deadlock). RabbitMQ: connected and consuming."""
    if source is not None and hasattr(source, "assigned"):
        return bool(source.assigned)
    return bool(transport.joined)


def _write_profile(profiler: Any, path: Path) -> None:
    """The pyinstrument profile as text at ``path`` and as HTML beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    path.with_suffix(".html").write_text(profiler.output_html())


def _percentile(ordered: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``ordered`` (nearest rank), rounded to 0.01."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))], 2)


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    lines = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines
