"""``rest_pipeline``: ``smartico-stream run`` with ``source: rest`` on SQLite, driven over loopback by
a load generator in the bench process: batches of 500 events over keep-alive connections.

Two parts: events/s through to the store commit (every batch sent as fast as the connections allow,
timed until ``/v1/health`` reports an empty inbox, i.e. every accepted event processed and committed),
then request latency paced at half that rate (p50/p99 of the answer time, each answer durable)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import orjson
import yaml

from smartico_stream.bench.scenarios.env import Env

BATCH = 500
CONNECTIONS = 4
_BASE_MS = 1_700_000_000_000


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _batches(users: int, events: int, tag: str) -> list[bytes]:
    """Deposits and casino bets (the reference adapter's shapes), each with its own transaction id."""
    rows = []
    for n in range(events):
        user = f"u{n % users}"
        if n % 2:
            rows.append({"type": "deposit", "dt_finalized": _BASE_MS + n, "ext_brand_id": "bench",
                         "user_ext_id": user, "transaction_id": f"{tag}-d{n}", "amount": "10.00"})
        else:
            rows.append({"type": "user_profile", "dt_update": _BASE_MS + n, "ext_brand_id": "bench",
                         "user_ext_id": user, "core_registration_date": _BASE_MS - 86_400_000,
                         "core_user_language": "EN", "core_wallet_currency": "EUR"})
    return [orjson.dumps(rows[i : i + BATCH]) for i in range(0, len(rows), BATCH)]


async def _create_key(store_url: str) -> str:
    from smartico_stream.sources.rest.keys import new_key
    from smartico_stream.store import open_store_from_url
    from smartico_stream.store.rest import ApiKeyStore
    from smartico_stream.store.sql import SqlStore

    store = open_store_from_url(store_url)
    if not isinstance(store, SqlStore):
        raise TypeError("API keys are kept in a SQL store")
    await store.open()
    try:
        key = new_key()
        await ApiKeyStore(store).create(key.key_id, key.key_hash, "bench", ["bench"])
        return key.token
    finally:
        await store.close()


async def _until_drained(http: httpx.AsyncClient, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = (await http.get("/v1/health")).json()
        if health["backlog_events"] == 0:
            return
        await asyncio.sleep(0.02)
    raise RuntimeError("the inbox did not drain in time")


async def _send_all(http: httpx.AsyncClient, batches: list[bytes], headers: dict[str, str]) -> int:
    queue = list(reversed(batches))
    accepted = 0

    async def worker() -> None:
        nonlocal accepted
        while queue:
            body = queue.pop()
            answer = await http.post("/v1/batch", params={"stream": "payments"}, content=body, headers=headers)
            if answer.status_code != 200:
                raise RuntimeError(f"answer {answer.status_code}: {answer.text[:200]}")
            accepted += answer.json()["accepted"]

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return accepted


async def _paced(http: httpx.AsyncClient, batches: list[bytes], headers: dict[str, str], rate: float) -> list[float]:
    """Each batch sent at its slot of a ``rate`` events/s schedule; the answer times (s)."""
    latencies: list[float] = []
    interval = BATCH / rate
    started = time.perf_counter()

    async def one(body: bytes) -> None:
        sent = time.perf_counter()
        answer = await http.post("/v1/batch", params={"stream": "payments"}, content=body, headers=headers)
        latencies.append(time.perf_counter() - sent)
        if answer.status_code != 200:
            raise RuntimeError(f"answer {answer.status_code}")

    tasks = []
    for index, body in enumerate(batches):
        delay = started + index * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(body)))
    await asyncio.gather(*tasks)
    return latencies


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def scenario_rest(env: Env) -> dict[str, Any]:
    """See the module docstring."""
    scratch = env.workdir / f"bench-rest-{uuid.uuid4().hex[:6]}"
    scratch.mkdir()
    port, metrics_port = _free_port(), _free_port()
    store_url = f"sqlite:///{scratch / 'state.db'}"
    config = {
        "source": "rest", "instance_id": "bench-rest",
        "store": {"url": store_url, "sqlite_synchronous": "NORMAL"},
        "pii": {"keys_file": str(env.keys_file), "store_url": f"sqlite:///{scratch / 'pii.db'}"},
        "engine": {"rules": str(env.rules)},
        "sinks": [{"type": "jsonl", "path": str(scratch / "actions.jsonl"), "fsync": False}],
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "rest": {"host": "127.0.0.1", "port": port, "max_backlog": 10_000_000, "backlog_check_interval_s": 0.05,
                 "max_body_bytes": 16_000_000},
        "logging": {"level": "WARNING"},
        **{k: v for k, v in env.overrides.items() if k not in ("source", "store", "rest")},
    }
    path = scratch / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    token = await _create_key(store_url)
    log = (scratch / "service.log").open("wb")
    # The service under test is this interpreter's own command, started once per scenario (not in the loop).
    process = subprocess.Popen(  # noqa: S603, ASYNC220
        [sys.executable, "-m", "smartico_stream.cli", "run", "--config", str(path)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
    )
    headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as http:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/v1/health")).status_code == 200:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = (scratch / "service.log").read_text()[-500:]
                    raise RuntimeError(f"the REST service did not start: {tail}")
                await asyncio.sleep(0.1)
            events = env.profile.events
            env.say(f"  sending {events} events in batches of {BATCH} over {CONNECTIONS} keep-alive connections")
            batches = _batches(env.profile.users, events, "t")
            started = time.perf_counter()
            accepted = await _send_all(http, batches, headers)
            answered = time.perf_counter() - started
            await _until_drained(http, 600)
            seconds = time.perf_counter() - started
            rate = accepted / seconds
            env.say(f"  {rate:,.0f} events/s to the store commit; latency at half load ({rate / 2:,.0f}/s)")
            paced_events = max(BATCH * 10, int(rate / 2 * env.profile.latency_seconds))
            latencies = await _paced(http, _batches(env.profile.users, paced_events, "l"), headers, rate / 2)
            await _until_drained(http, 600)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
        shutil.rmtree(scratch, ignore_errors=True)
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    return {
        "records": accepted, "expected_records": events, "complete": accepted == events,
        "events_per_s": round(rate, 1), "accept_events_per_s": round(accepted / answered, 1),
        "latency_rate_events_per_s": round(rate / 2, 1), "latency_requests": len(latencies),
        "p50_latency_ms": round(p50 * 1000, 2) if p50 is not None else None,
        "p99_latency_ms": round(p99 * 1000, 2) if p99 is not None else None,
        "store": "sqlite",
        "method": f"loopback httpx, batches of {BATCH} over {CONNECTIONS} keep-alive connections; timed from the "
                  "first request until /v1/health reports an empty inbox (every event committed by a batch)",
    }


