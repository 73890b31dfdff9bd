"""A 2xx means durable, and a client can always retry: the service SIGKILLed after answering but
before processing loses nothing; SIGKILLed after the inbox commit but before answering, the client's
retry (with or without an Idempotency-Key) applies nothing twice. Per-user order holds under
concurrent requests."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.rest.conftest import BRAND, RestEnv, bearer, deposit, profile, wait_for_users
from tests.support.crash import wait_until

USERS = 60


def _deposits(tag: str) -> list[dict[str, object]]:
    return [deposit(f"{tag}-{n}", f"{tag}-tx-{n}", str(n + 1)) for n in range(USERS)]


def _all_deposited_once(users: dict[str, object], tag: str) -> bool:
    mine = {k: v for k, v in users.items() if k.startswith(f"{tag}-")}
    return len(mine) == USERS and all(getattr(v, "deposit_count", 0) >= 1 for v in mine.values())


def test_sigkill_after_the_answer_loses_nothing(rest_env: RestEnv):
    token = rest_env.make_key("ops", BRAND)
    config = rest_env.config()
    # The answer wakes the batch loop (after it is sent); no timed poll may take the rows before it.
    doomed = rest_env.config("doomed.yaml", poll_interval_s=30)
    first = rest_env.start(doomed, failpoints="before_store_commit=1", name="doomed")
    answer = httpx.post(first.url + "/v1/batch", params={"stream": "payments"}, json=_deposits("k"),
                        headers=bearer(token), timeout=30)
    assert answer.status_code == 200 and answer.json()["accepted"] == USERS
    first.proc.wait(30)  # killed by its failpoint while processing, before the batch commits
    assert first.proc.returncode == -9
    rest_env.start(config, name="restarted")
    users = wait_for_users(rest_env, lambda u: _all_deposited_once(u, "k"), "every accepted deposit applied")
    assert {u.deposit_count for k, u in users.items() if k.startswith("k-")} == {1}


@pytest.mark.parametrize("idempotency", [False, True], ids=["plain-retry", "idempotency-key"])
def test_sigkill_before_the_answer_then_a_retry_doubles_nothing(rest_env: RestEnv, idempotency: bool):
    token = rest_env.make_key("ops", BRAND)
    config = rest_env.config()
    headers = {**bearer(token), **({"Idempotency-Key": "batch-1"} if idempotency else {})}
    first = rest_env.start(config, failpoints="rest_after_inbox_commit=1", name="doomed")
    with pytest.raises(httpx.HTTPError):  # committed to the inbox, then killed: no answer
        httpx.post(first.url + "/v1/batch", params={"stream": "payments"}, json=_deposits("r"), headers=headers,
                   timeout=30)
    first.proc.wait(30)
    second = rest_env.start(config, name="restarted")
    retry = httpx.post(second.url + "/v1/batch", params={"stream": "payments"}, json=_deposits("r"), headers=headers,
                       timeout=30)
    assert retry.status_code == 200 and retry.json()["accepted"] == USERS
    if idempotency:
        assert retry.headers.get("idempotent-replayed") == "true"
    users = wait_for_users(rest_env, lambda u: _all_deposited_once(u, "r"), "every deposit applied")
    # Both copies (without the key) are processed: wait until the inbox is empty, then count.
    wait_until(lambda: second.metric("smartico_stream_rest_inbox_backlog_events") == 0, "an empty inbox", 30)
    users = wait_for_users(rest_env, lambda u: _all_deposited_once(u, "r"), "every deposit applied")
    assert {u.deposit_count for k, u in users.items() if k.startswith("r-")} == {1}
    assert sum(users["r-4"].deposit_total.values()) == 5


def test_per_user_order_holds_under_concurrent_requests(rest_env: RestEnv):
    token = rest_env.make_key("ops", BRAND)
    rest_env.rest["group_commit_ms"] = 5
    service = rest_env.start()
    clients, users_each, rounds = 8, 4, 15

    async def client(c: int, http: httpx.AsyncClient) -> None:
        users = [f"o{c}-{u}" for u in range(users_each)]
        for r in range(rounds):
            # Each round: 3 profiles per user, interleaved; event times go backwards, so only the
            # order of acceptance says which one is last.
            batch = [profile(user, n=r * 3 + k, dt=10_000_000 - (r * 3 + k) + 1_700_000_000_000)
                     for k in range(3) for user in users]
            answer = await http.post("/v1/batch", params={"stream": "profile"}, json=batch, headers=bearer(token))
            assert answer.status_code == 200 and answer.json()["accepted"] == len(batch), answer.text

    async def run() -> None:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            await asyncio.gather(*(client(c, http) for c in range(clients)))

    asyncio.run(run())
    last = rounds * 3 - 1
    users = wait_for_users(
        rest_env,
        lambda u: len([k for k in u if k.startswith("o")]) == clients * users_each
        and all(v.custom.get("n") == last for k, v in u.items() if k.startswith("o")),
        "every user's last profile applied last", timeout_s=60,
    )
    assert {v.custom["n"] for k, v in users.items() if k.startswith("o")} == {last}
