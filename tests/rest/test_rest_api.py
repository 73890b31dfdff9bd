"""Every answer of the live API, through a real HTTP client: 200 with per-event results (a batch
mixing good and bad events), 400, 401, 403, 409, 413, 429, and the health route."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson

from tests.rest.conftest import (
    BRAND,
    OTHER_BRAND,
    RestEnv,
    bearer,
    deposit,
    hold_partitions,
    profile,
    wait_for_users,
)


def test_a_batch_mixing_good_and_bad_events_answers_each_and_keeps_the_good_ones(rest_env: RestEnv):
    token = rest_env.make_key("ops", BRAND)
    service = rest_env.start()
    bad_amount = {**deposit("u1", "tx-2"), "amount": "ten euros", "user_email": "secret@example.com"}
    missing = {k: v for k, v in deposit("u1", "tx-3").items() if k != "transaction_id"}
    batch = [profile("u1", 0), deposit("u1", "tx-1", "25.50"), bad_amount, missing, "not an object",
             {"type": "jackpot", "ext_brand_id": BRAND, "user_ext_id": "u1"}]
    answer = httpx.post(service.url + "/v1/batch", params={"stream": "payments"}, json=batch, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["accepted"], body["rejected"], body["ignored"]) == (2, 4, 0)
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["accepted", "accepted", "rejected", "rejected", "rejected", "rejected"]
    by_index = {r["index"]: r for r in body["results"]}
    assert by_index[2]["stage"] == "adapt" and by_index[2]["error_class"] == "ValidationError"
    assert "amount" in by_index[2]["reason"] and "ten euros" not in answer.text
    assert "secret@example.com" not in answer.text
    assert by_index[3]["error_class"] == "MissingField" and "transaction_id" in by_index[3]["reason"]
    assert by_index[4]["error_class"] == "NotAnObject"
    assert by_index[5]["error_class"] == "UnknownEventType"
    users = wait_for_users(rest_env, lambda u: "u1" in u and u["u1"].deposit_count == 1, "u1's deposit")
    assert str(users["u1"].deposit_total["EUR"]) == "25.50"
    assert service.metric("smartico_stream_rest_events_total", {"result": "rejected"}) == 4
    assert service.metric("smartico_stream_rest_requests_total", {"route": "/v1/batch", "status": "200"}) == 1


def test_one_event_route_and_health(rest_env: RestEnv):
    token = rest_env.make_key("ops", BRAND)
    service = rest_env.start()
    answer = httpx.post(service.url + "/v1/events", params={"stream": "payments"}, json=deposit("u2", "tx-9"),
                        headers=bearer(token))
    assert answer.status_code == 200 and answer.json()["results"] == [{"index": 0, "status": "accepted"}]
    # Numbers as sent: a literal no double or 64-bit integer holds is read exactly (here: too many
    # digits for an amount, said field by field), never a 500.
    huge = (b'{"type": "deposit", "dt_finalized": 1700000000000, "ext_brand_id": "b1", "user_ext_id": "u2", '
            b'"transaction_id": "tx-10", "amount": 123456789012345678901234567890.123456789}')
    answer = httpx.post(service.url + "/v1/events", params={"stream": "payments"}, content=huge,
                        headers={**bearer(token), "content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert "amount: at most 18 digits" in answer.json()["results"][0]["reason"]
    health = httpx.get(service.url + "/v1/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    wait_for_users(rest_env, lambda u: "u2" in u, "u2 in the store")


def test_unauthorized_forbidden_and_bad_requests(rest_env: RestEnv):
    token = rest_env.make_key("ops", BRAND)
    service = rest_env.start()
    url, params = service.url + "/v1/batch", {"stream": "payments"}
    good = [deposit("u3", "tx-1")]
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": token},
                    bearer(token[:-1] + ("A" if token[-1] != "A" else "B"))):
        answer = httpx.post(url, params=params, json=good, headers=headers)
        assert answer.status_code == 401, answer.text
        assert answer.headers["www-authenticate"] == "Bearer" and BRAND not in answer.text
    # A key of one brand sending another's events: 403, and nothing of the request is kept.
    answer = httpx.post(url, params=params, json=[deposit("u3", "tx-2"), deposit("u4", "tx-3", brand=OTHER_BRAND)],
                        headers=bearer(token))
    assert answer.status_code == 403 and answer.json()["error"] == "forbidden"
    assert OTHER_BRAND not in answer.text
    cases = [
        ({"stream": "lottery"}, orjson.dumps(good)),
        ({}, orjson.dumps(good)),
        (params, b"{not json"),
        (params, b""),
        (params, orjson.dumps({"events": good})),
    ]
    for query, content in cases:
        answer = httpx.post(url, params=query, content=content, headers={**bearer(token),
                                                                          "content-type": "application/json"})
        assert answer.status_code == 400, (query, content, answer.text)
        assert answer.json()["error"] == "bad_request"
    one = httpx.post(service.url + "/v1/events", params=params, json=good, headers=bearer(token))
    assert one.status_code == 400 and "one JSON object" in one.json()["message"]
    bad_key = httpx.post(url, params=params, json=good, headers={**bearer(token), "Idempotency-Key": "a b"})
    assert bad_key.status_code == 400


def test_revoked_key_is_refused(rest_env: RestEnv):
    token = rest_env.make_key("ops", BRAND)
    rest_env.rest["key_cache_s"] = 0
    service = rest_env.start()
    url, params = service.url + "/v1/events", {"stream": "payments"}
    assert httpx.post(url, params=params, json=deposit("u5", "t1"), headers=bearer(token)).status_code == 200
    key_id = token.split("_")[1]
    from tests.cli.cli_run import cli

    listed = cli(["api-keys", "list", "--config", str(rest_env.config("list.yaml")), "--json"])
    assert listed.returncode == 0 and key_id in listed.stdout and token.split("_", 2)[2] not in listed.stdout
    done = cli(["api-keys", "revoke", key_id, "--config", str(rest_env.config("revoke.yaml"))])
    assert done.returncode == 0, done.stderr
    assert httpx.post(url, params=params, json=deposit("u5", "t2"), headers=bearer(token)).status_code == 401


def test_limits_answer_413(rest_env: RestEnv):
    token = rest_env.make_key("ops", BRAND)
    rest_env.rest.update(max_batch_events=3, max_body_bytes=2048)
    service = rest_env.start()
    url, params = service.url + "/v1/batch", {"stream": "payments"}
    many = [deposit("u6", f"tx-{i}") for i in range(4)]
    answer = httpx.post(url, params=params, json=many, headers=bearer(token))
    assert answer.status_code == 413 and "rest.max_batch_events=3" in answer.json()["message"]
    big = [{**deposit("u6", "tx-big"), "note": "x" * 4000}]
    answer = httpx.post(url, params=params, json=big, headers=bearer(token))
    assert answer.status_code == 413 and "rest.max_body_bytes=2048" in answer.json()["message"]

    def chunks():  # no Content-Length: the limit holds while reading
        yield b"["
        for _ in range(100):
            yield orjson.dumps(deposit("u6", "tx-c")) + b","
        yield b"{}]"

    answer = httpx.post(url, params=params, content=chunks(), headers=bearer(token))
    assert answer.status_code == 413


def test_idempotency_key_replays_the_stored_answer(rest_env: RestEnv):
    token = rest_env.make_key("ops", BRAND)
    service = rest_env.start()
    url, params = service.url + "/v1/batch", {"stream": "payments"}
    headers = {**bearer(token), "Idempotency-Key": "req-1"}
    batch = [deposit("u7", "tx-1", "5"), deposit("u7", "tx-2", "7")]
    first = httpx.post(url, params=params, json=batch, headers=headers)
    again = httpx.post(url, params=params, json=batch, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    other = httpx.post(url, params=params, json=batch[:1], headers=headers)
    assert other.status_code == 409 and other.json()["error"] == "conflict"
    # Concurrent repeats of one key: one is written, the others wait for it and replay its answer.
    concurrent_headers = {**bearer(token), "Idempotency-Key": "req-2"}
    later = [deposit("u7", "tx-3", "1")]

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=service.url) as http:
            return list(await asyncio.gather(*(
                http.post("/v1/batch", params=params, json=later, headers=concurrent_headers) for _ in range(5))))

    answers = asyncio.run(together())
    assert {a.status_code for a in answers} == {200} and len({a.content for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 4
    users = wait_for_users(rest_env, lambda u: "u7" in u and u["u7"].deposit_count >= 3, "u7's deposits")
    time.sleep(1)
    users = wait_for_users(rest_env, lambda u: "u7" in u and u["u7"].deposit_count >= 3, "u7's deposits")
    assert users["u7"].deposit_count == 3


def test_backlog_over_the_limit_answers_429_with_retry_after(rest_env: RestEnv):
    token = rest_env.make_key("ops", BRAND)
    # Another instance holds every inbox partition (and does not process): the backlog only grows.
    asyncio.run(hold_partitions(rest_env, "elsewhere", 4))
    rest_env.rest.update(max_backlog=3, retry_after_s=2, backlog_check_interval_s=0.1, lease_timeout_s=600)
    service = rest_env.start()
    url, params = service.url + "/v1/batch", {"stream": "payments"}
    batch = [deposit("u8", f"tx-{i}") for i in range(5)]
    assert httpx.post(url, params=params, json=batch, headers=bearer(token)).status_code == 200
    deadline = time.monotonic() + 20
    while True:
        answer = httpx.post(url, params=params, json=batch, headers=bearer(token))
        if answer.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer.status_code == 429, answer.text
    assert answer.headers["retry-after"] == "2" and answer.json()["error"] == "backlog"
    # The limit is checked against the backlog as last read (every rest.backlog_check_interval_s): on a
    # busy machine one more request may get in before the reading moves.
    backlog = service.metric("smartico_stream_rest_inbox_backlog_events")
    assert backlog >= 5 and backlog % 5 == 0
    assert service.metric("smartico_stream_rest_inbox_oldest_age_seconds") >= 0
    assert httpx.get(service.url + "/v1/health").json()["backlog_events"] == backlog
