"""`smartico-stream lag`: the group's lag read from the broker, while the service is down.

- Kafka (embedded cluster): after the real service consumed two topics and stopped, and more
  records arrived, group_lag() gives per partition the committed offset the broker holds, the high
  watermark and their difference; the command prints the table and exits 1 above --max-lag, 0 at
  or below it, prints one JSON object with --json, and runs as `python -m smartico_stream.ops.lag`;
- a group that never committed counts from the log start; a configured topic that does not exist,
  and an unreachable cluster, exit 3 with the reason; an invalid config exits 2;
- RabbitMQ (the local broker, when running): ready messages and consumers per configured queue by
  passive declare (a missing queue is an error, never created).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
import yaml
from typer.testing import CliRunner

from smartico_stream.config import load_settings
from smartico_stream.ops.lag import (
    EXIT_BROKER,
    EXIT_CONFIG,
    EXIT_OVER_THRESHOLD,
    LagError,
    group_lag,
    lag_app,
    queue_depths,
)
from smartico_stream.service import Service

FAST_GROUP = {"session.timeout.ms": 3000, "heartbeat.interval.ms": 250}


def deposit(user: str, tx: str) -> bytes:
    return orjson.dumps({"dt_finalized": 1_700_000_000_000, "ext_brand_id": "lag-brand", "user_ext_id": user,
                         "transaction_id": tx, "type": "deposit", "amount": "1.00", "core_wallet_currency": "EUR"})


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(lag_app, list(args))


@pytest.mark.kafka
@pytest.mark.asyncio
async def test_lag_of_a_stopped_group_per_partition_and_the_command_around_it(
    kafka, make_settings, producer, run_service, broker, eventually, tmp_path
):
    group = f"ops-lag-{uuid.uuid4().hex[:6]}"
    topics = {"payments": ["lag-payments"], "casino": ["lag-casino"]}
    settings = make_settings(topics, group=group, kafka={"config": FAST_GROUP})
    p = producer()
    p.ensure_topics("lag-payments", "lag-casino")
    for i in range(120):
        p.send("lag-payments", f"u{i}", deposit(f"u{i}", f"a{i}"))
    p.flush()
    service = Service(settings)
    async with run_service(service) as running:
        await running.wait_until(lambda: service.stats.consumed >= 120, "the first 120 records")
        await eventually(lambda: all(o.drained for o in broker.offsets(group, ["lag-payments"]).values()),
                         "commits", 30)
    # The service is down; more records arrive.
    for i in range(100):
        p.send("lag-payments", f"u{i}", deposit(f"u{i}", f"b{i}"))
    for i in range(30):
        p.send("lag-casino", f"u{i}", b"{}")
    p.flush()

    lags = await asyncio.to_thread(group_lag, settings)
    assert [(x.topic, x.partition) for x in lags] == [(t, n) for t in ("lag-casino", "lag-payments") for n in range(4)]
    offsets = broker.offsets(group, ["lag-payments", "lag-casino"])
    for x in lags:
        truth = offsets[(x.topic, x.partition)]
        assert x.high_watermark == truth.high
        assert x.committed == truth.committed
        assert x.lag == truth.high - (truth.committed if truth.committed >= 0 else truth.low)
    assert sum(x.lag for x in lags if x.topic == "lag-payments") == 100
    assert sum(x.lag for x in lags if x.topic == "lag-casino") == 30, "never committed: counted from the log start"

    config = write_config(tmp_path / "lag.yaml", {
        "kafka": {"config": {"bootstrap.servers": kafka.bootstrap_servers, "group.id": group}, "topics": topics},
    })
    over = await asyncio.to_thread(invoke, "--config", str(config), "--max-lag", "129")
    assert over.exit_code == EXIT_OVER_THRESHOLD, over.output
    assert "above --max-lag 129" in over.output
    table = over.output.splitlines()
    assert table[0] == f"kafka group {group}"
    assert table[1].split() == ["TOPIC", "PARTITION", "COMMITTED", "HIGH_WATERMARK", "LAG"]
    assert table[-2].split() == ["TOTAL", "130"]
    assert any(line.split()[0] == "lag-casino" and line.split()[2] == "-" for line in table[2:-2])

    within = await asyncio.to_thread(invoke, "--config", str(config), "--max-lag", "130", "--json")
    assert within.exit_code == 0, within.output
    document = json.loads(within.output)
    assert document["total"] == 130 and document["group"] == group and len(document["partitions"]) == 8

    # As a process, the way cron and CI call it (works before `lag` is registered in cli.py).
    completed = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "smartico_stream.ops.lag", "--config", str(config), "--max-lag", "0"],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("SMARTICO_STREAM_")},
    )
    assert completed.returncode == EXIT_OVER_THRESHOLD, completed.stderr
    assert completed.stdout.splitlines()[-1].split() == ["TOTAL", "130"]

    # A configured topic that does not exist is an error, not "no lag" (and is not created).
    missing = write_config(tmp_path / "missing.yaml", {
        "kafka": {"config": {"bootstrap.servers": kafka.bootstrap_servers, "group.id": group},
                  "topics": {"payments": ["lag-payments"], "sport": ["lag-no-such-topic"]}},
    })
    result = await asyncio.to_thread(invoke, "--config", str(missing))
    assert result.exit_code == EXIT_BROKER and "lag-no-such-topic" in result.output
    with pytest.raises(LagError):
        await asyncio.to_thread(group_lag, load_settings(missing, environ={}))


def test_unreachable_cluster_and_invalid_config_exit_with_their_codes(tmp_path):
    unreachable = write_config(tmp_path / "down.yaml", {
        "kafka": {"config": {"bootstrap.servers": "127.0.0.1:9", "group.id": "g"}, "topics": {"payments": "p"}},
    })
    result = invoke("--config", str(unreachable), "--timeout", "1")
    assert result.exit_code == EXIT_BROKER, result.output
    assert "cannot read cluster metadata" in result.output

    invalid = write_config(tmp_path / "bad.yaml", {"kafka": {"batch_size": 0}})
    result = invoke("--config", str(invalid))
    assert result.exit_code == EXIT_CONFIG and "kafka.batch_size" in result.output


@pytest.mark.rabbitmq
@pytest.mark.asyncio
async def test_rabbitmq_queue_depth_and_consumers_by_passive_declare(tmp_path, rabbitmq):
    connection = await asyncio.wait_for(aio_pika.connect(rabbitmq), 5)
    prefix = f"ops-lag-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-payments.0", f"{prefix}-payments.1"]
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.declare_queue(name, durable=False, auto_delete=False)
        try:
            for count, name in ((7, names[0]), (3, names[1])):
                for _ in range(count):
                    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=name)
            # One consumer holding one message unacknowledged on the first queue.
            consumer_channel = await connection.channel()
            await consumer_channel.set_qos(prefetch_count=1)
            held = asyncio.Event()

            async def hold(message: Any) -> None:
                held.set()

            consumer_queue = await consumer_channel.get_queue(names[0])
            await consumer_queue.consume(hold)
            await asyncio.wait_for(held.wait(), 5)

            config = write_config(tmp_path / "rabbit.yaml", {
                "source": "rabbitmq",
                "rabbitmq": {"url": rabbitmq, "exchanges": {"payments": f"{prefix}-payments"},
                             "queues_per_stream": 2},
            })
            settings = load_settings(config, environ={})
            depths = {d.queue: (d.messages, d.consumers) for d in await queue_depths(settings)}
            assert depths == {names[0]: (6, 1), names[1]: (3, 0)}

            over = await asyncio.to_thread(invoke, "--config", str(config), "--max-lag", "8", "--json")
            assert over.exit_code == EXIT_OVER_THRESHOLD, over.output
            document = json.loads(over.output.splitlines()[0])
            assert document["source"] == "rabbitmq" and document["total"] == 9
            await consumer_channel.close()

            missing = load_settings(write_config(tmp_path / "missing.yaml", {
                "source": "rabbitmq",
                "rabbitmq": {"url": rabbitmq, "exchanges": {"payments": f"{prefix}-payments"},
                             "queues_per_stream": 3},
            }), environ={})
            with pytest.raises(LagError, match=f"{prefix}-payments.2"):
                await queue_depths(missing)
            check = await connection.channel()
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await check.declare_queue(f"{prefix}-payments.2", passive=True)  # was not created
        finally:
            cleanup = await connection.channel()
            for queue in names:
                await cleanup.queue_delete(queue)
