"""Action sinks against real local endpoints: files, an HTTP server on 127.0.0.1, the embedded Kafka
(librdkafka's mock cluster) and the local RabbitMQ broker. Nothing in the transport is mocked.

Async code runs with ``asyncio.run`` inside sync tests, like the other integration tests. Every wait
is bounded (socket timeouts, ``asyncio.timeout``, deadline loops)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
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

from smartico_stream.demo.embedded_kafka import EmbeddedKafka
from smartico_stream.engine.actions import Action, ActionKind, action_id
from smartico_stream.sinks.action_sinks import (
    ActionSink,
    JsonlSink,
    KafkaActionSink,
    RabbitMqActionSink,
    SinkError,
    WebhookSink,
    build_sink,
    idempotency_key,
)

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
        action_id=action_id(brand, event_id, "rule-7", 1, 0),
        rule_id="rule-7",
        action=kind,
        params={"points": Decimal("12.50"), "n": n} if params is None else params,
        brand=brand,
        user=user,
        event_id=event_id,
        event_type="deposit",
        event_time=EVENT_TIME,
        execution=1,
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
    with pytest.raises(ValueError, match="max_batch_actions must be >= 1"):
        build_sink({"type": "webhook", "url": "http://127.0.0.1:9/", "batch": True, "max_batch_actions": 0})


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
    with pytest.raises(ValueError, match="no.such.setting"):
        build_sink(
            {"type": "kafka", "topic": "t", "config": {"bootstrap.servers": "127.0.0.1:1", "no.such.setting": 1}}
        )


def test_kafka_sink_refuses_to_disable_idempotence() -> None:
    with pytest.raises(ValueError, match="enable.idempotence"):
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
        sink = build_sink({"type": "rabbitmq", "url": rabbitmq_url, "exchange": "", "routing_key_template": queue_name})
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


# -- build_sink -------------------------------------------------------------------------------------


def test_build_sink_jsonl(tmp_path: Path) -> None:
    sink = build_sink({"type": "jsonl", "path": str(tmp_path / "a.jsonl"), "fsync": False})
    assert isinstance(sink, JsonlSink) and isinstance(sink, ActionSink)
    assert sink.path == tmp_path / "a.jsonl" and sink.fsync is False
    deliver(sink, [make_action(1)])
    assert (tmp_path / "a.jsonl").read_bytes() == make_action(1).to_json() + b"\n"


def test_build_sink_webhook(http_server: ScriptedHttpServer) -> None:
    sink = build_sink(
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
    assert isinstance(sink, WebhookSink)
    assert (sink.name, sink.max_attempts, sink.batch, sink.max_batch_actions, sink.timeout_s) == (
        "crm", 2, True, 100, 10.0
    )
    deliver(sink, make_actions(2))
    assert http_server.requests[0].headers["x-api-key"] == "k"


def test_build_sink_kafka_uses_the_source_connection_unless_config_is_given() -> None:
    connection = {"bootstrap.servers": "127.0.0.1:1", "security.protocol": "plaintext", "client.id": "src"}
    sink = build_sink({"type": "kafka", "topic": "actions"}, kafka_connection=connection)
    assert isinstance(sink, KafkaActionSink)
    assert sink.topic == "actions"
    assert {k: sink.producer_config[k] for k in connection} == connection

    own = build_sink(
        {"type": "kafka", "topic": "actions", "config": {"bootstrap.servers": "127.0.0.1:2", "linger.ms": 50}},
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


def test_build_sink_rabbitmq() -> None:
    sink = build_sink(
        {
            "type": "rabbitmq",
            "url": "amqp://guest:guest@127.0.0.1:5672/",
            "exchange": "actions",
            "routing_key_template": "{brand}.{action}",
            "exchange_type": "direct",
            "declare": False,
        }
    )
    assert isinstance(sink, RabbitMqActionSink)
    assert (sink.exchange, sink.exchange_type, sink.declare) == ("actions", "direct", False)
    assert sink.routing_key(make_action(1)) == "acme.give_points"
    assert "guest" not in sink.name


@pytest.mark.parametrize(
    ("spec", "kafka_connection", "message"),
    [
        ({"path": "a.jsonl"}, None, r"sink\.type: missing"),
        ({"type": "s3", "path": "a"}, None, r"sink\.type: unknown sink type 's3'"),
        ({"type": "jsonl"}, None, r"sink\.path: required"),
        ({"type": "jsonl", "path": "a", "pth": "b"}, None, r"sink\.pth: unknown key"),
        ({"type": "jsonl", "path": "a", "fsync": "yes"}, None, r"sink\.fsync: expected bool"),
        ({"type": "webhook"}, None, r"sink\.url: required"),
        ({"type": "webhook", "url": "ftp://x/"}, None, r"sink\.url: scheme"),
        ({"type": "webhook", "url": "http://x/", "max_attempts": "5"}, None, r"sink\.max_attempts: expected int"),
        ({"type": "webhook", "url": "http://x/", "max_attempts": True}, None, r"sink\.max_attempts: expected int"),
        ({"type": "webhook", "url": "http://x/", "headers": {"A": 1}}, None, r"sink\.headers\.A"),
        ({"type": "kafka", "config": {"bootstrap.servers": "x:1"}}, None, r"sink\.topic: required"),
        ({"type": "kafka", "topic": "t"}, None, r"sink\.config: required"),
        ({"type": "kafka", "topic": "t", "config": {"linger.ms": 5}}, None, r"sink\.config\.bootstrap\.servers"),
        (
            {"type": "kafka", "topic": "t", "config": {"bootstrap.servers": "x:1", "acks": "1"}},
            None,
            r"sink\.config: acks",
        ),
        ({"type": "rabbitmq", "url": "amqp://127.0.0.1/"}, None, r"sink\.exchange: required"),
        ({"type": "rabbitmq", "exchange": "e"}, None, r"sink\.url: required"),
        (
            {"type": "rabbitmq", "url": "amqp://127.0.0.1/", "exchange": "e", "routing_key_template": "{x}"},
            None,
            r"sink\.routing_key_template: unknown field 'x'",
        ),
    ],
)
def test_build_sink_errors_name_the_field(
    spec: dict[str, Any], kafka_connection: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_sink(spec, kafka_connection)
