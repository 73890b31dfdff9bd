"""A store refusal on the RabbitMQ path, on the real broker and the real PostgreSQL: a message whose
AMQP ``message_id`` holds a NUL (the producer sets it; no record check sees it) cannot be recorded
as handled in PostgreSQL's text column. That message becomes a dead letter (stage ``store``), its
neighbours are applied and every message is acked (docs/exactly-once.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from smartico_stream.service import Service
from tests.support import rabbitmq as rabbit
from tests.support.rabbitmq import InProcess, Msg, Publisher, Topology

pytestmark = pytest.mark.rabbitmq

BASE_MS = rabbit.BASE_MS


@pytest.fixture
def topology(rabbitmq: str) -> Iterator[Topology]:
    topo = Topology(rabbit.unique_prefix("refused"), streams=("payments",), queues_per_stream=1)
    try:
        yield topo
    finally:
        rabbit.delete_topology(topo)


def deposit(user: str, tx: str, when_ms: int) -> bytes:
    return orjson.dumps({"dt_finalized": when_ms, "ext_brand_id": "b1", "user_ext_id": user, "transaction_id": tx,
                         "type": "deposit", "amount": "10.00", "core_wallet_currency": "EUR"})


def test_a_message_id_postgresql_refuses_is_dead_lettered_and_acked(topology: Topology, postgres_schema: Any) -> None:
    settings = rabbit.settings_for(topology, {"url": postgres_schema.dsn, "db_schema": postgres_schema.schema},
                                   rabbitmq={"batch_size": 50})
    service = Service(settings)
    exchange = topology.exchange("payments")
    msgs = [Msg(exchange, "u1", deposit("u1", f"tx-{n}", BASE_MS + n), f"good-{n}") for n in range(5)]
    msgs.insert(2, Msg(exchange, "u1", deposit("u1", "tx-bad", BASE_MS + 100), "bad\x00id"))
    letters: list[Any] = []

    async def scenario() -> list[Any]:
        run = InProcess()
        publisher = Publisher(name=f"{topology.prefix}-publisher")
        try:
            run.start("main", service)
            await run.joined("main")
            await publisher.publish_many(msgs)
            await run.wait(lambda: service.stats.consumed >= len(msgs), "every message handled", 30,
                           diagnose=lambda: str(service.stats))
            states = await service.store.all_users()
        finally:
            await run.stop_all()
            await publisher.close()
        letters.extend(await rabbit.drain_queue(topology.dead_letter_exchange, expected=1))
        return states

    states = asyncio.run(scenario())
    assert [(s.user, s.deposit_count) for s in states] == [("u1", 5)]
    assert service.stats.dead_lettered == 1
    assert rabbit.sample(service, "smartico_stream_batch_retries_total", reason="store_content") >= 1
    (letter,) = letters
    headers = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in letter.headers.items()}
    assert headers["x-smartico-stage"] == "store"
    assert headers["x-smartico-error-class"] == "StoreRefused"
    assert "SQLSTATE 22021" in headers["x-smartico-error-message"]
    queues = rabbit.unacked_by_queue(topology.prefix)
    assert not any(queues.get(q, 0) for q in topology.queues()), queues
