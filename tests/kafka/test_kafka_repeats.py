"""Repeats stay consistent, through the embedded Kafka, the real rules and both stores: the dedup
window is measured on the records' Kafka timestamps, and a money event repeated long after the window
(10 minutes of source time, then again after a restart) is never applied twice: the user's state
remembers its transaction. ``simulate`` on the same records gives the same outcome."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from smartico_stream.adapters.registry import load_adapter
from smartico_stream.engine.actions import Action
from smartico_stream.engine.payments import remembered
from smartico_stream.engine.rules import load_rules
from smartico_stream.service import Service
from smartico_stream.simulate import read_records, simulate
from smartico_stream.store.sqlite import SqliteStore

pytestmark = pytest.mark.kafka

T0_MS = 1_700_000_000_000
MINUTE_MS = 60_000
USER = "rp-u1"
RULES = """
rules:
  - id: deposit-points
    name: a point per deposit
    trigger: {event: deposit}
    actions:
      - {action: give_points, amount: 1}
"""


def payment(tx: str, kind: str, amount: str, when_ms: int) -> dict[str, Any]:
    return {
        "dt_finalized": when_ms, "ext_brand_id": "b1", "user_ext_id": USER, "transaction_id": tx,
        "type": kind, "amount": amount, "core_wallet_currency": "EUR",
    }


# (payment, Kafka timestamp): the operator re-sends transactions as they were (same event time),
# later. What each line should come to is in the comment.
LINES = [
    (payment("dep-1", "deposit", "10.00", T0_MS), T0_MS),  # applied
    (payment("dep-2", "deposit", "5.00", T0_MS + 1_000), T0_MS + 1_000),  # applied
    (payment("wd-1", "withdrawal_completed", "3.00", T0_MS + 2_000), T0_MS + 2_000),  # applied
    (payment("dep-2", "deposit", "5.00", T0_MS + 1_000), T0_MS + 30_000),  # inside the window: dropped
    (payment("dep-1", "deposit", "10.00", T0_MS), T0_MS + 10 * MINUTE_MS),  # 10 min later: remembered
    (payment("wd-1", "withdrawal_completed", "3.00", T0_MS + 2_000), T0_MS + 11 * MINUTE_MS),  # remembered
    (payment("dep-3", "deposit", "1.00", T0_MS + 12 * MINUTE_MS), T0_MS + 12 * MINUTE_MS),  # applied
]
APPLIED, REPEATS = 4, 3


def write_file(path: Path) -> None:
    with path.open("wb") as out:
        for value, timestamp_ms in LINES:
            envelope = {"stream": "payments", "key": USER, "value": value, "timestamp_ms": timestamp_ms}
            out.write(orjson.dumps(envelope) + b"\n")


def sample(service: Service, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


def check_totals(state: Any, deposits: int, total: str) -> None:
    assert state.deposit_count == deposits
    assert state.deposit_total == {"EUR": Decimal(total)}
    assert state.withdrawal_count == 1
    assert state.withdrawal_total == {"EUR": Decimal("3.00")}
    assert state.points == deposits


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_a_deposit_repeated_ten_minutes_later_is_applied_once_and_simulate_agrees(
    store_kind, kafka, make_settings, producer, run_service, request, tmp_path
):
    store: dict[str, Any] = {}
    if store_kind == "postgres":
        schema = request.getfixturevalue("postgres_schema")
        store = {"url": schema.dsn, "db_schema": schema.schema}
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES)
    topic = kafka.topic("payments")
    settings = make_settings(topics={"payments": [topic]}, **({"store": store} if store else {}))
    events = tmp_path / "records.jsonl"
    write_file(events)

    p = producer()
    p.ensure_topics(topic)
    for record in read_records(events, None):  # the file's records, as they were on the topic
        p.send(topic, record.key, record.value, timestamp_ms=record.timestamp_ms)
    p.flush()

    service = Service(settings, rules=load_rules(rules_file))

    async def first_run() -> tuple[list[Action], list[Any]]:
        async with run_service(service) as running:
            await running.wait_until(lambda: service.stats.consumed >= len(LINES), "every record")
            return await service.store.all_actions(), await service.store.all_users()

    actions, users = asyncio.run(first_run())
    assert [a.event_id for a in actions] == ["dep-1", "dep-2", "dep-3"]
    (state,) = users
    check_totals(state, deposits=3, total="16.00")
    assert len(remembered(state)) == 4  # dep-1, dep-2, wd-1, dep-3
    assert service.stats.processed == APPLIED and service.stats.deduplicated == REPEATS
    assert service.stats.events_applied == APPLIED
    assert sample(service, "smartico_stream_records_total", topic=topic, result="deduplicated") == REPEATS
    assert sample(service, "smartico_stream_records_total", topic=topic, result="ok") == APPLIED
    assert sample(service, "smartico_stream_dedup_hits_total", topic=topic) == REPEATS

    # A new instance on the same store, an hour later in source time: the memory is durable.
    late = payment("dep-1", "deposit", "10.00", T0_MS)
    p.send(topic, USER, orjson.dumps(late), timestamp_ms=T0_MS + 60 * MINUTE_MS)
    p.flush()
    # (another consumer group, so no wait for the first one's session to end: the store's offsets
    # say where to resume)
    again = Service(make_settings(topics={"payments": [topic]}, **({"store": store} if store else {})),
                    rules=load_rules(rules_file))

    async def second_run() -> tuple[list[Action], list[Any]]:
        async with run_service(again) as running:
            await running.wait_until(lambda: again.stats.consumed >= 1, "the late copy")
            return await again.store.all_actions(), await again.store.all_users()

    actions, users = asyncio.run(second_run())
    assert [a.event_id for a in actions] == ["dep-1", "dep-2", "dep-3"]
    check_totals(users[0], deposits=3, total="16.00")
    assert again.stats.deduplicated == 1 and again.stats.events_applied == 0

    # simulate, on the very same file: the same actions, counts and totals.
    simulated: list[Action] = []
    state_db = tmp_path / "simulated.db"
    summary = asyncio.run(
        simulate(read_records(events, None), load_adapter("reference"), load_rules(rules_file),
                 simulated.extend, state_path=state_db)
    )
    assert [a.event_id for a in simulated] == ["dep-1", "dep-2", "dep-3"]
    assert [a.action_id for a in simulated] == [a.action_id for a in actions]
    assert (summary.processed, summary.deduplicated) == (APPLIED, REPEATS)

    async def simulated_users() -> list[Any]:
        sim_store = SqliteStore(state_db)
        await sim_store.open()
        try:
            return await sim_store.all_users()
        finally:
            await sim_store.close()

    (sim_state,) = asyncio.run(simulated_users())
    check_totals(sim_state, deposits=3, total="16.00")
