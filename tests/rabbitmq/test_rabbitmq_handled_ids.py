"""Redelivered RabbitMQ messages are checked against the handled ids in the store before a batch
(guarantee 3 at the boundary): an id that cannot have been stored (a NUL, which PostgreSQL refuses
even in a lookup) is treated as fresh instead of stopping the service; stored ids are found, on
SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from smartico_stream.batch.checkpoint import Progress
from smartico_stream.config import load_settings
from smartico_stream.events.raw import RawRecord
from smartico_stream.observability.metrics import Metrics
from smartico_stream.store import BatchWrite
from smartico_stream.transports import RabbitMqTransport

pytestmark = pytest.mark.asyncio

QUEUE = ("payments.q0", 0)


@pytest.fixture
def store(sql_store: Any) -> Any:
    return sql_store


def message(offset: int, message_id: str, redelivered: bool = True) -> RawRecord:
    return RawRecord("rabbitmq", QUEUE[0], QUEUE[1], offset, b"u1", b"{}", message_id=message_id,
                     redelivered=redelivered)


async def test_a_redelivered_id_with_a_nul_is_fresh_and_stored_ids_are_found(store: Any) -> None:
    settings = load_settings(environ={}, source="rabbitmq", rabbitmq={"url": "amqp://guest:guest@127.0.0.1:5672/"})
    transport = RabbitMqTransport(settings, None, Metrics(), lambda body: body)  # type: ignore[arg-type]
    epoch = (await store.acquire([QUEUE], "me", 0.0))[QUEUE].epoch
    handled = [message(1, "m-1"), message(2, "m-2")]
    progress = transport.progress(handled, {})
    assert progress == Progress(handled_ids={QUEUE: ["m-1", "m-2"]})
    await store.commit(BatchWrite(epochs={QUEUE: epoch}, handled_messages=progress.handled_ids, handled_at=1.0))

    batch = [message(1, "m-1"), message(3, "bad\x00id"), message(4, "m-2", redelivered=False), message(5, "m-5")]
    already = await transport.already_handled(batch, store)

    # m-1 was handled before (acknowledged only); the NUL id is fresh and reaches the pipeline, which
    # dead-letters it; a first delivery is never looked up.
    assert [r.offset for r in already] == [1]
