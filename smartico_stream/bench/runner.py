"""One bench run: the stream, the rules, the key ring and the embedded cluster set up once, then
every scenario in order."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import resource
import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from smartico_stream.bench.backends import mysql_problem, postgres_problem, rabbitmq_back, rabbitmq_problem
from smartico_stream.bench.cluster import MOCK_CLUSTER_CONSUMER, Cluster
from smartico_stream.bench.machine import core_plan, load_avg, machine
from smartico_stream.bench.processes import SLOTS
from smartico_stream.bench.profiles import (
    DEFAULT_MYSQL_DSN,
    DEFAULT_PG_DSN,
    DEFAULT_RABBITMQ_URL,
    FULL,
    PARTS,
    QUICK,
)
from smartico_stream.bench.report import latency_report, overall, scenario_line, skeleton
from smartico_stream.bench.rules import write_rules
from smartico_stream.bench.scenarios import (
    Env,
    Progress,
    guard,
    scenario_audience,
    scenario_dedup,
    scenario_pipeline,
    scenario_processes,
    scenario_rabbit,
    scenario_raw,
    scenario_replica,
    scenario_users,
)
from smartico_stream.bench.settings import defaults_kept, flat_settings
from smartico_stream.bench.stream import MAX_MESSAGE_BYTES, OVERSIZED_BYTES, write_stream


async def run_bench(quick: bool, progress: Progress | None = None, *, pg_dsn: str | None = None,
                    rabbitmq_url: str | None = None, profile_path: Path | None = None,
                    only: Collection[str] | None = None,
                    overrides: dict[str, dict[str, Any]] | None = None,
                    latency_rate: float | None = None, mysql_dsn: str | None = None) -> dict[str, Any]:
    """Run every scenario once; return the report (the JSON of ``smartico-stream bench --json``).

    Every key is present: a scenario that could not run holds ``{"skipped": reason}``, one that
    failed ``{"error": message}``; ``complete`` is True when every scenario that ran handled every
    record it was given. ``only`` runs just the named parts (:data:`PARTS`); ``overrides``
    (``{section: {key: value}}``) change the service's settings in every scenario that runs it;
    ``latency_rate`` paces the latency part (records/s) instead of half the pipeline's rate."""
    profile = QUICK if quick else FULL
    selected = frozenset(only) if only else None
    unknown = sorted((selected or frozenset()) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown bench part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    say = progress or (lambda line: None)
    started = time.monotonic()
    report = skeleton(profile)
    report["machine"] = machine()
    report["machine"]["load_avg_1m_at_start"] = load_avg()
    cores = core_plan()
    report["machine"]["pinning"] = cores
    pg_dsn = pg_dsn or os.environ.get("SMARTICO_STREAM_BENCH_PG_DSN") or DEFAULT_PG_DSN
    rabbitmq_url = rabbitmq_url or os.environ.get("SMARTICO_STREAM_BENCH_RABBITMQ_URL") or DEFAULT_RABBITMQ_URL
    mysql_dsn = mysql_dsn or os.environ.get("SMARTICO_STREAM_BENCH_MYSQL_DSN") or DEFAULT_MYSQL_DSN
    report["settings"] = {
        "stream": {"users": profile.users, "records": profile.events, "duplicate_share": 0.02, "malformed_share": 0.01,
                   "oversized_bytes": OVERSIZED_BYTES},
        "pipeline_seconds_cap": profile.pipeline_seconds,
        "max_ahead_records": profile.max_ahead,
        "max_ahead_bytes": profile.max_ahead_bytes,
        "rabbitmq_records": profile.rabbit_events,
        "replica_rows": profile.replica_rows,
        "rules": 50,
        "service_overrides": {
            "kafka.config": {"bootstrap.servers": "<embedded>", "group.id": "<per scenario>", **MOCK_CLUSTER_CONSUMER},
            "limits.max_message_bytes": MAX_MESSAGE_BYTES,
            "sinks": [{"type": "jsonl"}],
            "engine.rules": "50 bench rules",
            "pii.keys_file": "ephemeral key ring",
            "logging.level": "ERROR",
        },
        "service_defaults_kept": {**defaults_kept(), "jsonl fsync": True},
    }
    if overrides:
        report["settings"]["service_overrides"]["--set"] = overrides
        report["command"] += "".join(f" --set {path}={value}" for path, value in flat_settings(overrides).items())
    if selected is not None:
        report["settings"]["only"] = sorted(selected)
        report["command"] += "".join(f" --only {part}" for part in sorted(selected))
    if latency_rate is not None:
        report["settings"]["latency_rate"] = latency_rate
        report["command"] += f" --latency-rate {latency_rate:g}"
    if profile_path is not None:
        report["notes"].append("--profile: pyinstrument sampled the service process of the pipeline scenario (of "
                               "pipeline_postgres when it ran alone), which slows it; do not quote that run's "
                               "figures for it")
    ctx = mp.get_context("spawn")
    shared = ctx.RawArray("d", SLOTS)
    with tempfile.TemporaryDirectory(prefix="smartico-bench-") as tmp:
        workdir = Path(tmp)
        rules = write_rules(workdir / "bench-rules.yaml")
        from smartico_stream.engine.rules import load_rules
        from smartico_stream.pii.keys import generate_key_ring, key_ring_to_json

        load_rules(rules)  # fail early and clearly if a rule does not load
        keys_file = workdir / "pii-keys.json"
        fd = os.open(keys_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_ring_to_json(generate_key_ring("bench-1")))
        stream = workdir / "stream.bin"
        say(f"generating the stream: {profile.events:,} records, {profile.users:,} users (StreamSpec)")
        written = await asyncio.to_thread(write_stream, stream, profile.users, profile.events)
        report["settings"]["stream"].update(written)
        cluster = Cluster(ctx, shared, cores["cluster"])
        env = Env(profile, ctx, shared, cluster, cores, workdir, stream, rules, keys_file, say, pg_dsn, rabbitmq_url,
                   overrides or {}, mysql_dsn)
        try:
            await cluster.start()
            await _run_scenarios(env, report, selected, profile_path, latency_rate)
        finally:
            await cluster.close()
    overall(report, profile)
    report["machine"]["load_avg_1m_at_end"] = load_avg()
    report["duration_s"] = round(time.monotonic() - started, 1)
    report["peak_rss_process_tree_mb"] = {
        "orchestrator": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "largest_child": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    return report


async def _run_scenarios(env: Env, report: dict[str, Any], selected: frozenset[str] | None,
                         profile_path: Path | None, latency_rate: float | None = None) -> None:
    """Every scenario in order (only those in ``selected``, when given); results go into ``report``."""
    profile, say, scenarios = env.profile, env.say, report["scenarios"]

    def chosen(name: str) -> bool:
        return selected is None or name in selected

    def wanted(name: str) -> bool:  # a scenario of report["scenarios"]
        if not chosen(name):
            scenarios[name] = {"skipped": "not selected (--only)"}
        return chosen(name)

    if wanted("raw"):
        say("raw: confluent-kafka consume(10000) + orjson.loads")
        scenarios["raw"] = await guard(scenario_raw(env))
        say(scenario_line("raw", scenarios["raw"]))
    if wanted("pipeline"):
        say("pipeline: the service on SQLite")
        scenarios["pipeline"] = await guard(scenario_pipeline(env, "pipeline", "sqlite", profile_path=profile_path))
        say(scenario_line("pipeline", scenarios["pipeline"]))
    if wanted("aggregates"):
        say("aggregates: the service on SQLite, no rules (adapter, validation, PII guard, dedup, aggregates, state)")
        scenarios["aggregates"] = await guard(
            scenario_pipeline(env, "aggregates", "sqlite", overrides={"engine": {"rules": None}}))
        say(scenario_line("aggregates", scenarios["aggregates"]))
    if wanted("pipeline_postgres"):
        problem = await postgres_problem(env.pg_dsn)
        if problem:
            scenarios["pipeline_postgres"] = {"skipped": problem}
        else:
            say("pipeline_postgres: the service on PostgreSQL")
            # Profiled when it is the only pipeline scenario of the run (--only pipeline_postgres).
            scenarios["pipeline_postgres"] = await guard(scenario_pipeline(
                env, "pipeline_postgres", "postgres", profile_path=None if chosen("pipeline") else profile_path))
        say(scenario_line("pipeline_postgres", scenarios["pipeline_postgres"]))
    if chosen("latency"):
        rate = scenarios["pipeline"].get("events_per_s")
        paced = latency_rate or (rate / 2 if rate else None)
        if paced:
            pace = "at --latency-rate" if latency_rate else "at half the pipeline's rate"
            say(f"latency: paced {pace}, {paced:,.0f} records/s for {profile.latency_seconds:g} s")
            measured = await guard(scenario_pipeline(env, "latency", "sqlite", latency_rate=paced))
            report["latency"] = latency_report(measured)
            report["p50_latency_ms"] = report["latency"].get("p50_ms")
            report["p99_latency_ms"] = report["latency"].get("p99_ms")
            say(f"  p50 {report['p50_latency_ms']} ms  p99 {report['p99_latency_ms']} ms")
        else:
            report["latency"] = {"skipped": "the pipeline scenario measured no rate (latency runs at half of it, "
                                            "or at --latency-rate)"}
    else:
        report["latency"] = {"skipped": "not selected (--only)"}
    rabbit = [(name, pipeline) for name, pipeline in (("rabbitmq_raw", False), ("rabbitmq_pipeline", True))
              if wanted(name)]
    problem = await rabbitmq_problem(env.rabbitmq_url) if rabbit else None
    for name, pipeline in rabbit:
        if problem:
            scenarios[name] = {"skipped": problem}
            continue
        say(f"{name}: {'the service' if pipeline else 'aio-pika consume + orjson.loads'} on RabbitMQ")
        scenarios[name] = await guard(scenario_rabbit(env, pipeline))
        if "error" in scenarios[name] and await rabbitmq_back(env.rabbitmq_url):
            # A broker restart (another client's doing) is not the service's figure: once more.
            say(f"  {name}: {scenarios[name]['error'].splitlines()[0]}; RabbitMQ is back, running it again")
            failed = scenarios[name]
            scenarios[name] = await guard(scenario_rabbit(env, pipeline))
            scenarios[name]["retried_after"] = failed["error"].splitlines()[0]
        say(scenario_line(name, scenarios[name]))
    for name, kind in (("replica_pipeline", "postgresql"), ("replica_pipeline_mysql", "mysql")):
        if not wanted(name):
            continue
        problem = await (postgres_problem(env.pg_dsn) if kind == "postgresql" else mysql_problem(env.mysql_dsn))
        if problem:
            scenarios[name] = {"skipped": problem}
        else:
            say(f"{name}: the service polling replica views on {kind} (and the same pages read alone)")
            scenarios[name] = await guard(scenario_replica(env, kind))
            raw = scenarios[name].get("raw", {}).get("events_per_s")
            if raw:
                say(f"  ceiling {raw:,.0f} rows/s; the service {scenarios[name].get('ratio_to_raw')} of it")
        say(scenario_line(name, scenarios[name]))
    if wanted("rest_pipeline"):
        from smartico_stream.bench.scenarios.rest import scenario_rest

        say("rest_pipeline: the service with source: rest on SQLite, loopback HTTP load")
        scenarios["rest_pipeline"] = await guard(scenario_rest(env))
        say(scenario_line("rest_pipeline", scenarios["rest_pipeline"]))
        if "p99_latency_ms" in scenarios["rest_pipeline"]:
            say(f"  p99 request latency at half load {scenarios['rest_pipeline']['p99_latency_ms']} ms")
    if chosen("dedup"):
        say(f"dedup: a window of {profile.dedup_keys:,} keys (120 s at 100k/s"
            f"{'' if profile.dedup_keys == 12_000_000 else ', scaled down for --quick'})")
        report["dedup"] = await guard(scenario_dedup(env))
        report["dedup_bytes_per_key"] = report["dedup"].get("bytes_per_key")
        say(f"  {report['dedup_bytes_per_key']} bytes per key")
    else:
        report["dedup"] = {"skipped": "not selected (--only)"}
    if chosen("audience"):
        say(f"audience: `rules audience` over {profile.audience_users:,} stored users (SQLite)")
        report["audience"] = await guard(scenario_audience(env))
        say(f"  {report['audience'].get('count_s')} s, {report['audience'].get('users_per_s')} users/s")
    else:
        report["audience"] = {"skipped": "not selected (--only)"}
    if profile.scaling and chosen("scaling"):
        say("scaling: 100k vs 1M distinct users")
        report["scaling"]["users"] = await guard(scenario_users(env))
        store = "postgres" if not await postgres_problem(env.pg_dsn) else "sqlite"
        say(f"scaling: one vs two processes in one group (smartico-stream run, {store} store)")
        report["scaling"]["processes"] = await guard(scenario_processes(env, store))
