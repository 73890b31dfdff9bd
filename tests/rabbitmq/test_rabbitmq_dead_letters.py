"""Invariants 3, 5 and 6 on the real RabbitMQ: every kind of poison message (invalid JSON, not an
object, a missing or invalid field, a negative amount, an unknown type, over
``limits.max_message_bytes``, no routing key) is published to the dead-letter exchange with the same
``x-smartico-*`` headers as a Kafka dead letter (error class, message, stage, source transport,
source topic = the queue, partition 0, offset = the delivery tag), its payload encrypted, its
original headers and routing key kept, and is then acknowledged. Its good neighbours (same user,
so same queue, just before and after it) are applied once, in order. Every queue ends empty: nothing
ready, nothing unacknowledged.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest

from smartico_stream.events.raw import RawRecord
from smartico_stream.pii.keys import KeyRing, generate_key_ring, key_ring_to_json
from smartico_stream.pii.payloads import reveal_dead_letter
from smartico_stream.pipeline.errors import DeadLetter
from smartico_stream.service import Service
from smartico_stream.sinks.dead_letters import DeadLetterDeliveryError, RabbitMqDeadLetterSink
from tests.support import rabbitmq as rabbit
from tests.support.rabbitmq import InProcess, Msg, Publisher, Topology, sample
from tests.support.service import RecordingEngine

pytestmark = pytest.mark.rabbitmq  # shares the local broker (tests/fixtures/rabbitmq.py)

BASE_MS = rabbit.BASE_MS
FAR_FUTURE_MS = 32_485_190_400_000  # 2999-06-01
MAX_MESSAGE_BYTES = 2000
SINK_VALUE_LIMIT = 512 * 1024  # RabbitMqDeadLetterSink's default max_value_bytes
EMAIL = "jane.secret@example.test"
PHONE = "+49 170 5550123"
PHONE_DIGITS = "491705550123"
STREAMS = ("profile", "payments", "casino")


def payment(user: str, tx: str, **changes: object) -> dict:
    message = {"dt_finalized": BASE_MS, "ext_brand_id": "b1", "user_ext_id": user, "transaction_id": tx,
               "type": "deposit", "amount": "10.50", "core_wallet_currency": "EUR"}
    message.update(changes)
    return message


def casino_bet(user: str, tx: str, **changes: object) -> dict:
    message = {"ext_brand_id": "b1", "user_ext_id": user, "transaction_id": tx, "type": "bet",
               "bet_date": BASE_MS, "bet_amount": "2.00", "game_name": "Sweet Bonanza", "game_id": "game-7"}
    message.update(changes)
    return message


def profile(user: str, **changes: object) -> dict:
    message = {"dt_update": BASE_MS, "ext_brand_id": "b1", "user_ext_id": user,
               "core_registration_date": BASE_MS - 86_400_000, "core_user_language": "EN",
               "core_wallet_currency": "EUR", "user_email": EMAIL, "user_phone": PHONE, "user_first_name": "Jane"}
    message.update(changes)
    return message


@dataclass(frozen=True)
class Bad:
    kind: str
    stream: str
    key: str  # the routing key ("" = none)
    value: bytes
    error_class: str


def bad_messages() -> list[Bad]:
    truncated = orjson.dumps(payment("dl-u1", "bad-json"))
    invalid_utf8 = orjson.dumps(profile("dl-u2", user_first_name="Jo\u2400\u2400hn")).replace(
        "\u2400\u2400".encode(), b"\xff\xfe"
    )
    missing = payment("dl-u3", "bad-missing")
    del missing["amount"]
    return [
        Bad("invalid_json", "payments", "dl-u1", truncated[: len(truncated) // 2], "DecodeError"),
        Bad("invalid_utf8", "profile", "dl-u2", invalid_utf8, "DecodeError"),
        Bad("empty_body", "payments", "dl-u1", b"", "DecodeError"),
        Bad("json_array", "casino", "dl-u3", orjson.dumps([casino_bet("dl-u3", "bad-array")]), "NotAnObject"),
        Bad("json_string", "payments", "dl-u3", b'"deposit"', "NotAnObject"),
        Bad("missing_field", "payments", "dl-u3", orjson.dumps(missing), "MissingField"),
        Bad("wrong_type", "casino", "dl-u4",
            orjson.dumps(casino_bet("dl-u4", "bad-type", bet_amount={"value": "1.00", "currency": "EUR"})),
            "ValidationError"),
        Bad("negative_amount", "payments", "dl-u4", orjson.dumps(payment("dl-u4", "bad-neg", amount="-25.00")),
            "ValidationError"),
        Bad("negative_amount_number", "payments", "dl-u4",
            orjson.dumps(payment("dl-u4", "bad-neg-2", amount=orjson.Fragment(b"-25.00"))), "ValidationError"),
        Bad("nan_amount", "payments", "dl-u5", orjson.dumps(payment("dl-u5", "bad-nan", amount="NaN")),
            "ValidationError"),
        Bad("future_date", "profile", "dl-u5", orjson.dumps(profile("dl-u5", core_registration_date=FAR_FUTURE_MS)),
            "ValidationError"),
        Bad("unknown_type", "payments", "dl-u1",
            orjson.dumps(payment("dl-u1", "bad-type-2", type="chargeback_reversal")), "UnknownEventType"),
        Bad("over_limit", "payments", "dl-u2",
            orjson.dumps(payment("dl-u2", "bad-big", debug_trace="x" * (MAX_MESSAGE_BYTES * 2))), "MessageTooLarge"),
        Bad("over_sink_limit", "casino", "dl-u2",
            orjson.dumps(casino_bet("dl-u2", "bad-huge", debug_trace="y" * (SINK_VALUE_LIMIT + 1000))),
            "MessageTooLarge"),
        # AMQP has no null key: an empty routing key is the "no key" of invariant 3.
        Bad("no_routing_key", "payments", "", orjson.dumps(payment("dl-u6", "bad-nokey")), "MissingKey"),
    ]


def good(stream: str, user: str, tag: str, when_ms: int) -> tuple[bytes, tuple[str, str, int]]:
    """A valid message for ``stream`` and how its applied event is recognised."""
    if stream == "profile":
        return orjson.dumps(profile(user, dt_update=when_ms)), ("user_profile", user, when_ms)
    if stream == "casino":
        return orjson.dumps(casino_bet(user, f"good-{tag}", bet_date=when_ms)), ("casino_bet", user, when_ms)
    return orjson.dumps(payment(user, f"good-{tag}", dt_finalized=when_ms)), ("deposit", user, when_ms)


def ident(event: Any) -> tuple[str, str, int]:
    return (event.type, event.user_id, int(event.event_time.timestamp() * 1000))


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@pytest.fixture
def topology(rabbitmq: str) -> Iterator[Topology]:
    topo = Topology(rabbit.unique_prefix("dl"), streams=STREAMS, queues_per_stream=2)
    try:
        yield topo
    finally:
        rabbit.delete_topology(topo)


def test_every_poison_message_is_dead_lettered_with_kafka_headers_acked_and_nothing_stalls(
    topology: Topology, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "pii-keys.json"
    keys_file.write_bytes(key_ring_to_json(generate_key_ring("dl-1")))
    keys_file.chmod(0o600)
    ring = KeyRing.load(keys_file, None)
    settings = rabbit.settings_for(
        topology, {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        rabbitmq={"batch_size": 7},  # poison lands mid-batch and at batch edges
        limits={"max_message_bytes": MAX_MESSAGE_BYTES},
        pii={"keys_file": str(keys_file), "store_url": f"sqlite:///{tmp_path / 'pii.db'}"},
    )
    engine = RecordingEngine()
    service = Service(settings, engine=engine)

    # Each poison message sits between two good messages of the same stream and user (so the same queue).
    msgs: list[Msg] = []
    goods: list[tuple[str, tuple[str, str, int]]] = []  # (message id, identity of its event)
    bads: list[tuple[Bad, str]] = []
    around: dict[str, tuple[str, str]] = {}  # bad message id -> (good before, good after)
    for n, record in enumerate(bad_messages()):
        user = record.key or "dl-u1"
        body, who = good(record.stream, user, f"before-{n}", BASE_MS + 2 * n)
        msgs.append(Msg(topology.exchange(record.stream), user, body, f"good-{n}-a"))
        goods.append((f"good-{n}-a", who))
        msgs.append(Msg(topology.exchange(record.stream), record.key, record.value, f"bad-{n}",
                        headers={"x-operator-trace": f"trace-{n}"}))
        bads.append((record, f"bad-{n}"))
        body, who = good(record.stream, user, f"after-{n}", BASE_MS + 2 * n + 1)
        msgs.append(Msg(topology.exchange(record.stream), user, body, f"good-{n}-b"))
        goods.append((f"good-{n}-b", who))
        around[f"bad-{n}"] = (f"good-{n}-a", f"good-{n}-b")
    for n, user in enumerate(f"dl-u{i}" for i in range(1, 7)):  # and a tail of good messages everywhere
        for stream in STREAMS:
            body, who = good(stream, user, f"tail-{n}", BASE_MS + 1000 + n)
            msgs.append(Msg(topology.exchange(stream), user, body, f"tail-{stream}-{n}"))
            goods.append((f"tail-{stream}-{n}", who))
    total = len(msgs)
    queues = topology.queues()
    unacked_while_running: dict[str, int] = {}
    states_after: dict[str, Any] = {}
    letters: list[Any] = []

    async def scenario() -> None:
        run = InProcess()
        publisher = Publisher(name=f"{topology.prefix}-publisher")
        try:
            run.start("main", service)
            await run.joined("main")
            await publisher.publish_in_order(msgs)  # one at a time: the good neighbours stay around
            await run.wait(lambda: service.stats.consumed >= total, f"{total} messages handled", 30,
                           diagnose=lambda: str(service.stats))
            # Acked, not only handled: the broker holds nothing unacknowledged on any queue.
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                counts = rabbit.unacked_by_queue(topology.prefix)
                unacked_while_running.update({q: counts[q] for q in queues if q in counts})
                if not any(unacked_while_running.values()) or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.2)
        finally:
            await run.stop_all()
            await publisher.close()
        # With the service gone, anything it had not acked would be back in its queue.
        states_after.update(await rabbit.queue_states(queues))
        letters.extend(await rabbit.drain_queue(topology.dead_letter_exchange, expected=len(bads)))

    asyncio.run(scenario())

    assert service.stats.consumed == total
    assert service.stats.dead_lettered == len(bads)
    assert service.stats.processed == len(goods)

    # Every good neighbour was applied, once.
    assert sorted(ident(e) for e in engine.events) == sorted(who for _, who in goods)
    coordinates = {ident(entry.event): entry.coordinates for entry in engine.applied}
    by_id = {mid: coordinates[who] for mid, who in goods}  # message id -> (queue, 0, delivery tag)

    # Every poison message has exactly one dead letter, carrying the Kafka dead letters' headers.
    assert len(letters) == len(bads), f"expected {len(bads)} dead letters, found {len(letters)}"
    by_source: dict[tuple[str, int], Any] = {}
    for letter in letters:
        h = {k: text(v) for k, v in (letter.headers or {}).items()}
        source = (h["x-smartico-source-topic"], int(h["x-smartico-source-offset"]))
        assert source not in by_source, f"two dead letters for {source}"
        by_source[source] = letter
    found: dict[str, Any] = {}
    for record, mid in bads:
        before, after = around[mid]
        queue, _, tag_before = by_id[before]
        _, _, tag_after = by_id[after]
        trace = f"trace-{mid[4:]}"
        matches = [(src, letter) for src, letter in by_source.items()
                   if (letter.headers or {}).get("x-operator-trace") in (trace, trace.encode())]
        assert len(matches) == 1, f"{record.kind}: {len(matches)} dead letters carry its original header"
        (letter_queue, tag), letter = matches[0]
        found[record.kind] = letter
        h = {k: text(v) for k, v in (letter.headers or {}).items()}
        # Where it came from: the queue (topic), partition 0, the delivery tag (offset), between the
        # tags of its neighbours, which were delivered just before and after it on the same queue.
        if record.key:
            assert letter_queue == queue, (record.kind, letter_queue, queue)
            assert tag_before < tag < tag_after, (record.kind, tag_before, tag, tag_after)
        else:
            assert letter_queue in queues, (record.kind, letter_queue)
        assert h["x-smartico-source-partition"] == "0"
        assert h["x-smartico-source-transport"] == "rabbitmq"
        assert letter.routing_key == letter_queue, "dead letters are routed by their source queue"
        assert h["x-smartico-error-class"] == record.error_class, (record.kind, h)
        message = h["x-smartico-error-message"]
        assert message.strip() and message.isprintable(), (record.kind, message)
        assert h["x-smartico-stage"] in ("decode", "adapt", "engine"), (record.kind, h)
        assert int(h["x-smartico-failed-at-ms"]) > BASE_MS
        # The payload travels encrypted with the PII key ring and decrypts to the original bytes.
        body = letter.body
        assert h["x-smartico-payload-protection"].startswith("aes-256-gcm"), record.kind
        if record.value:
            assert record.value[:64] not in body, record.kind
        original = reveal_dead_letter(ring, body, {k: v.encode() for k, v in h.items()})
        if len(record.value) > SINK_VALUE_LIMIT:
            assert original == record.value[:SINK_VALUE_LIMIT], record.kind
            assert int(h["x-smartico-value-truncated-from-bytes"]) == len(record.value)
        else:
            assert original == record.value, record.kind
            assert "x-smartico-value-truncated-from-bytes" not in h
        # No PII in any header.
        for name, value in h.items():
            assert EMAIL not in value and PHONE not in value and PHONE_DIGITS not in value, (record.kind, name)

    # Reasons specific enough to act on.
    reason = {kind: text(letter.headers["x-smartico-error-message"]) for kind, letter in found.items()}
    assert "amount" in reason["missing_field"]
    assert "amount" in reason["negative_amount"] and "amount" in reason["nan_amount"]
    assert "registration_date" in reason["future_date"]
    assert "max_message_bytes" in reason["over_limit"]
    # The reason names the field, never the value (a type may carry anything, personal data included).
    assert "unknown 'type'" in reason["unknown_type"] and "chargeback_reversal" not in reason["unknown_type"]

    # Acked: the broker held nothing unacknowledged, and with the service gone nothing came back.
    assert set(unacked_while_running) == set(queues) and not any(unacked_while_running.values()), unacked_while_running
    assert all(s.ready == 0 for s in states_after.values()), states_after

    # Metrics: every delivery counted, acks by kind.
    deliveries = rabbit.sample_sum(service, "smartico_stream_rabbitmq_deliveries_total", "queue", queues)
    assert deliveries == total
    acks = defaultdict(float)
    for q in queues:
        for kind in ("ok", "dead_lettered", "redelivered_handled"):
            acks[kind] += sample(service, "smartico_stream_rabbitmq_acks_total", queue=q, kind=kind)
    assert dict(acks) == {"ok": len(goods), "dead_lettered": len(bads), "redelivered_handled": 0}

    # Logs never carry the PII of the bad profiles.
    out, err = capfd.readouterr()
    for stream_text in (out, err):
        assert EMAIL not in stream_text and PHONE not in stream_text


def test_a_dead_letter_keeps_the_original_routing_key(topology: Topology, tmp_path: Path) -> None:
    """A Kafka dead letter keeps the record's key (the user id); on RabbitMQ the letter's routing key
    is the source queue (that is how the topic exchange sorts letters), so the original routing key
    must travel in a header, or an operator cannot tell whose message it was nor replay it to the
    stream's exchange (with redacted payloads, the user id is then lost entirely)."""
    settings = rabbit.settings_for(topology, {"url": f"sqlite:///{tmp_path / 'state.db'}"},
                                      pii={"dead_letters": "redact"})
    service = Service(settings, engine=RecordingEngine())
    bad = Msg(topology.exchange("payments"), "dl-user-42", b"{not json", "operator-msg-7")
    letters: list[Any] = []

    async def scenario() -> None:
        run = InProcess()
        publisher = Publisher(name=f"{topology.prefix}-publisher")
        try:
            run.start("main", service)
            await run.joined("main")
            await publisher.publish_in_order([bad])
            await run.wait(lambda: service.stats.dead_lettered >= 1, "the dead letter", 20)
        finally:
            await run.stop_all()
            await publisher.close()
        letters.extend(await rabbit.drain_queue(topology.dead_letter_exchange, expected=1))

    asyncio.run(scenario())
    assert len(letters) == 1
    letter = letters[0]
    h = {k: text(v) for k, v in (letter.headers or {}).items()}
    assert h["x-smartico-error-class"] == "DecodeError"
    assert letter.body == b"", "redact: no payload"
    assert "dl-user-42" in h.values(), (
        f"the original routing key (the user id) is nowhere in the dead letter: routing key {letter.routing_key!r}, "
        f"headers {h}"
    )
    # The letter's message id is the service's handled-message key of the original: "id:<message id>".
    assert letter.message_id in ("operator-msg-7", "id:operator-msg-7"), letter.message_id


def _letter(offset: int, queue: str = "src.0") -> DeadLetter:
    record = RawRecord(transport="rabbitmq", topic=queue, partition=0, offset=offset, key=f"u{offset}".encode(),
                       value=b"{not json %d" % offset, message_id=f"m{offset}")
    return DeadLetter(record=record, stage="decode", error_class="DecodeError", message="not JSON")


def test_a_batch_of_letters_arrives_in_order_and_one_unroutable_letter_fails_the_publish(rabbitmq: str) -> None:
    """A batch's letters arrive in the batch's order, each confirmed; a letter the broker cannot route
    fails the publish (so the batch is retried, never committed past it), and the sink goes on
    publishing on a new channel."""
    name = rabbit.unique_prefix("dls")
    got: list[Any] = []
    after_failure: list[Any] = []

    async def scenario() -> None:
        connection = await aio_pika.connect(rabbitmq, timeout=10)
        channel = await connection.channel()
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        await queue.bind(exchange, routing_key="src.*")
        sink = RabbitMqDeadLetterSink(lambda: connection.channel(publisher_confirms=True, on_return_raises=True), name)
        try:
            await sink.publish([_letter(n) for n in range(60)])
            got.extend(await rabbit.drain_queue(name, expected=60, url=rabbitmq))
            with pytest.raises(DeadLetterDeliveryError, match="not confirmed"):
                await sink.publish([_letter(100), _letter(101, queue="nowhere"), _letter(102)])
            await sink.publish([_letter(103)])  # on a new channel: the sink recovers
            after_failure.extend(await rabbit.drain_queue(name, expected=2, url=rabbitmq))
        finally:
            await sink.close()
            await queue.delete(if_unused=False, if_empty=False)
            await exchange.delete()
            await connection.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [m.message_id for m in got] == [f"m{n}" for n in range(60)]
    assert [text(m.headers["x-smartico-source-offset"]) for m in got] == [str(n) for n in range(60)]
    # Letters of the failed publish before the unroutable one are delivered (at least once: the
    # retried batch publishes them again); the unroutable one never is.
    ids = [m.message_id for m in after_failure]
    assert ids[0] == "m100" and ids[-1] == "m103" and "m101" not in ids, ids
