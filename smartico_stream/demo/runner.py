"""``smartico-stream demo``: the whole service on an embedded Kafka with a realistic synthetic stream.

A producer thread writes the synthetic operator stream (profiles, payments, casino, sport, with a
share of duplicates and malformed records) while the real service consumes it; the producer stays at
most ``max_ahead`` records ahead because the embedded cluster trims old messages. The demo ends when
every produced record is handled and committed, and returns a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer

from smartico_stream.config import Settings, load_settings
from smartico_stream.demo.embedded_kafka import EmbeddedKafka
from smartico_stream.demo.replica_feed import ReplicaFeeder
from smartico_stream.demo.synthetic import StreamSpec, synthetic_stream
from smartico_stream.events.raw import Stream
from smartico_stream.pii.keys import generate_key_ring, key_ring_to_json
from smartico_stream.service import Service
from smartico_stream.sources.kafka import message_headers
from smartico_stream.sources.replica.settings import ReplicaSettings, ViewSettings

DEMO_TOPICS = {
    Stream.PROFILE: "user_profile", Stream.PAYMENTS: "payments", Stream.CASINO: "casino", Stream.SPORT: "sport"
}
DEMO_GROUP = "smartico-stream-demo"
# The embedded cluster keeps only ~5 MB per partition: the demo's size limit, and so its oversized
# records, stay small enough that nothing is trimmed before it is read.
DEMO_MAX_MESSAGE_BYTES = 64 * 1024


class DemoUnavailable(RuntimeError):
    """What the demo needs is not running here; the message says what to start."""


@dataclass
class DemoSummary:
    produced: int = 0
    consumed: int = 0
    processed: int = 0
    deduplicated: int = 0
    dead_lettered: int = 0
    events_applied: int = 0
    actions: int = 0
    actions_delivered: int = 0
    events_per_s: float = 0.0
    max_lag: int = 0
    duration_s: float = 0.0
    users: int = 0
    expected: dict[str, int] = field(default_factory=dict)
    metrics_url: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SAMPLE_RULES = Path(__file__).with_name("rules.yaml")


def demo_settings(bootstrap_servers: str, metrics_port: int, workdir: Path) -> Settings:
    """The demo's configuration: embedded Kafka, the sample rules, a scratch SQLite store and a
    JSONL action sink in ``workdir``."""
    return load_settings(
        kafka={
            "config": {
                "bootstrap.servers": bootstrap_servers,
                "group.id": DEMO_GROUP,
                "statistics.interval.ms": 1000,
                # The embedded cluster delays every rebalance by the session timeout minus a second;
                # librdkafka's 45 s default would stall the demo for that long on a busy machine.
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 1000,
                # A subscribed topic seen missing is otherwise looked for again only every 5 minutes.
                "topic.metadata.refresh.interval.ms": 1000,
            },
            "topics": {stream.value: [topic] for stream, topic in DEMO_TOPICS.items()},
            "poll_timeout_s": 0.2,
        },
        metrics={"port": metrics_port, "host": "127.0.0.1"},
        limits={"max_message_bytes": DEMO_MAX_MESSAGE_BYTES},
        store={"url": f"sqlite:///{workdir / 'state.db'}"},
        pii={"keys_file": str(_ephemeral_key_ring(workdir)), "store_url": f"sqlite:///{workdir / 'pii.db'}"},
        engine={"rules": str(SAMPLE_RULES)},
        sinks=[{"type": "jsonl", "path": str(workdir / "actions.jsonl"), "fsync": False}],
        outbox={"poll_interval_s": 0.1},
        environ={},
    )


def _create_topics(bootstrap: str, topics: list[str]) -> None:
    """Make the topics exist before the consumer subscribes. The embedded cluster refuses
    CreateTopics but creates a topic when a producer asks for its metadata."""
    producer = Producer({"bootstrap.servers": bootstrap, "allow.auto.create.topics": True})
    for topic in topics:
        deadline = time.monotonic() + 10
        while not producer.list_topics(topic=topic, timeout=5).topics[topic].partitions:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the embedded Kafka did not create topic {topic}")
            time.sleep(0.05)


def _save_dead_letters(bootstrap: str, topic: str, expected: int, path: Path, timeout_s: float = 30.0) -> None:
    """Read the dead-letter topic back (as an operator would) into a JSONL file."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"demo-dead-letter-reader-{os.getpid()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    rows: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(rows) < expected and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error() is None:
                    rows.append({
                        "key": (message.key() or b"").decode("utf-8", "replace"),
                        "value_bytes": len(message.value() or b""),
                        "value": (message.value() or b"").hex(),
                        "headers": {
                            k: v.decode("utf-8", "replace") if v is not None else None
                            for k, v in message_headers(message)
                        },
                    })
    finally:
        consumer.close()
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))


def _ephemeral_key_ring(workdir: Path) -> Path:
    """A throwaway PII key ring, so the demo shows encryption at work without any set-up."""
    path = workdir / "pii-keys.json"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_ring_to_json(generate_key_ring("demo-1")))
    return path


class _Feeder(threading.Thread):
    """Produces the synthetic stream, never more than ``max_ahead`` records ahead of the consumer."""

    def __init__(self, bootstrap: str, spec: StreamSpec, consumed: Callable[[], int], deadline: float | None,
                 max_ahead: int) -> None:
        super().__init__(name="demo-feeder", daemon=True)
        self._producer: Producer | None = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
        )
        self._spec = spec
        self._consumed = consumed
        self._deadline = deadline
        self._max_ahead = max_ahead
        self.produced = 0
        self.kinds: Counter[str] = Counter()  # ok / duplicate / malformed, and each defect
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            if self._producer is None:
                raise RuntimeError("a feeder runs once")
            for record in synthetic_stream(self._spec):
                if self._deadline is not None and time.monotonic() > self._deadline:
                    break
                while self.produced - self._consumed() > self._max_ahead:
                    self._producer.poll(0.01)
                self._producer.produce(DEMO_TOPICS[record.stream], key=record.key, value=record.value)
                self._producer.poll(0)
                self.kinds[record.kind.value] += 1
                if record.defect:
                    self.kinds[f"malformed:{record.defect}"] += 1
                self.produced += 1
            if self._producer.flush(30):
                raise RuntimeError("the embedded Kafka did not acknowledge every demo record")
        except BaseException as exc:  # noqa: BLE001 - reported by the demo instead of dying silently
            self.error = exc
        finally:
            # Destroy the client now, while the embedded cluster still answers its goodbyes.
            self._producer = None
            self.done.set()


class _RabbitFeeder(threading.Thread):
    """Publishes the synthetic stream to the demo's consistent-hash exchanges (routing key: the
    user id), with publisher confirms, on its own event loop."""

    def __init__(self, url: str, exchanges: dict[Stream, str], spec: StreamSpec, consumed: Callable[[], int],
                 deadline: float | None, max_ahead: int) -> None:
        super().__init__(name="demo-rabbit-feeder", daemon=True)
        self._url = url
        self._exchanges = exchanges
        self._spec = spec
        self._consumed = consumed
        self._deadline = deadline
        self._max_ahead = max_ahead
        self.produced = 0
        self.kinds: Counter[str] = Counter()
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as exc:  # noqa: BLE001 - reported by the demo instead of dying silently
            self.error = exc
        finally:
            self.done.set()

    async def _publish(self) -> None:
        import aio_pika

        connection = await aio_pika.connect_robust(self._url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchanges = {stream: await channel.get_exchange(name) for stream, name in self._exchanges.items()}
            pending: list[Any] = []
            for record in synthetic_stream(self._spec):
                if self._deadline is not None and time.monotonic() > self._deadline:
                    break
                # How far ahead: the service's consumed count, a plain counter with no event to wait on.
                while self.produced - self._consumed() > self._max_ahead:  # noqa: ASYNC110 - a counter, no event
                    await asyncio.sleep(0.01)
                # AMQP has no null routing key: the demo's "null key" records get a placeholder.
                key = (record.key or b"").decode() or "none"
                message = aio_pika.Message(record.value, message_id=f"demo-{self.produced}")
                # Confirms are awaited a window at a time; publishes keep their order on the channel.
                pending.append(exchanges[record.stream].publish(message, routing_key=key))
                self.kinds[record.kind.value] += 1
                if record.defect:
                    self.kinds[f"malformed:{record.defect}"] += 1
                self.produced += 1
                if len(pending) >= 200:
                    await asyncio.gather(*pending)
                    pending = []
            await asyncio.gather(*pending)


DEMO_REPLICA_DSN = "postgresql://postgres@127.0.0.1:5432/test"
"""The PostgreSQL the replica demo writes its scratch schema to (this machine's test server)."""


async def postgres_reachable(dsn: str) -> str | None:
    """None when PostgreSQL accepts a connection at ``dsn``; otherwise what to do about it."""
    import asyncpg

    from smartico_stream.sources.replica.settings import server_of

    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure is reported the same way
        return (f"PostgreSQL is not reachable at {server_of(dsn)} ({exc.__class__.__name__}). Start it "
                "(pg_ctlcluster 15 main start) or give another server with --replica-dsn.")
    await conn.close()
    return None


async def rabbitmq_reachable(url: str) -> str | None:
    """None when RabbitMQ answers at ``url``; otherwise what to do about it."""
    import aio_pika

    try:
        connection = await asyncio.wait_for(aio_pika.connect(url), 5)
    except Exception as exc:  # noqa: BLE001 - any failure is reported the same way
        return (
            f"RabbitMQ is not reachable at {url} ({exc.__class__.__name__}). Start it with "
            "`rabbitmq-server -detached` and enable the exchange type with "
            "`rabbitmq-plugins enable rabbitmq_consistent_hash_exchange`."
        )
    await connection.close()
    return None


async def _delete_topology(url: str, settings: Settings) -> None:
    """Remove the demo's exchanges and queues, so runs leave the broker as they found it."""
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for queue in [*settings.rabbitmq.queues(), settings.rabbitmq.dead_letter_exchange]:
            await channel.queue_delete(queue)
        for exchange in [*settings.rabbitmq.exchanges.values(), settings.rabbitmq.dead_letter_exchange]:
            await channel.exchange_delete(exchange)


async def run_demo(
    events: int = 20_000,
    users: int = 2_000,
    duration_s: float | None = None,
    metrics_port: int = 9108,
    progress: Callable[[str], None] | None = None,
    max_ahead: int = 5_000,
    keep: Path | None = None,
    transport: str = "kafka",
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/",
    replica_dsn: str = DEMO_REPLICA_DSN,
) -> DemoSummary:
    """Run the demo on the embedded Kafka, with ``transport="rabbitmq"`` on the RabbitMQ at
    ``rabbitmq_url``, or with ``transport="replica"`` on views of a scratch schema of the PostgreSQL
    at ``replica_dsn`` (dropped afterwards unless ``keep``); with ``keep``, its files stay there
    (state and PII stores, delivered actions, dead letters as read back from their topic, and the
    final metrics)."""
    started = time.monotonic()
    if transport == "rabbitmq":
        problem = await rabbitmq_reachable(rabbitmq_url)
        if problem is not None:
            raise DemoUnavailable(problem)
    if transport == "rest":
        return await _run_rest_demo(events, users, duration_s, metrics_port, progress, max_ahead, keep, started)
    if transport == "replica":
        problem = await postgres_reachable(replica_dsn)
        if problem is not None:
            raise DemoUnavailable(problem)
    with contextlib.ExitStack() as scope:
        kafka = scope.enter_context(EmbeddedKafka()) if transport != "replica" else None
        if keep is None:
            workdir = scope.enter_context(tempfile.TemporaryDirectory(prefix="smartico-demo-"))
        else:
            keep.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - at start-up, nothing else runs yet
            workdir = str(keep)
        bootstrap = kafka.bootstrap_servers if kafka is not None else "127.0.0.1:9"  # replica: no Kafka
        settings = demo_settings(bootstrap, metrics_port, Path(workdir))
        spec = StreamSpec(users=users, events=events, oversized_bytes=DEMO_MAX_MESSAGE_BYTES + 4096)
        deadline = started + duration_s if duration_s else None
        feeder: _Feeder | _RabbitFeeder | ReplicaFeeder
        feeding: asyncio.Task[None] | None = None
        if transport == "replica":
            feeder = ReplicaFeeder(replica_dsn, f"smartico_demo_{os.getpid()}_{int(time.time())}", spec,
                                   lambda: service.stats.consumed, deadline, max_ahead)
            await feeder.create()
            settings = settings.model_copy(update={
                "source": "replica",
                "replica": ReplicaSettings(
                    dsn=replica_dsn, page_size=2000, visibility_delay_s=0.5, idle_wait_s=0.2,
                    views=[ViewSettings(name=feeder.view(stream), stream=stream, cursor="seq", kind="id")
                           for stream in DEMO_TOPICS],
                ),
            })
            service = Service(settings)
        elif transport == "rabbitmq":
            prefix = f"smartico-demo-{os.getpid()}-{int(time.time())}"
            settings = settings.model_copy(update={
                "source": "rabbitmq",
                "rabbitmq": settings.rabbitmq.model_copy(update={
                    "url": rabbitmq_url,
                    "exchanges": {stream: f"{prefix}.{topic}" for stream, topic in DEMO_TOPICS.items()},
                    "dead_letter_exchange": f"{prefix}.dead-letters",
                    "queue_stats_interval_s": 1.0,
                }),
            })
            service = Service(settings)
            feeder = _RabbitFeeder(rabbitmq_url, dict(settings.rabbitmq.exchanges), spec,
                                   lambda: service.stats.consumed, deadline, max_ahead)
        else:
            _create_topics(bootstrap, [*DEMO_TOPICS.values(), settings.kafka.dead_letter_topic])
            service = Service(settings)
            feeder = _Feeder(bootstrap, spec, lambda: service.stats.consumed, deadline, max_ahead)
        stop = asyncio.Event()
        summary = DemoSummary(users=users)
        run_task = asyncio.create_task(service.run(stop))
        # The service declares the topology the feeder publishes to; `joined` is a plain flag.
        joining = transport == "rabbitmq"
        while joining and not service.transport.joined and not run_task.done():  # noqa: ASYNC110 - a flag, no event
            await asyncio.sleep(0.05)
        if isinstance(feeder, ReplicaFeeder):
            feeding = asyncio.create_task(feeder.run(), name="demo-replica-feeder")
        else:
            feeder.start()
        def lag_now() -> int:
            lag = service.transport.lag_messages()
            # RabbitMQ, replica: what was written and not yet consumed
            return max(feeder.produced - service.stats.consumed, 0) if lag is None else lag

        def line(lag: int, rate: float) -> str:
            stats = service.stats
            return (f"produced {feeder.produced:>7}  consumed {stats.consumed:>7}  dedup {stats.deduplicated:>5}  "
                    f"dead {stats.dead_lettered:>4}  actions {stats.actions:>6}  lag {lag:>6}  {rate:>8.0f} rec/s")

        # Drained: the service commits and leaves the group on its way out.
        await _watch(service, run_task, stop, summary, progress, lag_now, line, lambda: feeder.error is not None or (
            feeder.done.is_set() and service.stats.consumed >= feeder.produced))
        try:
            await run_task
            if feeding is not None:
                await feeding
        finally:
            if feeding is not None and not feeding.done():
                feeding.cancel()  # the service died: nothing consumes what it would write
                await asyncio.gather(feeding, return_exceptions=True)
            if isinstance(feeder, ReplicaFeeder) and keep is None:
                await feeder.drop()
        if transport == "rabbitmq" and keep is None:
            await _delete_topology(rabbitmq_url, settings)
        if feeder.error is not None:
            raise RuntimeError(f"demo producer failed: {feeder.error}") from feeder.error
        _summarise(summary, service, feeder.produced, feeder.kinds, Path(workdir), started)
        if keep is not None and transport == "kafka" and kafka is not None:
            (keep / "metrics.txt").write_bytes(service.metrics.render())
            _save_dead_letters(kafka.bootstrap_servers, settings.kafka.dead_letter_topic, summary.dead_lettered,
                               keep / "dead-letters.jsonl")
    return summary


async def _watch(service: Service, run_task: asyncio.Task[None], stop: asyncio.Event, summary: DemoSummary,
                 progress: Callable[[str], None] | None, lag_now: Callable[[], int],
                 line: Callable[[int, float], str], finished: Callable[[], bool]) -> None:
    """Until the service stops: the highest lag into ``summary``, the metrics address once, a
    progress ``line(lag, records per second)`` each second; ``stop`` is set once ``finished()``."""
    last_consumed, last_tick = 0, time.monotonic()
    announced = False
    while not run_task.done():
        await asyncio.sleep(0.5)
        lag = lag_now()
        summary.max_lag = max(summary.max_lag, lag)
        now = time.monotonic()
        if not announced and service.metrics_server is not None:
            summary.metrics_url = f"http://127.0.0.1:{service.metrics_server.port}/metrics"
            if progress:
                progress(f"metrics: {summary.metrics_url}  (also /healthz, /readyz)")
            announced = True
        if progress and now - last_tick >= 1.0:
            progress(line(lag, (service.stats.consumed - last_consumed) / (now - last_tick)))
            last_consumed, last_tick = service.stats.consumed, now
        if finished():
            stop.set()


def _summarise(summary: DemoSummary, service: Service, produced: int, kinds: Mapping[str, int], workdir: Path,
               started: float, refused: int = 0) -> None:
    """The service's totals into ``summary``; ``refused``: records handled (and dead-lettered)
    before they reached the service."""
    stats = service.stats
    busy = (stats.last_batch_at or 0) - (stats.first_record_at or 0)
    summary.produced = produced
    summary.consumed = stats.consumed + refused
    summary.processed = stats.processed
    summary.deduplicated = stats.deduplicated
    summary.dead_lettered = stats.dead_lettered + refused
    summary.events_applied = stats.events_applied
    summary.actions = stats.actions
    actions_file = workdir / "actions.jsonl"
    summary.actions_delivered = len(actions_file.read_bytes().splitlines()) if actions_file.exists() else 0
    summary.events_per_s = round(stats.consumed / busy, 1) if busy > 0 else float(stats.consumed)
    summary.expected = dict(sorted(kinds.items()))
    summary.duration_s = round(time.monotonic() - started, 2)


async def _run_rest_demo(events: int, users: int, duration_s: float | None, metrics_port: int,
                         progress: Callable[[str], None] | None, max_ahead: int, keep: Path | None,
                         started: float) -> DemoSummary:
    """The demo with ``source: rest``: the service serves its API on a free loopback port and the
    feeder sends the synthetic stream to it over HTTP (smartico_stream/demo/rest.py)."""
    from smartico_stream.demo.rest import RestFeeder
    from smartico_stream.sources.rest.keys import new_key
    from smartico_stream.store.rest import ApiKeyStore
    from smartico_stream.store.sql import SqlStore

    with contextlib.ExitStack() as scope:
        if keep is None:
            workdir = scope.enter_context(tempfile.TemporaryDirectory(prefix="smartico-demo-"))
        else:
            keep.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - at start-up, nothing else runs yet
            workdir = str(keep)
        settings = demo_settings("127.0.0.1:1", metrics_port, Path(workdir))
        settings = settings.model_copy(update={
            "source": "rest", "rest": settings.rest.model_copy(update={"host": "127.0.0.1", "port": 0}),
        })
        spec = StreamSpec(users=users, events=events, oversized_bytes=DEMO_MAX_MESSAGE_BYTES + 4096)
        deadline = started + duration_s if duration_s else None
        service = Service(settings)
        stop = asyncio.Event()
        summary = DemoSummary(users=users)
        run_task = asyncio.create_task(service.run(stop))
        while not service.transport.joined and not run_task.done():  # noqa: ASYNC110 - a flag, no event
            await asyncio.sleep(0.05)
        if run_task.done():
            await run_task
        store = service.store
        if not isinstance(store, SqlStore):
            raise TypeError("the REST demo keeps its API key in a SQL store")
        key = new_key()
        await ApiKeyStore(store).create(key.key_id, key.key_hash, "demo", sorted(spec.brands))
        port = getattr(service.transport, "port", 0)
        feeder = RestFeeder(f"http://127.0.0.1:{port}", key.token, spec, lambda: service.stats.consumed,
                            deadline, max_ahead)
        if progress:
            progress(f"REST API: http://127.0.0.1:{port}/v1/batch  (/openapi.json, /v1/health)")
        feed_task = asyncio.create_task(feeder.run())
        def line(lag: int, rate: float) -> str:
            return (f"sent {feeder.produced:>7}  accepted {feeder.accepted:>7}  refused {feeder.rejected:>5}  "
                    f"processed {service.stats.consumed:>7}  actions {service.stats.actions:>6}  "
                    f"backlog {lag:>6}  {rate:>8.0f} rec/s")

        # Drained: every accepted event is processed and committed.
        await _watch(service, run_task, stop, summary, progress, lambda: service.transport.lag_messages() or 0, line,
                     lambda: feeder.error is not None or (feeder.done and service.stats.consumed >= feeder.accepted))
        await run_task
        await feed_task
        if feeder.error is not None:
            raise RuntimeError(f"demo client failed: {feeder.error}") from feeder.error
        # Refused at the API (answered 400, or rejected in a 200) counts as handled and dead-lettered:
        # the operator was told why, nothing was kept.
        _summarise(summary, service, feeder.produced, feeder.kinds, Path(workdir), started, refused=feeder.rejected)
        if keep is not None:
            (keep / "metrics.txt").write_bytes(service.metrics.render())
    return summary

