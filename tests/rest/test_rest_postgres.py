"""On PostgreSQL: two instances share the inbox (each partition read by one of them, under its
lease; one killed, the other takes its partitions, nothing lost or doubled), and a store that stops
answering makes the API answer 503 (and the health route too) until it answers again."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.rest.conftest import BRAND, RestEnv, bearer, deposit, wait_for_users
from tests.rest.proxy import Proxy
from tests.support.common import free_port
from tests.support.crash import wait_until


def _send(url: str, token: str, users: range, tag: str) -> None:
    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            async def one(chunk: list[int]) -> None:
                batch = [deposit(f"{tag}{n}", f"{tag}-tx-{n}") for n in chunk]
                answer = await http.post("/v1/batch", params={"stream": "payments"}, json=batch,
                                         headers=bearer(token))
                assert answer.status_code == 200 and answer.json()["accepted"] == len(batch), answer.text
            numbers = list(users)
            await asyncio.gather(*(one(numbers[i : i + 20]) for i in range(0, len(numbers), 20)))

    asyncio.run(run())


def _applied_once(tag: str, count: int):
    def check(users: dict[str, object]) -> bool:
        mine = [u for k, u in users.items() if k.startswith(tag)]
        return len(mine) == count and all(getattr(u, "deposit_count", 0) == 1 for u in mine)
    return check


@pytest.mark.parametrize("rest_env", ["postgres"], indirect=True)
def test_two_instances_share_the_inbox_and_take_over_a_killed_ones_partitions(rest_env: RestEnv):
    token = rest_env.make_key("ops", BRAND)
    rest_env.rest.update(partitions=4, lease_timeout_s=3)
    a = rest_env.start(rest_env.config("a.yaml", instance="rest-a"), name="a")
    b = rest_env.start(rest_env.config("b.yaml", instance="rest-b"), name="b")

    def held(service) -> float:
        return service.metric("smartico_stream_assigned_partitions", {"topic": "rest"})

    wait_until(lambda: held(a) == 2 and held(b) == 2, "two partitions each", 30, interval_s=0.3,
               alive=[a.proc, b.proc])
    _send(a.url, token, range(100), "p")
    _send(b.url, token, range(100, 200), "p")
    wait_for_users(rest_env, _applied_once("p", 200), "200 deposits applied once", alive=[a.proc, b.proc])
    a.proc.kill()
    wait_until(lambda: held(b) == 4, "b reading every partition", 30, interval_s=0.3, alive=[b.proc])
    _send(b.url, token, range(100), "q")
    users = wait_for_users(rest_env, _applied_once("q", 100), "100 more applied once", alive=[b.proc])
    assert all(u.deposit_count == 1 for k, u in users.items() if k.startswith(("p", "q")))


def _health(url: str) -> int | None:
    try:
        return httpx.get(url + "/v1/health", timeout=5).status_code
    except httpx.HTTPError:
        return None


@pytest.mark.parametrize("rest_env", ["postgres"], indirect=True)
def test_store_down_answers_503_until_it_answers_again(rest_env: RestEnv):
    dsn = urlsplit(rest_env.store["url"])
    proxy = Proxy((dsn.hostname or "127.0.0.1", dsn.port or 5432), free_port())
    proxy.restore()
    try:
        netloc = f"{dsn.username + '@' if dsn.username else ''}127.0.0.1:{proxy.port}"
        rest_env.store = {**rest_env.store, "url": urlunsplit(dsn._replace(netloc=netloc))}
        token = rest_env.make_key("ops", BRAND)
        rest_env.rest.update(backlog_check_interval_s=0.2, store_timeout_s=2, key_cache_s=0)
        service = rest_env.start()
        url, params = service.url + "/v1/batch", {"stream": "payments"}
        assert httpx.post(url, params=params, json=[deposit("s1", "t1")], headers=bearer(token)).status_code == 200
        # Cut while no batch is in flight: a batch whose commit loses its connection stops the service (as
        # with every source), which is not what this test is about.
        wait_for_users(rest_env, lambda u: "s1" in u, "s1 applied", alive=[service.proc])
        wait_until(lambda: service.metric("smartico_stream_rest_inbox_backlog_events") == 0, "an empty inbox", 10)
        proxy.cut()
        wait_until(lambda: _health(service.url) == 503, "health 503", 20, alive=[service.proc])
        answer = httpx.post(url, params=params, json=[deposit("s2", "t2")], headers=bearer(token), timeout=20)
        assert answer.status_code == 503 and answer.json()["error"] == "unavailable"
        assert answer.headers["retry-after"] == "1"
        proxy.restore()
        wait_until(lambda: _health(service.url) == 200, "health 200 again", 30, alive=[service.proc])
        answer = httpx.post(url, params=params, json=[deposit("s2", "t2")], headers=bearer(token), timeout=20)
        assert answer.status_code == 200, answer.text
        wait_for_users(rest_env, lambda u: "s1" in u and "s2" in u, "both users", alive=[service.proc])
    finally:
        proxy.cut()
