"""Helpers for the RabbitMQ source tests (tests/rabbitmq/), against the real local broker.

- The broker: ``require_rabbitmq()`` FAILS the test (never skips) when it does not answer or lacks
  the consistent-hash exchange plugin; CI starts it. ``broker_restart()`` stops and starts the
  RabbitMQ application (``rabbitmqctl stop_app`` / ``start_app``) and always restores it.
- Names: a :class:`Topology` per test (a random prefix: exchanges ``<prefix>.<stream>``, queues
  ``<prefix>.<stream>.<n>``, a dead-letter exchange and its catch-all queue), deleted at teardown.
- Publishing with publisher confirms (mandatory, so an unroutable message is an error), one message
  at a time when order must survive a broker restart: a publish that fails on a connection error is
  repeated, in place, until it is confirmed.
- The service in-process (settings builder) or as a subprocess (config writer), its metrics, the
  store read from the test process, and the comparison with ``smartico-stream simulate``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import aiormq
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from smartico_stream.config import Settings, load_settings
from tests.support import crash
from tests.support.common import BASE_MS, DEMO_RULES

T = TypeVar("T")

RABBITMQ_URL = os.environ.get("SMARTICO_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")

# Errors that mean "the connection or channel went away": the publish is repeated.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ConnectionClosed,
    aiormq.exceptions.ChannelClosed,
    aio_pika.exceptions.ChannelClosed,
    RuntimeError,  # aio-pika: "connection closed" / "channel closed" while reconnecting
)


# -- running coroutines from synchronous code ------------------------------------------------------


def run_sync(coro: Awaitable[T], timeout_s: float = 60.0) -> T:
    """Run a coroutine to completion on a fresh event loop in a thread of its own (callers may be
    inside a running loop, e.g. a teardown after ``asyncio.run``)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=timeout_s)  # type: ignore[arg-type]


class LoopThread:
    """An event loop on a daemon thread; ``call(coro)`` runs a coroutine there and waits (bounded).
    Keeps long-lived async clients (a publisher, a store reader) usable from synchronous tests."""

    def __init__(self, name: str = "rabbitkit-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Awaitable[T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout_s)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


# -- the broker ------------------------------------------------------------------------------------


async def _check_broker(url: str) -> None:
    connection = await aio_pika.connect(url, timeout=5)
    try:
        channel = await connection.channel()
        probe = f"rabbitkit-probe-{uuid.uuid4().hex[:8]}"
        await channel.declare_exchange(probe, "x-consistent-hash", auto_delete=False)
        await channel.exchange_delete(probe)
    finally:
        await connection.close()


def require_rabbitmq(url: str = RABBITMQ_URL) -> str:
    """The URL, once the broker answered and accepted an x-consistent-hash exchange; otherwise the
    test FAILS with what to start (CI starts the broker: a skip would hide a broken source)."""
    try:
        run_sync(_check_broker(url), timeout_s=30)
    except Exception as exc:  # noqa: BLE001 - whatever the reason, say it
        pytest.fail(
            f"RabbitMQ is unreachable at {url}, or lacks the consistent-hash exchange plugin "
            f"({type(exc).__name__}: {exc}). These tests need the real broker: start it with "
            "`rabbitmq-server -detached` (or `sudo service rabbitmq-server start`), enable the plugin with "
            "`rabbitmq-plugins enable rabbitmq_consistent_hash_exchange`, or point "
            "SMARTICO_TEST_RABBITMQ_URL at a broker. CI (.ci/run) starts it.",
            pytrace=False,
        )
    return url


def rabbitmqctl(*args: str, timeout_s: float = 60.0, check: bool = True) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=timeout_s,
                          check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def broker_answers(url: str = RABBITMQ_URL) -> bool:
    try:
        run_sync(_check_broker(url), timeout_s=15)
    except Exception:  # noqa: BLE001 - any failure: not (yet) answering
        return False
    return True


def wait_broker_answers(url: str = RABBITMQ_URL, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not broker_answers(url):
        if time.monotonic() > deadline:
            raise AssertionError(f"RabbitMQ did not answer again within {timeout_s}s after start_app")
        time.sleep(0.2)


@contextlib.contextmanager
def broker_stopped(url: str = RABBITMQ_URL) -> Any:
    """``rabbitmqctl stop_app`` for the duration of the block; ``start_app`` in a finally, then a
    bounded wait until the broker answers AMQP again."""
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbitmqctl("start_app", check=False)
        rabbitmqctl("await_startup", check=False)
        wait_broker_answers(url)


def _connections() -> list[tuple[str, str]]:
    """(pid, connection_name) of every connection (client property ``connection_name``)."""
    found = []
    for line in rabbitmqctl("list_connections", "pid", "client_properties").splitlines():
        pid, _, properties = line.partition("\t")
        marker = '{"connection_name","'
        if marker in properties:
            name = properties[properties.index(marker) + len(marker):].split('"', 1)[0]
            found.append((pid, name))
    return found


def connection_names() -> list[str]:
    return [name for _, name in _connections()]


def close_connections_named(name: str, reason: str = "closed by the test") -> int:
    """Force-close (from the broker side) every connection whose connection_name is ``name``: what a
    network cut or a broker-side kill looks like to the client. Returns how many were closed."""
    closed = 0
    for pid, found in _connections():
        if found == name:
            rabbitmqctl("close_connection", pid, reason, check=False)
            closed += 1
    return closed


# -- names -----------------------------------------------------------------------------------------


def unique_prefix(kind: str = "rmq") -> str:
    return f"t-{kind}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Topology:
    """One test's exchanges and queues (all named after a random prefix)."""

    prefix: str
    streams: tuple[str, ...] = ("payments", "casino")
    queues_per_stream: int = 4

    def exchange(self, stream: str) -> str:
        return f"{self.prefix}.{stream}"

    @property
    def exchanges(self) -> dict[str, str]:
        return {stream: self.exchange(stream) for stream in self.streams}

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dead-letters"

    def queues(self, stream: str | None = None) -> list[str]:
        streams = self.streams if stream is None else (stream,)
        return [f"{self.exchange(s)}.{n}" for s in streams for n in range(self.queues_per_stream)]

    def rabbitmq_settings(self, url: str = RABBITMQ_URL, **overrides: Any) -> dict[str, Any]:
        return {
            "url": url,
            "exchanges": self.exchanges,
            "queues_per_stream": self.queues_per_stream,
            "dead_letter_exchange": self.dead_letter_exchange,
            "poll_timeout_s": 0.1,
            "queue_stats_interval_s": 0.2,
            **overrides,
        }


async def delete_topology_async(topology: Topology, url: str = RABBITMQ_URL) -> None:
    connection = await aio_pika.connect(url, timeout=10)
    try:
        for queue in [*topology.queues(), topology.dead_letter_exchange]:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
            with contextlib.suppress(Exception):
                await channel.close()
        for exchange in [*topology.exchanges.values(), topology.dead_letter_exchange]:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(exchange)
            with contextlib.suppress(Exception):
                await channel.close()
    finally:
        await connection.close()


def delete_topology(topology: Topology, url: str = RABBITMQ_URL) -> None:
    """Teardown: remove the test's queues and exchanges (after a broker restart too)."""
    try:
        run_sync(delete_topology_async(topology, url), timeout_s=60)
    except Exception:  # noqa: BLE001 - a teardown must not mask the test's own failure; retry once
        wait_broker_answers(url, timeout_s=30)
        run_sync(delete_topology_async(topology, url), timeout_s=60)


@dataclass(frozen=True)
class QueueState:
    ready: int
    consumers: int


async def queue_states(names: Iterable[str], url: str = RABBITMQ_URL) -> dict[str, QueueState]:
    """Ready messages and consumers of each queue, from a passive declare (a missing queue fails)."""
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel()
        states = {}
        for name in names:
            result = (await channel.declare_queue(name, passive=True)).declaration_result
            states[name] = QueueState(int(result.message_count or 0), int(result.consumer_count or 0))
        return states
    finally:
        await connection.close()


def unacked_by_queue(prefix: str) -> dict[str, int]:
    """Unacknowledged messages per queue as the broker counts them (rabbitmqctl list_queues)."""
    counts = {}
    for line in rabbitmqctl("list_queues", "name", "messages_unacknowledged").splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[0].startswith(prefix) and parts[1].strip().isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


# -- publishing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None = None
    headers: dict[str, Any] | None = None


class Publisher:
    """Publishes with publisher confirms and ``mandatory`` (an unroutable message raises).

    ``publish_in_order`` sends one message at a time and waits for its confirm; on a connection
    error it reconnects and sends the same message again (same message id) until it is confirmed or
    ``deadline_s`` passes. A message whose confirm was lost may so be stored twice, right after
    itself: the service's dedup window drops such a repeat. Nothing is lost, nothing reordered."""

    def __init__(self, url: str = RABBITMQ_URL, name: str = "rabbitkit-publisher") -> None:
        self.url = url
        self.name = name
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        self.published = 0
        self.retries = 0
        self.on_published: Callable[[int], None] | None = None  # called with the count after each confirm

    async def _open(self) -> aio_pika.abc.AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            await self.close()
            self._connection = await aio_pika.connect(
                self.url, timeout=5, client_properties={"connection_name": self.name}
            )
            self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            self._exchanges = {}
        return self._channel

    async def _exchange(self, name: str) -> aio_pika.abc.AbstractExchange:
        channel = await self._open()
        if name not in self._exchanges:
            self._exchanges[name] = await channel.get_exchange(name, ensure=False)
        return self._exchanges[name]

    @staticmethod
    def _message(msg: Msg) -> aio_pika.Message:
        return aio_pika.Message(
            msg.body, message_id=msg.message_id, headers=msg.headers,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )

    async def publish_many(self, messages: Sequence[Msg], window: int = 200) -> None:
        """Fast path (no broker restart expected): a window of confirms at a time, in order."""
        for start in range(0, len(messages), window):
            chunk = messages[start : start + window]
            pending = []
            for msg in chunk:
                exchange = await self._exchange(msg.exchange)
                pending.append(exchange.publish(self._message(msg), routing_key=msg.routing_key, mandatory=True))
            await asyncio.wait_for(asyncio.gather(*pending), 30)
            self.published += len(chunk)

    async def publish_in_order(self, messages: Iterable[Msg], deadline_s: float = 90.0) -> None:
        for msg in messages:
            give_up = time.monotonic() + deadline_s
            while True:
                try:
                    exchange = await self._exchange(msg.exchange)
                    await asyncio.wait_for(
                        exchange.publish(self._message(msg), routing_key=msg.routing_key, mandatory=True), 5
                    )
                    break
                except aio_pika.exceptions.DeliveryError:
                    raise  # returned: unroutable, a test bug
                except CONNECTION_ERRORS as exc:
                    self.retries += 1
                    self._channel = None
                    if time.monotonic() > give_up:
                        raise AssertionError(
                            f"could not publish {msg.message_id} within {deadline_s}s: {type(exc).__name__}: {exc}"
                        ) from exc
                    await asyncio.sleep(0.2)
            self.published += 1
            if self.on_published is not None:
                self.on_published(self.published)

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)


async def drain_queue(name: str, expected: int, timeout_s: float = 20.0, url: str = RABBITMQ_URL
                      ) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Get (and ack) messages from ``name`` until ``expected`` arrived, then a short extra look so that
    more than expected shows up too."""
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        got: list[aio_pika.abc.AbstractIncomingMessage] = []
        deadline = time.monotonic() + timeout_s
        extra_until: float | None = None
        while True:
            message = await queue.get(fail=False, no_ack=False)
            if message is not None:
                await message.ack()
                got.append(message)
                continue
            now = time.monotonic()
            if len(got) >= expected:
                extra_until = extra_until or now + 0.3
                if now > extra_until:
                    return got
            elif now > deadline:
                return got
            await asyncio.sleep(0.02)
    finally:
        await connection.close()


# -- reference-format messages ---------------------------------------------------------------------


def deposit(user: str, seq: int, brand: str = "b1", **changes: Any) -> dict[str, Any]:
    message = {
        "dt_finalized": BASE_MS + seq * 1000,
        "ext_brand_id": brand,
        "user_ext_id": user,
        "transaction_id": f"dep-{user}-{seq}",
        "type": "deposit",
        "amount": f"{10 + seq % 40}.50",
        "core_wallet_currency": "EUR",
        "seq": seq,  # a custom property: lands in event.extra
    }
    message.update(changes)
    return message


def casino_bet(user: str, seq: int, brand: str = "b1", **changes: Any) -> dict[str, Any]:
    message = {
        "ext_brand_id": brand,
        "user_ext_id": user,
        "transaction_id": f"bet-{user}-{seq}",
        "type": "bet",
        "bet_date": BASE_MS + seq * 1000 + 500,
        "bet_amount": "1.00",
        "game_name": "Book of Ra",
        "game_id": "game-1",
        "seq": seq,
    }
    message.update(changes)
    return message


# -- settings, in-process --------------------------------------------------------------------------


def settings_for(topology: Topology, store: dict[str, Any], *, rabbitmq: dict[str, Any] | None = None,
                 **overrides: Any) -> Settings:
    """Service settings on the local broker: ``source: rabbitmq``, the reference adapter, metrics on
    127.0.0.1 port 0, no PII key ring unless given, nothing read from the environment."""
    base: dict[str, Any] = {
        "source": "rabbitmq",
        "adapter": "reference",
        "rabbitmq": topology.rabbitmq_settings(**(rabbitmq or {})),
        "metrics": {"port": 0, "host": "127.0.0.1"},
        "store": store,
        "logging": {"level": "INFO", "format": "json"},
    }
    base.update(overrides)
    return load_settings(environ={}, **base)


def sample(service: Any, name: str, **labels: str) -> float:
    """A metric sample of an in-process service (0 when the series does not exist yet)."""
    value = service.metrics.registry.get_sample_value(name, labels)
    return float(value) if value is not None else 0.0


def sample_sum(service: Any, name: str, label: str, values: Iterable[str], **labels: str) -> float:
    return sum(sample(service, name, **{label: v, **labels}) for v in values)


# -- metrics of a subprocess -----------------------------------------------------------------------


def scrape(port: int, timeout_s: float = 5.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return samples


def pick(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def metrics_port(log_path: Path, timeout_s: float = 30.0, alive: Callable[[], bool] = lambda: True) -> int:
    """The metrics port a service subprocess logged (``metrics listening``, port 0 = any free)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for record in log_records(log_path):
            if record.get("event") == "metrics listening":
                return int(record["port"])
        if not alive():
            break
        time.sleep(0.05)
    raise AssertionError(f"no 'metrics listening' line in {log_path}:\n{_tail(log_path)}")


def log_records(log_path: Path) -> list[dict[str, Any]]:
    """Every JSON object line of a service log (other lines are skipped)."""
    records: list[dict[str, Any]] = []
    try:
        lines = log_path.read_bytes().splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# -- the service as a subprocess -------------------------------------------------------------------


def write_config(path: Path, topology: Topology, *, store_url: str, sink_path: Path, instance_id: str,
                 store_schema: str | None = None, batch_size: int = 25, prefetch: int = 200,
                 rules: Path = DEMO_RULES) -> Path:
    """``smartico-stream run`` config: ``source: rabbitmq`` on the test's topology, the demo rules, a
    JSONL sink; the AMQP connection is named ``<prefix>-<instance>`` (to find it on the broker) and
    reconnects every second."""
    config: dict[str, Any] = {
        "source": "rabbitmq",
        "adapter": "reference",
        "instance_id": instance_id,
        "rabbitmq": topology.rabbitmq_settings(
            batch_size=batch_size,
            prefetch=prefetch,
            connection={"client_properties": {"connection_name": f"{topology.prefix}-{instance_id}"},
                        "reconnect_interval": 1},
        ),
        "store": crash.store_config(store_url, store_schema),
        "engine": {"rules": str(rules)},
        "sinks": [{"type": "jsonl", "path": str(sink_path), "name": "jsonl"}],
        "outbox": {"poll_interval_s": 0.05, "retry_backoff_s": 0.1, "max_backoff_s": 0.5},
        "metrics": {"port": 0, "host": "127.0.0.1"},
        "logging": {"level": "INFO", "format": "json"},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def workload_messages(workload: crash.Workload, topology: Topology, id_prefix: str) -> list[list[Msg]]:
    """The crash workload's rounds as AMQP messages: each record to its stream's exchange, routing
    key = the user id, a unique message id (its position in the input)."""
    rounds: list[list[Msg]] = []
    n = 0
    for round_ in workload.rounds:
        msgs = []
        for rec in round_:
            msgs.append(Msg(topology.exchange(rec.stream), rec.key, rec.value, message_id=f"{id_prefix}-{n}"))
            n += 1
        rounds.append(msgs)
    return rounds


# -- the store, read from the test process ---------------------------------------------------------


class StoreReader:
    """The service's store opened in the test process, on a loop thread of its own."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._loop = LoopThread("store-reader")
        self._loop.call(store.open())

    def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async def go() -> list[tuple[Any, ...]]:
            async with self.store.connection() as conn:
                rows: list[tuple[Any, ...]] = await conn.fetch(sql, *args)
                return rows

        return self._loop.call(go())

    def handled_count(self) -> int:
        return int(self.fetch("SELECT COUNT(*) FROM handled_messages")[0][0])

    def owners(self) -> dict[tuple[str, int], str]:
        return {(t, int(p)): o for t, p, o in self.fetch("SELECT topic, part, owner FROM partition_leases")}

    def undelivered(self, sink: str) -> int:
        return int(self.fetch(
            "SELECT COALESCE(SUM(CASE WHEN c.last_seq IS NULL OR o.seq > c.last_seq THEN o.actions "
            "WHEN o.seq = c.last_seq THEN o.actions - c.next_index ELSE 0 END), 0) FROM outbox o "
            "LEFT JOIN sink_cursors c ON c.sink = ? AND c.topic = o.topic AND c.part = o.part",
            sink,
        )[0][0])

    def all_actions(self) -> list[Any]:
        return self._loop.call(self.store.all_actions())

    def all_users(self) -> list[Any]:
        return self._loop.call(self.store.all_users())

    def close(self) -> None:
        try:
            self._loop.call(self.store.close())
        finally:
            self._loop.close()


def sink_ids(tmp: Path) -> list[str]:
    ids: list[str] = []
    for path in tmp.glob("actions-*.jsonl"):
        for line in path.read_bytes().splitlines():
            if line.strip():
                ids.append(orjson.loads(line)["action_id"])
    return ids


def check_against_simulate(tmp: Path, workload: crash.Workload, reader: StoreReader, context: str = "") -> None:
    """The store's outbox holds exactly simulate's actions (same multiset, same bytes), every user's
    state equals simulate's, and the JSONL sinks delivered exactly the outbox's set of ids."""
    from smartico_stream.store.sqlite import SqliteStore

    envelopes = workload.write_envelopes(tmp / "input.jsonl")
    sim_state = tmp / "simulate.db"
    expected_lines = crash.simulate(DEMO_RULES, envelopes, sim_state)
    expected_ids = crash.action_ids(expected_lines)
    assert len(expected_ids) > 50, "the workload must trigger plenty of actions"
    assert len(set(expected_ids)) == len(expected_ids), "simulate's action ids are unique"

    outbox = reader.all_actions()
    outbox_ids = [a.action_id for a in outbox]
    lost = set(expected_ids) - set(outbox_ids)
    extra = set(outbox_ids) - set(expected_ids)
    doubled = [i for i, n in Counter(outbox_ids).items() if n > 1]
    assert not lost and not extra and not doubled, (
        f"outbox != simulate: {len(lost)} lost (e.g. {sorted(lost)[:3]}), {len(extra)} extra "
        f"(e.g. {sorted(extra)[:3]}), {len(doubled)} doubled (e.g. {doubled[:3]}); {context}"
    )
    assert Counter(outbox_ids) == Counter(expected_ids)
    by_id = {orjson.loads(line)["action_id"]: line for line in expected_lines}
    assert all(a.to_json() == by_id[a.action_id] for a in outbox), "same actions, byte for byte"

    sim_reader = StoreReader(SqliteStore(sim_state))
    try:
        expected_users = {(u.brand, u.user): crash.comparable_state(u) for u in sim_reader.all_users()}
    finally:
        sim_reader.close()
    actual_users = {(u.brand, u.user): crash.comparable_state(u) for u in reader.all_users()}
    assert set(actual_users) == set(expected_users), (
        f"users: {len(set(expected_users) - set(actual_users))} missing, "
        f"{len(set(actual_users) - set(expected_users))} unexpected"
    )
    differing = [key for key in expected_users if actual_users[key] != expected_users[key]]
    assert not differing, (
        f"{len(differing)} user state(s) differ from simulate's, first {differing[0]}:\n"
        f"service:  {actual_users[differing[0]]}\nsimulate: {expected_users[differing[0]]}"
    )
    assert sum(u["points"] for u in actual_users.values()) > 0

    delivered = sink_ids(tmp)
    assert set(delivered) == set(outbox_ids), (
        f"sink vs outbox: {len(set(outbox_ids) - set(delivered))} never delivered, "
        f"{len(set(delivered) - set(outbox_ids))} unknown"
    )


# -- services in-process ---------------------------------------------------------------------------


class InProcess:
    """Services running as asyncio tasks of the test's loop; ``wait`` fails fast when one died;
    ``stop_all`` (in a finally) stops whatever still runs."""

    def __init__(self) -> None:
        self.services: dict[str, Any] = {}
        self._stops: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, service: Any) -> Any:
        stop = asyncio.Event()
        self.services[name] = service
        self._stops[name] = stop
        self._tasks[name] = asyncio.create_task(service.run(stop), name=f"service-{name}")
        return service

    def task(self, name: str) -> asyncio.Task[None]:
        return self._tasks[name]

    def _check_alive(self, what: str) -> None:
        for name, task in self._tasks.items():
            if task.done() and not self._stops[name].is_set():
                exc = task.exception()
                raise AssertionError(f"service {name} stopped by itself while waiting for {what}: {exc!r}") from exc

    async def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = 30.0,
                   diagnose: Callable[[], str] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            self._check_alive(what)
            if time.monotonic() > deadline:
                extra = f"\n{diagnose()}" if diagnose else ""
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{extra}")
            await asyncio.sleep(0.02)

    async def joined(self, *names: str, timeout_s: float = 20.0) -> None:
        await self.wait(lambda: all(self.services[n].transport.joined for n in names),
                        f"{', '.join(names)} to consume", timeout_s)

    async def stop(self, name: str, timeout_s: float = 30.0) -> None:
        self._stops[name].set()
        await asyncio.wait_for(asyncio.shield(self._tasks[name]), timeout_s)

    async def stop_all(self, timeout_s: float = 30.0) -> None:
        for stop in self._stops.values():
            stop.set()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def consumers_by_queue(prefix: str) -> dict[str, list[str]]:
    """Every consumer the broker has on the queues named ``prefix...``: queue -> activity statuses
    (``single_active`` for the active consumer of a single-active-consumer queue, ``waiting`` for a
    standby), from ``rabbitmqctl list_consumers``."""
    found: dict[str, list[str]] = {}
    for line in rabbitmqctl("list_consumers", "queue_name", "activity_status").splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[0].startswith(prefix):
            found.setdefault(parts[0], []).append(parts[1].strip())
    return found
