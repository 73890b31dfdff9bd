"""Invariants 3, 5 and 6 against the embedded Kafka: every kind of bad record is dead-lettered with
its original key and value, a clear PII-free reason and its source coordinates; its good neighbours
are applied; and the group's committed offsets reach the end of every partition (nothing stalls)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson
import pytest

from smartico_stream.pii.keys import KeyRing, generate_key_ring, key_ring_to_json
from smartico_stream.pii.payloads import reveal_dead_letter
from smartico_stream.service import Service

pytestmark = pytest.mark.kafka

BASE_MS = 1_700_000_000_000
FAR_FUTURE_MS = 32_485_190_400_000  # 2999-06-01
MAX_MESSAGE_BYTES = 2000
SINK_VALUE_LIMIT = 512 * 1024  # KafkaDeadLetterSink's default max_value_bytes
EMAIL = "jane.secret@example.test"
PHONE = "+49 170 5550123"
PHONE_DIGITS = "491705550123"
TOPICS = {"profile": "user_profile", "payments": "payments", "casino": "casino"}


def payment(user: str, tx: str, **changes: object) -> dict:
    message = {
        "dt_finalized": BASE_MS,
        "ext_brand_id": "b1",
        "user_ext_id": user,
        "transaction_id": tx,
        "type": "deposit",
        "amount": "10.50",
        "core_wallet_currency": "EUR",
    }
    message.update(changes)
    return message


def casino_bet(user: str, tx: str, **changes: object) -> dict:
    message = {
        "ext_brand_id": "b1",
        "user_ext_id": user,
        "transaction_id": tx,
        "type": "bet",
        "bet_date": BASE_MS,
        "bet_amount": "2.00",
        "game_name": "Sweet Bonanza",
        "game_id": "game-7",
    }
    message.update(changes)
    return message


def profile(user: str, **changes: object) -> dict:
    message = {
        "dt_update": BASE_MS,
        "ext_brand_id": "b1",
        "user_ext_id": user,
        "core_registration_date": BASE_MS - 86_400_000,
        "core_user_language": "EN",
        "core_wallet_currency": "EUR",
        "user_email": EMAIL,
        "user_phone": PHONE,
        "user_first_name": "Jane",
    }
    message.update(changes)
    return message


@dataclass(frozen=True)
class Bad:
    kind: str
    topic: str
    key: bytes | None
    value: bytes
    error_class: str


def bad_records() -> list[Bad]:
    truncated = orjson.dumps(payment("dl-u1", "bad-json"))
    invalid_utf8 = orjson.dumps(profile("dl-u2", user_first_name="Jo\u2400\u2400hn")).replace(
        "\u2400\u2400".encode(), b"\xff\xfe"
    )
    missing = payment("dl-u3", "bad-missing")
    del missing["amount"]
    return [
        Bad("invalid_json", "payments", b"dl-u1", truncated[: len(truncated) // 2], "DecodeError"),
        Bad("invalid_utf8", "user_profile", b"dl-u2", invalid_utf8, "DecodeError"),
        Bad("empty_value", "payments", b"dl-u1", b"", "DecodeError"),
        Bad("json_array", "casino", b"dl-u3", orjson.dumps([casino_bet("dl-u3", "bad-array")]), "NotAnObject"),
        Bad("json_string", "payments", b"dl-u3", b'"deposit"', "NotAnObject"),
        # The reference adapter reports an absent required field itself (MissingField, an AdapterError),
        # naming the field; a field of the wrong type is the canonical model's ValidationError.
        Bad("missing_field", "payments", b"dl-u3", orjson.dumps(missing), "MissingField"),
        Bad(
            "wrong_type", "casino", b"dl-u4",
            orjson.dumps(casino_bet("dl-u4", "bad-type", bet_amount={"value": "1.00", "currency": "EUR"})),
            "ValidationError",
        ),
        Bad("negative_amount", "payments", b"dl-u4", orjson.dumps(payment("dl-u4", "bad-neg", amount="-25.00")),
            "ValidationError"),
        Bad("negative_amount_number", "payments", b"dl-u4",
            orjson.dumps(payment("dl-u4", "bad-neg-2", amount=orjson.Fragment(b"-25.00"))), "ValidationError"),
        Bad("nan_amount", "payments", b"dl-u5", orjson.dumps(payment("dl-u5", "bad-nan", amount="NaN")),
            "ValidationError"),
        Bad("future_date", "user_profile", b"dl-u5",
            orjson.dumps(profile("dl-u5", core_registration_date=FAR_FUTURE_MS)), "ValidationError"),
        Bad("unknown_type", "payments", b"dl-u1",
            orjson.dumps(payment("dl-u1", "bad-type-2", type="chargeback_reversal")), "UnknownEventType"),
        Bad("over_limit", "payments", b"dl-u2",
            orjson.dumps(payment("dl-u2", "bad-big", debug_trace="x" * (MAX_MESSAGE_BYTES * 2))), "MessageTooLarge"),
        # Over the dead-letter sink's own value limit too: the letter carries a truncated value.
        Bad("over_sink_limit", "casino", b"dl-u2",
            orjson.dumps(casino_bet("dl-u2", "bad-huge", debug_trace="y" * (SINK_VALUE_LIMIT + 1000))),
            "MessageTooLarge"),
        Bad("null_key", "payments", None, orjson.dumps(payment("dl-u6", "bad-nokey")), "MissingKey"),
    ]


def send_good(p, topic: str, key: str, tag: str, when_ms: int):
    """A valid record for ``topic``; ``meta["ident"]`` is how its applied event is recognised."""
    if topic == "user_profile":
        value = orjson.dumps(profile(key, dt_update=when_ms))
        return p.send(topic, key, value, ident=("user_profile", key, when_ms))
    if topic == "casino":
        value = orjson.dumps(casino_bet(key, f"good-{tag}", bet_date=when_ms))
        return p.send(topic, key, value, ident=("casino_bet", key, when_ms))
    value = orjson.dumps(payment(key, f"good-{tag}", dt_finalized=when_ms))
    return p.send(topic, key, value, ident=("deposit", key, when_ms))


def ident(event) -> tuple[str, str, int]:
    """(type, user, event time in ms): identifies a good record's event whatever id the adapter gives it."""
    return (event.type, event.user_id, int(event.event_time.timestamp() * 1000))


def headers_of(message) -> dict[str, bytes]:
    return dict(message.headers() or [])


def test_every_bad_record_is_dead_lettered_with_its_reason_and_coordinates_and_nothing_stalls(
    make_settings, producer, recording_engine, run_service, broker, capfd, tmp_path
):
    p = producer()
    p.ensure_topics(*TOPICS.values())
    keys_file = tmp_path / "pii-keys.json"
    keys_file.write_bytes(key_ring_to_json(generate_key_ring("dl-1")))
    keys_file.chmod(0o600)
    ring = KeyRing.load(keys_file, None)
    settings = make_settings(
        topics={stream: [topic] for stream, topic in TOPICS.items()},
        limits={"max_message_bytes": MAX_MESSAGE_BYTES},
        kafka={"batch_size": 7},  # bad records land in many different batches, mid-batch and at edges
        pii={"keys_file": str(keys_file), "store_url": f"sqlite:///{tmp_path / 'pii.db'}"},
    )
    group = settings.kafka.config["group.id"]
    dead_letter_topic = settings.kafka.dead_letter_topic
    engine = recording_engine()
    service = Service(settings, engine=engine)

    # Each bad record sits between two good records of the same topic and key (so the same partition).
    good, bad = [], []
    users = [f"dl-u{i}" for i in range(1, 7)]
    for n, record in enumerate(bad_records()):
        key = (record.key or b"dl-u1").decode()
        good.append(send_good(p, record.topic, key, f"before-{n}", BASE_MS + 2 * n))
        bad.append((record, p.send(record.topic, record.key, record.value)))
        good.append(send_good(p, record.topic, key, f"after-{n}", BASE_MS + 2 * n + 1))
    for n, user in enumerate(users):  # and a tail of good records on every topic
        for topic in TOPICS.values():
            good.append(send_good(p, topic, user, f"tail-{n}", BASE_MS + 1000 + n))
    p.flush()
    total = len(good) + len(bad)

    async def scenario() -> None:
        async with run_service(service) as running:
            await running.wait_until(lambda: service.stats.consumed >= total, f"{total} records handled")

    asyncio.run(scenario())

    # The service's own verdict.
    assert service.stats.consumed == total
    assert service.stats.dead_lettered == len(bad)
    assert service.stats.processed == len(good)

    # Every good neighbour was applied, once.
    applied = sorted(ident(event) for event in engine.events)
    assert applied == sorted(g.meta["ident"] for g in good)

    # Every bad record is on the dead-letter topic: original key and value, reason, coordinates.
    letters = broker.read_all(dead_letter_topic, expected=len(bad))
    assert len(letters) == len(bad), f"expected {len(bad)} dead letters, found {len(letters)}"
    by_source = {}
    for letter in letters:
        h = headers_of(letter)
        source = (h["x-smartico-source-topic"].decode(), int(h["x-smartico-source-partition"]),
                  int(h["x-smartico-source-offset"]))
        assert source not in by_source, f"two dead letters for {source}"
        by_source[source] = letter
    for record, sent in bad:
        source = (sent.topic, sent.partition, sent.offset)
        assert source in by_source, f"{record.kind}: no dead letter for {source}"
        letter = by_source[source]
        h = headers_of(letter)
        assert letter.key() == record.key, record.kind
        # The payload travels encrypted with the PII key ring (docs/pii.md) and decrypts, for an
        # authorised operator, to the original bytes.
        if letter.value():
            assert h["x-smartico-payload-protection"].startswith(b"aes-256-gcm"), record.kind
            assert record.value[:64] not in letter.value() or not record.value[:64].strip(), record.kind
            original = reveal_dead_letter(ring, letter.value(), h)
        else:
            original = b""  # an empty value may come back as b"" or None (a Kafka null)
        if len(record.value) > SINK_VALUE_LIMIT:
            assert original == record.value[:SINK_VALUE_LIMIT], record.kind
            assert int(h["x-smartico-value-truncated-from-bytes"]) == len(record.value)
        else:
            assert original == record.value, record.kind
            assert "x-smartico-value-truncated-from-bytes" not in h
        assert h["x-smartico-error-class"].decode() == record.error_class, (record.kind, h)
        message = h["x-smartico-error-message"].decode("utf-8")
        assert message.strip() and message.isprintable(), (record.kind, message)
        assert h["x-smartico-source-transport"] == b"kafka"
        assert h["x-smartico-stage"] in (b"decode", b"adapt", b"engine")
        # No PII in any header of any letter.
        for name, value in h.items():
            text = value.decode("utf-8", "replace")
            assert EMAIL not in text and PHONE not in text and PHONE_DIGITS not in text, (record.kind, name, text)

    # A few reasons are specific enough to act on.
    reasons = {record.kind: headers_of(by_source[(s.topic, s.partition, s.offset)])["x-smartico-error-message"]
               .decode() for record, s in bad}
    assert "amount" in reasons["missing_field"]
    assert "amount" in reasons["negative_amount"] and "amount" in reasons["nan_amount"]
    assert "registration_date" in reasons["future_date"]
    assert "max_message_bytes" in reasons["over_limit"]
    # The reason names the field, never the value (a type may carry anything, personal data included).
    assert "unknown 'type'" in reasons["unknown_type"] and "chargeback_reversal" not in reasons["unknown_type"]

    # Nothing stalled: the group committed every partition up to its high watermark.
    offsets = broker.offsets(group, TOPICS.values())
    stalled = {tp: o for tp, o in offsets.items() if not o.drained}
    assert not stalled, f"partitions not committed to their end: {stalled}"
    assert sum(o.high for o in offsets.values()) == total

    # Logs (structlog and librdkafka, stdout and stderr) never carry the PII of the bad profile.
    out, err = capfd.readouterr()
    for stream_text in (out, err):
        assert EMAIL not in stream_text and PHONE not in stream_text
