"""Scheduled rules and rule control in the running service: ``smartico-stream run`` as a process on
the embedded Kafka, a JSONL sink, the CLI in other processes.

- a scheduled ``now`` rule fires through the running service and its actions reach the sink;
- ``rules stop`` on a real-time rule makes the running service ignore its events, ``rules start``
  restores it;
- a reload without restart: SIGHUP with invalid files is refused (logged, counted, shown in
  ``rules status``) and the running rules stay; ``rules reload`` refuses invalid files itself, and
  applies valid ones between two batches; ``rules status`` shows the instance's rule-set version.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from smartico_stream.engine.rule_files import rule_set_version
from smartico_stream.store.postgres import PostgresStore
from smartico_stream.store.sql import SqlStore
from smartico_stream.store.sqlite import SqliteStore
from tests.cli.cli_run import assert_clean_failure, cli, write_config
from tests.scheduled.support import seed, user
from tests.support import crash
from tests.support.crash import BASE_MS, BRAND, PAY_TOPIC, Processes, ServiceProcess
from tests.support.kafka import KafkaCluster, TestProducer
from tests.support.postgres import PgSchema
from tests.support.rabbitmq import LoopThread, StoreReader
from tests.support.service import http_get

pytestmark = pytest.mark.kafka

REAL_TIME = """
  - id: rt-bonus
    name: bonus on every deposit
    trigger: {event: deposit}
    actions: [{action: give_bonus, template_id: TEMPLATE}]
"""
NOW_RULE = """
  - id: now-points
    name: five points for every stored user, now
    schedule: {type: now}
    speed: 6000
    actions: [{action: give_points, amount: 5}]
"""


class Live:
    """One service process and what the test reads of it."""

    def __init__(self, tmp: Path, kafka: KafkaCluster, processes: Processes, rules: str | None, *,
                 name: str = "svc-a", postgres: PgSchema | None = None) -> None:
        self.tmp = tmp
        self.name = name
        self.rules = tmp / "rules.yaml"
        if rules is not None:
            self.rules.write_text(rules)
        self.db = tmp / "svc.db"
        self.postgres = postgres
        self.sink = tmp / f"actions-{name}.jsonl"
        store_url = f"sqlite:///{self.db}" if postgres is None else postgres.dsn
        config = crash.write_config(
            tmp / f"config-{name}.yaml", bootstrap=kafka.bootstrap_servers, group="live-sched", store_url=store_url,
            store_schema=None if postgres is None else postgres.schema, sink_path=self.sink, rules=self.rules,
            instance_id=name,
        )
        document = yaml.safe_load(config.read_text())
        document["engine"]["control_interval_s"] = 0.2
        document["scheduler"] = {"idle_s": 0.2}
        config.write_text(yaml.safe_dump(document, sort_keys=False))
        self.config = config
        self._processes = processes
        self.proc: ServiceProcess | None = None

    def start(self) -> ServiceProcess:
        self.proc = self._processes.start(self.config, self.tmp / f"{self.name}.log", name=self.name)
        return self.proc

    def store(self) -> SqlStore:
        if self.postgres is None:
            return SqliteStore(self.db)
        return PostgresStore(self.postgres.dsn, self.postgres.schema)

    def actions(self, rule: str | None = None) -> list[dict[str, Any]]:
        if not self.sink.exists():
            return []
        found = [orjson.loads(line) for line in self.sink.read_bytes().splitlines() if line.strip()]
        return [a for a in found if rule is None or a["rule_id"] == rule]

    def log_count(self, event: str) -> int:
        assert self.proc is not None
        return sum(1 for line in self.proc.log_tail(10**7).splitlines() if f'"event": "{event}"' in line
                   or f'"event":"{event}"' in line)

    def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        assert self.proc is not None
        crash.wait_until(predicate, what, timeout_s, interval_s=0.1, alive=[self.proc], diagnose=self.proc.log_tail)

    def committed(self, ends: dict[tuple[str, int], int]) -> bool:
        reader = StoreReader(self.store())
        try:
            rows = reader.fetch("SELECT topic, part, next_offset FROM source_offsets")
        finally:
            reader.close()
        stored = {(t, int(p)): int(o) for t, p, o in rows}
        return all(stored.get(tp, 0) >= end for tp, end in ends.items())

    def rules_cli(self, *args: str) -> tuple[int, str]:
        done = cli(["rules", *args, "--config", str(self.config)])
        return done.returncode, done.stdout + done.stderr

    def metrics_port(self) -> int:
        assert self.proc is not None
        match = re.search(r'"event": ?"metrics listening".*?"port": ?(\d+)|"port": ?(\d+).*?"metrics listening"',
                          self.proc.log_tail(10**7))
        assert match, self.proc.log_tail()
        return int(match[1] or match[2])


def seed_users(store: SqlStore, count: int) -> None:
    async def go() -> None:
        await store.open()
        try:
            await seed(store, [user(BRAND, f"seeded-{i}") for i in range(count)])
        finally:
            await store.close()

    loop = LoopThread("seed")
    try:
        loop.call(go())
    finally:
        loop.close()


def deposit(producer: TestProducer, who: str, tx: str, index: int) -> dict[tuple[str, int], int]:
    """A profile and a deposit of ``who``; the next offset of the partition they landed in."""
    profile = {"type": "user_profile", "dt_update": BASE_MS + index, "ext_brand_id": BRAND, "user_ext_id": who,
               "core_registration_date": BASE_MS - 86_400_000, "core_wallet_currency": "EUR",
               "user_country": "MT", "core_account_status": "ACTIVE"}
    money = {"type": "deposit", "dt_finalized": BASE_MS + index + 1, "ext_brand_id": BRAND, "user_ext_id": who,
             "transaction_id": tx, "amount": "25"}
    producer.send(PAY_TOPIC, who, orjson.dumps(profile))
    producer.send(PAY_TOPIC, who, orjson.dumps(money))
    producer.flush()
    last = producer.sent[-1]
    return {(last.topic, last.partition): last.offset + 1}


def test_scheduled_now_rule_fires_and_stop_start_apply_to_the_running_service(
    tmp_path: Path, kafka: KafkaCluster, producer: Callable[..., TestProducer], processes: Processes
) -> None:
    live = Live(tmp_path, kafka, processes, "rules:" + REAL_TIME.replace("TEMPLATE", "b1") + NOW_RULE)
    seed_users(live.store(), 3)
    p = producer()
    p.ensure_topics(PAY_TOPIC)
    live.start()

    live.wait(lambda: len(live.actions("now-points")) == 3, "the now rule's actions in the sink")
    assert sorted(a["user"] for a in live.actions("now-points")) == ["seeded-0", "seeded-1", "seeded-2"]
    assert {a["event_type"] for a in live.actions("now-points")} == {"scheduled_run"}
    code, out = live.rules_cli("runs", "now-points")
    assert code == 0 and "completed" in out and "audience 3  executed 3" in out, out

    ends = deposit(p, "player-1", "tx-1", 10)
    live.wait(lambda: len(live.actions("rt-bonus")) == 1, "the real-time rule's first action")

    code, out = live.rules_cli("stop", "rt-bonus", "--by", "tester")
    assert code == 0 and "rt-bonus stopped by tester" in out, out
    live.wait(lambda: live.log_count("rule_statuses_changed") >= 1, "the service to see the stop")
    ends = deposit(p, "player-1", "tx-2", 20)
    live.wait(lambda: live.committed(ends), "the second deposit committed")
    assert len(live.actions("rt-bonus")) == 1

    code, out = live.rules_cli("start", "rt-bonus", "--by", "tester")
    assert code == 0 and "started by tester" in out, out
    live.wait(lambda: live.log_count("rule_statuses_changed") >= 2, "the service to see the start")
    deposit(p, "player-1", "tx-3", 30)
    live.wait(lambda: len(live.actions("rt-bonus")) == 2, "the real-time rule firing again")
    assert live.proc is not None and live.proc.terminate(30) == 0, live.proc.log_tail()
    # The stopped rule ignored the second deposit for good (nothing was held back).
    assert len(live.actions("rt-bonus")) == 2


def test_rules_reload_without_restart(
    tmp_path: Path, kafka: KafkaCluster, producer: Callable[..., TestProducer], processes: Processes
) -> None:
    live = Live(tmp_path, kafka, processes, "rules:" + REAL_TIME.replace("TEMPLATE", "b1"))
    first_version = rule_set_version(live.rules)
    kept = tmp_path / "kept.yaml"
    kept.write_text(live.rules.read_text())
    p = producer()
    p.ensure_topics(PAY_TOPIC)
    proc = live.start()
    deposit(p, "player-2", "tx-1", 10)
    live.wait(lambda: len(live.actions("rt-bonus")) == 1, "the first rule set's action")
    code, out = live.rules_cli("status")
    assert code == 0 and "instance svc-a" in out and f"version {first_version}" in out, out
    assert "same as the files" in out

    # Invalid files and SIGHUP: refused, logged, counted; the running rules stay.
    live.rules.write_text("rules:\n  - id: rt-bonus\n    name: broken\n    trigger: {event: no_such_event}\n"
                          "    actions: [{action: give_bonus, template_id: b9}]\n")
    proc.proc.send_signal(signal.SIGHUP)
    live.wait(lambda: live.log_count("rules_reload_refused") == 1, "the refusal in the log")
    _, metrics = http_get(live.metrics_port(), "/metrics")
    assert 'smartico_stream_rule_reloads_total{result="refused"} 1.0' in metrics
    code, out = live.rules_cli("status", "--rules", str(kept))  # the running rules, to compare with
    assert code == 0 and f"version {first_version}" in out, out
    assert f"refused {rule_set_version(live.rules)} at " in out and "trigger.event" in out, out
    code, out = live.rules_cli("reload")
    assert code == 1 and "rule rt-bonus: trigger.event" in out, out  # refused by the CLI too: nothing requested
    ends = deposit(p, "player-2", "tx-2", 20)
    live.wait(lambda: len(live.actions("rt-bonus")) == 2, "the old rules still firing")
    assert [a["params"]["template_id"] for a in live.actions("rt-bonus")] == ["b1", "b1"]
    assert live.committed(ends)

    # Valid new files through `rules reload`: applied between two batches, the version recorded.
    live.rules.write_text("rules:" + REAL_TIME.replace("TEMPLATE", "b2")
                          + "  - id: rt-extra\n    name: extra\n    trigger: {event: deposit}\n"
                          "    actions: [{action: mark_user, tag: reloaded}]\n")
    second_version = rule_set_version(live.rules)
    code, out = live.rules_cli("reload", "--by", "tester", "--wait", "30")
    assert code == 0, out
    assert f"version {second_version}" in out and "every running instance (1) applies" in out, out
    deposit(p, "player-2", "tx-3", 30)
    live.wait(lambda: len(live.actions("rt-extra")) == 1, "the new rule firing")
    assert [a["params"]["template_id"] for a in live.actions("rt-bonus")] == ["b1", "b1", "b2"]
    _, metrics = http_get(live.metrics_port(), "/metrics")
    assert 'smartico_stream_rule_reloads_total{result="applied"} 1.0' in metrics
    code, out = live.rules_cli("status")
    assert f"version {second_version}" in out and "same as the files" in out and "refused" not in out, out
    assert proc.terminate(30) == 0, proc.log_tail()


def test_run_refuses_an_invalid_scheduled_rule_at_start(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - id: weekly\n    name: weekly\n    schedule: {type: weekdays, at: '09:00'}\n"
                     "    actions: [{action: give_points, amount: 1}]\n")
    config = write_config(tmp_path, {"engine": {"rules": str(rules)}})
    assert_clean_failure(cli(["run", "--config", str(config)]), 2, "rule weekly: schedule", "needs weekdays")


def test_two_instances_on_postgresql_run_the_schedule_once_and_both_reload(
    tmp_path: Path, kafka: KafkaCluster, processes: Processes, postgres_schema: PgSchema
) -> None:
    a = Live(tmp_path, kafka, processes, "rules:" + REAL_TIME.replace("TEMPLATE", "b1") + NOW_RULE,
             postgres=postgres_schema)
    b = Live(tmp_path, kafka, processes, None, name="svc-b", postgres=postgres_schema)
    seed_users(a.store(), 40)
    for live in (a, b):
        live.start()

    def scheduled() -> list[str]:
        return [x["action_id"] for live in (a, b) for x in live.actions("now-points")]

    a.wait(lambda: len(scheduled()) >= 40, "the now rule's actions from whichever instance leads")
    a.wait(lambda: "instance svc-a" in a.rules_cli("status")[1] and "instance svc-b" in a.rules_cli("status")[1],
           "both instances recording their rule set")
    code, out = a.rules_cli("runs", "now-points")
    assert code == 0 and out.count("now-points@") == 1 and "audience 40  executed 40" in out, out
    assert len(scheduled()) == len(set(scheduled())) == 40  # one leader: one run, each user once

    a.rules.write_text("rules:" + REAL_TIME.replace("TEMPLATE", "b2") + NOW_RULE)
    version = rule_set_version(a.rules)
    code, out = a.rules_cli("reload", "--by", "tester", "--wait", "30")
    assert code == 0 and "every running instance (2) applies version " + version in out, out
    code, out = a.rules_cli("status")
    assert out.count(f"version {version}  loaded") == 2 and "DIFFERS" not in out, out
    assert len(scheduled()) == 40  # the reload does not run a `now` rule again (it ran)
    for live in (a, b):
        assert live.proc is not None and live.proc.terminate(30) == 0, live.proc.log_tail()
