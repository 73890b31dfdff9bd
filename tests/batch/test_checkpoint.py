"""The checkpoint's steps and their order, without a broker: a real SQLite store and rules, and a
transport that records what it is asked and checks, at each call, what the store holds.

- dead letters are published before anything of the batch is committed;
- the store commit comes before the transport is told the batch is handled, and observers hear
  ``committed`` last;
- a record the engine fails on becomes a dead letter and the batch is redone without it (REDO);
- a batch whose partition another member took is not committed (fenced) and the transport decides;
- with the service stopping while dead letters are unacknowledged, nothing is committed (LEFT).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import orjson
import pytest
import pytest_asyncio

from smartico_stream.batch.checkpoint import Checkpoint, CheckpointEnv, Handled, Outcome, Progress
from smartico_stream.batch.observer import BaseObserver, BatchReport, Observers
from smartico_stream.batch.ownership import Ownership
from smartico_stream.batch.states import StateCache
from smartico_stream.config import DedupSettings
from smartico_stream.engine.evaluator import RuleEngine
from smartico_stream.engine.rules import load_rules
from smartico_stream.events.models import CanonicalEvent
from smartico_stream.events.raw import PartitionId, RawRecord, Stream
from smartico_stream.pipeline.errors import DeadLetter
from smartico_stream.pipeline.pipeline import DEAD_LETTERED, OK, Pipeline, PipelineLimits
from smartico_stream.sinks.dead_letters import DeadLetterDeliveryError
from smartico_stream.store.base import FencedError, Store
from smartico_stream.store.sqlite import SqliteStore
from smartico_stream_adapters.reference import ReferenceAdapter
from tests.support.common import BASE_MS

pytestmark = pytest.mark.asyncio

TOPIC = "payments"
BRAND = "b1"
RULES = """
rules:
  - id: points
    name: 1 point per 10 EUR
    trigger: {event: deposit}
    accumulation: {field: event.amount, step: 10}
    actions:
      - {action: give_points, amount: 1}
"""


def deposit(offset: int, user: str, amount: str = "20") -> RawRecord:
    value = {"type": "deposit", "dt_finalized": BASE_MS + offset, "ext_brand_id": BRAND, "user_ext_id": user,
             "transaction_id": f"tx-{offset}", "amount": amount, "currency": "EUR"}
    return RawRecord("kafka", TOPIC, 0, offset, user.encode(), orjson.dumps(value), timestamp_ms=BASE_MS + offset)


class Recorder(BaseObserver):
    def __init__(self, steps: list[str]) -> None:
        self.steps = steps
        self.reports: list[BatchReport] = []
        self.retries: list[str] = []

    def dead_lettered(self, letters: Sequence[DeadLetter]) -> None:
        self.steps.append(f"observer.dead_lettered:{len(letters)}")

    def retried(self, reason: str) -> None:
        self.retries.append(reason)

    def committed(self, report: BatchReport) -> None:
        self.steps.append("observer.committed")
        self.reports.append(report)


class CheckingTransport:
    """Records each call, and what the store held for the batch's partition at that moment."""

    def __init__(self, store: Store, ownership: Ownership, steps: list[str]) -> None:
        self.store = store
        self.ownership = ownership
        self.steps = steps
        self.dead_letter_failures = 0
        self.leave_when_fenced = True

    async def _committed(self) -> bool:
        return bool(await self.store.load_users([(BRAND, "u1")]))

    async def claim(self, records: Sequence[RawRecord]) -> None:
        self.steps.append("claim")
        await self.ownership.claim_unowned(records)

    async def already_handled(self, records: Sequence[RawRecord], store: Store) -> list[RawRecord]:
        self.steps.append("already_handled")
        return []

    def progress(self, records: Sequence[RawRecord], next_offsets: Mapping[PartitionId, int]) -> Progress:
        self.steps.append("progress")
        return Progress(offsets=dict(next_offsets))

    async def publish_dead_letters(self, letters: Sequence[DeadLetter], timeout_s: float) -> None:
        self.steps.append(f"publish_dead_letters:{len(letters)}:committed={await self._committed()}")
        if self.dead_letter_failures:
            self.dead_letter_failures -= 1
            raise DeadLetterDeliveryError("broker down")

    async def fenced(self, error: FencedError) -> bool:
        self.steps.append("fenced")
        return not self.leave_when_fenced

    async def handled(self, batch: Handled) -> bool:
        self.steps.append(f"handled:{dict(batch.next_offsets)}:committed={await self._committed()}")
        return True


class FailingOn:
    """The rule engine, except that it fails on one event id."""

    def __init__(self, rules: RuleEngine, event_id: str) -> None:
        self.rules = rules
        self.event_id = event_id

    def evaluate(self, state: object, event: CanonicalEvent, out: object) -> None:
        if event.event_id == self.event_id:
            raise ValueError("boom")
        self.rules.evaluate(state, event, out)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def setup(tmp_path: Path):
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES)
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    steps: list[str] = []
    states = StateCache(store, 100)
    ownership = Ownership(store, "me", DedupSettings(), lambda: 1_000.0, on_revoke=states.clear)
    transport = CheckingTransport(store, ownership, steps)
    recorder = Recorder(steps)
    pipeline = Pipeline(ReferenceAdapter(), {TOPIC: Stream.PAYMENTS}, ownership.window_for,
                        PipelineLimits(require_key=False))
    env = CheckpointEnv(pipeline=pipeline, store=store, states=states, ownership=ownership, transport=transport,
                        observer=Observers([recorder]), rules=RuleEngine(load_rules(rules_file)),
                        clock=lambda: 1_000.0, handled_retention_s=60, dead_letter_timeout_s=1)
    yield env, steps, recorder, transport, store
    await store.close()


async def test_steps_run_in_order_dead_letters_before_the_commit_and_the_ack_after(setup) -> None:
    env, steps, recorder, _, store = setup
    bad = RawRecord("kafka", TOPIC, 0, 2, b"u1", b"{not json", timestamp_ms=BASE_MS)
    checkpoint = Checkpoint(env, [deposit(1, "u1"), bad, deposit(3, "u1", "35")], asyncio.Event())

    assert await checkpoint.attempt() is Outcome.COMMITTED

    assert steps == [
        "claim",
        "already_handled",
        "observer.dead_lettered:1",
        "publish_dead_letters:1:committed=False",
        "progress",
        f"handled:{{('{TOPIC}', 0): 4}}:committed=True",
        "observer.committed",
    ]
    (report,) = recorder.reports
    assert report.result.count(OK) == 2 and report.result.count(DEAD_LETTERED) == 1
    assert sum(a.params["amount"] for _, a in report.actions) == 5  # 20 EUR: 2 points, then 35: 3
    assert set(report.stage_seconds) == {"adapt", "guard_dedup", "apply", "dead_letters", "write"}
    (state,) = (await store.load_users([(BRAND, "u1")])).values()
    assert state.points == 5
    lease = (await store.acquire([(TOPIC, 0)], "me", 0))[(TOPIC, 0)]
    assert lease.next_offset == 4


async def test_an_engine_failure_dead_letters_the_record_and_redoes_the_batch_without_it(setup) -> None:
    env, _, recorder, _, store = setup
    env.rules = FailingOn(env.rules, "tx-2")  # type: ignore[assignment]
    checkpoint = Checkpoint(env, [deposit(1, "u1"), deposit(2, "u1"), deposit(3, "u1")], asyncio.Event())

    assert await checkpoint.attempt() is Outcome.REDO
    assert recorder.retries == ["engine_error"]
    assert not await store.load_users([(BRAND, "u1")])  # nothing of the failed attempt was written
    assert await checkpoint.attempt() is Outcome.COMMITTED

    (report,) = recorder.reports
    (letter,) = report.result.dead_letters
    assert (letter.record.offset, letter.stage) == (2, "engine")
    (state,) = (await store.load_users([(BRAND, "u1")])).values()
    assert state.points == 4  # the failed attempt's changes to the cached state were forgotten


async def test_a_fenced_batch_is_not_committed_and_the_transport_decides(setup) -> None:
    env, steps, recorder, transport, store = setup
    checkpoint = Checkpoint(env, [deposit(1, "u1")], asyncio.Event())
    await transport.claim([deposit(1, "u1")])
    await store.acquire([(TOPIC, 0)], "another member", 0)  # takes the lease: a newer epoch

    assert await checkpoint.attempt() is Outcome.LEFT
    assert "fenced" in steps and recorder.retries == ["fenced"] and not recorder.reports
    assert not await store.load_users([(BRAND, "u1")])


async def test_stopping_with_dead_letters_unacknowledged_commits_nothing(setup) -> None:
    env, _, recorder, transport, store = setup
    transport.dead_letter_failures = 1_000
    stop = asyncio.Event()
    stop.set()
    bad = RawRecord("kafka", TOPIC, 0, 2, b"u1", b"{not json", timestamp_ms=BASE_MS)
    checkpoint = Checkpoint(env, [deposit(1, "u1"), bad], stop)

    assert await checkpoint.attempt() is Outcome.LEFT
    assert not recorder.reports
    assert not await store.load_users([(BRAND, "u1")])
