"""Exactly-once effects (invariant 4) on the real RabbitMQ, with the real service as a subprocess
(``smartico-stream run --config``, ``source: rabbitmq``, the demo rules, a JSONL sink).

The input is the crash tests' deterministic reference-format workload (profiles, deposits, casino
bets, exact duplicates right after their original, malformed records; tests/crash.py), published
to the payments and casino consistent-hash exchanges (routing key = user id, a unique message id).
Its rounds keep each user's deposits ahead of its bets across the two streams. After every scenario
the store's outbox equals ``smartico-stream simulate``'s actions exactly (same multiset of action
ids, same bytes), every user's state equals simulate's, and the JSONL sink delivered exactly the
outbox's ids.

- SIGKILL mid-batch (failpoints before_store_commit / after_store_commit), then a restart: the
  broker redelivers the unacked messages; those already in the store (handled ids) are acked only.
- Broker restart (``rabbitmqctl stop_app`` / ``start_app``) while the service runs and messages are
  being published (publisher confirms, repeated on connection errors): the service recovers by
  itself, loses nothing, doubles nothing.
- Standby takeover: two service processes on PostgreSQL; the active one (the one the broker
  delivers to, read from its metrics) is SIGKILLed mid-stream; the standby continues, in order.
- Connection drops move queues between two in-process instances and back: nothing lost, nothing
  doubled, every user in order.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from smartico_stream.service import Service
from smartico_stream.store.postgres import PostgresStore
from smartico_stream.store.sqlite import SqliteStore
from tests.support import crash
from tests.support import rabbitmq as rabbit
from tests.support.crash import Processes, ServiceProcess
from tests.support.postgres import PgSchema
from tests.support.rabbitmq import InProcess, LoopThread, Msg, Publisher, StoreReader, Topology, sample

pytestmark = pytest.mark.rabbitmq  # shares the local broker (tests/fixtures/rabbitmq.py)

SINK = "jsonl"
ROUND_TIMEOUT_S = 30.0
ACKS = "smartico_stream_rabbitmq_acks_total"
DELIVERIES = "smartico_stream_rabbitmq_deliveries_total"
RECOVERIES = "smartico_stream_rabbitmq_connection_recoveries_total"
CONNECTED = "smartico_stream_rabbitmq_connected"


@pytest.fixture
def topology(rabbitmq: str) -> Iterator[Topology]:
    topo = Topology(rabbit.unique_prefix("crash"), streams=("payments", "casino"), queues_per_stream=4)
    try:
        yield topo
    finally:
        if not rabbit.broker_answers():  # a broker-restart test failed half-way: restore the broker
            rabbit.rabbitmqctl("start_app", check=False)
            rabbit.wait_broker_answers(timeout_s=60)
        rabbit.delete_topology(topo)


class Scenario:
    """One topology, one store, service subprocesses, the workload, a publisher."""

    def __init__(self, tmp: Path, topology: Topology, store_url: str, schema: str | None, reader: StoreReader,
                 workload: crash.Workload, batch_size: int = 25) -> None:
        self.tmp = tmp
        self.topology = topology
        self.store_url = store_url
        self.schema = schema
        self.reader = reader
        self.workload = workload
        self.batch_size = batch_size
        self.rounds = rabbit.workload_messages(workload, topology, topology.prefix)
        self.processes = Processes()
        self.loop = LoopThread("publisher")
        self.publisher = Publisher(name=f"{topology.prefix}-publisher")
        self.published = 0
        self.kills: list[tuple[str, int]] = []

    # services ---------------------------------------------------------------------------------------

    def start(self, instance: str, failpoints: str | None = None, attempt: int = 0) -> ServiceProcess:
        config = rabbit.write_config(
            self.tmp / f"{instance}.yaml", self.topology, store_url=self.store_url, store_schema=self.schema,
            sink_path=self.tmp / f"actions-{instance}.jsonl", instance_id=instance, batch_size=self.batch_size,
        )
        return self.processes.start(config, self.log_path(instance, attempt), failpoints, name=f"{instance}#{attempt}")

    def log_path(self, instance: str, attempt: int) -> Path:
        return self.tmp / f"{instance}-{attempt}.log"

    def wait_consuming(self, proc: ServiceProcess, log: Path, timeout_s: float = 20.0) -> None:
        crash.wait_until(lambda: any(r.get("event") == "consuming" for r in rabbit.log_records(log)),
                            f"{proc.name} to consume", timeout_s, alive=[proc])

    def metrics(self, proc: ServiceProcess, log: Path) -> dict[Any, float]:
        return rabbit.scrape(rabbit.metrics_port(log, alive=proc.alive))

    # publishing and waiting -------------------------------------------------------------------------

    def publish(self, msgs: list[Msg], in_order_with_retries: bool = False) -> None:
        if in_order_with_retries:
            self.loop.call(self.publisher.publish_in_order(msgs, deadline_s=60), timeout_s=120)
        else:
            self.loop.call(self.publisher.publish_many(msgs), timeout_s=60)
        self.published += len(msgs)

    def stored_everything(self) -> bool:
        return self.reader.handled_count() >= self.published

    def diagnose(self) -> str:
        alive = [f"{p.name}: {'alive' if p.alive() else p.returncode}" for p in self.processes.started]
        try:
            states = rabbit.run_sync(rabbit.queue_states(self.topology.queues()), timeout_s=20)
            consumers = rabbit.consumers_by_queue(self.topology.prefix)
            unacked = rabbit.unacked_by_queue(self.topology.prefix)
        except Exception as exc:  # noqa: BLE001 - a diagnosis must not raise
            states, consumers, unacked = f"unavailable: {exc}", {}, {}
        tails = "\n".join(f"--- {p.name} log tail ---\n{p.log_tail(1500)}" for p in self.processes.started[-2:])
        return (f"published {self.published}, handled in the store {self.reader.handled_count()}\n"
                f"queues {states}\nunacknowledged {unacked}\nbroker consumers {consumers}\n"
                f"owners {self.reader.owners()}\n"
                f"processes {alive}\n{tails}")

    def wait(self, predicate: Callable[[], bool], what: str, running: dict[str, ServiceProcess],
             restart: Callable[[str, ServiceProcess], ServiceProcess] | None = None,
             timeout_s: float = ROUND_TIMEOUT_S) -> None:
        """Bounded wait; a member killed by its failpoint (SIGKILL) is restarted without failpoints;
        any other exit fails the test."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            for name, proc in list(running.items()):
                code = proc.returncode
                if code is None:
                    continue
                self.kills.append((proc.name, code))
                assert code == -9, f"{proc.name} exited with {code}, not by its failpoint; log:\n{proc.log_tail()}"
                assert proc.failpoints and restart is not None, f"{proc.name} died without a failpoint set"
                running[name] = restart(name, proc)
            assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}\n{self.diagnose()}"
            time.sleep(0.05)

    def queues_empty(self) -> None:
        states = rabbit.run_sync(rabbit.queue_states(self.topology.queues()))
        assert all(s.ready == 0 for s in states.values()), f"messages left in the queues: {states}"

    def check(self, context: str = "") -> None:
        assert self.reader.undelivered(SINK) == 0
        rabbit.check_against_simulate(self.tmp, self.workload, self.reader, context)

    def close(self) -> None:
        self.processes.kill_all()
        try:
            self.loop.call(self.publisher.close(), timeout_s=15)
        finally:
            self.loop.close()


@pytest.fixture
def sqlite_scenario(tmp_path: Path, topology: Topology) -> Iterator[Scenario]:
    db = tmp_path / "state.db"
    reader = StoreReader(SqliteStore(db))
    s = Scenario(tmp_path, topology, f"sqlite:///{db}", None, reader, crash.make_workload((30, 30, 30, 30)))
    try:
        yield s
    finally:
        s.close()
        reader.close()


@pytest.fixture
def postgres_scenario(tmp_path: Path, topology: Topology, postgres_schema: PgSchema) -> Iterator[Scenario]:
    dsn, schema = postgres_schema.dsn, postgres_schema.schema
    reader = StoreReader(PostgresStore(dsn, schema=schema))  # migrated before any service starts
    s = Scenario(tmp_path, topology, dsn, schema, reader, crash.make_workload((30, 30, 30, 30)))
    try:
        yield s
    finally:
        s.close()
        reader.close()


# -- SIGKILL mid-batch, one member, SQLite ---------------------------------------------------------


@pytest.mark.parametrize("failpoint", ["before_store_commit=12", "after_store_commit=12"])
def test_a_sigkill_mid_batch_then_a_restart_neither_loses_nor_repeats_an_effect(
    sqlite_scenario: Scenario, failpoint: str
) -> None:
    s = sqlite_scenario
    running = {"main": s.start("main", failpoint)}
    s.wait_consuming(running["main"], s.log_path("main", 0))

    def restart(name: str, dead: ServiceProcess) -> ServiceProcess:
        return s.start(name, None, attempt=1)

    for n, round_ in enumerate(s.rounds):
        s.publish(round_)
        s.wait(s.stored_everything, f"round {n} in the store", running, restart)
    s.wait(lambda: s.reader.undelivered(SINK) == 0, "the outbox delivered", running, restart)
    assert s.kills == [("main#0", -9)], f"the failpoint {failpoint} must have killed the first process once"

    # What the restarted process saw: the killed batch came back (flagged redelivered). After the
    # store commit, it was acked without being applied again.
    after = s.metrics(running["main"], s.log_path("main", 1))
    redelivered_handled = rabbit.pick(after, ACKS, kind="redelivered_handled")
    if failpoint.startswith("after_store_commit"):
        assert redelivered_handled > 0, "the committed, unacked batch must come back and be skipped"
    else:
        assert rabbit.pick(after, DELIVERIES) > 0
    assert running["main"].terminate(30) == 0, running["main"].log_tail()
    s.queues_empty()
    s.check(f"kills {s.kills}, redelivered_handled {redelivered_handled}")


# -- broker restart, one member, SQLite ------------------------------------------------------------


@pytest.mark.rabbitmq_restart
def test_a_broker_restart_mid_stream_is_survived_without_loss_or_repeat(sqlite_scenario: Scenario) -> None:
    s = sqlite_scenario
    running = {"main": s.start("main")}
    log = s.log_path("main", 0)
    s.wait_consuming(running["main"], log)

    # The broker goes down in the middle of round 2, between two confirmed publishes, and comes
    # back 1.5 s later; the publisher keeps trying (same message, same id) until it is confirmed.
    threshold = sum(len(r) for r in s.rounds[:2]) + len(s.rounds[2]) // 2
    stopped, restarted = threading.Event(), threading.Event()

    def bring_back() -> None:
        try:
            rabbit.rabbitmqctl("start_app", check=False)
            rabbit.rabbitmqctl("await_startup", check=False)
        finally:
            restarted.set()

    def on_published(count: int) -> None:
        if count == threshold and not stopped.is_set():
            rabbit.rabbitmqctl("stop_app")
            stopped.set()
            threading.Timer(1.5, bring_back).start()

    s.publisher.on_published = on_published
    try:
        for n, round_ in enumerate(s.rounds):
            s.publish(round_, in_order_with_retries=True)
            if stopped.is_set():
                assert restarted.wait(60), "start_app did not return"
                rabbit.wait_broker_answers(timeout_s=60)
                _wait_recovered(s, running, log)
            s.wait(s.stored_everything, f"round {n} in the store", running)
    finally:
        if stopped.is_set():
            restarted.wait(60)
        if not rabbit.broker_answers():
            rabbit.rabbitmqctl("start_app", check=False)
            rabbit.wait_broker_answers(timeout_s=60)
    assert stopped.is_set() and restarted.is_set(), "the broker must have been restarted mid-stream"
    assert s.publisher.retries > 0, "the publisher must have met the outage"
    s.wait(lambda: s.reader.undelivered(SINK) == 0, "the outbox delivered", running)

    metrics = s.metrics(running["main"], log)
    assert rabbit.pick(metrics, RECOVERIES) >= 1
    assert rabbit.pick(metrics, CONNECTED) == 1
    assert running["main"].terminate(30) == 0, running["main"].log_tail()
    s.queues_empty()
    s.check(f"publisher retries {s.publisher.retries}")


def _wait_recovered(s: Scenario, running: dict[str, ServiceProcess], log: Path) -> None:
    """After the restart the service must reconnect AND consume again: a reconnected connection with
    no consumer on any queue is a silent stall (messages pile up, lag grows, nothing is handled)."""
    deadline = time.monotonic() + 12
    while True:
        proc = running["main"]
        assert proc.alive(), f"the service died after the broker restart:\n{proc.log_tail()}"
        metrics = s.metrics(proc, log)
        consumers = rabbit.consumers_by_queue(s.topology.prefix)
        recovered = rabbit.pick(metrics, RECOVERIES) >= 1 and rabbit.pick(metrics, CONNECTED) == 1
        if recovered and set(consumers) == set(s.topology.queues()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                "after the broker restart the service reports itself recovered "
                f"(connection_recoveries_total={rabbit.pick(metrics, RECOVERIES)}, "
                f"connected={rabbit.pick(metrics, CONNECTED)}) but the broker lists consumers on "
                f"{len(consumers)} of its {len(s.topology.queues())} queues ({consumers}): it no longer "
                f"consumes, and published messages pile up\n{s.diagnose()}"
            )
        time.sleep(0.2)


# -- standby takeover, two members, PostgreSQL -----------------------------------------------------


def test_sigkill_of_the_active_member_lets_the_standby_continue_in_order(postgres_scenario: Scenario) -> None:
    s = postgres_scenario
    running = {"A": s.start("A")}
    s.wait_consuming(running["A"], s.log_path("A", 0))
    running["B"] = s.start("B")
    s.wait_consuming(running["B"], s.log_path("B", 0))
    queues = s.topology.queues()
    crash.wait_until(
        lambda: all(sorted(rabbit.consumers_by_queue(s.topology.prefix).get(q, [])) == ["single_active", "waiting"]
                    for q in queues),
        "an active and a waiting consumer on every queue", 15, alive=list(running.values()),
    )

    s.publish(s.rounds[0])
    s.wait(s.stored_everything, "round 0 in the store", running)
    # Which member is active: the one the broker delivers to (its deliveries counter moves).
    delivered = {name: rabbit.pick(s.metrics(proc, s.log_path(name, 0)), DELIVERIES)
                 for name, proc in running.items()}
    active = max(delivered, key=lambda name: delivered[name])
    standby = "B" if active == "A" else "A"
    assert delivered[active] > 0 and delivered[standby] == 0, f"one active member per queue set: {delivered}"

    # Mid-stream: as soon as the active member is working on a round, it is frozen (SIGSTOP, so it
    # cannot finish the round meanwhile) and, if messages of the round are still unhandled, SIGKILLed.
    handled_at_kill: int | None = None
    for n, round_ in enumerate(s.rounds[1:], start=1):
        start = s.reader.handled_count()
        s.publish(round_)
        if handled_at_kill is None:
            crash.wait_until(lambda start=start: s.reader.handled_count() >= start + 20,
                                f"{active} to be working on round {n}", 20, alive=[running[active]])
            running[active].freeze()
            if s.reader.handled_count() < s.published:
                handled_at_kill = s.reader.handled_count()
                killed = running.pop(active)
                killed.kill()
                assert killed.returncode == -9
            else:
                running[active].thaw()  # it was too quick: try again in the next round
        s.wait(s.stored_everything, f"round {n} in the store", running)
    assert handled_at_kill is not None, "the active member must have been killed mid-round"
    assert active not in running
    s.wait(lambda: s.reader.undelivered(SINK) == 0, "the outbox delivered", running)

    after = s.metrics(running[standby], s.log_path(standby, 0))
    assert rabbit.pick(after, DELIVERIES) > 0, "the standby took over"
    owners = s.reader.owners()
    assert owners and set(owners.values()) == {standby}, owners
    assert running[standby].terminate(30) == 0, running[standby].log_tail()
    s.queues_empty()
    s.check(f"killed {active} at {handled_at_kill} handled messages")


# -- connection drops hand queues over and back, in-process ----------------------------------------


def test_connection_drops_move_queues_between_members_and_back_without_loss_or_reordering(
    topology: Topology, postgres_schema: PgSchema
) -> None:
    """A's connection is cut by the broker (a network blip): B, the standby, takes every queue over.
    A reconnects by itself and is a standby again. Then B's connection is cut: A takes the queues
    back. Through it all each user's deposits are applied in publish order, once."""
    dsn, schema = postgres_schema.dsn, postgres_schema.schema
    rabbit.run_sync(_migrate(dsn, schema))
    store = {"url": dsn, "db_schema": schema}
    topo = Topology(topology.prefix, streams=("payments",), queues_per_stream=4)
    queues = topo.queues()
    users = [f"drop-u{i:02d}" for i in range(24)]
    steps: list[str] = []
    handled: list[str] = []
    committed: list[Any] = []
    services: dict[str, Service] = {}

    def applied() -> int:
        return sum(service.stats.events_applied for service in services.values() if service is not None)

    # The real rule engine, one action per deposit: what is checked is what the store committed
    # (a fenced attempt is rolled back and redone, so pre-commit observations would show repeats).
    rules_file = Path(tempfile.mkdtemp(prefix="rmq-drop-")) / "rules.yaml"
    rules_file.write_text(
        "- {id: every-deposit, name: one action per deposit, trigger: {event: deposit},\n"
        "   actions: [{action: give_points, amount: 1}]}\n"
    )

    def settings(name: str) -> Any:
        return rabbit.settings_for(topo, store, instance_id=name, engine={"rules": str(rules_file)}, rabbitmq={
            "batch_size": 10, "prefetch": 50,
            "connection": {"client_properties": {"connection_name": f"{topo.prefix}-{name}"},
                           "reconnect_interval": 0.5},
        })

    def part(seqs: range) -> list[Msg]:
        return [Msg(topo.exchange("payments"), u, orjson.dumps(rabbit.deposit(u, seq)), f"dep-{u}-{seq}")
                for seq in seqs for u in users]

    def both_registered() -> bool:
        found = rabbit.consumers_by_queue(topo.prefix)
        return all(sorted(found.get(q, [])) == ["single_active", "waiting"] for q in queues)

    async def scenario() -> None:
        run = InProcess()
        publisher = Publisher(name=f"{topo.prefix}-publisher")
        try:
            a = services["A"] = run.start("A", Service(settings("A")))
            await run.joined("A")
            b = services["B"] = run.start("B", Service(settings("B")))
            await run.joined("B")
            await run.wait(both_registered, "A active and B waiting on every queue", 15)

            await publisher.publish_many(part(range(5)))
            await run.wait(lambda: applied() >= 5 * len(users), "part 1 applied", 20)
            steps.append("part 1 applied")

            assert rabbit.close_connections_named(f"{topo.prefix}-A") == 1
            await publisher.publish_many(part(range(5, 10)))
            await run.wait(lambda: applied() >= 10 * len(users), "part 2 applied (by B)", 20,
                           diagnose=lambda: f"applied {applied()}; consumers {rabbit.consumers_by_queue(topo.prefix)}")
            steps.append("part 2 applied")

            await run.wait(
                both_registered, "A, reconnected, to register again as the standby of every queue", 8,
                diagnose=lambda: (
                    f"A: connection_recoveries_total={sample(a, RECOVERIES)}, connected={sample(a, CONNECTED)}; "
                    f"the broker lists {rabbit.consumers_by_queue(topo.prefix)}: A reconnected without "
                    "restoring its consumers"),
            )
            steps.append("A standby again")

            assert rabbit.close_connections_named(f"{topo.prefix}-B") == 1
            await publisher.publish_many(part(range(10, 15)))
            await run.wait(lambda: applied() >= 15 * len(users), "part 3 applied (by A again)", 20,
                           diagnose=lambda: f"applied {applied()}; A {a.stats}; B {b.stats}")
            await asyncio.sleep(0.5)  # a late double would show up now
            steps.append("part 3 applied")
            # The recording engine sees events before the store commit: what counts is what the
            # store committed as handled.
            async with a.store.connection() as conn:
                handled.extend(row[0] for row in await conn.fetch("SELECT message_key FROM handled_messages"))
            committed.extend(await a.store.all_actions())
        finally:
            await run.stop_all()
            await publisher.close()

    asyncio.run(scenario())

    published = {f"id:{m.message_id}" for m in part(range(15))}
    not_committed = published - set(handled)
    assert not not_committed, (
        f"{len(not_committed)} messages were acked but their batch was never committed to the store "
        f"(e.g. {sorted(not_committed)[:5]}): their effects are lost; steps {steps}"
    )

    # Committed effects, in outbox (commit) order: every deposit's action exactly once, per user in
    # publish order.
    seen: dict[str, list[str]] = defaultdict(list)
    for action in committed:
        seen[action.user].append(action.event_id)
    wrong = {u: ids for u, ids in seen.items() if ids != [f"dep-{u}-{seq}" for seq in range(15)]}
    assert not wrong and set(seen) == set(users), (
        f"{len(wrong)} users lost, doubled or reordered effects, e.g. {next(iter(wrong.items()), None)}; steps {steps}"
    )


async def _migrate(dsn: str, schema: str) -> None:
    store = PostgresStore(dsn, schema=schema)
    await store.open()
    await store.close()
