"""Crash points are reachable from the tests only: ``smartico-stream run`` with
``SMARTICO_STREAM_FAILPOINTS=before_store_commit=1`` handles and commits its first batch and keeps
running (the variable is ignored), while the test-only entry point, handed the same failpoint,
dies by SIGKILL before that commit."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from smartico_stream.store.sqlite import SqliteStore
from tests.support import crash
from tests.support.crash import CASINO_TOPIC, PAY_TOPIC, Processes
from tests.support.kafka import KafkaCluster, TestProducer
from tests.support.rabbitmq import StoreReader

pytestmark = pytest.mark.kafka

FAILPOINT = "before_store_commit=1"
RECORDS = 30


def _config(tmp_path: Path, name: str, kafka: KafkaCluster) -> Path:
    return crash.write_config(
        tmp_path / f"{name}.yaml", bootstrap=kafka.bootstrap_servers, group=f"group-{name}",
        store_url=f"sqlite:///{tmp_path / f'{name}.db'}", sink_path=tmp_path / f"actions-{name}.jsonl",
        instance_id=name,
    )


def _produce(make_producer: Callable[..., TestProducer]) -> dict[tuple[str, int], int]:
    """The first cohort's profiles and deposits; returns the next offset of every partition written."""
    p = make_producer()
    p.ensure_topics(PAY_TOPIC, CASINO_TOPIC)
    for rec in crash.make_workload((5,), prefix="fp").rounds[0][:RECORDS]:
        p.send(rec.topic, rec.key, rec.value)
    p.flush()
    ends: dict[tuple[str, int], int] = {}
    for sent in p.sent:
        ends[(sent.topic, sent.partition)] = max(ends.get((sent.topic, sent.partition), 0), sent.offset + 1)
    return ends


def _stored(tmp_path: Path, name: str) -> dict[tuple[str, int], int]:
    reader = StoreReader(SqliteStore(tmp_path / f"{name}.db"))
    try:
        rows = reader.fetch("SELECT topic, part, next_offset FROM source_offsets")
        return {(t, int(part)): int(o) for t, part, o in rows}
    finally:
        reader.close()


def test_run_ignores_the_failpoints_variable_and_commits_the_batch(
    tmp_path: Path, kafka: KafkaCluster, producer: Callable[..., TestProducer], processes: Processes
) -> None:
    expected = _produce(producer)
    config = _config(tmp_path, "run", kafka)
    proc = processes.start(config, tmp_path / "run.log", name="run", env={"SMARTICO_STREAM_FAILPOINTS": FAILPOINT})
    assert "tests.support.failpoint_run" not in " ".join(proc.proc.args), "the real `run` command"

    def committed() -> bool:
        # The store exists (and is migrated) once the service is up; until then nothing is stored.
        if not (tmp_path / "run.db").exists():
            return False
        stored = _stored(tmp_path, "run")
        return all(stored.get(tp, 0) >= end for tp, end in expected.items())

    crash.wait_until(committed, "the first batches committed", 60, alive=[proc])
    assert proc.alive(), "the failpoint variable must have no effect on `run`"
    assert proc.terminate(30) == 0, proc.log_tail()


def test_the_test_entry_point_dies_at_the_failpoint_before_the_commit(
    tmp_path: Path, kafka: KafkaCluster, producer: Callable[..., TestProducer], processes: Processes
) -> None:
    _produce(producer)
    config = _config(tmp_path, "fp", kafka)
    proc = processes.start(config, tmp_path / "fp.log", failpoints=FAILPOINT, name="fp")
    assert proc.wait(60) == -signal.SIGKILL, proc.log_tail()
    assert _stored(tmp_path, "fp") == {}, "killed before the first store commit"
