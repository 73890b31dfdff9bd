"""The RabbitMQ source as an SRE sees it, on the real broker: queue depth read from the broker
(smartico_stream_rabbitmq_queue_messages_ready moves: it shows a backlog published while the
service was stopped, then drops to 0), deliveries and acks counted by kind (ok, dead_lettered,
redelivered_handled), the connected gauge; verify-only mode (``declare: false``) refusing a missing
topology with what to ask the operator for; and ``smartico-stream demo --transport rabbitmq``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from smartico_stream.service import Service
from smartico_stream.sources.rabbitmq import TopologyError
from smartico_stream.store.sqlite import SqliteStore
from tests.support import common
from tests.support import rabbitmq as rabbit
from tests.support.rabbitmq import InProcess, Msg, Publisher, Topology, sample, sample_sum
from tests.support.service import RecordingEngine

pytestmark = pytest.mark.rabbitmq  # shares the local broker (tests/fixtures/rabbitmq.py)

READY = "smartico_stream_rabbitmq_queue_messages_ready"
UNACKED = "smartico_stream_rabbitmq_unacked_messages"
ACKS = "smartico_stream_rabbitmq_acks_total"
DELIVERIES = "smartico_stream_rabbitmq_deliveries_total"
CONNECTED = "smartico_stream_rabbitmq_connected"
CONSUMERS = "smartico_stream_rabbitmq_queue_consumers"


@pytest.fixture
def topology(rabbitmq: str) -> Iterator[Topology]:
    topo = Topology(rabbit.unique_prefix("metrics"), streams=("payments",), queues_per_stream=4)
    try:
        yield topo
    finally:
        rabbit.delete_topology(topo)


def workload(topology: Topology, users: int = 20, per_user: int = 10, poison_every: int = 25) -> tuple[list[Msg], int]:
    """Deposits (and every ``poison_every``-th message a poison one); returns (messages, poison count)."""
    msgs, poison = [], 0
    for seq in range(per_user):
        for u in range(users):
            user = f"m-u{u:02d}"
            n = len(msgs)
            if n % poison_every == poison_every - 1:
                msgs.append(Msg(topology.exchange("payments"), user, b"{not json", f"poison-{n}"))
                poison += 1
            else:
                msgs.append(Msg(topology.exchange("payments"), user, orjson.dumps(rabbit.deposit(user, seq)),
                                f"dep-{user}-{seq}"))
    return msgs, poison


def acks_by_kind(service: Service, queues: list[str]) -> dict[str, float]:
    return {kind: sample_sum(service, ACKS, "queue", queues, kind=kind)
            for kind in ("ok", "dead_lettered", "redelivered_handled")}


async def declare(topology: Topology, store: dict[str, Any]) -> None:
    """Let a service declare the topology, then stop it: the queues exist, nobody consumes."""
    run = InProcess()
    try:
        run.start("declare", Service(rabbit.settings_for(topology, store), engine=RecordingEngine()))
        await run.joined("declare")
    finally:
        await run.stop_all()


def test_queue_depth_moves_deliveries_and_acks_are_counted_and_connected_is_1(
    topology: Topology, tmp_path: Path
) -> None:
    store = {"url": f"sqlite:///{tmp_path / 'state.db'}"}
    msgs, poison = workload(topology)
    total, good = len(msgs), len(msgs) - poison
    queues = topology.queues()
    # A small prefetch: while the service holds its window, the rest stays ready in the queues.
    settings = rabbit.settings_for(topology, store, rabbitmq={"prefetch": 5, "batch_size": 5})
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        await declare(topology, store)
        publisher = Publisher(name=f"{topology.prefix}-publisher")
        try:
            await publisher.publish_many(msgs)  # the service is stopped: all of them wait in the queues
        finally:
            await publisher.close()
        seen["broker_before"] = await rabbit.queue_states(queues)

        service = Service(settings, engine=RecordingEngine())
        seen["service"] = service
        # Paused from the start (what outbox backpressure does): it takes its prefetch window and no more.
        await service.transport.pause()
        run = InProcess()
        try:
            run.start("main", service)
            await run.joined("main")

            def backlog_visible() -> bool:
                ready = sample_sum(service, READY, "queue", queues)
                held = sample_sum(service, UNACKED, "queue", queues)
                return ready > 0 and ready + held == total

            await run.wait(backlog_visible, "the backlog in the queue depth metric", 10,
                           diagnose=lambda: f"ready {sample_sum(service, READY, 'queue', queues)}, "
                                            f"held {sample_sum(service, UNACKED, 'queue', queues)}, total {total}")
            seen["ready_before"] = {q: sample(service, READY, queue=q) for q in queues}
            seen["held_before"] = {q: sample(service, UNACKED, queue=q) for q in queues}
            seen["connected"] = sample(service, CONNECTED)
            seen["consumers"] = {q: sample(service, CONSUMERS, queue=q) for q in queues}
            assert service.stats.consumed == 0, "paused: nothing handled yet"

            await service.transport.resume()
            await run.wait(lambda: service.stats.consumed >= total, f"{total} messages handled", 30)
            await run.wait(lambda: sample_sum(service, READY, "queue", queues) == 0
                           and sample_sum(service, UNACKED, "queue", queues) == 0,
                           "the queue depth back to 0", 10)
            seen["connected_after"] = sample(service, CONNECTED)
        finally:
            await run.stop_all()
        seen["connected_stopped"] = sample(service, CONNECTED)
        seen["broker_after"] = await rabbit.queue_states(queues)

    asyncio.run(scenario())
    service = seen["service"]

    # The broker's own count, before the service started, is what the metric showed (minus what it held).
    assert sum(s.ready for s in seen["broker_before"].values()) == total
    for q in queues:
        assert seen["ready_before"][q] + seen["held_before"][q] == seen["broker_before"][q].ready, q
        assert seen["held_before"][q] <= 5, "no more than the prefetch per consumer"
    assert sum(seen["ready_before"].values()) >= total - 5 * len(queues)
    assert seen["connected"] == 1 and seen["connected_after"] == 1
    assert seen["connected_stopped"] == 0
    assert all(v == 1 for v in seen["consumers"].values()), seen["consumers"]
    assert all(s.ready == 0 for s in seen["broker_after"].values()), seen["broker_after"]

    # Deliveries and acks, by kind.
    assert sample_sum(service, DELIVERIES, "queue", queues) == total
    assert acks_by_kind(service, queues) == {"ok": good, "dead_lettered": poison, "redelivered_handled": 0}
    assert service.stats.dead_lettered == poison and service.stats.processed == good


class CrashAfterCommit:
    """The real store, except that its ``crash_at``-th commit raises right after committing: the
    process "dies" between the store commit and the ack (what failpoint after_store_commit does to
    a subprocess), here in-process so that the redelivery is observed by the next instance."""

    def __init__(self, store: SqliteStore, crash_at: int) -> None:
        self._store = store
        self._crash_at = crash_at
        self.commits = 0
        self.committed_ids: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def commit(self, batch: Any) -> None:
        await self._store.commit(batch)
        self.commits += 1
        if self.commits == self._crash_at:
            self.committed_ids = [key for keys in batch.handled_messages.values() for key in keys]
            raise RuntimeError("simulated crash after the store commit, before the ack")


def test_redelivered_messages_already_handled_are_acked_as_redelivered_handled_and_not_applied_again(
    topology: Topology, tmp_path: Path
) -> None:
    db = tmp_path / "state.db"
    store = {"url": f"sqlite:///{db}"}
    msgs, poison = workload(topology)
    total = len(msgs)
    queues = topology.queues()
    settings = rabbit.settings_for(topology, store, rabbitmq={"prefetch": 50, "batch_size": 10})
    first, second = RecordingEngine("first"), RecordingEngine("second")
    wrapped = CrashAfterCommit(SqliteStore(db), crash_at=3)
    out: dict[str, Any] = {}

    async def scenario() -> None:
        await declare(topology, store)
        publisher = Publisher(name=f"{topology.prefix}-publisher")
        try:
            await publisher.publish_many(msgs)
        finally:
            await publisher.close()
        crashing = Service(settings, engine=first, store=wrapped)
        with pytest.raises(RuntimeError, match="simulated crash"):
            await asyncio.wait_for(crashing.run(asyncio.Event()), 30)
        assert wrapped.committed_ids, "the crash hit a committed batch"
        service = Service(settings, engine=second)
        out["service"] = service
        run = InProcess()
        try:
            run.start("second", service)
            await run.wait(lambda: service.stats.consumed >= total - crashing.stats.consumed,
                           "the rest, and the redelivered batch, handled", 30,
                           diagnose=lambda: f"first {crashing.stats}, second {service.stats}")
            await asyncio.sleep(0.3)
        finally:
            await run.stop_all()
        out["first"] = crashing
        out["states"] = await rabbit.queue_states(queues)

    asyncio.run(scenario())
    service, crashing = out["service"], out["first"]
    committed = len(wrapped.committed_ids)
    # The second instance received everything the first had not recorded as done: the rest of the
    # queues and the committed-but-unacked batch.
    assert service.stats.consumed == total - crashing.stats.consumed
    acks = acks_by_kind(service, queues)
    # The batch committed before the "crash" came back flagged redelivered and was acked, not applied.
    assert acks["redelivered_handled"] == committed, (acks, committed)
    assert acks["ok"] + acks["dead_lettered"] + acks["redelivered_handled"] == sample_sum(
        service, DELIVERIES, "queue", queues)
    # Every good message applied exactly once over both instances.
    events = [e.event.event_id for e in (*first.applied, *second.applied)]
    assert len(events) == len(set(events)) == total - poison, (len(events), len(set(events)), total - poison)
    assert all(s.ready == 0 for s in out["states"].values()), out["states"]


def test_verify_only_mode_refuses_a_missing_topology_naming_what_to_ask_the_operator_for(
    topology: Topology, tmp_path: Path
) -> None:
    store = {"url": f"sqlite:///{tmp_path / 'state.db'}"}
    verify_only = rabbit.settings_for(topology, store, rabbitmq={"declare": False})
    problems: list[str] = []

    async def scenario() -> None:
        # Nothing declared: refused at start, with the operator's shopping list.
        service = Service(verify_only, engine=RecordingEngine())
        try:
            with pytest.raises(TopologyError) as refused:
                await asyncio.wait_for(service.run(asyncio.Event()), 30)
            problems.append(str(refused.value))
        finally:
            await _clean_up_failed_start(service)
        # The stream exchange missing while the dead-letter exchange exists: named too.
        await _declare_dead_letter_exchange_only(topology)
        service = Service(verify_only, engine=RecordingEngine())
        try:
            with pytest.raises(TopologyError) as refused:
                await asyncio.wait_for(service.run(asyncio.Event()), 30)
            problems.append(str(refused.value))
        finally:
            await _clean_up_failed_start(service)
        # Once the operator declared it (here: a declaring instance), verify-only starts and consumes.
        await declare(topology, store)
        engine = RecordingEngine()
        service = Service(verify_only, engine=engine)
        run = InProcess()
        publisher = Publisher(name=f"{topology.prefix}-publisher")
        try:
            run.start("verify-only", service)
            await run.joined("verify-only")
            await publisher.publish_many(workload(topology, users=4, per_user=2, poison_every=1000)[0])
            await run.wait(lambda: len(engine.applied) == 8, "8 deposits applied", 20)
        finally:
            await run.stop_all()
            await publisher.close()

    asyncio.run(scenario())
    for problem in problems:
        assert "declare=false" in problem and "ask the operator" in problem, problem
        assert "x-consistent-hash" in problem and "x-single-active-consumer" in problem, problem
        assert "quorum" in problem and "docs/rabbitmq.md" in problem, problem
    assert topology.dead_letter_exchange in problems[0], problems[0]  # the first thing found missing
    assert topology.exchange("payments") in problems[1], problems[1]


async def _declare_dead_letter_exchange_only(topology: Topology) -> None:
    import aio_pika

    connection = await aio_pika.connect(rabbit.RABBITMQ_URL)
    try:
        channel = await connection.channel()
        await channel.declare_exchange(topology.dead_letter_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    finally:
        await connection.close()


async def _clean_up_failed_start(service: Service) -> None:
    """What Service.run leaves behind when the transport fails to start (see the next test)."""
    source = service.transport.source
    if source._connection is not None and not source._connection.is_closed:
        await source._connection.close()
    if source._stats_task is not None:
        source._stats_task.cancel()
    if service.metrics_server is not None:
        service.metrics_server.stop()
    service.relay.wake()
    for task in asyncio.all_tasks():
        if "OutboxRelay.run" in repr(task.get_coro()):
            task.cancel()
    await service.store.close()


def test_a_service_that_fails_to_start_closes_its_broker_connection_and_metrics_port(
    topology: Topology, tmp_path: Path
) -> None:
    """Verify-only against a missing topology: Service.run raises TopologyError, and must not leave
    its (auto-reconnecting) AMQP connection, its metrics port and its outbox relay running, e.g.
    in an embedding process such as the demo."""
    name = f"{topology.prefix}-failing"
    settings = rabbit.settings_for(
        topology, {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        rabbitmq={"declare": False, "connection": {"client_properties": {"connection_name": name}}},
    )
    left: dict[str, Any] = {}

    async def scenario() -> None:
        service = Service(settings, engine=RecordingEngine())
        try:
            with pytest.raises(TopologyError):
                await asyncio.wait_for(service.run(asyncio.Event()), 30)
            await asyncio.sleep(1.0)
            left["connections"] = rabbit.connection_names().count(name)
            port = service.metrics_server.port if service.metrics_server is not None else None
            left["metrics_port_open"] = port is not None and _port_open(port)
            left["relay_running"] = any("OutboxRelay.run" in repr(t.get_coro()) and not t.done()
                                        for t in asyncio.all_tasks())
        finally:
            await _clean_up_failed_start(service)

    asyncio.run(scenario())
    assert left == {"connections": 0, "metrics_port_open": False, "relay_running": False}, (
        f"after a failed start the service left behind: {left['connections']} AMQP connection(s) named {name}, "
        f"metrics port open: {left['metrics_port_open']}, outbox relay task running: {left['relay_running']}"
    )


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_run_cli_in_verify_only_mode_exits_with_what_to_ask_the_operator_for(topology: Topology, tmp_path: Path
                                                                              ) -> None:
    config = rabbit.write_config(tmp_path / "cfg.yaml", topology, store_url=f"sqlite:///{tmp_path / 'state.db'}",
                                    sink_path=tmp_path / "actions.jsonl", instance_id="verify")
    import yaml

    data = yaml.safe_load(config.read_text())
    data["rabbitmq"]["declare"] = False
    config.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTICO_STREAM_")}
    done = subprocess.run([*common.CLI, "run", "--config", str(config)], capture_output=True, timeout=60,
                          env=env, cwd=common.REPO, check=False)
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0, output[-2000:]
    assert "ask the operator" in output and topology.dead_letter_exchange in output, output[-2000:]


def _demo_names() -> set[str]:
    names = {line.split("\t")[0] for line in rabbit.rabbitmqctl("list_exchanges", "name").splitlines()}
    names |= {line.split("\t")[0] for line in rabbit.rabbitmqctl("list_queues", "name").splitlines()}
    return {n for n in names if n.startswith("smartico-demo-")}


def test_demo_on_rabbitmq_consumes_everything_and_leaves_no_exchanges_behind(tmp_path: Path, rabbitmq: str) -> None:
    before = _demo_names()
    proc = subprocess.Popen(
        [*common.CLI, "demo", "--transport", "rabbitmq", "--events", "2000", "--users", "200", "--json",
         "--metrics-port", "0", "--rabbitmq-url", rabbitmq],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
    )
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    summary = orjson.loads(out.splitlines()[-1])
    assert summary["produced"] == 2000
    assert summary["consumed"] == summary["produced"], summary
    assert summary["processed"] + summary["deduplicated"] + summary["dead_lettered"] == summary["consumed"], summary
    assert summary["deduplicated"] == summary["expected"].get("duplicate", 0), summary
    # Every malformed record is dead-lettered, except the "null key" one: AMQP has no null routing
    # key, so the demo publishes it under a placeholder key and it is valid.
    expected_dead = summary["expected"].get("malformed", 0) - summary["expected"].get("malformed:null_key", 0)
    assert summary["dead_lettered"] == expected_dead, summary
    assert summary["actions"] > 0 and summary["actions_delivered"] == summary["actions"], summary
    left = _demo_names() - before
    assert not left, f"the demo left exchanges/queues behind: {sorted(left)}"
    assert not any(n.startswith(f"smartico-demo-{proc.pid}-") for n in _demo_names())


def test_demo_on_an_unreachable_rabbitmq_exits_1_saying_what_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [*common.CLI, "demo", "--transport", "rabbitmq", "--events", "20", "--json", "--metrics-port", "0",
         "--rabbitmq-url", "amqp://guest:guest@127.0.0.1:1/"],
        capture_output=True, timeout=60, cwd=tmp_path, check=False,
    )
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 1, (done.returncode, err[-2000:])
    assert "RabbitMQ is not reachable at amqp://guest:guest@127.0.0.1:1/" in err, err[-2000:]
    assert "rabbitmq-server" in err and "rabbitmq_consistent_hash_exchange" in err, err[-2000:]
    assert done.stdout.strip() == b"", "no summary when nothing ran"
