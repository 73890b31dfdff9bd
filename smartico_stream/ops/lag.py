"""``smartico-stream lag --config FILE``: the consumer group's lag as the broker sees it.

Read from the broker, never from the service: it works while every instance is down (which is
when it matters most), in cron jobs and in CI checks, and it exits non-zero above a threshold.

- Kafka: per partition of every configured topic, the group's committed offset, the high watermark
  and the lag (high watermark minus committed; from the log start when the group never committed).
  The group is never joined: offsets are fetched with OffsetFetch, so running this next to the
  service causes no rebalance.
- RabbitMQ: per configured queue (``rabbitmq.exchanges`` x ``rabbitmq.queues_per_stream``), the
  messages waiting and the consumers attached, from a passive queue declare (it never creates one).
- Replica views: per view, the stored cursor, the cursor lag in seconds (the database's now minus
  the cursor), the rows still to read (up to ``--count-limit``) and the lease holder, from the store
  and the replica (smartico_stream/ops/replica_lag.py).

Exit codes: 0 within the threshold, 1 above it, 2 unusable configuration (including settings the
client library refuses and credentials the broker refuses), 3 broker (store, replica) unreachable or
a configured topic/queue missing.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from smartico_stream.config import (
    EXIT_CHECK_FAILED,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_UNREACHABLE,
    ConfigError,
    Settings,
    connection_problems,
    load_settings,
)
from smartico_stream.ops.replica_lag import DEFAULT_COUNT_CAP, ReplicaLagError, ViewLag, view_lags
from smartico_stream.sources.kafka import PartitionLag, committed_lag, connection_config

__all__ = [
    "EXIT_BROKER",
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_OVER_THRESHOLD",
    "LagError",
    "LagReport",
    "PartitionLag",
    "QueueDepth",
    "ViewLag",
    "group_lag",
    "lag_app",
    "lag_command",
    "queue_depths",
    "report",
]

EXIT_OVER_THRESHOLD, EXIT_BROKER = EXIT_CHECK_FAILED, EXIT_UNREACHABLE

# Kafka errors that mean "the configuration is wrong" (credentials, TLS, authorisation), not "unreachable".
_KAFKA_CONFIG_ERRORS = frozenset({
    KafkaError._AUTHENTICATION, KafkaError._INVALID_ARG, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
})


class LagError(RuntimeError):
    """The broker could not be asked: unreachable or a configured topic/queue missing (exit 3), or it
    refused the configuration: credentials, settings the client refuses (``exit_code`` 2)."""

    def __init__(self, message: str, exit_code: int = EXIT_BROKER) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _kafka_lag_error(what: str, exc: KafkaException) -> LagError:
    error = exc.args[0]
    if not isinstance(error, KafkaError):
        return LagError(f"{what}: {error}")
    code = EXIT_CONFIG if error.code() in _KAFKA_CONFIG_ERRORS else EXIT_BROKER
    return LagError(f"{what}: {error.str()}", code)


@dataclass(frozen=True, slots=True)
class QueueDepth:
    queue: str
    messages: int  # ready messages (not yet delivered to a consumer)
    consumers: int


@dataclass(frozen=True, slots=True)
class LagReport:
    source: str  # kafka | rabbitmq | replica
    group: str  # Kafka group id, the RabbitMQ URL's vhost, or the replica's server
    partitions: tuple[PartitionLag, ...] = ()
    queues: tuple[QueueDepth, ...] = ()
    views: tuple[ViewLag, ...] = ()

    @property
    def total(self) -> int:
        """Messages the group still has to handle: Kafka lag, RabbitMQ ready messages, or rows the
        replica poller still has to read (each view counted up to the count limit)."""
        if self.source == "kafka":
            return sum(p.lag for p in self.partitions)
        if self.source == "replica":
            return sum(v.rows_behind for v in self.views)
        return sum(q.messages for q in self.queues)

    @property
    def max_lag_seconds(self) -> float:
        """The replica views' highest cursor lag in seconds (0 for the other sources)."""
        return max((v.lag_seconds or 0.0 for v in self.views), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "group": self.group,
            "total": self.total,
            "partitions": [asdict(p) for p in self.partitions],
            "queues": [asdict(q) for q in self.queues],
            "views": [asdict(v) for v in self.views],
        }


# -- Kafka ----------------------------------------------------------------------------------------


def lag_consumer_config(settings: Settings) -> dict[str, Any]:
    """The connection settings of ``kafka.config`` (SASL, TLS, ...) plus the group id; nothing that
    would make this client join the group or commit."""
    kafka = settings.kafka.config
    return {
        # Connection failures are retried within --timeout and logged per attempt and broker; the one
        # line at the end says what failed, so only critical client logs are shown (unless configured).
        "log_level": kafka.get("log_level", 2),
        **connection_config(kafka),
        "group.id": kafka["group.id"],
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "logger": logging.getLogger("smartico_stream.rdkafka.lag"),
    }


def group_lag(settings: Settings, timeout_s: float = 10.0) -> list[PartitionLag]:
    """Committed offset, high watermark and lag of every partition of the configured topics, for the
    configured group, read from the broker. Raises LagError when the broker cannot answer or a
    configured topic does not exist (a typo there would otherwise read as "no lag")."""
    try:
        consumer = Consumer(lag_consumer_config(settings))
    except KafkaException as exc:
        raise _kafka_lag_error("kafka.config: librdkafka refuses it", exc) from None
    try:
        try:
            # All topics, so that a missing one is reported rather than auto-created.
            metadata = consumer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise _kafka_lag_error("cannot read cluster metadata", exc) from None
        wanted: list[TopicPartition] = []
        missing = []
        for topic in settings.kafka.stream_of_topic():
            info = metadata.topics.get(topic)
            if info is None or info.error is not None or not info.partitions:
                missing.append(topic)
                continue
            wanted.extend(TopicPartition(topic, p) for p in sorted(info.partitions))
        if missing:
            raise LagError(f"topic(s) not found on the cluster: {', '.join(sorted(missing))}")
        try:
            lags = committed_lag(consumer, wanted, timeout_s)
        except KafkaException as exc:
            raise _kafka_lag_error(f"cannot read committed offsets of group {settings.kafka.config['group.id']}",
                                   exc) from None
        return sorted(lags, key=lambda p: (p.topic, p.partition))
    finally:
        consumer.close()


# -- RabbitMQ -------------------------------------------------------------------------------------


async def queue_depths(settings: Settings, timeout_s: float = 10.0) -> list[QueueDepth]:
    """Ready messages and consumers of every configured queue, by passive declare."""
    import aio_pika
    from aiormq.exceptions import AMQPConnectionError, ChannelNotFoundEntity, ProbableAuthenticationError

    from smartico_stream.sources.rabbitmq import broker_of

    rabbit = settings.rabbitmq
    where = f"RabbitMQ at {broker_of(rabbit.url)}"
    try:
        connection = await asyncio.wait_for(aio_pika.connect_robust(rabbit.url, **rabbit.connection), timeout_s)
    except ProbableAuthenticationError:
        raise LagError(f"rabbitmq.url: {where} refused the login (ACCESS_REFUSED); check the user and password",
                       EXIT_CONFIG) from None
    except TimeoutError:
        raise LagError(f"rabbitmq.url: {where} did not answer within {timeout_s:g} s (--timeout)") from None
    except (OSError, AMQPConnectionError) as exc:
        raise LagError(f"rabbitmq.url: {where} is unreachable: {exc or type(exc).__name__}") from None
    except aio_pika.exceptions.AMQPError as exc:
        raise LagError(f"rabbitmq.url: {where} refused to open the connection ({type(exc).__name__}); check the "
                       "virtual host", EXIT_CONFIG) from None
    depths: list[QueueDepth] = []
    missing: list[str] = []
    try:
        channel = await connection.channel()
        for name in rabbit.queues():
            if channel.is_closed:  # a failed passive declare closes its channel
                channel = await connection.channel()
            try:
                declared = await asyncio.wait_for(channel.declare_queue(name, passive=True), timeout_s)
            except ChannelNotFoundEntity:
                missing.append(name)
                continue
            result = declared.declaration_result
            depths.append(QueueDepth(name, int(result.message_count or 0), int(result.consumer_count or 0)))
    finally:
        await connection.close()
    if missing:
        raise LagError(f"queue(s) not found: {', '.join(missing)}")
    return depths


# -- the report -----------------------------------------------------------------------------------


def report(settings: Settings, timeout_s: float = 10.0, count_cap: int = DEFAULT_COUNT_CAP) -> LagReport:
    if settings.source == "replica":
        try:
            server, views = asyncio.run(asyncio.wait_for(view_lags(settings, count_cap), timeout_s))
        except ReplicaLagError as exc:
            raise LagError(str(exc)) from None
        except TimeoutError:
            raise LagError(f"the store or the replica did not answer within {timeout_s:g} s (--timeout)") from None
        return LagReport("replica", server, views=tuple(views))
    if settings.source == "rabbitmq":
        from urllib.parse import urlsplit

        vhost = urlsplit(settings.rabbitmq.url).path.lstrip("/") or "/"
        depths = asyncio.run(queue_depths(settings, timeout_s))
        return LagReport("rabbitmq", vhost, queues=tuple(depths))
    return LagReport("kafka", str(settings.kafka.config["group.id"]), partitions=tuple(group_lag(settings, timeout_s)))


def render_table(lag: LagReport) -> str:
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    footer: tuple[str, ...]
    if lag.source == "replica":
        header = ("VIEW", "CURSOR", "LAG_SECONDS", "ROWS_BEHIND", "HOLDER")
        rows = [
            (v.view, ",".join(str(c) for c in v.cursor) if v.cursor is not None else "-",
             f"{v.lag_seconds:.1f}" if v.lag_seconds is not None else "-",
             f"{v.rows_behind}{'+' if v.rows_behind_capped else ''}", f"{v.holder or '-'}")
            for v in lag.views
        ]
        footer = ("TOTAL", "", f"{lag.max_lag_seconds:.1f}", str(lag.total), "")
        title = f"replica {lag.group}"
    elif lag.source == "kafka":
        header = ("TOPIC", "PARTITION", "COMMITTED", "HIGH_WATERMARK", "LAG")
        rows = [
            (p.topic, str(p.partition), str(p.committed) if p.committed >= 0 else "-", str(p.high_watermark),
             str(p.lag))
            for p in lag.partitions
        ]
        footer = ("TOTAL", "", "", "", str(lag.total))
        title = f"kafka group {lag.group}"
    else:
        header = ("QUEUE", "MESSAGES", "CONSUMERS")
        rows = [(q.queue, str(q.messages), str(q.consumers)) for q in lag.queues]
        footer = ("TOTAL", str(lag.total), str(sum(q.consumers for q in lag.queues)))
        title = f"rabbitmq vhost {lag.group}"
    table = [header, *rows, footer]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [title]
    for row in table:
        cells = enumerate(zip(row, widths, strict=True))
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in cells))
    return "\n".join(lines)


lag_app = typer.Typer(add_completion=False, help="Consumer lag read from the broker.")


@lag_app.command("lag")
def lag_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config file", exists=True, dir_okay=False)],
    max_lag: Annotated[
        int | None,
        typer.Option(
            "--max-lag", min=0, help="exit 1 when the total lag (Kafka) or ready messages (RabbitMQ) exceed this"
        ),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of a table")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the broker")] = 10.0,
    max_lag_seconds: Annotated[
        float | None,
        typer.Option("--max-lag-seconds", min=0, help="replica: exit 1 when a view's cursor lag exceeds this"),
    ] = None,
    count_limit: Annotated[
        int, typer.Option("--count-limit", min=1, help="replica: count each view's rows behind up to this")
    ] = DEFAULT_COUNT_CAP,
) -> None:
    """Per-partition committed offset, high watermark and lag of the group (Kafka), per-queue depth
    and consumers (RabbitMQ), or per-view cursor, cursor lag, rows behind and lease holder (replica),
    read from the broker (the store and the replica); works while the service is down.

    Exit codes: 0 within --max-lag (and --max-lag-seconds), 1 above, 2 invalid configuration (or
    credentials the broker refuses), 3 broker, store or replica unreachable, or a topic/queue missing."""
    try:
        settings = load_settings(config)
        problem = connection_problems(settings, str(config))
        if problem is not None:
            raise problem
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    try:
        lag = report(settings, timeout, count_limit)
    except LagError as exc:
        typer.echo(f"lag: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    if json:
        sys.stdout.buffer.write(orjson.dumps(lag.as_dict()) + b"\n")
        sys.stdout.flush()
    else:
        typer.echo(render_table(lag))
    if max_lag is not None and lag.total > max_lag:
        typer.echo(f"lag: total {lag.total} is above --max-lag {max_lag}", err=True)
        raise typer.Exit(EXIT_OVER_THRESHOLD)
    if max_lag_seconds is not None and lag.max_lag_seconds > max_lag_seconds:
        typer.echo(f"lag: cursor lag {lag.max_lag_seconds:.1f} s is above --max-lag-seconds {max_lag_seconds:g}",
                   err=True)
        raise typer.Exit(EXIT_OVER_THRESHOLD)


if __name__ == "__main__":
    lag_app()
