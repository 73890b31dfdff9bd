"""The REST source's live tests: ``smartico-stream run`` with ``source: rest`` as a subprocess (the
real uvicorn server on a free port), API keys made with the real ``api-keys`` command, and httpx as
the client. The store is SQLite in the test's folder, or PostgreSQL in a schema of the test's own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from smartico_stream.pii.keys import generate_key_ring, key_ring_to_json
from tests.cli.cli_run import cli
from tests.support.common import BASE_MS, free_port
from tests.support.crash import Processes, ServiceProcess, wait_until
from tests.support.postgres import drop_schema, require_postgres, unique_schema

BRAND = "b1"
OTHER_BRAND = "b2"


def profile(user: str, n: int, brand: str = BRAND, dt: int | None = None) -> dict[str, Any]:
    """A profile whose custom field ``n`` says which one was applied last."""
    return {
        "type": "user_profile", "dt_update": dt if dt is not None else BASE_MS + n, "ext_brand_id": brand,
        "user_ext_id": user, "core_registration_date": BASE_MS - 86_400_000, "core_user_language": "EN",
        "core_wallet_currency": "EUR", "n": n,
    }


def deposit(user: str, tx: str, amount: str = "10", brand: str = BRAND, at: int = BASE_MS) -> dict[str, Any]:
    return {"type": "deposit", "dt_finalized": at, "ext_brand_id": brand, "user_ext_id": user,
            "transaction_id": tx, "amount": amount}


@dataclass
class RestEnv:
    """A config for ``source: rest`` in ``tmp`` with API keys made; start the service with :meth:`start`."""

    tmp: Path
    processes: Processes
    store: dict[str, Any]
    rest: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # name -> bearer token
    services: list[ServiceProcess] = field(default_factory=list)

    def config(self, name: str = "config.yaml", instance: str = "rest-1", **rest: Any) -> Path:
        keys = self.tmp / "pii-keys.json"
        if not keys.exists():
            keys.write_bytes(key_ring_to_json(generate_key_ring()))
            keys.chmod(0o600)
        config = {
            "source": "rest",
            "instance_id": instance,
            "store": self.store,
            "pii": {"keys_file": str(keys), "store_url": f"sqlite:///{self.tmp / (instance + '-pii.db')}"},
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
            "rest": {"host": "127.0.0.1", "port": free_port(), "partitions": 4, **self.rest, **rest},
            "logging": {"level": "INFO"},
        }
        path = self.tmp / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def make_key(self, name: str, *brands: str) -> str:
        done = cli(["api-keys", "create", "--config", str(self.config()), "--name", name, "--json",
                    *(arg for brand in brands for arg in ("--brand", brand))])
        assert done.returncode == 0, done.stderr
        token = str(orjson.loads(done.stdout)["key"])
        self.keys[name] = token
        return token

    def start(self, config: Path | None = None, failpoints: str | None = None, name: str = "svc") -> Service:
        config = config or self.config()
        settings = yaml.safe_load(config.read_text())
        proc = self.processes.start(config, self.tmp / f"{name}.log", failpoints, name)
        service = Service(proc, f"http://127.0.0.1:{settings['rest']['port']}",
                          f"http://127.0.0.1:{settings['metrics']['port']}")
        wait_until(service.healthy, f"{name}'s REST API", 60, alive=[proc] if not failpoints else [])
        return service


@dataclass
class Service:
    proc: ServiceProcess
    url: str
    metrics_url: str

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """The sum of a metric's samples matching ``labels``, scraped now (0 when absent)."""
        text = httpx.get(self.metrics_url + "/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] != name:
                continue
            if labels and not all(f'{k}="{v}"' in head for k, v in labels.items()):
                continue
            total += float(value)
        return total


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(params=["sqlite"])
def rest_env(request: pytest.FixtureRequest, tmp_path: Path, processes: Processes) -> Iterator[RestEnv]:
    """A REST configuration over SQLite (or PostgreSQL, when parametrised with ``postgres``)."""
    schema = None
    if request.param == "postgres":
        schema = unique_schema("t_rest")
        store = {"url": require_postgres(), "db_schema": schema}
    else:
        store = {"url": f"sqlite:///{tmp_path / 'state.db'}"}
    env = RestEnv(tmp_path, processes, store)
    try:
        yield env
    finally:
        processes.kill_all()
        if schema:
            drop_schema(schema, require_postgres())


async def users_in_store(env: RestEnv) -> dict[str, Any]:
    """The stored users by user id (read with the store's own code)."""
    from smartico_stream.store import open_store_from_url

    store = open_store_from_url(env.store["url"], env.store.get("db_schema"))
    await store.open()
    try:
        return {state.user: state for state in await store.all_users()}
    finally:
        await store.close()


async def hold_partitions(env: RestEnv, owner: str, partitions: int) -> None:
    """Take the inbox partitions' leases as ``owner`` (another instance that does not process)."""
    from smartico_stream.store import open_store_from_url

    store = open_store_from_url(env.store["url"], env.store.get("db_schema"))
    await store.open()
    try:
        await store.acquire([("rest", n) for n in range(partitions)], owner, float("-inf"))
    finally:
        await store.close()


def stored_users(env: RestEnv) -> dict[str, Any]:
    return asyncio.run(users_in_store(env))


def wait_for_users(env: RestEnv, check: Any, what: str, timeout_s: float = 60,
                   alive: Sequence[ServiceProcess] = ()) -> dict[str, Any]:
    """Poll the store until ``check(users)`` holds."""
    found: dict[str, Any] = {}

    def done() -> bool:
        nonlocal found
        found = stored_users(env)
        return bool(check(found))

    wait_until(done, what, timeout_s, interval_s=0.3, alive=alive)
    return found


def now_ms() -> int:
    return int(time.time() * 1000)
