"""The metrics port after a run with known input: /metrics carries exactly the counts the input
implies (records per topic and result, dead letters per error class, dedup hits, events per type),
the assignment, rebalance, commit and lag series, build info, and never a user or event id as a
label value; /healthz and /readyz answer 200, anything else 404."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from smartico_stream.service import Service

pytestmark = pytest.mark.kafka

BASE_MS = 1_700_000_000_000
FAR_FUTURE_MS = 32_485_190_400_000
TOPICS = {"payments": "payments", "casino": "casino", "profile": "user_profile"}


def deposit(user: str, tx: str) -> bytes:
    return orjson.dumps({"dt_finalized": BASE_MS, "ext_brand_id": "metrics-brand", "user_ext_id": user,
                         "transaction_id": tx, "type": "deposit", "amount": "12.00", "core_wallet_currency": "EUR"})


def bet(user: str, tx: str) -> bytes:
    return orjson.dumps({"ext_brand_id": "metrics-brand", "user_ext_id": user, "transaction_id": tx, "type": "bet",
                         "bet_date": BASE_MS, "bet_amount": "0.50", "game_name": "Crash X", "game_id": "crash-1"})


def profile(user: str, registered_ms: int = BASE_MS - 1000) -> bytes:
    return orjson.dumps({"dt_update": BASE_MS, "ext_brand_id": "metrics-brand", "user_ext_id": user,
                         "core_registration_date": registered_ms, "core_user_language": "EN",
                         "core_wallet_currency": "EUR", "user_email": f"{user}@example.test"})


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels`` (None when absent)."""
    found = [v for sample_labels, v in samples.get(name, []) if labels.items() <= sample_labels.items()]
    assert len(found) <= 1, f"{name}{labels} is ambiguous: {found}"
    return found[0] if found else None


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for sample_labels, v in samples.get(name, []) if labels.items() <= sample_labels.items())


def test_metrics_after_a_known_run_count_every_result_and_expose_lag_health_and_no_ids(
    make_settings, producer, run_service, scrape, broker
):
    p = producer()
    p.ensure_topics(*TOPICS.values())
    settings = make_settings(topics={s: [t] for s, t in TOPICS.items()}, kafka={"statistics_interval_ms": 200})
    service = Service(settings)

    users = [f"metrics-user-{i}" for i in range(10)]
    ids: set[str] = set(users)
    # OK records: 20 deposits, 12 bets, 5 profiles.
    for i in range(20):
        ids.add(tx := f"metrics-dep-{i}")
        p.send("payments", users[i % 10], deposit(users[i % 10], tx))
    for i in range(12):
        ids.add(tx := f"metrics-bet-{i}")
        p.send("casino", users[i % 10], bet(users[i % 10], tx))
    for i in range(5):
        p.send("user_profile", users[i], profile(users[i]))
    # Duplicates (exact copies, after their originals): 3 on payments, 2 on casino.
    for i in (0, 7, 13):
        p.send("payments", users[i % 10], deposit(users[i % 10], f"metrics-dep-{i}"))
    for i in (2, 11):
        p.send("casino", users[i % 10], bet(users[i % 10], f"metrics-bet-{i}"))
    # Bad records: 2 undecodable + 1 unknown type on payments, 1 array on casino, 1 invalid profile.
    p.send("payments", users[0], b'{"amount": ')
    p.send("payments", users[1], b"\xff\xfe not json")
    p.send("payments", users[2], orjson.dumps({**orjson.loads(deposit(users[2], "metrics-x")), "type": "refund"}))
    p.send("casino", users[3], b"[1, 2, 3]")
    p.send("user_profile", users[4], profile(users[4], registered_ms=FAR_FUTURE_MS))
    p.flush()
    produced = len(p.sent)
    assert produced == 20 + 12 + 5 + 3 + 2 + 5

    async def scenario() -> tuple[str, dict[str, int]]:
        async with run_service(service) as running:
            await running.wait_until(lambda: service.metrics_server is not None, "the metrics server")
            port = service.metrics_server.port
            await running.wait_until(lambda: service.stats.consumed >= produced, f"{produced} records")
            await running.wait_until(lambda: scrape(port, "/readyz")[0] == 200, "/readyz to answer 200")

            # Lag comes from librdkafka's statistics: wait until every partition reports it and it
            # has fallen to 0 (the commits of the last batches have landed).
            expected_partitions = {(t, str(n)) for t in TOPICS.values() for n in range(4)}

            def drained() -> bool:
                lag = {(labels["topic"], labels["partition"]): v
                       for labels, v in parse(scrape(port, "/metrics")[1]).get(
                           "smartico_stream_consumer_lag_messages", [])}
                return set(lag) == expected_partitions and all(v == 0 for v in lag.values())

            await running.wait_until(drained, "consumer lag 0 on every partition", timeout_s=30)
            text = scrape(port, "/metrics")[1]
            statuses = {path: scrape(port, path)[0] for path in ("/healthz", "/readyz", "/nope", "/metrics/x")}
            return text, statuses

    text, statuses = asyncio.run(scenario())
    assert statuses == {"/healthz": 200, "/readyz": 200, "/nope": 404, "/metrics/x": 404}
    m = parse(text)

    # Records per topic and result.
    expected_records = {
        ("payments", "ok"): 20, ("payments", "deduplicated"): 3, ("payments", "dead_lettered"): 3,
        ("casino", "ok"): 12, ("casino", "deduplicated"): 2, ("casino", "dead_lettered"): 1,
        ("user_profile", "ok"): 5, ("user_profile", "dead_lettered"): 1,
    }
    records = {(labels["topic"], labels["result"]): v for labels, v in m["smartico_stream_records_total"]}
    assert {k: v for k, v in records.items() if v} == expected_records
    assert sum(records.values()) == produced

    # Dead letters by error class (whatever the stage), and per topic.
    by_class = Counter()
    for labels, v in m["smartico_stream_dead_letters_total"]:
        by_class[labels["error_class"]] += v
    assert +by_class == {"DecodeError": 2, "UnknownEventType": 1, "NotAnObject": 1, "ValidationError": 1}
    assert total(m, "smartico_stream_dead_letters_total", topic="payments") == 3
    assert total(m, "smartico_stream_dead_letters_total", topic="user_profile", error_class="ValidationError") == 1

    # Dedup hits per topic, events per canonical type.
    assert value(m, "smartico_stream_dedup_hits_total", topic="payments") == 3
    assert value(m, "smartico_stream_dedup_hits_total", topic="casino") == 2
    assert (value(m, "smartico_stream_dedup_hits_total", topic="user_profile") or 0) == 0
    assert value(m, "smartico_stream_events_total", type="deposit") == 20
    assert value(m, "smartico_stream_events_total", type="casino_bet") == 12
    assert value(m, "smartico_stream_events_total", type="user_profile") == 5

    # Assignment, rebalances, commits, readiness.
    for topic in TOPICS.values():
        assert value(m, "smartico_stream_assigned_partitions", topic=topic) == 4
    assert value(m, "smartico_stream_rebalances_total", kind="assigned") >= 1
    assert value(m, "smartico_stream_commits_total", result="success") >= 1
    assert value(m, "smartico_stream_ready") == 1
    assert value(m, "smartico_stream_poll_loop_heartbeat_timestamp_seconds") > 0
    assert value(m, "smartico_stream_last_commit_timestamp_seconds") > 0
    assert total(m, "smartico_stream_batch_records_count") >= 1

    # Per-partition lag is present for every owned partition and 0 once drained; the high watermark
    # matches the broker's and the committed offset reached it wherever there were records.
    offsets = broker.offsets(settings.kafka.config["group.id"], TOPICS.values())
    assert len(offsets) == 12
    for (topic, partition), o in offsets.items():
        labels = {"topic": topic, "partition": str(partition)}
        assert value(m, "smartico_stream_consumer_lag_messages", **labels) == 0
        assert value(m, "smartico_stream_high_watermark_offset", **labels) == o.high
        assert o.drained, o
        if o.high:
            assert value(m, "smartico_stream_committed_offset", **labels) == o.high

    # Build info.
    build = m["smartico_stream_build_info"]
    assert len(build) == 1 and build[0][1] == 1
    assert {"version", "python", "confluent_kafka", "librdkafka"} <= build[0][0].keys()

    # No label value is a user id or an event id (nor an email).
    label_values = {v for samples in m.values() for labels, _ in samples for v in labels.values()}
    leaked = label_values & ids
    assert not leaked, f"ids used as label values: {sorted(leaked)}"
    assert not any("@" in v or "metrics-user" in v or "metrics-dep" in v for v in label_values)


def test_the_heap_is_frozen_between_batches_with_a_timed_full_collection_and_handed_back_at_stop(
    make_settings, producer, run_service, scrape, broker
):
    import gc

    p = producer()
    p.ensure_topics("payments")
    settings = make_settings(topics={"payments": ["payments"]}, engine={"full_gc_interval_s": 0.3})
    service = Service(settings)
    gc.unfreeze()
    frozen_while_running: list[int] = []

    async def scenario() -> str:
        async with run_service(service) as running:
            await running.wait_until(lambda: service.metrics_server is not None, "the metrics server")
            for round_ in range(8):  # batches over more than one full-collection interval
                p.send("payments", "gc-user", deposit("gc-user", f"gc-dep-{round_}"))
                p.flush()
                await running.wait_until(lambda r=round_: service.stats.consumed > r, f"record {round_}")
                frozen_while_running.append(gc.get_freeze_count())
                await asyncio.sleep(0.1)
            return scrape(service.metrics_server.port, "/metrics")[1]

    text = asyncio.run(scenario())
    assert all(count > 0 for count in frozen_while_running), frozen_while_running
    full = value(parse(text), "smartico_stream_gc_full_collection_seconds_count")
    assert full is not None and full >= 1  # at least one timed full collection in ~0.8 s of batches
    assert gc.get_freeze_count() == 0  # the process gets its heap back when the service stops


def test_full_gc_interval_zero_leaves_the_collector_alone(make_settings, producer, run_service, broker):
    import gc

    p = producer()
    p.ensure_topics("payments")
    service = Service(make_settings(topics={"payments": ["payments"]}, engine={"full_gc_interval_s": 0}))
    gc.unfreeze()

    async def scenario() -> int:
        async with run_service(service) as running:
            p.send("payments", "gc-user-0", deposit("gc-user-0", "gc-off-1"))
            p.flush()
            await running.wait_until(lambda: service.stats.consumed >= 1, "the record")
            return gc.get_freeze_count()

    assert asyncio.run(scenario()) == 0
