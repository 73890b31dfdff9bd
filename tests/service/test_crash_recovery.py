"""Exactly-once effects (invariant 4) with the real service as a subprocess, killed by SIGKILL at
chosen instants and restarted.

The input is deterministic reference-format data (profiles, deposits, casino bets, exact duplicates
right after their original, malformed records) produced to an embedded Kafka. The same records, in
the same order, go through ``smartico-stream simulate``. After the crash and the restart, the
store's outbox holds exactly simulate's actions (same set, same multiset: nothing lost, nothing
doubled), every user's state (points, tags, level, aggregates, rule progress) equals simulate's, and
the JSONL sink (at-least-once, so repeats are allowed) delivered exactly the outbox's set of ids.

With two members on PostgreSQL, partitions move while records flow: B joins (A's partitions are
split), A is SIGKILLed by its failpoint (B takes everything over from the store), A restarts (and
gets partitions back), then B is frozen with SIGSTOP (a zombie: A takes its partitions over) and
thawed, so that its late writes meet the store's fencing.

Two topics are used: the reference adapter maps a ``"type": "user_profile"`` message on any stream,
but casino bets only on a topic configured as the casino stream (on the payments stream they are
dead letters). Per-user order across the two topics is made deterministic by producing in rounds: a
user's bets are produced only once its deposits are in the store (see ``crash.Workload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from smartico_stream.store.postgres import PostgresStore
from smartico_stream.store.sqlite import SqliteStore
from tests.support import common, crash
from tests.support.crash import CASINO_TOPIC, PAY_TOPIC, Processes, ServiceProcess, Workload, wait_until
from tests.support.postgres import PgSchema

pytestmark = pytest.mark.kafka

SINK_NAME = "jsonl"
ROUND_TIMEOUT_S = 45.0  # includes a restart and, with two members, a session timeout (3 s)


# -- reading the store from the test process --------------------------------------------------------


class StoreReader:
    """The service's store, opened in the test process on an event loop of its own (the test body is
    synchronous; the services are other processes)."""

    def __init__(self, store: SqliteStore | PostgresStore) -> None:
        self.store = store
        self._loop = asyncio.new_event_loop()
        self._run(store.open())

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async def go() -> list[tuple[Any, ...]]:
            async with self.store.connection() as conn:
                return await conn.fetch(sql, *args)

        return self._run(go())

    def offsets(self) -> dict[tuple[str, int], int]:
        return {(t, int(p)): int(o) for t, p, o in self.fetch("SELECT topic, part, next_offset FROM source_offsets")}

    def undelivered(self, sink: str) -> int:
        """Actions past the sink's cursor, over every partition."""
        return int(self.fetch(
            "SELECT COALESCE(SUM(CASE WHEN c.last_seq IS NULL OR o.seq > c.last_seq THEN o.actions "
            "WHEN o.seq = c.last_seq THEN o.actions - c.next_index ELSE 0 END), 0) FROM outbox o "
            "LEFT JOIN sink_cursors c ON c.sink = ? AND c.topic = o.topic AND c.part = o.part",
            sink,
        )[0][0])

    def owners(self) -> dict[tuple[str, int], str]:
        return {(t, int(p)): o for t, p, o in self.fetch("SELECT topic, part, owner FROM partition_leases")}

    def all_actions(self) -> list[Any]:
        return self._run(self.store.all_actions())

    def all_users(self) -> list[Any]:
        return self._run(self.store.all_users())

    def close(self) -> None:
        try:
            self._run(self.store.close())
        finally:
            self._loop.close()


# -- the scenario -----------------------------------------------------------------------------------


class Scenario:
    """One embedded cluster, one consumer group, one store, service processes, the workload."""

    def __init__(self, tmp: Path, bootstrap: str, make_producer: Callable[..., Any], processes: Processes,
                 store_url: str, schema: str | None, reader: StoreReader, workload: Workload,
                 batch_size: int) -> None:
        self.batch_size = batch_size
        self.tmp = tmp
        self.bootstrap = bootstrap
        self.group = f"crash-{uuid.uuid4().hex[:8]}"
        self.store_url = store_url
        self.schema = schema
        self.reader = reader
        self.workload = workload
        self.processes = processes
        self.producer = make_producer()
        self.producer.ensure_topics(PAY_TOPIC, CASINO_TOPIC)
        self.kills: list[tuple[str, int]] = []  # (process name, return code) of every death seen

    def config(self, instance: str) -> Path:
        return crash.write_config(
            self.tmp / f"{instance}.yaml",
            bootstrap=self.bootstrap,
            group=self.group,
            store_url=self.store_url,
            store_schema=self.schema,
            sink_path=self.sink_path(instance),
            instance_id=instance,
            batch_size=self.batch_size,
        )

    def sink_path(self, instance: str) -> Path:
        return self.tmp / f"actions-{instance}.jsonl"

    def start(self, instance: str, failpoints: str | None = None, attempt: int = 0) -> ServiceProcess:
        return self.processes.start(self.config(instance), self.log_path(instance, attempt), failpoints,
                                    name=f"{instance}#{attempt}")

    def log_path(self, instance: str, attempt: int) -> Path:
        return self.tmp / f"{instance}-{attempt}.log"

    def log_records(self, instance: str, attempt: int) -> list[dict[str, Any]]:
        """Every JSON log line of one process."""
        records = []
        for line in self.log_path(instance, attempt).read_bytes().splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    # producing and waiting ------------------------------------------------------------------------

    def produce(self, records: list[crash.Rec]) -> None:
        for rec in records:
            self.producer.send(rec.topic, rec.key, rec.value)
        self.producer.flush(30)

    def expected_offsets(self) -> dict[tuple[str, int], int]:
        ends: dict[tuple[str, int], int] = {}
        for sent in self.producer.sent:
            tp = (sent.topic, sent.partition)
            ends[tp] = max(ends.get(tp, 0), sent.offset + 1)
        return ends

    def stored_everything(self) -> bool:
        stored = self.reader.offsets()
        return all(stored.get(tp, 0) >= end for tp, end in self.expected_offsets().items())

    def diagnose(self) -> str:
        alive = [f"{p.name}: {'alive' if p.alive() else p.returncode}" for p in self.processes.started]
        tails = "\n".join(f"--- {p.name} log tail ---\n{p.log_tail(1500)}" for p in self.processes.started[-2:])
        return (f"expected offsets {sorted(self.expected_offsets().items())}\n"
                f"stored offsets   {sorted(self.reader.offsets().items())}\n"
                f"owners {self.reader.owners()}\nprocesses {alive}\n{tails}")

    def wait(self, predicate: Callable[[], bool], what: str, running: dict[str, ServiceProcess],
             restart: Callable[[str, ServiceProcess], ServiceProcess], timeout_s: float = ROUND_TIMEOUT_S) -> None:
        """Bounded wait for ``predicate``; a member that dies of SIGKILL (its failpoint) is restarted
        without failpoints; any other exit fails the test."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            for name, proc in list(running.items()):
                code = proc.returncode
                if code is None:
                    continue
                self.kills.append((proc.name, code))
                assert code == -9, f"{proc.name} exited with {code}, not by its failpoint; log:\n{proc.log_tail()}"
                assert proc.failpoints, f"{proc.name} was SIGKILLed without a failpoint set"
                running[name] = restart(name, proc)
            assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}\n{self.diagnose()}"
            time.sleep(0.05)

    # the outcome --------------------------------------------------------------------------------------

    def sink_ids(self) -> list[str]:
        ids: list[str] = []
        for path in self.tmp.glob("actions-*.jsonl"):
            for line in path.read_bytes().splitlines():
                if line.strip():
                    ids.append(orjson.loads(line)["action_id"])
        return ids

    def check_against_simulate(self) -> None:
        envelopes = self.workload.write_envelopes(self.tmp / "input.jsonl")
        sim_state = self.tmp / "simulate.db"
        expected_lines = crash.simulate(common.DEMO_RULES, envelopes, sim_state)
        expected_ids = crash.action_ids(expected_lines)
        assert len(expected_ids) > 200, "the workload must trigger plenty of actions"
        assert len(set(expected_ids)) == len(expected_ids), "simulate's action ids are unique"
        assert {orjson.loads(line)["rule_id"] for line in expected_lines} >= {
            "deposit-points", "welcome-bonus", "deposit-then-bets", "level-two", "weekend-happy-hours"
        }

        outbox = self.reader.all_actions()
        outbox_ids = [a.action_id for a in outbox]
        lost = set(expected_ids) - set(outbox_ids)
        extra = set(outbox_ids) - set(expected_ids)
        doubled = [i for i, n in Counter(outbox_ids).items() if n > 1]
        assert not lost and not extra and not doubled, (
            f"outbox != simulate: {len(lost)} lost (e.g. {sorted(lost)[:3]}), {len(extra)} extra "
            f"(e.g. {sorted(extra)[:3]}), {len(doubled)} doubled (e.g. {doubled[:3]}); kills: {self.kills}"
        )
        assert Counter(outbox_ids) == Counter(expected_ids)
        # Same actions byte for byte, not only the same ids.
        by_id = {orjson.loads(line)["action_id"]: line for line in expected_lines}
        assert all(a.to_json() == by_id[a.action_id] for a in outbox)

        sim_reader = StoreReader(SqliteStore(sim_state))
        try:
            expected_users = {(u.brand, u.user): crash.comparable_state(u) for u in sim_reader.all_users()}
        finally:
            sim_reader.close()
        actual_users = {(u.brand, u.user): crash.comparable_state(u) for u in self.reader.all_users()}
        assert set(actual_users) == set(expected_users)
        differing = [key for key in expected_users if actual_users[key] != expected_users[key]]
        assert not differing, (
            f"{len(differing)} user state(s) differ from simulate's, first {differing[0]}:\n"
            f"service:  {actual_users[differing[0]]}\nsimulate: {expected_users[differing[0]]}"
        )
        assert sum(u["points"] for u in actual_users.values()) > 0
        assert any(u["level"] == 2 for u in actual_users.values())
        assert any("depositor" in u["tags"] for u in actual_users.values())

        delivered = self.sink_ids()
        assert set(delivered) == set(outbox_ids), (
            f"sink vs outbox: {len(set(outbox_ids) - set(delivered))} never delivered, "
            f"{len(set(delivered) - set(outbox_ids))} unknown"
        )
        assert self.reader.undelivered(SINK_NAME) == 0


@pytest.fixture
def sqlite_scenario(tmp_path: Path, kafka: Any, producer: Any, processes: Processes) -> Iterator[Scenario]:
    db = tmp_path / "state.db"
    reader = StoreReader(SqliteStore(db))
    try:
        yield Scenario(tmp_path, kafka.bootstrap_servers, producer, processes, f"sqlite:///{db}", None, reader,
                       crash.make_workload(), batch_size=50)
    finally:
        processes.kill_all()
        reader.close()


@pytest.fixture
def postgres_scenario(
    tmp_path: Path, kafka: Any, producer: Any, processes: Processes, postgres_schema: PgSchema
) -> Iterator[Scenario]:
    dsn, schema = postgres_schema.dsn, postgres_schema.schema
    # Opened (schema created, migrated) before any service starts.
    reader = StoreReader(PostgresStore(dsn, schema=schema))
    try:
        # A tiny first cohort: rounds 0 and 1 (its deposits, then its bets: 22 records) give the first
        # member state on both topics before the second member joins.
        workload = crash.make_workload((3, 97, 100, 100))
        workload.split_by_topic(1)
        yield Scenario(tmp_path, kafka.bootstrap_servers, producer, processes, dsn, schema, reader, workload,
                       batch_size=20)
    finally:
        processes.kill_all()
        reader.close()


# -- one member, SQLite -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failpoint",
    ["before_store_commit=12", "after_store_commit=12", "after_sink_delivery=6"],
)
def test_a_sigkill_at_any_checkpoint_then_a_restart_neither_loses_nor_repeats_an_effect(
    sqlite_scenario: Scenario, broker: Any, failpoint: str
) -> None:
    s = sqlite_scenario
    running = {"main": s.start("main", failpoint)}
    at_kill: dict[str, Any] = {}

    def restart(name: str, dead: ServiceProcess) -> ServiceProcess:
        # What the store and the broker hold at the instant of the crash.
        at_kill["stored"] = s.reader.offsets()
        at_kill["committed"] = {tp: o.committed for tp, o in broker.offsets(s.group, [PAY_TOPIC, CASINO_TOPIC]).items()}
        return s.start(name, None, attempt=1)

    for n, round_ in enumerate(s.workload.rounds):
        s.produce(round_)
        s.wait(s.stored_everything, f"round {n} in the store", running, restart)
    s.wait(lambda: s.reader.undelivered(SINK_NAME) == 0, "the outbox delivered", running, restart)

    assert s.kills == [("main#0", -9)], f"the failpoint {failpoint} must have killed the first process exactly once"
    assert running["main"].terminate(30) == 0, running["main"].log_tail()
    s.check_against_simulate()

    # The crash hit the window it was meant to hit.
    resumed = [e for e in s.log_records("main", 1) if e.get("event") == "partitions assigned" and e.get("resume")]
    assert resumed, "the restarted process resumes from the offsets in the store"
    if failpoint.startswith("after_store_commit"):
        ahead = [tp for tp, o in at_kill["stored"].items() if o > max(at_kill["committed"].get(tp, -1), 0)]
        assert ahead, f"the store must be ahead of the broker's commits at the kill: {at_kill}"
    if failpoint.startswith("after_sink_delivery"):
        delivered = s.sink_ids()
        assert len(delivered) > len(set(delivered)), "the batch delivered before the kill is delivered again"


# -- two members, PostgreSQL ------------------------------------------------------------------------


@pytest.mark.parametrize("failpoint", ["after_store_commit=40"])
def test_two_members_on_postgres_one_killed_one_frozen_mid_stream_keep_effects_exactly_once(
    postgres_scenario: Scenario, failpoint: str
) -> None:
    s = postgres_scenario
    rounds = s.workload.rounds
    running = {"A": s.start("A", failpoint)}

    def restart(name: str, dead: ServiceProcess) -> ServiceProcess:
        assert name == "A"
        # B takes A's partitions over (after the session timeout) and resumes from the store ...
        wait_until(lambda: set(s.reader.owners().values()) == {"B"}, "B to take over every partition",
                   timeout_s=30, alive=[running["B"]], diagnose=s.diagnose)
        # ... then A comes back and partitions move again.
        return s.start(name, None, attempt=1)

    # A alone takes the first two (tiny) rounds: at most 22 batches, fewer than its failpoint count.
    for n in (0, 1):
        s.produce(rounds[n])
        s.wait(s.stored_everything, f"round {n} in the store (A alone)", running, restart)
    assert set(s.reader.owners().values()) == {"A"} and len(s.reader.owners()) == 8
    assert not s.kills

    # B joins: A's partitions (with their stored progress) are rebalanced between the two.
    running["B"] = s.start("B")
    s.wait(lambda: "B" in s.reader.owners().values(), "B to own partitions", running, restart)
    b_before_freeze: set[tuple[str, int]] = set()
    took_over_while_frozen = False
    for n, round_ in enumerate(rounds[2:], start=2):
        if s.kills:  # A died and was restarted: let it rejoin, so that it takes part in the rest
            s.wait(lambda: "A" in s.reader.owners().values(), "the restarted A to own partitions", running, restart)
        s.produce(round_)
        if s.kills and not b_before_freeze:
            # Then B turns zombie: frozen mid-round (SIGSTOP) until A has taken its partitions over,
            # then thawed with whatever batch it had in hand. Its late writes must be fenced off.
            b_before_freeze = {tp for tp, owner in s.reader.owners().items() if owner == "B"}
            start = {tp: s.reader.offsets().get(tp, 0) for tp in b_before_freeze}
            wait_until(lambda start=start: any(s.reader.offsets().get(tp, 0) > o for tp, o in start.items())
                       or s.stored_everything(), "B to work on the round", 10, alive=[running["B"]])
            running["B"].freeze()
            try:
                # If B froze inside a store transaction, A's takeover waits for its lease locks: then
                # the takeover completes only after the thaw, which is correct too.
                with contextlib.suppress(AssertionError):
                    wait_until(lambda: set(s.reader.owners().values()) == {"A"}, "A to take over", 10,
                               alive=[running["A"]])
                took_over_while_frozen = set(s.reader.owners().values()) == {"A"}
            finally:
                running["B"].thaw()
        s.wait(s.stored_everything, f"round {n} in the store", running, restart)
    assert b_before_freeze, "B must have been frozen once A was back"
    s.wait(lambda: s.reader.undelivered(SINK_NAME) == 0, "the outbox delivered", running, restart)

    assert s.kills == [("A#0", -9)], f"A must have been killed by its failpoint {failpoint} exactly once: {s.kills}"
    for name in ("B", "A"):
        assert running[name].terminate(30) == 0, running[name].log_tail()
    s.check_against_simulate()

    # Partitions really moved: A gave some to B when B joined, B took the rest over from the store
    # when A died, and the restarted A got some back.
    def assigned(instance: str, attempt: int) -> list[dict[str, Any]]:
        return [e for e in s.log_records(instance, attempt)
                if e.get("event") == "partitions assigned" and e.get("partitions")]

    assert any(e.get("event") == "partitions revoked" for e in s.log_records("A", 0)), "B's join took partitions from A"
    b_assignments = assigned("B", 0)
    assert len(b_assignments) >= 2, b_assignments
    assert any(e.get("resume") for e in b_assignments[1:]), "B resumed A's partitions from the offsets A stored"
    assert assigned("A", 1), "the restarted A got partitions back"
    stopped = [e for e in s.log_records("A", 1) if e.get("event") == "stopped"]
    assert stopped and stopped[0]["consumed"] > 0, "the restarted A consumed records of the later rounds"
    # The zombie: A took B's partitions over, and B learnt it had lost them (fenced by the store, or
    # told by the group) instead of writing for them.
    a_took = {crash.parse_partition(name) for e in assigned("A", 1) for name in e["partitions"]}
    assert b_before_freeze & a_took, "A took over partitions of the frozen B"
    b_events = [e.get("event") for e in s.log_records("B", 0)]
    fenced = "fenced: dropping partitions taken over by another member" in b_events
    assert fenced or "partitions lost" in b_events or took_over_while_frozen is False, b_events[-20:]
