"""Action sinks against real local endpoints: files, an HTTP server on 127.0.0.1, the embedded Kafka
(librdkafka's mock cluster) and the local RabbitMQ broker. Nothing in the transport is mocked. Then
their settings: the discriminated union of the ``sinks`` setting (a table of cases and a property
test), the factory, the generated documentation, and ``smartico-stream run`` refusing bad entries.

Async code runs with ``asyncio.run`` inside sync tests, like the other integration tests. Every wait
is bounded (socket timeouts, ``asyncio.timeout``, deadline loops)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError

from smartico_stream.config import ConfigError, load_settings
from smartico_stream.demo.embedded_kafka import EmbeddedKafka
from smartico_stream.engine.actions import Action, ActionKind, action_id
from smartico_stream.sinks.base import ActionSink, SinkConfigError, SinkError
from smartico_stream.sinks.docs import render, settings_table
from smartico_stream.sinks.jsonl import JsonlSink, JsonlSinkSettings
from smartico_stream.sinks.kafka import KafkaActionSink
from smartico_stream.sinks.rabbitmq import RabbitMqActionSink
from smartico_stream.sinks.registry import SINK_TYPES, build_sink, build_sinks, parse_sink_settings
from smartico_stream.sinks.webhook import WebhookSink, idempotency_key
from tests.support.common import CLI, REPO

EVENT_TIME = datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)


def make_action(
    n: int,
    user: str = "u1",
    brand: str = "acme",
    kind: ActionKind = ActionKind.GIVE_POINTS,
    params: dict[str, Any] | None = None,
) -> Action:
    event_id = f"ev-{n}"
    return Action(
        action_id=action_id(brand, event_id, "rule-7", 0),
        rule_id="rule-7",
        action=kind,
        params={"points": Decimal("12.50"), "n": n} if params is None else params,
        brand=brand,
        user=user,
        event_id=event_id,
        event_type="deposit",
        event_time=EVENT_TIME,
        executions=1,
    )


def make_actions(count: int, users: int = 1, **kwargs: Any) -> list[Action]:
    return [make_action(i, user=f"u{i % users}", **kwargs) for i in range(count)]


# -- JSONL ----------------------------------------------------------------------------------------


def test_jsonl_appends_lines_and_creates_parent_dirs(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "actions.jsonl"
    first, second = make_actions(3), make_actions(2, kind=ActionKind.GIVE_BONUS)

    async def scenario() -> None:
        sink = JsonlSink(path)
        await sink.deliver(first)
        await sink.deliver([])  # nothing to do, nothing written
        await sink.deliver(second)
        await sink.close()

    asyncio.run(scenario())
    lines = path.read_bytes().splitlines()
    assert lines == [a.to_json() for a in first + second]
    assert [Action.from_json(line).action_id for line in lines] == [a.action_id for a in first + second]
    assert all(orjson.loads(line)["action_id"] for line in lines)


def test_jsonl_lines_are_byte_identical_for_the_same_actions(tmp_path: Path) -> None:
    actions = make_actions(4, users=2)

    async def write(path: Path, fsync: bool) -> None:
        sink = JsonlSink(path, fsync=fsync)
        await sink.deliver(actions)
        await sink.deliver(actions)  # a resend after an unacknowledged batch
        await sink.close()

    asyncio.run(write(tmp_path / "a.jsonl", True))
    asyncio.run(write(tmp_path / "b.jsonl", False))
    a, b = (tmp_path / "a.jsonl").read_bytes(), (tmp_path / "b.jsonl").read_bytes()
    assert a == b
    lines = a.splitlines()
    assert lines[:4] == lines[4:]  # the repeat is recognisable byte for byte (and by action_id)


def test_jsonl_appends_to_an_existing_file_and_drops_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "actions.jsonl"
    kept = make_action(1).to_json() + b"\n"
    path.write_bytes(kept + b'{"action_id": "torn by a cra')  # a crash mid-write

    async def scenario() -> None:
        sink = JsonlSink(path)
        await sink.deliver([make_action(2)])
        await sink.close()

    asyncio.run(scenario())
    assert path.read_bytes() == kept + make_action(2).to_json() + b"\n"


def test_jsonl_starts_a_new_file_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "actions.jsonl"

    async def scenario() -> None:
        sink = JsonlSink(path)
        await sink.deliver([make_action(1)])
        path.rename(tmp_path / "actions.jsonl.1")  # a log rotator moves the file away
        await sink.deliver([make_action(2)])
        await sink.close()

    asyncio.run(scenario())
    assert (tmp_path / "actions.jsonl.1").read_bytes() == make_action(1).to_json() + b"\n"
    assert path.read_bytes() == make_action(2).to_json() + b"\n"


def test_jsonl_write_failure_is_a_retryable_sink_error(tmp_path: Path) -> None:
    (tmp_path / "actions.jsonl").mkdir()  # a directory where the file should be

    async def scenario() -> SinkError:
        sink = JsonlSink(tmp_path / "actions.jsonl")
        with pytest.raises(SinkError) as caught:
            await sink.deliver([make_action(1)])
        await sink.close()
        with pytest.raises(SinkError):
            await sink.deliver([make_action(1)])  # closed
        return caught.value

    error = asyncio.run(scenario())
    assert error.retryable
    assert "write failed" in str(error)


# -- webhook: a scripted HTTP server on 127.0.0.1 -----------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class ScriptedHttpServer:
    """Records every request; answers each with the next scripted step (default: 200).

    Steps: ``200`` / ``409`` / ... (a status), ``(429, {"Retry-After": "0"})`` (status + headers),
    ``"close"`` (drop the connection without answering), ``("sleep", seconds)`` (answer 200 only
    after ``seconds``: beyond the client's timeout)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: deque[Any] = deque()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real receivers

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append(Received(self.path, headers, body))
                step = server.script.popleft() if server.script else 200
                if step == "close":
                    self.close_connection = True
                    return
                if isinstance(step, tuple) and step[0] == "sleep":
                    server._stop.wait(step[1])
                    step = 200
                status, extra = step if isinstance(step, tuple) else (step, {})
                payload = b'{"ok": true}' if status < 300 else f'{{"error": "status {status}"}}'.encode()
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    self.close_connection = True  # the client gave up (timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hooks/actions") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, *steps: Any) -> None:
        self.script.extend(steps)

    def close(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@pytest.fixture
def http_server() -> Iterator[ScriptedHttpServer]:
    server = ScriptedHttpServer()
    try:
        yield server
    finally:
        server.close()


class RecordingSleep:
    """Stands in for asyncio.sleep between attempts: records the delays, waits for nothing."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def webhook(url: str, **kwargs: Any) -> WebhookSink:
    options: dict[str, Any] = {"timeout_s": 2.0, "backoff_s": 0.001, "max_backoff_s": 0.01, **kwargs}
    return WebhookSink(url, **options)


def deliver(sink: ActionSink, actions: list[Action]) -> None:
    async def scenario() -> None:
        try:
            await sink.deliver(actions)
        finally:
            await sink.close()

    asyncio.run(scenario())


def deliver_expecting_error(sink: ActionSink, actions: list[Action]) -> SinkError:
    with pytest.raises(SinkError) as caught:
        deliver(sink, actions)
    return caught.value


def test_webhook_posts_one_action_per_request_with_its_idempotency_key(http_server: ScriptedHttpServer) -> None:
    actions = make_actions(3, users=2)
    deliver(webhook(http_server.url("/hooks/actions?tenant=7"), headers={"Authorization": "Bearer t0k"}), actions)

    assert len(http_server.requests) == 3
    for request, action in zip(http_server.requests, actions, strict=True):
        assert request.path == "/hooks/actions?tenant=7"
        assert request.headers["idempotency-key"] == action.action_id
        assert request.headers["content-type"] == "application/json"
        assert request.headers["authorization"] == "Bearer t0k"
        assert request.body == action.to_json()
        assert orjson.loads(request.body)["action_id"] == action.action_id


def test_webhook_batch_posts_a_json_array(http_server: ScriptedHttpServer) -> None:
    actions = make_actions(3)
    deliver(webhook(http_server.url(), batch=True), actions)

    [request] = http_server.requests
    assert request.headers["idempotency-key"] == f"{actions[0].action_id}+3"
    assert orjson.loads(request.body) == [a.as_dict() for a in actions]
    assert request.body == b"[" + b",".join(a.to_json() for a in actions) + b"]"


def test_webhook_batch_is_split_into_requests_of_at_most_max_batch_actions(http_server: ScriptedHttpServer) -> None:
    actions = make_actions(7)
    deliver(webhook(http_server.url(), batch=True, max_batch_actions=3), actions)

    assert [len(orjson.loads(r.body)) for r in http_server.requests] == [3, 3, 1]
    assert [r.headers["idempotency-key"] for r in http_server.requests] == [
        f"{actions[0].action_id}+3", f"{actions[3].action_id}+3", actions[6].action_id  # one action: its own id
    ]
    assert [a for r in http_server.requests for a in orjson.loads(r.body)] == [a.as_dict() for a in actions]


def test_webhook_refuses_a_max_batch_actions_below_one() -> None:
    with pytest.raises(ValidationError, match=r"webhook\.max_batch_actions\n.*greater than or equal to 1"):
        parse_sink_settings({"type": "webhook", "url": "http://127.0.0.1:9/", "batch": True, "max_batch_actions": 0})
    with pytest.raises(ValueError, match="max_batch_actions must be >= 1"):
        WebhookSink("http://127.0.0.1:9/", batch=True, max_batch_actions=0)


def test_webhook_retries_5xx_and_429_then_succeeds_with_the_same_request(http_server: ScriptedHttpServer) -> None:
    http_server.answer(500, (429, {"Retry-After": "0"}), 503, 200)
    sleep = RecordingSleep()
    sink = webhook(
        http_server.url(), max_attempts=5, backoff_s=0.001, max_backoff_s=1, rng=random.Random(7), sleep=sleep
    )
    action = make_action(1)
    deliver(sink, [action])

    assert len(http_server.requests) == 4
    assert {r.headers["idempotency-key"] for r in http_server.requests} == {action.action_id}
    assert {r.body for r in http_server.requests} == {action.to_json()}
    # Full jitter after the 500 (attempt 1) and the 503 (attempt 3); Retry-After: 0 after the 429.
    expected = random.Random(7)
    first = expected.uniform(0, 0.001)
    third = expected.uniform(0, 0.004)
    assert sleep.delays == [pytest.approx(first), 0.0, pytest.approx(third)]


def test_webhook_retry_after_is_capped_at_max_backoff(http_server: ScriptedHttpServer) -> None:
    http_server.answer((503, {"Retry-After": "120"}), 200)
    sleep = RecordingSleep()
    deliver(webhook(http_server.url(), max_backoff_s=0.05, sleep=sleep), [make_action(1)])
    assert sleep.delays == [0.05]
    assert len(http_server.requests) == 2


def test_webhook_409_counts_as_delivered(http_server: ScriptedHttpServer) -> None:
    http_server.answer(409, 200)
    actions = make_actions(2)
    deliver(webhook(http_server.url()), actions)
    assert [r.headers["idempotency-key"] for r in http_server.requests] == [a.action_id for a in actions]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_webhook_4xx_fails_fast_and_is_not_retryable(http_server: ScriptedHttpServer, status: int) -> None:
    http_server.answer(status)
    error = deliver_expecting_error(webhook(http_server.url(), max_attempts=5), make_actions(3))
    assert not error.retryable
    assert f"HTTP {status}" in str(error)
    assert len(http_server.requests) == 1  # neither retried nor followed by the batch's other actions


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_webhook_exhausted_retries_raise_a_retryable_error(http_server: ScriptedHttpServer, status: int) -> None:
    http_server.answer(*[status] * 3)
    actions = make_actions(2)
    error = deliver_expecting_error(webhook(http_server.url(), max_attempts=3), actions)
    assert error.retryable
    assert "after 3 attempt(s)" in str(error)
    assert f"HTTP {status}" in str(error)
    assert len(http_server.requests) == 3
    assert {r.headers["idempotency-key"] for r in http_server.requests} == {actions[0].action_id}


def test_webhook_retries_after_a_timeout(http_server: ScriptedHttpServer) -> None:
    http_server.answer(("sleep", 2.0), 200)
    started = time.monotonic()
    deliver(webhook(http_server.url(), timeout_s=0.3), [make_action(1)])
    assert len(http_server.requests) == 2
    assert time.monotonic() - started < 1.9  # the client gave up on the slow answer, it did not wait it out


def test_webhook_timeouts_exhausted(http_server: ScriptedHttpServer) -> None:
    http_server.answer(("sleep", 2.0), ("sleep", 2.0))
    error = deliver_expecting_error(webhook(http_server.url(), timeout_s=0.3, max_attempts=2), [make_action(1)])
    assert error.retryable
    assert "timed out" in str(error).lower()


def test_webhook_retries_a_dropped_connection(http_server: ScriptedHttpServer) -> None:
    http_server.answer("close", 200)
    sleep = RecordingSleep()
    deliver(webhook(http_server.url(), sleep=sleep), [make_action(1)])
    assert len(http_server.requests) == 2
    assert len(sleep.delays) == 1  # the dropped connection was a failed attempt


def test_webhook_reconnects_a_stale_keepalive_connection_without_spending_an_attempt(
    http_server: ScriptedHttpServer,
) -> None:
    sleep = RecordingSleep()
    sink = webhook(http_server.url(), sleep=sleep, max_attempts=1)
    # 200 keeps the connection alive; the next request on it is dropped, as by an idle timeout.
    http_server.answer(200, "close", 200)
    deliver(sink, make_actions(2))
    assert len(http_server.requests) == 3
    assert sleep.delays == []


def test_webhook_connection_refused_is_retryable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = deliver_expecting_error(webhook(f"http://127.0.0.1:{port}/", max_attempts=2), [make_action(1)])
    assert error.retryable
    assert "ConnectionRefusedError" in str(error)


def test_webhook_credentials_in_the_url_become_basic_auth_and_stay_out_of_the_name(
    http_server: ScriptedHttpServer,
) -> None:
    sink = webhook(f"http://hook:s%40cret@127.0.0.1:{http_server.port}/in?token=abc")
    assert "s%40cret" not in sink.name and "token" not in sink.name
    deliver(sink, [make_action(1)])
    # base64("hook:s@cret")
    assert http_server.requests[0].headers["authorization"] == "Basic aG9vazpzQGNyZXQ="
    assert http_server.requests[0].path == "/in?token=abc"


def test_webhook_idempotency_key_is_header_safe() -> None:
    plain = make_action(1)
    assert idempotency_key([plain]) == plain.action_id
    odd = make_action(1, user="x", brand="müller 100%")
    key = idempotency_key([odd])
    assert key.isascii() and " " not in key
    assert key.startswith("m%C3%BCller%20100%25/")


def test_webhook_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="scheme"):
        WebhookSink("ftp://127.0.0.1/")
    with pytest.raises(ValueError, match="Idempotency-Key"):
        WebhookSink("http://127.0.0.1/", headers={"Idempotency-Key": "x"})
    with pytest.raises(ValueError, match="max_attempts"):
        WebhookSink("http://127.0.0.1/", max_attempts=0)
    with pytest.raises(ValueError, match="line breaks"):
        WebhookSink("http://127.0.0.1/", headers={"X-Token": "a\r\nX-Injected: 1"})
    with pytest.raises(ValueError, match="header name"):
        WebhookSink("http://127.0.0.1/", headers={"X Token": "a"})


# -- Kafka (embedded mock cluster) -----------------------------------------------------------------


def test_kafka_sink_delivers_with_key_value_and_headers(kafka: EmbeddedKafka, broker: Any) -> None:
    topic = f"actions-{uuid.uuid4().hex[:8]}"
    actions = make_actions(40, users=5) + make_actions(5, users=1, brand="other")
    sink = KafkaActionSink({"bootstrap.servers": kafka.bootstrap_servers}, topic)
    assert sink.producer_config["enable.idempotence"] is True and sink.producer_config["acks"] == "all"

    async def scenario() -> None:
        await sink.deliver(actions[:20])
        await sink.deliver(actions[20:])
        await sink.close()

    asyncio.run(scenario())
    messages = broker.read_all(topic, expected=len(actions), timeout_s=20)
    assert len(messages) == len(actions)

    by_id = {a.action_id: a for a in actions}
    per_key: dict[bytes, list[tuple[int, int, str]]] = {}
    for message in messages:
        decoded = Action.from_json(message.value())
        original = by_id[decoded.action_id]
        assert decoded.to_json() == original.to_json() == message.value()
        assert message.key() == f"{original.brand}:{original.user}".encode()
        assert dict(message.headers()) == {
            "action_id": original.action_id.encode(),
            "rule_id": b"rule-7",
            "action": b"give_points",
        }
        per_key.setdefault(message.key(), []).append((message.partition(), message.offset(), decoded.action_id))
    assert {m.value() for m in messages} == {a.to_json() for a in actions}
    # One user's actions share a partition and keep the order they were delivered in.
    for key, placed in per_key.items():
        assert len({partition for partition, _, _ in placed}) == 1
        in_log_order = [aid for _, _, aid in sorted(placed)]
        assert in_log_order == [a.action_id for a in actions if f"{a.brand}:{a.user}".encode() == key]


def test_kafka_sink_unreachable_cluster_raises_retryable_sink_error() -> None:
    sink = KafkaActionSink({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 500}, "actions")

    async def scenario() -> SinkError:
        try:
            with pytest.raises(SinkError) as caught:
                async with asyncio.timeout(15):
                    await sink.deliver(make_actions(3))
            return caught.value
        finally:
            await sink.close(timeout_s=1)

    error = asyncio.run(scenario())
    assert error.retryable
    assert "3 of 3 action(s) refused" in str(error)
    assert "timed out" in str(error).lower()


def test_kafka_sink_oversized_message_is_not_retryable(kafka: EmbeddedKafka) -> None:
    sink = KafkaActionSink({"bootstrap.servers": kafka.bootstrap_servers, "message.max.bytes": 1000}, "actions")
    error = deliver_expecting_error(sink, [make_action(1, params={"blob": "x" * 5000})])
    assert not error.retryable
    assert "MSG_SIZE_TOO_LARGE" in str(error) or "too large" in str(error).lower()


def test_kafka_sink_rejects_an_unknown_setting_at_build_time() -> None:
    settings = parse_sink_settings(
        {"type": "kafka", "topic": "t", "config": {"bootstrap.servers": "127.0.0.1:1", "no.such.setting": 1}}
    )
    with pytest.raises(SinkConfigError, match=r"^kafka\.config: .*no\.such\.setting"):
        build_sink(settings)


def test_kafka_sink_refuses_to_disable_idempotence() -> None:
    with pytest.raises(ValueError, match=r"enable\.idempotence"):
        KafkaActionSink({"bootstrap.servers": "127.0.0.1:1", "enable.idempotence": False}, "t")
    with pytest.raises(ValueError, match="acks"):
        KafkaActionSink({"bootstrap.servers": "127.0.0.1:1", "acks": 1}, "t")


# -- RabbitMQ (the local broker) -------------------------------------------------------------------

RABBITMQ_URL = os.environ.get("SMARTICO_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture(scope="module")
def rabbitmq_url() -> str:
    """The local broker's URL. Fails (never skips) when it is down: CI starts RabbitMQ, and a silent
    skip would hide that the sink went untested."""

    async def probe() -> None:
        connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing here
        pytest.fail(
            f"RabbitMQ is not running (or refuses guest) at {RABBITMQ_URL}: {type(exc).__name__}: {exc}. "
            "CI starts it; locally run `sudo service rabbitmq-server start` "
            "(or `docker run -d -p 5672:5672 rabbitmq:3`), or set SMARTICO_TEST_RABBITMQ_URL.",
            pytrace=False,
        )
    return RABBITMQ_URL


async def _with_topology(
    url: str, bindings: list[str], body: Callable[[str, aio_pika.abc.AbstractQueue], Any], declare_exchange: bool = True
) -> None:
    """Runs ``body(exchange_name, queue)`` with a unique exchange (declared unless told not to) and a
    queue bound with ``bindings``; deletes both afterwards."""
    name = f"test-actions-{uuid.uuid4().hex[:10]}"
    connection = await aio_pika.connect(url, timeout=5)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, durable=False, auto_delete=False)
        try:
            if declare_exchange:
                exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
                for key in bindings:
                    await queue.bind(exchange, key)
            await body(name, queue)
        finally:
            await queue.delete(if_unused=False, if_empty=False)
            await channel.exchange_delete(name)  # idempotent in RabbitMQ, declared or not
    finally:
        await connection.close()


async def _drain(queue: aio_pika.abc.AbstractQueue, expected: int, timeout_s: float = 10) -> list[Any]:
    received: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(received) < expected and time.monotonic() < deadline:
        message = await queue.get(no_ack=True, fail=False, timeout=5)
        if message is None:
            await asyncio.sleep(0.02)
        else:
            received.append(message)
    return received


def test_rabbitmq_sink_publishes_persistent_messages_with_message_id(rabbitmq_url: str) -> None:
    actions = [*make_actions(6, users=3), make_action(9, kind=ActionKind.GIVE_BONUS)]

    async def body(exchange: str, queue: aio_pika.abc.AbstractQueue) -> None:
        sink = RabbitMqActionSink(rabbitmq_url, exchange, routing_key_template="{action}.{brand}")
        try:
            await sink.deliver(actions[:3])
            await sink.deliver(actions[3:])
        finally:
            await sink.close()
        received = await _drain(queue, len(actions))
        assert len(received) == len(actions)
        for message, action in zip(received, actions, strict=True):  # batch order kept
            assert message.message_id == action.action_id
            assert message.body == action.to_json()
            assert Action.from_json(message.body).action_id == action.action_id
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert message.content_type == "application/json"
            assert message.routing_key == f"{action.action.value}.acme"
            assert message.headers["action_id"] == action.action_id
        assert await _drain(queue, 1, timeout_s=0.3) == []  # nothing extra

    asyncio.run(asyncio.wait_for(_with_topology(rabbitmq_url, ["give_points.*", "give_bonus.*"], body), 60))


def test_rabbitmq_unroutable_message_is_a_non_retryable_error(rabbitmq_url: str) -> None:
    routable, unroutable = make_action(1), make_action(2, kind=ActionKind.GIVE_BONUS)

    async def body(exchange: str, queue: aio_pika.abc.AbstractQueue) -> None:
        sink = RabbitMqActionSink(rabbitmq_url, exchange)
        try:
            with pytest.raises(SinkError) as caught:
                await sink.deliver([routable, unroutable])
            error = caught.value
            assert not error.retryable
            assert "unroutable" in str(error)
            assert repr(exchange) in str(error) and "'give_bonus'" in str(error)
            assert unroutable.action_id in str(error)
            # Some of the batch may be delivered before the error: at-least-once, the relay resends.
            [got] = await _drain(queue, 1)
            assert got.message_id == routable.action_id
            # The sink stays usable afterwards.
            await sink.deliver([make_action(3)])
            [after] = await _drain(queue, 1)
            assert after.message_id == make_action(3).action_id
        finally:
            await sink.close()

    asyncio.run(asyncio.wait_for(_with_topology(rabbitmq_url, ["give_points"], body), 60))


def test_rabbitmq_missing_exchange_without_declare(rabbitmq_url: str) -> None:
    async def body(exchange: str, queue: aio_pika.abc.AbstractQueue) -> None:
        sink = RabbitMqActionSink(rabbitmq_url, exchange, declare=False)
        try:
            with pytest.raises(SinkError) as caught:
                await sink.deliver([make_action(1)])
            assert not caught.value.retryable
            assert "does not exist" in str(caught.value)
            # Somebody creates the exchange: the next attempt goes through.
            connection = await aio_pika.connect(rabbitmq_url, timeout=5)
            try:
                channel = await connection.channel()
                created = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
                await queue.bind(created, "#")
            finally:
                await connection.close()
            await sink.deliver([make_action(1)])
            [got] = await _drain(queue, 1)
            assert got.message_id == make_action(1).action_id
        finally:
            await sink.close()

    asyncio.run(asyncio.wait_for(_with_topology(rabbitmq_url, [], body, declare_exchange=False), 60))


def test_rabbitmq_default_exchange_publishes_straight_to_a_queue(rabbitmq_url: str) -> None:
    async def body(queue_name: str, queue: aio_pika.abc.AbstractQueue) -> None:
        entry = {"type": "rabbitmq", "url": rabbitmq_url, "exchange": "", "routing_key_template": queue_name}
        sink = build_sink(parse_sink_settings(entry))
        try:
            await sink.deliver([make_action(1)])
        finally:
            await sink.close()
        [got] = await _drain(queue, 1)
        assert got.message_id == make_action(1).action_id

    asyncio.run(asyncio.wait_for(_with_topology(rabbitmq_url, [], body), 60))


def test_rabbitmq_unreachable_broker_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = RabbitMqActionSink(f"amqp://guest:guest@127.0.0.1:{port}/", "actions", timeout_s=3)
    error = deliver_expecting_error(sink, [make_action(1)])
    assert error.retryable
    assert "guest" not in sink.name


def test_rabbitmq_refused_login_is_not_retryable(rabbitmq_url: str) -> None:
    bad = rabbitmq_url.replace("guest:guest@", "guest:wrong-password@", 1)
    assert bad != rabbitmq_url, "the test needs a URL with guest:guest credentials"
    error = deliver_expecting_error(RabbitMqActionSink(bad, "actions", timeout_s=10), [make_action(1)])
    assert not error.retryable
    assert "login refused" in str(error)
    assert "wrong-password" not in str(error)


def test_rabbitmq_routing_key_template_is_checked() -> None:
    with pytest.raises(ValueError, match="routing_key_template: unknown field 'params'"):
        RabbitMqActionSink(RABBITMQ_URL, "x", routing_key_template="{params}")
    with pytest.raises(ValueError, match="unknown field"):
        RabbitMqActionSink(RABBITMQ_URL, "x", routing_key_template="{action.__class__}")
    sink = RabbitMqActionSink(RABBITMQ_URL, "x", routing_key_template="{brand}.{action}.{event_type}")
    assert sink.routing_key(make_action(1)) == "acme.give_points.deposit"


# -- settings and build_sink ------------------------------------------------------------------------


def test_build_sink_jsonl(tmp_path: Path) -> None:
    sink = build_sink(parse_sink_settings({"type": "jsonl", "path": str(tmp_path / "a.jsonl"), "fsync": False}))
    assert isinstance(sink, JsonlSink) and isinstance(sink, ActionSink)
    assert sink.path == tmp_path / "a.jsonl" and sink.fsync is False
    deliver(sink, [make_action(1)])
    assert (tmp_path / "a.jsonl").read_bytes() == make_action(1).to_json() + b"\n"


def test_build_sink_webhook(http_server: ScriptedHttpServer) -> None:
    settings = parse_sink_settings(
        {
            "type": "webhook",
            "url": http_server.url(),
            "headers": {"X-Api-Key": "k"},
            "max_attempts": 2,
            "backoff_s": 0.001,
            "batch": True,
            "max_batch_actions": 100,
            "name": "crm",
        }
    )
    sink = build_sink(settings)
    assert isinstance(sink, WebhookSink)
    assert (sink.name, sink.max_attempts, sink.batch, sink.max_batch_actions, sink.timeout_s) == (
        "crm", 2, True, 100, 10.0
    )
    deliver(sink, make_actions(2))
    assert http_server.requests[0].headers["x-api-key"] == "k"


def test_build_sink_kafka_uses_the_source_connection_unless_config_is_given() -> None:
    connection = {"bootstrap.servers": "127.0.0.1:1", "security.protocol": "plaintext", "client.id": "src"}
    sink = build_sink(parse_sink_settings({"type": "kafka", "topic": "actions"}), kafka_connection=connection)
    assert isinstance(sink, KafkaActionSink)
    assert sink.topic == "actions"
    assert {k: sink.producer_config[k] for k in connection} == connection

    own = build_sink(
        parse_sink_settings(
            {"type": "kafka", "topic": "actions", "config": {"bootstrap.servers": "127.0.0.1:2", "linger.ms": 50}}
        ),
        kafka_connection=connection,
    )
    assert isinstance(own, KafkaActionSink)
    assert own.producer_config["bootstrap.servers"] == "127.0.0.1:2"
    assert own.producer_config["linger.ms"] == 50
    assert "client.id" not in own.producer_config  # replaced, not merged

    async def close_all() -> None:
        await sink.close(timeout_s=0)
        await own.close(timeout_s=0)

    asyncio.run(close_all())


def test_build_sink_kafka_without_config_or_connection_is_a_config_error() -> None:
    with pytest.raises(SinkConfigError, match=r"^kafka\.config: required when no Kafka source connection"):
        build_sink(parse_sink_settings({"type": "kafka"}))
    with pytest.raises(SinkConfigError, match=r"^kafka\.config\.bootstrap\.servers: required"):
        build_sink(parse_sink_settings({"type": "kafka"}), kafka_connection={"client.id": "src"})


def test_build_sinks_names_the_failing_entry_by_its_index(tmp_path: Path) -> None:
    settings = load_settings(
        sinks=[
            {"type": "jsonl", "path": str(tmp_path / "a.jsonl")},
            {"type": "kafka", "config": {"bootstrap.servers": "127.0.0.1:1", "linger.mss": 5}},
        ],
        environ={},
    )
    with pytest.raises(SinkConfigError, match=r"^sinks\.1\.kafka\.config: .*linger\.mss"):
        build_sinks(settings.sinks, {"bootstrap.servers": "127.0.0.1:1"})


def test_build_sink_rabbitmq() -> None:
    sink = build_sink(
        parse_sink_settings(
            {
                "type": "rabbitmq",
                "url": "amqp://guest:guest@127.0.0.1:5672/",
                "exchange": "actions",
                "routing_key_template": "{brand}.{action}",
                "exchange_type": "direct",
                "declare": False,
            }
        )
    )
    assert isinstance(sink, RabbitMqActionSink)
    assert (sink.exchange, sink.exchange_type, sink.declare) == ("actions", "direct", False)
    assert sink.routing_key(make_action(1)) == "acme.give_points"
    assert "guest" not in sink.name


@pytest.mark.parametrize(
    ("entry", "name"),
    [
        # The outbox keeps each sink's delivery cursors under its name: these must never change.
        ({"type": "jsonl", "path": "/var/a.jsonl"}, "jsonl:/var/a.jsonl"),
        ({"type": "webhook", "url": "https://u:p@Hooks.Example.com/in?token=t"}, "webhook:https://hooks.example.com:443/in"),
        ({"type": "webhook", "url": "http://127.0.0.1:8080"}, "webhook:http://127.0.0.1:8080/"),
        ({"type": "kafka", "topic": "acts"}, "kafka:acts"),
        ({"type": "rabbitmq", "url": "amqp://g:p@rabbit/vh", "exchange": "x"}, "rabbitmq:rabbit:5672/x"),
        ({"type": "rabbitmq", "url": "amqps://rabbit:5671/", "exchange": ""}, "rabbitmq:rabbit:5671/"),
        ({"type": "kafka", "name": "mine"}, "mine"),
    ],
)
def test_a_sink_is_named_as_its_settings_say(entry: dict[str, Any], name: str) -> None:
    settings = parse_sink_settings(entry)
    assert settings.sink_name() == name
    sink = build_sink(settings, {"bootstrap.servers": "127.0.0.1:1"})
    try:
        assert sink.name == name
    finally:
        asyncio.run(sink.close())


SINK_TYPE_NAMES = "jsonl, webhook, kafka, rabbitmq"


@pytest.mark.parametrize(
    ("entry", "problems"),
    [
        # The tag: missing, unknown, not a string; an entry that is not a mapping.
        ({"path": "a.jsonl"}, [("type", f"Field required: the sink type, one of {SINK_TYPE_NAMES}")]),
        ({"type": "s3", "path": "a"}, [("type", f"unknown sink type 's3'; one of {SINK_TYPE_NAMES}")]),
        ({"type": 3}, [("type", "unknown sink type 3")]),
        ({"type": None}, [("type", "Field required")]),
        ("jsonl", [("", "Input should be a valid dictionary")]),
        # Unknown keys and wrong types, each at its field below the tag.
        ({"type": "jsonl", "path": "a", "pth": "b"}, [("jsonl.pth", "Extra inputs are not permitted")]),
        ({"type": "jsonl", "path": ""}, [("jsonl.path", "must not be empty")]),
        ({"type": "jsonl", "path": "a", "fsync": "yes"}, [("jsonl.fsync", "Input should be a valid boolean")]),
        ({"type": "jsonl", "path": "a", "fsync": None}, [("jsonl.fsync", "Input should be a valid boolean")]),
        ({"type": "jsonl", "name": ""}, [("jsonl.name", "at least 1 character")]),
        ({"type": "webhook"}, [("webhook.url", "Field required")]),
        ({"type": "webhook", "timeout": 5}, [("webhook.url", "Field required"),
                                              ("webhook.timeout", "Extra inputs are not permitted")]),
        ({"type": "webhook", "url": "ftp://x/"}, [("webhook.url", "scheme must be http or https, got 'ftp'")]),
        ({"type": "webhook", "url": "http:///p"}, [("webhook.url", "no host")]),
        ({"type": "webhook", "url": "http://x:99999/"}, [("webhook.url", "invalid port")]),
        ({"type": "webhook", "url": "http://x/", "max_attempts": "5"}, [("webhook.max_attempts", "valid integer")]),
        ({"type": "webhook", "url": "http://x/", "max_attempts": True}, [("webhook.max_attempts", "valid integer")]),
        ({"type": "webhook", "url": "http://x/", "max_attempts": 0}, [("webhook.max_attempts", "than or equal to 1")]),
        ({"type": "webhook", "url": "http://x/", "timeout_s": 0}, [("webhook.timeout_s", "greater than 0")]),
        ({"type": "webhook", "url": "http://x/", "timeout_s": float("inf")}, [("webhook.timeout_s", "finite number")]),
        ({"type": "webhook", "url": "http://x/", "backoff_s": -1}, [("webhook.backoff_s", "greater than or equal")]),
        ({"type": "webhook", "url": "http://x/", "headers": {"A": 1}}, [("webhook.headers.A", "valid string")]),
        (
            {"type": "webhook", "url": "http://x/", "headers": {"Idempotency-Key": "k", "X Y": "v", "X-Z": "a\r\nb"}},
            [("webhook.headers.Idempotency-Key", "set by the sink"), ("webhook.headers.X Y", "not a valid header name"),
             ("webhook.headers.X-Z", "printable Latin-1 without line breaks")],
        ),
        (
            {"type": "webhook", "url": "http://u:p@x/", "headers": {"authorization": "Bearer t"}},
            [("webhook.url", "credentials in the URL and an Authorization header are exclusive")],
        ),
        ({"type": "kafka", "topic": ""}, [("kafka.topic", "a Kafka topic name is 1 to 249 characters")]),
        ({"type": "kafka", "topic": "a b"}, [("kafka.topic", "a Kafka topic name")]),
        ({"type": "kafka", "config": "bootstrap.servers=x"}, [("kafka.config", "valid dictionary")]),
        ({"type": "kafka", "config": {"linger.ms": 5}}, [("kafka.config.bootstrap.servers", "required: a given")]),
        ({"type": "kafka", "config": {"bootstrap.servers": "x:1", "acks": "1"}}, [("kafka.config.acks", "be 'all'")]),
        (
            {"type": "kafka", "config": {"bootstrap.servers": "x:1", "enable.idempotence": False, "acks": 1}},
            [("kafka.config.enable.idempotence", "cannot be disabled"), ("kafka.config.acks", "must be 'all'")],
        ),
        (
            {"type": "kafka", "config": {"bootstrap.servers": "x:1", "message.timeout.ms": "soon"}},
            [("kafka.config.message.timeout.ms", "a number of milliseconds")],
        ),
        ({"type": "kafka", "config": {"bootstrap.servers": ["x"]}}, [("kafka.config.bootstrap.servers", "librdkafka")]),
        ({"type": "kafka", "delivery_timeout_s": 0}, [("kafka.delivery_timeout_s", "greater than 0")]),
        ({"type": "rabbitmq", "url": "http://x/"}, [("rabbitmq.url", "scheme must be amqp or amqps")]),
        ({"type": "rabbitmq", "exchange": 5}, [("rabbitmq.exchange", "valid string")]),
        ({"type": "rabbitmq", "routing_key_template": "{x}"}, [("rabbitmq.routing_key_template", "unknown field 'x'")]),
        ({"type": "rabbitmq", "routing_key_template": "{user"}, [("rabbitmq.routing_key_template", "not a valid")]),
        ({"type": "rabbitmq", "routing_key_template": "{user:d}"}, [("rabbitmq.routing_key_template", "not a valid")]),
        ({"type": "rabbitmq", "exchange_type": ""}, [("rabbitmq.exchange_type", "at least 1 character")]),
        ({"type": "rabbitmq", "declare": "no"}, [("rabbitmq.declare", "valid boolean")]),
    ],
)
def test_sink_settings_problems_are_named_by_index_type_and_field(entry: Any, problems: list[tuple[str, str]]) -> None:
    """Through load_settings, as the service reads its config: every problem of the entry is listed,
    located at ``sinks.<index>.<type>.<field>`` (the tagged union puts the type in the path)."""
    with pytest.raises(ConfigError) as caught:
        load_settings(sinks=[{"type": "jsonl", "path": "ok.jsonl"}, entry], environ={})
    lines = str(caught.value).splitlines()[1:]
    assert len(lines) == len(problems), lines
    for (where, message), line in zip(problems, lines, strict=True):
        path = f"sinks.1.{where}" if where else "sinks.1"
        assert line.startswith(f"  {path}: "), (line, path)
        assert message in line, (line, message)


@pytest.mark.parametrize("kind", list(SINK_TYPES))
def test_every_field_of_every_sink_refuses_a_value_of_the_wrong_type(kind: str) -> None:
    """A list is the wrong type for every sink setting (strings, numbers, booleans, paths, mappings)."""
    model = SINK_TYPES[kind]
    fields = [name for name in model.model_fields if name != "type"]
    with pytest.raises(ConfigError) as caught:
        load_settings(sinks=[{"type": kind, **{name: [1] for name in fields}}], environ={})
    located = {line.split(": ", 1)[0].strip() for line in str(caught.value).splitlines()[1:]}
    assert located == {f"sinks.0.{kind}.{name}" for name in fields}


def test_sink_names_and_jsonl_files_must_be_unique(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            sinks=[
                {"type": "kafka", "topic": "acts"},
                {"type": "kafka", "topic": "acts", "config": {"bootstrap.servers": "other:9092"}},
                {"type": "jsonl", "path": str(tmp_path / "a.jsonl"), "name": "kafka:acts"},
                {"type": "jsonl", "path": str(tmp_path / "a.jsonl"), "name": "copy"},
            ],
            environ={},
        )
    assert str(caught.value).splitlines()[1:] == [
        "  sinks.1.kafka.name: unnamed, the sink is called 'kafka:acts' after its destination, like sinks.0; "
        "give one of them a distinct name",
        "  sinks.2.jsonl.name: 'kafka:acts' is the name of sinks.0 already; names must be unique",
        "  sinks.3.jsonl.path: sinks.2 writes this file already; one sink per file",
    ]
    named = load_settings(
        sinks=[{"type": "kafka", "topic": "acts"}, {"type": "kafka", "topic": "acts", "name": "acts-copy"}], environ={}
    )
    assert [s.sink_name() for s in named.sinks] == ["kafka:acts", "acts-copy"]


def test_sinks_come_from_the_environment_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SMARTICO_STREAM_SINKS", f'[{{"type": "jsonl", "path": "{tmp_path / "a.jsonl"}"}}]')
    [sink] = load_settings(environ={}).sinks
    assert isinstance(sink, JsonlSinkSettings) and sink.path == tmp_path / "a.jsonl"
    monkeypatch.setenv("SMARTICO_STREAM_SINKS", '[{"type": "webhook"}]')
    with pytest.raises(ConfigError, match=r"sinks\.0\.webhook\.url: Field required"):
        load_settings(environ={})


_FIELD_NAMES = sorted({name for model in SINK_TYPES.values() for name in model.model_fields} - {"type"})
# Keys as a config file can hold them: anything but line breaks (a problem is one line of the error).
_KEYS = st.text(st.characters(exclude_characters="\n"), max_size=8)
_SCALARS = st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12)
_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=6,
)
_TYPES = st.sampled_from([*SINK_TYPES, "s3", "", "JSONL"]) | _SCALARS


@st.composite
def _entries(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(_VALUES)  # not even a mapping
    entry = draw(st.dictionaries(st.sampled_from(_FIELD_NAMES) | _KEYS, _VALUES, max_size=5))
    entry.pop("type", None)
    if draw(st.booleans()) or not entry:
        entry["type"] = draw(_TYPES)
    return entry


@given(st.lists(_entries(), min_size=1, max_size=4))
@hypothesis_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_sinks_value_is_accepted_or_refused_with_every_problem_located(entries: list[Any]) -> None:
    """Whatever the entries, load_settings returns settings of the entries' types or raises
    ConfigError (never another exception), and each problem line names an entry by its index,
    with the tag in the path when the tag is a known type; an entry with a missing or unknown type
    is reported at its ``type``, and an unknown key of a known type at that key."""
    try:
        loaded = load_settings(sinks=entries, environ={})
    except ConfigError as exc:
        lines = str(exc).split("\n")[1:]
        assert lines
        for line in lines:
            match = re.match(r"  sinks\.(\d+)((?:\..*?)?): \S", line)  # keys may hold ": " too
            assert match, line
            index = int(match.group(1))
            entry = entries[index]
            kind = entry.get("type") if isinstance(entry, dict) else None
            if isinstance(kind, str) and kind in SINK_TYPES:
                assert (match.group(2) or "").startswith(f".{kind}."), line
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            kind = entry.get("type")
            if not (isinstance(kind, str) and kind in SINK_TYPES):
                assert any(line.startswith(f"  sinks.{index}.type: ") for line in lines), lines
                continue
            for key in entry:
                if key not in SINK_TYPES[kind].model_fields:
                    assert f"  sinks.{index}.{kind}.{key}: Extra inputs are not permitted" in lines, lines
    else:
        assert [sink.type for sink in loaded.sinks] == [entry["type"] for entry in entries]


def test_docs_sink_settings_tables_are_generated_from_the_models() -> None:
    doc = REPO / "docs" / "sinks.md"
    text = doc.read_text()
    assert render(text) == text, "docs/sinks.md is out of date: run python -m smartico_stream.sinks.docs"
    for kind, model in SINK_TYPES.items():
        assert settings_table(model) in text, kind
        for name, field in model.model_fields.items():
            assert field.description, f"{kind}.{name} has no description"


def test_config_example_shows_every_sink_setting_with_its_default() -> None:
    """deploy/config.example.yaml shows each sink type commented out, every setting at its default
    (the webhook's url, which has none, aside)."""
    lines = (REPO / "deploy" / "config.example.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("sinks:"))
    block = []
    for line in lines[start + 1 :]:
        if not line.startswith("  # "):
            break
        block.append(line[4:])
    entries = yaml.safe_load("\n".join(line for line in block if line.startswith(("- ", "   "))))
    assert [entry["type"] for entry in entries] == list(SINK_TYPES)
    for entry in entries:
        model = SINK_TYPES[entry["type"]]
        shown = parse_sink_settings(entry)
        assert set(entry) == set(model.model_fields) - {"name"}, entry["type"]
        for name, field in model.model_fields.items():
            if name not in ("type", "name") and not field.is_required():
                assert getattr(shown, name) == field.get_default(call_default_factory=True), (entry["type"], name)


# -- smartico-stream run with bad sinks: exit 2, every problem, no traceback ---------------------------


def _run_cli(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "run", "--config", str(config)], capture_output=True, text=True, timeout=60, cwd=config.parent,
        env={k: v for k, v in os.environ.items() if not k.startswith("SMARTICO_STREAM_")},
    )


def test_run_refuses_a_webhook_with_an_unknown_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("sinks: [{type: webhook, timeout: 5}]\n")
    done = _run_cli(config)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"{config}: invalid configuration",
        "  sinks.0.webhook.url: Field required",
        "  sinks.0.webhook.timeout: Extra inputs are not permitted",
    ]


def test_run_lists_every_problem_of_every_sink(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "dedup: {window_seconds: 0}\n"  # a problem elsewhere is listed with them
        "sinks:\n"
        "  - {type: webhook, timeout: 5}\n"
        "  - {type: s3, bucket: b}\n"
        "  - {path: actions.jsonl}\n"
        "  - {type: kafka, topic: acts, config: {linger.ms: 5, acks: 1}}\n"
        "  - {type: rabbitmq, routing_key_template: '{params}', timeout_s: fast}\n"
        "  - {type: jsonl, path: a.jsonl, fsync: 'yes'}\n"
    )
    done = _run_cli(config)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == f"{config}: invalid configuration"
    expected = [
        "  dedup.window_seconds: Input should be greater than 0",
        "  sinks.0.webhook.url: Field required",
        "  sinks.0.webhook.timeout: Extra inputs are not permitted",
        f"  sinks.1.type: unknown sink type 's3'; one of {SINK_TYPE_NAMES}",
        f"  sinks.2.type: Field required: the sink type, one of {SINK_TYPE_NAMES}",
        "  sinks.3.kafka.config.bootstrap.servers: required: a given config replaces the source's connection settings",
        "  sinks.3.kafka.config.acks: must be 'all' for an action sink",
        "  sinks.4.rabbitmq.routing_key_template: unknown field 'params'; use action, brand, event_id, event_type, "
        "rule_id, user",
        "  sinks.4.rabbitmq.timeout_s: Input should be a valid number",
        "  sinks.5.jsonl.fsync: Input should be a valid boolean",
    ]
    assert sorted(lines[1:]) == sorted(expected)


def test_run_reports_a_producer_setting_librdkafka_refuses(tmp_path: Path) -> None:
    """Validation cannot know librdkafka's settings; the sink is built before anything is consumed,
    and its refusal is reported like any other configuration problem."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"store: {{url: 'sqlite:///{tmp_path / 'state.db'}'}}\n"
        f"pii: {{store_url: 'sqlite:///{tmp_path / 'pii.db'}'}}\n"
        "metrics: {enabled: false}\n"
        "sinks:\n"
        f"  - {{type: jsonl, path: {tmp_path / 'a.jsonl'}}}\n"
        "  - {type: kafka, config: {bootstrap.servers: '127.0.0.1:1', linger.mss: 5}}\n"
    )
    done = _run_cli(config)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{config}: invalid configuration\n  sinks.1.kafka.config: " in done.stderr
    assert 'No such configuration property: "linger.mss"' in done.stderr
