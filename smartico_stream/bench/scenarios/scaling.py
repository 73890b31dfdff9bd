"""``scaling`` (full run only): 1M distinct users against 100k, and two ``smartico-stream run``
processes in one consumer group against one."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

from smartico_stream.bench.backends import drop_pg_schemas
from smartico_stream.bench.machine import proc_stat
from smartico_stream.bench.processes import (
    DONE,
    FETCHED,
    PRODUCED,
    STARTED_AT,
    STOP,
    BenchError,
    pin_cpus,
    quiet_librdkafka,
)
from smartico_stream.bench.report import scenario_line
from smartico_stream.bench.scenarios.env import Env, completeness, guard, scenario_topics
from smartico_stream.bench.scenarios.pipeline import scenario_pipeline
from smartico_stream.bench.settings import service_settings
from smartico_stream.bench.stream import write_stream


async def scenario_users(env: Env) -> dict[str, Any]:
    """The same pipeline over a population of 100k and of 1M users (records respread, see
    :func:`write_stream`)."""
    arms: dict[str, Any] = {}
    for label, population in (("users_100k", 100_000), ("users_1m", 1_000_000)):
        path = env.workdir / f"stream-{label}.bin"
        env.say(f"  generating the stream respread over {population:,} users")
        await asyncio.to_thread(write_stream, path, env.profile.users, env.profile.events, population)
        env.say(f"  {label}: pipeline on SQLite")
        try:
            arms[label] = await guard(scenario_pipeline(env, label, "sqlite", stream=path))
            arms[label]["population"] = population
        finally:
            path.unlink(missing_ok=True)
        env.say(scenario_line(label, arms[label]))
    small, large = arms["users_100k"].get("events_per_s"), arms["users_1m"].get("events_per_s")
    arms["events_per_s_ratio_1m_to_100k"] = round(large / small, 3) if small and large else None
    rss_small, rss_large = arms["users_100k"].get("peak_rss_mb"), arms["users_1m"].get("peak_rss_mb")
    arms["peak_rss_ratio_1m_to_100k"] = round(rss_large / rss_small, 3) if rss_small and rss_large else None
    arms["state_cache_size"] = 100_000
    return arms


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - 127.0.0.1 only
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


def _gauge(metrics_text: bytes, name: str) -> float | None:
    for line in metrics_text.decode(errors="replace").splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _assigned_partitions(metrics_text: bytes) -> int:
    total = 0
    for line in metrics_text.decode(errors="replace").splitlines():
        if line.startswith("smartico_stream_assigned_partitions{"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "smartico-stream"
    return [str(script)] if script.exists() else [sys.executable, "-m", "smartico_stream.cli"]


async def _one_group(env: Env, members: int, store: str) -> dict[str, Any]:
    """``members`` × ``smartico-stream run --config`` in one consumer group, each pinned to a core."""
    from confluent_kafka import Consumer, TopicPartition

    env.reset()
    prefix = f"bench-proc{members}-{uuid.uuid4().hex[:6]}"
    topics = scenario_topics(prefix)
    partitions = (await env.cluster.call("topics", topics, 60))["partitions"]
    scratch = env.workdir / prefix
    scratch.mkdir()
    schema = prefix.replace("-", "_") if store == "postgres" else None
    cores = [env.cores["service"], env.cores["second"]]
    processes: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    watcher = Consumer({"bootstrap.servers": env.cluster.bootstrap, "group.id": f"{prefix}-group",
                        "enable.auto.commit": False, "logger": quiet_librdkafka()})
    watched = [TopicPartition(t, p) for t, count in partitions.items() for p in range(count)]
    result: dict[str, Any] = {"members": members, "store": store}
    producing = False
    try:
        for index in range(members):
            port = _free_port()
            ports.append(port)
            params = {
                "prefix": prefix, "bootstrap": env.cluster.bootstrap, "rules": str(env.rules),
                "keys_file": str(env.keys_file), "sink_path": str(scratch / f"actions-{index}.jsonl"),
                "metrics_port": port, "instance_id": f"{prefix}-member-{index}", "overrides": env.overrides,
            }
            if schema:
                params.update(store_url=env.pg_dsn, schema=schema, pii_store_url=env.pg_dsn,
                              pii_schema=f"{schema}_pii")
            else:
                params.update(store_url=f"sqlite:///{scratch / 'state.db'}",
                              pii_store_url=f"sqlite:///{scratch / 'pii.db'}")
            config = scratch / f"config-{index}.yaml"
            config.write_text(yaml.safe_dump(service_settings(params), sort_keys=False))
            pin = cores[index] if index < len(cores) else None
            with (scratch / f"member-{index}.log").open("wb") as log:  # the member keeps its own copy
                # Popen starts the member and returns; our own CLI, with arguments we wrote.
                processes.append(subprocess.Popen(  # noqa: ASYNC220, S603
                    [*_cli(), "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                    preexec_fn=(lambda cpus=pin: pin_cpus(cpus)) if pin else None,
                ))
        # Every member joined and the partitions are spread before producing starts.
        deadline = time.monotonic() + 90
        stable_since = 0.0
        while True:
            for index, process in enumerate(processes):
                if process.poll() is not None:
                    raise BenchError(f"member {index} exited with {process.returncode}: "
                                     f"{(scratch / f'member-{index}.log').read_text()[-2000:]}")
            owned = [_assigned_partitions(_http_get(f"http://127.0.0.1:{p}/metrics")[1]) for p in ports]
            if all(owned) and sum(owned) == len(watched):
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since > 1.5:
                    break
            else:
                stable_since = 0.0
            if time.monotonic() > deadline:
                raise BenchError(f"the group did not settle: partitions owned per member {owned}")
            await asyncio.sleep(0.2)
        result["partitions_per_member"] = owned
        env.cluster.start_call("produce", {
            "path": str(env.stream), "topics": topics, "mode": "lead", "limit": env.profile.events,
            "max_ahead": env.profile.max_ahead, "max_ahead_bytes": env.profile.max_ahead_bytes,
            "seconds": env.profile.scaling_seconds,
        })
        producing = True
        cpu_before = [proc_stat(p.pid)[0] for p in processes]
        first_at = first_count = 0.0
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + env.profile.scaling_seconds + 600
        while True:
            committed = await asyncio.to_thread(watcher.committed, watched, 10)
            total = sum(max(tp.offset, 0) for tp in committed)
            now = time.time()
            env.shared[FETCHED] = total  # committed <= fetched: a conservative lead for the producer
            if total and not first_at:
                first_at, first_count = now, total
                env.shared[STARTED_AT] = now
            samples.append((now, total))
            if env.shared[DONE] and total >= env.shared[PRODUCED]:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"committed {total} of {int(env.shared[PRODUCED])} records before the timeout")
            await asyncio.sleep(0.1)
        producing = False
        committed_at = now
        production = await env.cluster.call_result("produce", 120)
        # Done once every member's relay delivered its actions (the gauge is refreshed every second).
        backlogs: list[float | None] = []
        while time.monotonic() < deadline:
            backlogs = [_gauge((await asyncio.to_thread(_http_get, f"http://127.0.0.1:{port}/metrics"))[1],
                               "smartico_stream_outbox_backlog") for port in ports]
            if all(b == 0 for b in backlogs):
                break
            await asyncio.sleep(0.2)
        drained_at = time.time()
        stats = [proc_stat(p.pid) for p in processes]
        measured = drained_at - first_at
        result.update({
            "records": total,
            "measured_s": round(measured, 3),
            "events_per_s": round((total - first_count) / measured, 1) if measured > 0 else None,
            "events_per_s_to_last_commit": round((total - first_count) / (committed_at - first_at), 1)
            if committed_at > first_at else None,
            "outbox_backlog_at_end": backlogs,
            "method": "committed offsets of the group, read from the broker every 100 ms, from the first committed "
                      "batch (its records not counted) to the last, then until every member's "
                      "smartico_stream_outbox_backlog gauge (refreshed each second) reads 0",
            "cpu_s_per_member": [round(s[0] - c, 2) for s, c in zip(stats, cpu_before, strict=True)],
            "peak_rss_mb_per_member": [round(s[1], 1) for s in stats],
            "pinned_to_cores": [cores[i] if i < len(cores) else None for i in range(members)],
        })
        completeness(result, production)
    finally:
        env.shared[STOP] = 1
        if producing:
            with contextlib.suppress(Exception):
                await env.cluster.call_result("produce", 120)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 10)
        watcher.close()
        if schema:
            await drop_pg_schemas(env.pg_dsn, [schema, f"{schema}_pii"])
        shutil.rmtree(scratch, ignore_errors=True)
    return result


async def scenario_processes(env: Env, store: str) -> dict[str, Any]:
    """One ``smartico-stream run`` process against two in one consumer group, and the speedup."""
    one = await guard(_one_group(env, 1, store))
    two = await guard(_one_group(env, 2, store))
    speedup = None
    if one.get("events_per_s") and two.get("events_per_s"):
        speedup = round(two["events_per_s"] / one["events_per_s"], 3)
    result = {"one_process": one, "two_processes": two, "speedup": speedup, "store": store}
    if len(env.cores["available"] or []) < 3:
        result["note"] = ("fewer than 3 cores: the embedded cluster, the producer (and the database) share the "
                          "cores with the members, so this speedup is indicative only")
    return result
