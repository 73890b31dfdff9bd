"""The raw ceilings: a bare confluent-kafka consumer and a bare aio-pika consumer, each decoding
every value with ``orjson.loads`` and doing nothing else."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson

from smartico_stream.bench.cluster import MOCK_CLUSTER_CONSUMER
from smartico_stream.bench.processes import DONE, FETCHED, FLUSHED, PRODUCED, READY, quiet_librdkafka


def kafka_raw(params: dict[str, Any], shared: Any) -> dict[str, Any]:
    """confluent-kafka batch consume + orjson.loads, timed only while a flushed backlog is drained."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": params["bootstrap"], "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest", "logger": quiet_librdkafka(),
        "fetch.wait.max.ms": MOCK_CLUSTER_CONSUMER["fetch.wait.max.ms"],
    })
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                     for topic, count in params["partitions"].items() for p in range(count)])
    loads, decode_error = orjson.loads, orjson.JSONDecodeError

    def tally(messages: list[Any], consumed: int, decoded: int, bad: int, errors: int) -> tuple[int, int, int, int]:
        """Decode one fetch: the counts (consumed, decoded, not JSON, consume errors) plus its own."""
        for message in messages:
            if message.error() is not None:
                errors += 1
                continue
            consumed += 1
            try:
                loads(message.value())
                decoded += 1
            except decode_error:
                bad += 1
        return consumed, decoded, bad, errors

    consumed = decoded = bad = errors = 0
    busy = cpu = 0.0
    rounds = 0
    try:
        while True:
            target = int(shared[FLUSHED])
            if consumed >= target:
                if shared[DONE] and consumed >= int(shared[PRODUCED]):
                    break
                time.sleep(0.0005)
                continue
            rounds += 1
            # Untimed: wait for the round's first record to reach this process (the fetch of a fresh
            # backlog after an idle spell is the broker's round trip, not the consumer's cost).
            waited = time.perf_counter()
            while True:
                first = consumer.consume(1, 0.05)
                if first:
                    break
                if time.perf_counter() - waited > 60:
                    raise TimeoutError(f"raw consumer saw nothing of round {rounds} ({consumed} of {target} records)")
            consumed, decoded, bad, errors = tally(first, consumed, decoded, bad, errors)
            started, cpu_started = time.perf_counter(), time.process_time()
            while consumed < target:
                messages = consumer.consume(min(10_000, target - consumed), 1.0)
                consumed, decoded, bad, errors = tally(messages, consumed, decoded, bad, errors)
                if not messages and time.perf_counter() - started > 60:
                    raise TimeoutError(f"raw consumer stalled at {consumed} of {target} records")
            busy += time.perf_counter() - started
            cpu += time.process_time() - cpu_started
            shared[FETCHED] = consumed
    finally:
        consumer.close()
    return {"records": consumed, "decoded": decoded, "not_json": bad, "consume_errors": errors,
            "measured_s": round(busy, 4), "rounds": rounds, "cpu_s": round(cpu, 3),
            "cpu_cores_used": round(cpu / busy, 2) if busy > 0 else None,
            "events_per_s": round(consumed / busy, 1) if busy > 0 else None}


async def rabbit_raw(params: dict[str, Any], shared: Any) -> dict[str, Any]:
    """aio-pika consume of every queue (prefetch 2000) + orjson.loads, one ack(multiple) per 500."""
    import aio_pika

    expected = params["expected"]
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    state = {"count": 0, "bad": 0, "unacked": 0, "first": 0.0, "cpu": 0.0}
    done = asyncio.Event()
    connection = await aio_pika.connect(params["url"])
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=params.get("prefetch", 2000))

        async def on_message(message: Any) -> None:
            if not state["first"]:
                state["first"], state["cpu"] = time.time(), time.process_time()
            try:
                loads(message.body)
            except decode_error:
                state["bad"] += 1
            state["count"] += 1
            state["unacked"] += 1
            if state["unacked"] >= 500 or state["count"] >= expected:
                state["unacked"] = 0
                await message.ack(multiple=True)
            if state["count"] >= expected:
                done.set()

        for name in params["queues"]:
            queue = await channel.get_queue(name, ensure=False)
            await queue.consume(on_message, no_ack=False)
        shared[READY] = 1
        await asyncio.wait_for(done.wait(), params.get("timeout_s", 300))
        ended = time.time()
        cpu = time.process_time() - state["cpu"]
    finally:
        await connection.close()
    measured = ended - state["first"]
    return {"records": state["count"], "not_json": state["bad"], "measured_s": round(measured, 4),
            "cpu_s": round(cpu, 3), "cpu_cores_used": round(cpu / measured, 2) if measured > 0 else None,
            "events_per_s": round(state["count"] / measured, 1) if measured > 0 else None}
