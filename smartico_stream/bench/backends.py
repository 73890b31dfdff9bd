"""PostgreSQL and RabbitMQ: whether they answer, the scratch schemas, the RabbitMQ topology and
publishing the stream to it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from pathlib import Path
from typing import Any

from smartico_stream.bench.stream import KINDS, STREAM_ORDER, TOPICS, read_stream


async def postgres_problem(dsn: str) -> str | None:
    """Why PostgreSQL at ``dsn`` cannot be used (the password redacted), or None when it answers."""
    try:
        import asyncpg

        connection = await asyncio.wait_for(asyncpg.connect(dsn), 5)
        await connection.close()
    except Exception as exc:  # noqa: BLE001 - any failure is reported the same way
        return f"PostgreSQL is not reachable at {_redact(dsn)} ({type(exc).__name__}: {exc})"
    return None


async def mysql_problem(dsn: str) -> str | None:
    """Why MySQL / MariaDB at ``dsn`` cannot be used (the password redacted), or None when it answers."""
    try:
        from urllib.parse import unquote, urlsplit

        import asyncmy

        parts = urlsplit(dsn)
        connection = await asyncio.wait_for(asyncmy.connect(
            host=parts.hostname or "127.0.0.1", port=parts.port or 3306, user=unquote(parts.username or "root"),
            password=unquote(parts.password or "")), 5)
        await connection.ensure_closed()
    except Exception as exc:  # noqa: BLE001 - any failure is reported the same way
        return f"MySQL/MariaDB is not reachable at {_redact(dsn)} ({type(exc).__name__}: {exc})"
    return None


async def drop_pg_schemas(dsn: str, schemas: list[str]) -> None:
    """Drop a scenario's scratch schemas (best effort: a failure leaves them behind, not the run)."""
    import asyncpg

    with contextlib.suppress(Exception):
        connection = await asyncio.wait_for(asyncpg.connect(dsn), 10)
        try:
            for schema in schemas:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


async def rabbitmq_problem(url: str) -> str | None:
    """Why RabbitMQ at ``url`` cannot be used (unreachable, or no consistent-hash exchange type), or
    None when it can."""
    import aio_pika

    try:
        connection = await asyncio.wait_for(aio_pika.connect(url), 5)
    except Exception as exc:  # noqa: BLE001
        return f"RabbitMQ is not reachable at {_redact(url)} ({type(exc).__name__})"
    try:
        channel = await connection.channel()
        name = f"bench-probe-{uuid.uuid4().hex[:6]}"
        try:
            await channel.declare_exchange(name, "x-consistent-hash", auto_delete=True)
            await channel.exchange_delete(name)
        except Exception as exc:  # noqa: BLE001
            return ("RabbitMQ has no x-consistent-hash exchange type: "
                    f"`rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` ({type(exc).__name__})")
    finally:
        await connection.close()
    return None


async def rabbitmq_back(url: str, timeout_s: float = 90.0) -> bool:
    """True once RabbitMQ answers again (within ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await rabbitmq_problem(url) is None:
            await asyncio.sleep(2)  # let its queues come back too
            return True
        await asyncio.sleep(2)
    return False


async def rabbit_topology(url: str, prefix: str, declare: bool, queues_per_stream: int = 4) -> list[str]:
    """Declare (or delete) the service's topology for ``prefix``: what the service itself declares
    (consistent-hash exchange per stream over quorum queues with single-active-consumer)."""
    import aio_pika

    queues = [f"{prefix}.{TOPICS[stream]}.{n}" for stream in STREAM_ORDER for n in range(queues_per_stream)]
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        if declare:
            arguments: dict[str, Any] = {"x-single-active-consumer": True, "x-queue-type": "quorum"}
            for stream in STREAM_ORDER:
                exchange = await channel.declare_exchange(
                    f"{prefix}.{TOPICS[stream]}", "x-consistent-hash", durable=True)
                for n in range(queues_per_stream):
                    queue = await channel.declare_queue(
                        f"{prefix}.{TOPICS[stream]}.{n}", durable=True, arguments=arguments)
                    await queue.bind(exchange, routing_key="1")
        else:
            for queue_name in [*queues, f"{prefix}.dead-letters"]:
                with contextlib.suppress(Exception):
                    await channel.queue_delete(queue_name)
            for exchange_name in [*(f"{prefix}.{TOPICS[s]}" for s in STREAM_ORDER), f"{prefix}.dead-letters"]:
                with contextlib.suppress(Exception):
                    await channel.exchange_delete(exchange_name)
    return queues


async def rabbit_publish(url: str, prefix: str, stream_file: Path, limit: int) -> dict[str, Any]:
    """Publish the first ``limit`` records with publisher confirms (all before any consumer runs:
    RabbitMQ has no retention limit, so the producer is never the bottleneck)."""
    import aio_pika

    kinds = [0, 0, 0]
    keys: set[bytes] = set()
    produced = 0
    started = time.time()
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchanges = [await channel.get_exchange(f"{prefix}.{TOPICS[stream]}") for stream in STREAM_ORDER]
        pending: list[Any] = []
        for stream, kind, key, value in read_stream(stream_file):
            if produced >= limit:
                break
            routing_key = (key or b"").decode() or "none"  # AMQP has no null routing key
            message = aio_pika.Message(value, message_id=f"{prefix}-{produced}")
            pending.append(exchanges[stream].publish(message, routing_key=routing_key))
            kinds[kind] += 1
            if kind == 0 and key:
                keys.add(key)
            produced += 1
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    return {"produced": produced, "kinds": dict(zip(KINDS, kinds, strict=True)), "distinct_users": len(keys),
            "producer_seconds": round(time.time() - started, 2)}
