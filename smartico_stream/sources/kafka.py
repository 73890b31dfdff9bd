"""Kafka source: a consumer-group member that hands batches of raw records to the service and commits
the offsets it is told are handled. It knows nothing of adapters, rules or stores.

All client calls (consume, commit, close) run on one thread; librdkafka invokes the rebalance,
commit and statistics callbacks from inside those calls, so callbacks never race the batch in hand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from smartico_stream.events.raw import PartitionId, RawRecord
from smartico_stream.observability.logging import get_logger
from smartico_stream.observability.metrics import Metrics

log = get_logger(__name__)


# Settings the service owns: changing them would break "commit only what was handled".
_ENFORCED = {"enable.auto.commit": False, "enable.auto.offset.store": False}
# Defaults a user may override.
_DEFAULTS = {
    "partition.assignment.strategy": "cooperative-sticky",
    "auto.offset.reset": "earliest",  # a new group must not skip the initial load
    "enable.partition.eof": False,
}
# librdkafka keys that describe the connection, shared with producers (dead letters, action sinks).
_CONNECTION_PREFIXES = (
    "bootstrap.servers", "security.protocol", "sasl.", "ssl.", "client.id", "socket.", "broker.",
    "api.version", "enable.ssl", "metadata.", "resolve.", "client.dns", "test.mock.",
)


def connection_config(consumer_config: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of a consumer config a producer to the same cluster needs."""
    return {k: v for k, v in consumer_config.items() if k.startswith(_CONNECTION_PREFIXES)}


class PartitionListener(Protocol):
    """Told about partition ownership changes, from inside the consumer's calls."""

    def partitions_assigned(self, partitions: list[PartitionId]) -> Mapping[PartitionId, int] | None:
        """Returns where to resume each partition (from the store), or None for the committed offset."""
        ...

    def partitions_revoked(self, partitions: list[PartitionId], lost: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    high_watermark: int
    committed: int
    lag: int


class KafkaSource:
    """One consumer-group member subscribed to the configured topics."""

    def __init__(
        self,
        consumer_config: Mapping[str, Any],
        topics: Iterable[str],
        listener: PartitionListener,
        metrics: Metrics,
        batch_size: int = 2000,
        poll_timeout_s: float = 0.5,
        statistics_interval_ms: int = 5000,
        consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer,
    ) -> None:
        self._topics = list(topics)
        self._listener = listener
        self._metrics = metrics
        self._batch_size = batch_size
        self._poll_timeout_s = poll_timeout_s
        self._assigned: set[PartitionId] = set()
        self._paused = False
        self._handled: dict[PartitionId, int] = {}  # next offset to commit, per owned partition
        self._unacknowledged: dict[PartitionId, int] = {}  # committed but not yet acknowledged
        self._last_commit_attempt = 0.0
        self._last_timestamp_ms: dict[PartitionId, int] = {}
        self.lag: dict[PartitionId, PartitionLag] = {}
        config = {**_DEFAULTS, "statistics.interval.ms": statistics_interval_ms, **consumer_config, **_ENFORCED}
        config.update(
            {
                "on_commit": self._on_commit,
                "stats_cb": self._on_stats,
                "error_cb": self._on_error,
                "logger": logging.getLogger("smartico_stream.rdkafka"),
            }
        )
        self._consumer = consumer_factory(config)

    # lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._consumer.subscribe(
            self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def close(self) -> None:
        """Leave the group. Revocation (and its final commit) happens inside this call."""
        self._consumer.close()

    @property
    def joined(self) -> bool:
        """True once the group coordinator gave this member an id."""
        try:
            return bool(self._consumer.memberid())
        except (KafkaException, RuntimeError):
            return False

    @property
    def assigned(self) -> frozenset[PartitionId]:
        return frozenset(self._assigned)

    # consuming ---------------------------------------------------------------------------------

    def poll_batch(self) -> list[RawRecord]:
        """Up to ``batch_size`` records, in partition order: those already fetched, without waiting
        for the batch to fill. Blocks (at most ``poll_timeout_s``) only while none has arrived.

        Waiting to fill a batch would add up to ``poll_timeout_s`` to every record's latency at any
        rate below ``batch_size`` per timeout; under a backlog the fetched queue is full anyway,
        so batches stay large exactly when throughput needs them to."""
        consume = self._consumer.consume
        messages = consume(self._batch_size, 0)
        if not messages:
            messages = consume(1, self._poll_timeout_s)
            if messages and self._batch_size > 1:
                messages += consume(self._batch_size - 1, 0)
        records = []
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_consume_error(error)
                continue
            records.append(_to_record(message))
        return records

    def pause(self) -> None:
        """Stop fetching (keep polling, so the group membership stays alive), also from partitions
        assigned while paused, until :meth:`resume`."""
        self._paused = True
        self._consumer.pause([TopicPartition(t, p) for t, p in self._assigned])

    def resume(self) -> None:
        self._paused = False
        self._consumer.resume([TopicPartition(t, p) for t, p in self._assigned])

    def commit(self, next_offsets: Mapping[PartitionId, int], last_timestamps: Mapping[PartitionId, int]) -> None:
        """Commit (asynchronously) that every record before ``next_offsets`` is handled. Partitions no
        longer owned are skipped: their new owner decides."""
        for tp, offset in next_offsets.items():
            if tp in self._assigned:
                self._handled[tp] = offset
                self._unacknowledged[tp] = offset
        for tp, ts in last_timestamps.items():
            if tp in self._assigned:
                self._last_timestamp_ms[tp] = ts
        self._commit_unacknowledged()

    def retry_commits(self, min_interval_s: float = 1.0) -> None:
        """Commit again what the broker has not acknowledged (a commit refused during a rebalance),
        so an idle partition's lag does not stay inflated until the next record."""
        if self._unacknowledged and time.monotonic() - self._last_commit_attempt >= min_interval_s:
            self._commit_unacknowledged()

    def _commit_unacknowledged(self) -> None:
        pending = [(tp, offset) for tp, offset in self._unacknowledged.items() if tp in self._assigned]
        if not pending:
            return
        self._last_commit_attempt = time.monotonic()
        self._consumer.commit(
            offsets=[TopicPartition(topic, partition, offset) for (topic, partition), offset in pending],
            asynchronous=True,
        )

    # callbacks (run inside consume/close) -----------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        ids = [(tp.topic, tp.partition) for tp in partitions]
        start = self._listener.partitions_assigned(ids) or {}
        for tp in partitions:
            offset = start.get((tp.topic, tp.partition))
            if offset is not None:
                tp.offset = offset  # the store, not the broker, knows what was applied
        consumer.incremental_assign(partitions)
        if self._paused:
            # A rebalance while backpressure holds: the new partitions must wait for resume() too.
            consumer.pause(partitions)
        self._assigned.update(ids)
        self._metrics.rebalances.labels("assigned").inc()
        self._update_assignment_gauge()
        log.info("partitions assigned", partitions=_fmt(ids), resume={f"{t}[{p}]": o for (t, p), o in start.items()})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        ids = [(tp.topic, tp.partition) for tp in partitions]
        # Make the last handled offsets durable before the new owner starts reading.
        pending = [TopicPartition(t, p, self._handled[(t, p)]) for t, p in ids if (t, p) in self._handled]
        if pending:
            try:
                consumer.commit(offsets=pending, asynchronous=False)
            except KafkaException as exc:
                self._metrics.commits.labels("failure").inc()
                log.warning("commit on revoke failed; the new owner re-reads from the last commit", error=str(exc))
        self._release(ids, lost=False)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release([(tp.topic, tp.partition) for tp in partitions], lost=True)

    def _release(self, ids: list[PartitionId], lost: bool) -> None:
        for tp in ids:
            self._assigned.discard(tp)
            self._handled.pop(tp, None)
            self._unacknowledged.pop(tp, None)
            self._last_timestamp_ms.pop(tp, None)
            self.lag.pop(tp, None)
            self._metrics.forget_partition(*tp)
        self._metrics.rebalances.labels("lost" if lost else "revoked").inc()
        self._update_assignment_gauge()
        log.info("partitions lost" if lost else "partitions revoked", partitions=_fmt(ids))
        self._listener.partitions_revoked(ids, lost)

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            self._metrics.commits.labels("failure").inc()
            log.warning("offset commit failed", error=error.str())
            return
        self._metrics.commits.labels("success").inc()
        self._metrics.last_commit.set(time.time())
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if tp.error is None and tp.offset >= 0 and key in self._assigned:
                self._metrics.committed_offset.labels(tp.topic, str(tp.partition)).set(tp.offset)
                if self._unacknowledged.get(key, -1) <= tp.offset:
                    self._unacknowledged.pop(key, None)

    def _on_stats(self, stats_json: str) -> None:
        stats = orjson.loads(stats_json)
        now_ms = time.time() * 1000
        for topic, topic_stats in stats.get("topics", {}).items():
            for partition_key, p in topic_stats.get("partitions", {}).items():
                tp = (topic, int(partition_key))
                if tp not in self._assigned:
                    continue  # includes librdkafka's internal partition -1
                high, committed, lag = p.get("hi_offset", -1), p.get("committed_offset", -1), p.get("consumer_lag", -1)
                if high < 0:
                    continue
                if lag < 0:  # nothing committed yet: everything from the log start is lag
                    lag = high - max(p.get("lo_offset", 0), 0)
                self.lag[tp] = PartitionLag(topic, tp[1], high, committed, lag)
                labels = (topic, partition_key)
                self._metrics.lag_messages.labels(*labels).set(lag)
                self._metrics.high_watermark.labels(*labels).set(high)
                last_ts = self._last_timestamp_ms.get(tp)
                if lag == 0:
                    self._metrics.lag_seconds.labels(*labels).set(0)
                elif last_ts:
                    self._metrics.lag_seconds.labels(*labels).set(max(0.0, (now_ms - last_ts) / 1000))
                # else: behind, but no record handled yet to date the lag; leave the series absent
                # rather than report a reassuring 0.

    def _on_error(self, error: KafkaError) -> None:
        self._metrics.consumer_errors.labels(error.name()).inc()
        if error.fatal():
            log.error("fatal consumer error", error=error.str())
        else:
            log.warning("consumer error", error=error.str())

    def _on_consume_error(self, error: KafkaError) -> None:
        self._metrics.consumer_errors.labels(error.name()).inc()
        if error.fatal():
            raise KafkaException(error)
        log.warning("consume error", error=error.str())

    def _update_assignment_gauge(self) -> None:
        per_topic = dict.fromkeys(self._topics, 0)
        for topic, _ in self._assigned:
            per_topic[topic] = per_topic.get(topic, 0) + 1
        for topic, count in per_topic.items():
            self._metrics.assigned_partitions.labels(topic).set(count)


def _to_record(message: Message) -> RawRecord:
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    # The client types these as optional because error events have none; a consumed record always has them.
    if topic is None or partition is None or offset is None:
        raise RuntimeError(f"consumed Kafka message without coordinates ({topic}, {partition}, {offset})")
    _, timestamp_ms = message.timestamp()
    return RawRecord(
        transport="kafka",
        topic=topic,
        partition=partition,
        offset=offset,
        key=message.key(),
        value=message.value(),
        timestamp_ms=max(timestamp_ms, 0),
        headers=message_headers(message),
    )


def message_headers(message: Message) -> list[tuple[str, bytes | None]]:
    """A consumed message's headers, in order; None is the value of a header sent without one."""
    headers = message.headers()
    if not headers:
        return []
    # The client's type also covers what a producer may pass (a dict, text values); a consumed
    # message has a list of bytes or None values.
    items = headers.items() if isinstance(headers, dict) else headers
    return [(name, value.encode() if isinstance(value, str) else value) for name, value in items]


def _fmt(ids: list[PartitionId]) -> list[str]:
    return [f"{topic}[{partition}]" for topic, partition in sorted(ids)]


def committed_lag(consumer: Consumer, partitions: list[TopicPartition], timeout_s: float = 10.0) -> list[PartitionLag]:
    """Committed offset, high watermark and lag per partition, read from the broker (works while the
    group has no live member)."""
    committed = consumer.committed(partitions, timeout=timeout_s)
    result = []
    for tp in committed:
        low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=timeout_s)
        position = tp.offset if tp.offset != OFFSET_INVALID and tp.offset >= 0 else low
        result.append(PartitionLag(tp.topic, tp.partition, high, tp.offset, max(high - position, 0)))
    return result
