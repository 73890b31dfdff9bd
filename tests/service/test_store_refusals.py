"""Invariant 3 at the store, through the real service, the embedded Kafka and the real databases: a
record whose content the store refuses (found by bisecting the batch with dry-run writes) becomes a
dead letter with stage ``store``; its neighbours' actions are committed, the offsets move past it,
and the service keeps running (docs/exactly-once.md, "Records the store refuses").

The refused contents are ones that pass the pipeline's own checks because an adapter, after its
validated mapping, adds them (any third-party adapter can):

- ``bigint``: an integer beyond 64 bits in a custom profile field (``extra``, kept in the user's
  state), which the state's JSON cannot hold: refused on both stores, when the row is encoded.
- ``nul``: a NUL character in the user id, which PostgreSQL's text type refuses (SQLite stores it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest

from smartico_stream.adapters.base import RecordContext, canonical_events
from smartico_stream.adapters.registry import load_adapter
from smartico_stream.engine.rules import load_rules
from smartico_stream.events.models import CanonicalEvent
from smartico_stream.service import Service
from smartico_stream.store import BatchWrite
from smartico_stream.store.base import RowEncodingError
from smartico_stream.store.sqlite import SqliteStore

pytestmark = pytest.mark.kafka

BASE_MS = 1_700_000_000_000
BIG = 2**70
RULES = """
rules:
  - id: deposit-points
    name: a point per deposit
    trigger: {event: deposit}
    actions:
      - {action: give_points, amount: 1}
"""


class PoisoningAdapter:
    """The reference mapping; a record with ``test_poison`` gets, after validation, a content the
    store refuses."""

    name = "poisoning"

    def __init__(self) -> None:
        self._inner = load_adapter("reference")

    def adapt(self, message: Mapping[str, Any], context: RecordContext) -> Sequence[CanonicalEvent]:
        poison = message.get("test_poison")
        # Validated records (as the pipeline would make them), poisoned after validation.
        events = canonical_events(self._inner, {k: v for k, v in message.items() if k != "test_poison"}, context)
        for event in events:
            if poison == "bigint":
                event.extra["lucky_number"] = BIG  # e.g. an adapter reading numeric strings as integers
            elif poison == "nul":
                event.user_id = event.user_id + "\x00tail"
        return events


def profile(user: str, when_ms: int, poison: str | None = None) -> bytes:
    message: dict[str, Any] = {
        "dt_update": when_ms, "ext_brand_id": "b1", "user_ext_id": user,
        "core_registration_date": BASE_MS - 86_400_000, "core_user_language": "EN", "core_wallet_currency": "EUR",
        "vip_tier": "gold",
    }
    if poison:
        message["test_poison"] = poison
    return orjson.dumps(message)


def deposit(user: str, tx: str, when_ms: int, poison: str | None = None) -> bytes:
    message: dict[str, Any] = {
        "dt_finalized": when_ms, "ext_brand_id": "b1", "user_ext_id": user, "transaction_id": tx,
        "type": "deposit", "amount": "25.00", "core_wallet_currency": "EUR",
    }
    if poison:
        message["test_poison"] = poison
    return orjson.dumps(message)


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_a_record_the_store_refuses_is_dead_lettered_and_its_neighbours_are_committed(
    store_kind, make_settings, producer, broker, run_service, request, tmp_path
):
    poisons = ["bigint"] + (["nul"] if store_kind == "postgres" else [])
    store: dict[str, Any] = {}
    if store_kind == "postgres":
        schema = request.getfixturevalue("postgres_schema")
        store = {"url": schema.dsn, "db_schema": schema.schema}
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES)
    topics = {"profile": ["user_profile"], "payments": ["payments"]}
    settings = make_settings(topics=topics, **({"store": store} if store else {}))
    group = settings.kafka.config["group.id"]
    service = Service(settings, adapter=PoisoningAdapter(), rules=load_rules(rules_file))

    p = producer()
    p.ensure_topics("user_profile", "payments")
    good: list[str] = []
    bad: list[tuple[str, Any]] = []
    n = 0
    for round_ in range(3):
        n += 1
        p.send("user_profile", "u3", profile("u3", BASE_MS + n))
        for user in ("u1", "u2", "u3", "u4", "u5"):
            n += 1
            tx = f"tx-{n}"
            p.send("payments", user, deposit(user, tx, BASE_MS + n))
            good.append(tx)
        if round_ < len(poisons):  # poison between good records of the same users (the same partitions)
            kind = poisons[round_]
            n += 1
            if kind == "bigint":
                bad.append((kind, p.send("user_profile", "u3", profile("u3", BASE_MS + n, kind))))
            else:
                bad.append((kind, p.send("payments", "u2", deposit("u2", f"poison-{kind}", BASE_MS + n, kind))))
    p.flush()
    profiles = 3
    total = profiles + len(good) + len(bad)

    async def scenario() -> tuple[list[Any], list[Any]]:
        async with run_service(service) as running:
            await running.wait_until(lambda: service.stats.consumed >= total, f"{total} records handled")
            assert not running.task.done(), "the service stopped"
            return await service.store.all_actions(), await service.store.all_users()

    actions, users = asyncio.run(scenario())

    # Every valid deposit's action is committed, once; none of a refused record.
    assert sorted(a.event_id for a in actions) == sorted(good)
    assert service.stats.dead_lettered == len(bad)
    assert service.stats.processed == profiles + len(good)
    u3 = next(u for u in users if u.user == "u3")
    assert u3.custom == {"vip_tier": "gold"} and u3.deposit_count == 3
    assert sorted(u.user for u in users) == ["u1", "u2", "u3", "u4", "u5"]
    retries = service.metrics.registry.get_sample_value("smartico_stream_batch_retries_total",
                                                        {"reason": "store_content"})
    assert retries is not None and retries >= 1

    # The refused records are on the dead-letter topic, stage "store", with a reason that quotes nothing.
    letters = broker.read_all(settings.kafka.dead_letter_topic, expected=len(bad))
    by_source = {}
    for letter in letters:
        h = dict(letter.headers() or [])
        by_source[(h["x-smartico-source-topic"].decode(), int(h["x-smartico-source-partition"]),
                   int(h["x-smartico-source-offset"]))] = h
    assert len(by_source) == len(bad)
    for kind, sent in bad:
        h = by_source[(sent.topic, sent.partition, sent.offset)]
        assert h["x-smartico-stage"] == b"store", kind
        assert h["x-smartico-error-class"] == b"StoreRefused", kind
        message = h["x-smartico-error-message"].decode()
        assert message.isprintable() and str(BIG) not in message and "tail" not in message, (kind, message)
        if kind == "bigint":
            assert "users.state" in message and "64-bit" in message, message
        else:
            assert "PostgreSQL refused" in message and "SQLSTATE 22021" in message, message

    # Nothing stalled: committed to the end of every partition.
    offsets = broker.offsets(group, ["user_profile", "payments"])
    assert all(o.drained for o in offsets.values()), offsets
    assert sum(o.high for o in offsets.values()) == total


class BatchLimitedStore(SqliteStore):
    """A real SQLite store that, like a database with a per-transaction limit, refuses any batch
    touching two users or more, while each user alone is fine: a refusal no single record explains."""

    async def _write(self, conn: Any, batch: BatchWrite) -> None:
        if len(batch.users) >= 2:
            raise RowEncodingError("users.state: this store takes one user per batch")
        await super()._write(conn, batch)


def test_a_refusal_no_single_record_explains_stops_the_service_loudly(
    make_settings, producer, run_service, tmp_path
):
    settings = make_settings(topics={"payments": ["payments"]})
    store = BatchLimitedStore(tmp_path / "limited.db")
    service = Service(settings, store=store)
    p = producer()
    p.ensure_topics("payments")
    for n in range(20):  # one key: one partition, so batches hold several users
        p.send("payments", "same-key", deposit(f"user-{n}", f"tx-{n}", BASE_MS + n))
    p.flush()

    async def scenario() -> None:
        async with run_service(service) as running:
            await running.wait_until(lambda: False, "the service to stop", timeout_s=60)

    with pytest.raises(RuntimeError, match="no single record explains it") as stopped:
        asyncio.run(scenario())
    assert "one user per batch" in str(stopped.value) and "user-" not in str(stopped.value)
    assert stopped.value.__cause__ is None  # nothing chained that could quote a value

    async def stored() -> list[Any]:
        reopened = SqliteStore(tmp_path / "limited.db")
        await reopened.open()
        try:
            return await reopened.all_users()
        finally:
            await reopened.close()

    assert len(asyncio.run(stored())) <= 1  # at most a first one-user batch; nothing after the refusal
