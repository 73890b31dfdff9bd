"""The embedded Kafka cluster and the producer, in a process of their own, and the orchestrator's
handle on it."""

from __future__ import annotations

import array
import asyncio
import contextlib
import time
import traceback
from pathlib import Path
from typing import Any

from smartico_stream.bench.processes import (
    DONE,
    FETCHED,
    FLUSHED,
    PACE_START,
    PRODUCED,
    READY,
    STARTED_AT,
    STOP,
    BenchError,
    pin_cpus,
    quiet_librdkafka,
    receive,
    stop_process,
)
from smartico_stream.bench.stream import KINDS, read_stream

# Consumer settings the embedded cluster needs, and only it (docs/performance.md):
# - its coordinator holds a join phase open for session.timeout.ms - 1 s whenever a member joins, so
#   with the 45 s default every start would stall (the tests use the same values);
# - it parks an empty fetch for the whole fetch.wait.max.ms and does not answer when data arrives
#   meanwhile (measured: a record produced to an idle consumer arrives after ~360 ms with the 500 ms
#   default, ~8 ms with 10 ms); a real broker answers as soon as fetch.min.bytes (1) is there.
#   10 ms restores the real broker's behaviour; with a backlog, fetches never wait either way.
MOCK_CLUSTER_CONSUMER = {"session.timeout.ms": 3000, "heartbeat.interval.ms": 250, "fetch.wait.max.ms": 10}


def _cluster_main(conn: Any, shared: Any, cpus: list[int] | None) -> None:
    """The embedded Kafka cluster and the producer, in a process of their own."""
    pin_cpus(cpus)
    from confluent_kafka import Producer

    from smartico_stream.demo.embedded_kafka import EmbeddedKafka

    kafka = EmbeddedKafka()
    conn.send({"bootstrap": kafka.bootstrap_servers})
    logger = quiet_librdkafka()
    try:
        while True:
            command, args = conn.recv()
            if command == "exit":
                break
            try:
                if command == "topics":
                    admin = Producer({"bootstrap.servers": kafka.bootstrap_servers, "logger": logger})
                    partitions = {}
                    for topic in args:
                        metadata = admin.list_topics(topic, timeout=10)  # auto-creates the topic
                        deadline = time.monotonic() + 10
                        while not metadata.topics[topic].partitions and time.monotonic() < deadline:
                            time.sleep(0.05)
                            metadata = admin.list_topics(topic, timeout=10)
                        partitions[topic] = len(metadata.topics[topic].partitions)
                    admin.flush(5)
                    del admin
                    conn.send({"ok": True, "partitions": partitions})
                elif command == "produce":
                    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                                         "linger.ms": args.pop("linger_ms", 5),
                                         "queue.buffering.max.messages": 1_000_000, "logger": logger})
                    try:
                        conn.send({"ok": True, **_produce(producer, shared, **args)})
                    finally:
                        producer.flush(30)
                        del producer
                else:
                    conn.send({"ok": False, "error": f"unknown command {command}"})
            except Exception as exc:  # noqa: BLE001 - reported to the orchestrator
                conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
    finally:
        kafka.close()


def _produce(producer: Any, shared: Any, path: str, topics: list[str], mode: str, limit: int, max_ahead: int,
             max_ahead_bytes: int, seconds: float = 0.0, rate: float = 0.0) -> dict[str, Any]:
    """Replay the stream file into ``topics`` (one per stream index).

    ``lead``: as fast as possible but at most ``max_ahead`` records / ``max_ahead_bytes`` ahead of
    ``shared[FETCHED]``; stops ``seconds`` after the consumer's first batch (``shared[STARTED_AT]``).
    ``rounds``: a backlog of up to ``max_ahead`` records, flushed (``shared[FLUSHED]``), then waits
    until the consumer has fetched all of it, and again. ``paced``: ``rate`` records per second for
    ``seconds``, once the consumer is ready (``shared[READY]``)."""
    produce, poll = producer.produce, producer.poll
    kinds = [0, 0, 0]
    keys: set[bytes] = set()
    cumulative = array.array("q", [0])  # bytes produced before record i
    produced = 0
    blocked = 0.0
    min_lead: float | None = None
    started = time.time()
    pace_start = 0.0

    def send(stream: int, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                produce(topics[stream], value, key)
                return
            except BufferError:
                poll(0.01)

    def ahead_ok() -> bool:
        fetched = int(shared[FETCHED])
        ahead_bytes = cumulative[produced] - cumulative[min(fetched, produced)]
        return produced - fetched <= max_ahead and ahead_bytes <= max_ahead_bytes

    records = read_stream(Path(path))
    if mode == "paced":
        while not shared[READY] and not shared[STOP]:
            time.sleep(0.005)
        pace_start = time.time()
        shared[PACE_START] = pace_start
    for stream, kind, key, value in records:
        if produced >= limit or shared[STOP]:
            break
        if mode == "lead":
            if produced & 0xFF == 0:
                first = shared[STARTED_AT]
                if first and time.time() - first > seconds:
                    break
                if first and not shared[DONE]:
                    lead = produced - shared[FETCHED]
                    min_lead = lead if min_lead is None else min(min_lead, lead)
            if not ahead_ok():
                waited = time.perf_counter()
                producer.flush(0)
                while not ahead_ok() and not shared[STOP]:
                    poll(0.001)
                blocked += time.perf_counter() - waited
        elif mode == "rounds":
            if produced - int(shared[FLUSHED]) >= max_ahead or (
                cumulative[produced] - cumulative[int(shared[FLUSHED])] >= max_ahead_bytes
            ):
                producer.flush(30)
                shared[FLUSHED] = produced
                while shared[FETCHED] < produced and not shared[STOP]:
                    time.sleep(0.0005)
        else:  # paced
            now = time.time() - pace_start
            if now > seconds:
                break
            if produced >= rate * now:
                producer.flush(0)
                while produced >= rate * (time.time() - pace_start) and not shared[STOP]:
                    time.sleep(0.0005)
                    poll(0)
            elif not ahead_ok():
                while not ahead_ok() and not shared[STOP]:
                    poll(0.001)
        send(stream, key, value)
        produced += 1
        cumulative.append(cumulative[-1] + len(value))
        kinds[kind] += 1
        if kind == 0 and key:
            keys.add(key)
        shared[PRODUCED] = produced
        if produced & 0x3FF == 0:
            poll(0)
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"the embedded Kafka did not acknowledge {remaining} records")
    shared[FLUSHED] = produced
    shared[PRODUCED] = produced
    shared[DONE] = 1
    return {
        "produced": produced,
        "kinds": dict(zip(KINDS, kinds, strict=True)),
        "distinct_users": len(keys),
        "bytes": cumulative[-1],
        "producer_seconds": round(time.time() - started, 3),
        "producer_blocked_s": round(blocked, 3),
        "min_lead_records": None if min_lead is None else int(min_lead),
        "paced_s": round(time.time() - pace_start, 3) if pace_start else None,
    }


class Cluster:
    """The embedded Kafka and its producer, in their own process: ``topics`` (create, answer the
    partition counts) and ``produce`` (replay the stream file, answer what was produced) commands."""

    def __init__(self, ctx: Any, shared: Any, cpus: list[int] | None) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_cluster_main, args=(child, shared, cpus),
                                   name="bench-cluster", daemon=True)
        self.bootstrap = ""

    async def start(self) -> None:
        """Start the process and wait for the cluster's bootstrap address."""
        self.process.start()
        self.bootstrap = (await receive(self.conn, self.process, 60, "embedded Kafka"))["bootstrap"]

    async def call(self, command: str, args: Any, timeout_s: float) -> dict[str, Any]:
        """Send a command and wait for its answer."""
        self.conn.send((command, args))
        answer = await receive(self.conn, self.process, timeout_s, f"cluster {command}")
        if not answer.get("ok"):
            raise BenchError(f"cluster {command}: {answer.get('error')}\n{answer.get('traceback', '')}")
        return answer

    def start_call(self, command: str, args: Any) -> None:
        """Send a command without waiting (its answer is read with :meth:`call_result`)."""
        self.conn.send((command, args))

    async def call_result(self, command: str, timeout_s: float) -> dict[str, Any]:
        """The answer to the command sent by :meth:`start_call`."""
        answer = await receive(self.conn, self.process, timeout_s, f"cluster {command}")
        if not answer.get("ok"):
            raise BenchError(f"cluster {command}: {answer.get('error')}\n{answer.get('traceback', '')}")
        return answer

    async def close(self) -> None:
        """Ask the process to exit (closing the cluster), and make sure it does."""
        if self.process.is_alive():
            with contextlib.suppress(Exception):
                self.conn.send(("exit", None))
        await asyncio.to_thread(stop_process, self.process)
