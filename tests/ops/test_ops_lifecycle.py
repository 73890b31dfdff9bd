"""`smartico-stream run` as a process, the way an orchestrator runs it (embedded Kafka, JSON logs).

- SIGTERM mid-stream: the process stops fetching, finishes and commits the batch in hand, and exits
  0 well inside the shutdown budget; the offsets it committed to Kafka are exactly the records it
  handled; a second run picks up from there, so across both runs every record is consumed once and
  every rule action is delivered once (nothing lost, nothing repeated).
- A flood of 1000 poison records: every stderr line is one JSON object; the dead-letter lines are
  bounded (rate-limited), each carries the record's topic/partition/offset and never its payload,
  and once the rate-limit period turns the next line reports how many were suppressed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from smartico_stream.config import load_settings
from smartico_stream.ops.shutdown import shutdown_budget_s
from tests.support import common

pytestmark = pytest.mark.kafka

TOPIC = "payments"
# librdkafka's mock coordinator keeps a join phase open for session.timeout.ms - 1 s (and a member
# that left is only forgotten after it): short sessions keep restarts fast.
FAST_GROUP = {"session.timeout.ms": 3000, "heartbeat.interval.ms": 250}
RULES = """
rules:
  - id: point-per-deposit
    name: One point per deposit
    trigger: {event: deposit}
    actions:
      - {action: give_points, amount: 1}
"""


class ServiceProcess:
    """`smartico-stream run --config` with stderr captured to a file and metrics on a known port."""

    def __init__(self, tmp_path: Path, bootstrap: str, group: str, name: str, **overrides: Any) -> None:
        self.port = common.free_port()
        self.stderr_path = tmp_path / f"{name}.stderr"
        config: dict[str, Any] = {
            "adapter": "reference",
            "kafka": {
                "config": {"bootstrap.servers": bootstrap, "group.id": group, **FAST_GROUP},
                "topics": {"payments": [TOPIC]},
                "poll_timeout_s": 0.05,
                "statistics_interval_ms": 500,
                "dead_letter_flush_timeout_s": 10,
            },
            "metrics": {"host": "127.0.0.1", "port": self.port},
            "store": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
            "pii": {"store_url": f"sqlite:///{tmp_path / 'pii.db'}"},
            "logging": {"level": "INFO", "format": "json"},
        }
        for key, value in overrides.items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
        self.config_path = tmp_path / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTICO_STREAM_")}
        with open(self.stderr_path, "wb") as stderr:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [*common.CLI, "run", "--config", str(self.config_path)],
                stdout=subprocess.DEVNULL, stderr=stderr, env=env,
            )

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return {}
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def records(self, result: str | None = None) -> float:
        return sum(v for (name, labels), v in self.metrics().items()
                   if name == "smartico_stream_records_total" and (result is None or ("result", result) in labels))

    def wait_for(self, predicate: Any, what: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.process.poll() is not None:
                pytest.fail(f"the service exited ({self.process.returncode}) waiting for {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout_s}s waiting for {what}:\n{self.tail()}")
            time.sleep(0.05)

    def terminate(self, timeout_s: float) -> tuple[int, float]:
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            pytest.fail(f"no exit within {timeout_s}s of SIGTERM:\n{self.tail()}")
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log_lines(self) -> list[str]:
        return self.stderr_path.read_text(errors="replace").splitlines()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_lines()[-lines:])


def committed(bootstrap: str, group: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(TOPIC, timeout=10).topics[TOPIC].partitions
        offsets = consumer.committed([TopicPartition(TOPIC, p) for p in partitions], timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in offsets}
    finally:
        consumer.close()


def produce(bootstrap: str, records: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for key, value in records:
        producer.produce(TOPIC, key=key, value=value)
        producer.poll(0)
    assert producer.flush(30) == 0


def deposit(user: int, tx: int) -> bytes:
    return orjson.dumps({"dt_finalized": 1_700_000_000_000, "ext_brand_id": "ops-brand", "user_ext_id": f"u{user}",
                         "transaction_id": f"tx-{tx}", "type": "deposit", "amount": "5.00",
                         "core_wallet_currency": "EUR"})


def json_lines(lines: list[str]) -> list[dict[str, Any]]:
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"stderr line {number} is not JSON: {line[:300]!r}")
    return parsed


def test_sigterm_mid_stream_finishes_the_batch_commits_and_exits_cleanly(kafka, tmp_path):
    total = 3000
    produce(kafka.bootstrap_servers, [(f"u{i % 97}", deposit(i % 97, i)) for i in range(total)])
    group = f"ops-sigterm-{uuid.uuid4().hex[:6]}"
    (tmp_path / "rules.yaml").write_text(RULES)
    actions = tmp_path / "actions.jsonl"
    common = {"engine": {"rules": str(tmp_path / "rules.yaml")}, "sinks": [{"type": "jsonl", "path": str(actions)}]}

    first = ServiceProcess(tmp_path, kafka.bootstrap_servers, group, "first", kafka={"batch_size": 5}, **common)
    try:
        first.wait_for(lambda: first.records() >= 300, "300 records handled")
        code, seconds = first.terminate(timeout_s=60)
    finally:
        first.kill()
    assert code == 0, f"exit code {code}:\n{first.tail()}"
    budget = shutdown_budget_s(load_settings(first.config_path, environ={}))
    assert seconds < min(budget, 20), f"{seconds:.1f}s from SIGTERM to exit"
    logs = json_lines(first.log_lines())
    stopped = [entry for entry in logs if entry.get("event") == "stopped"]
    assert len(stopped) == 1, "the service logs its orderly stop once"
    consumed_first = stopped[0]["consumed"]
    assert 300 <= consumed_first < total, "SIGTERM arrived mid-stream"
    # The batch in hand was finished and committed: what Kafka holds is exactly what was handled.
    assert sum(committed(kafka.bootstrap_servers, group).values()) == consumed_first

    second = ServiceProcess(tmp_path, kafka.bootstrap_servers, group, "second", **common)
    try:
        second.wait_for(lambda: second.records() >= total - consumed_first, "the rest of the stream", timeout_s=60)
        second.wait_for(lambda: sum(committed(kafka.bootstrap_servers, group).values()) == total, "all committed")
        code, _ = second.terminate(timeout_s=60)
    finally:
        second.kill()
    assert code == 0, second.tail()
    consumed_second = next(e for e in json_lines(second.log_lines()) if e.get("event") == "stopped")["consumed"]
    assert consumed_first + consumed_second == total, "no record read twice, none skipped"

    lines = [json.loads(line) for line in actions.read_text().splitlines()]
    ids = Counter(line["action_id"] for line in lines)
    assert [i for i, n in ids.items() if n > 1] == [], "an action was delivered twice"
    assert len(ids) == total, f"{total - len(ids)} action(s) lost"
    assert len({line["event_id"] for line in lines}) == total


def test_a_poison_flood_yields_few_json_log_lines_with_coordinates_and_a_suppressed_count(kafka, tmp_path):
    flood = 1000
    marker = "flood-secret"
    produce(kafka.bootstrap_servers,
            [(f"u{i}", f'{{"user_email": "{marker}-{i}@example.test", '.encode()) for i in range(flood)])
    group = f"ops-flood-{uuid.uuid4().hex[:6]}"
    service = ServiceProcess(tmp_path, kafka.bootstrap_servers, group, "flood")
    try:
        service.wait_for(lambda: service.records("dead_lettered") >= flood, f"{flood} dead letters")
        # The log rate limit works in periods of 10 s; the first poison record after the period
        # reports how many lines the flood suppressed.
        time.sleep(10.5)
        produce(kafka.bootstrap_servers, [("late", b"not json either")])
        service.wait_for(lambda: service.records("dead_lettered") >= flood + 1, "the late dead letter")
        code, _ = service.terminate(timeout_s=60)
    finally:
        service.kill()
    assert code == 0
    raw = service.stderr_path.read_text(errors="replace")
    assert marker not in raw, "a payload reached the log"
    entries = json_lines(raw.splitlines())
    assert len(entries) <= 60, f"{len(entries)} log lines for a flood of {flood}"
    dead = [e for e in entries if e.get("event") == "record dead-lettered"]
    assert 1 <= len(dead) <= 25, f"{len(dead)} dead-letter lines for {flood} poison records"
    for entry in dead:
        assert entry["topic"] == TOPIC and isinstance(entry["partition"], int) and isinstance(entry["offset"], int)
        assert entry["stage"] and entry["error_class"] and entry["level"] == "warning"
    assert len({(e["partition"], e["offset"]) for e in dead}) == len(dead)
    suppressed = sum(e.get("suppressed_since_last", 0) for e in dead)
    assert suppressed == flood + 1 - len(dead), (
        f"{len(dead)} lines logged and {suppressed} reported suppressed, of {flood + 1} dead letters")
