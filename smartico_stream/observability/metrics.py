"""Prometheus metrics of one service instance, on a registry of its own (no process-global state).

Names follow Prometheus conventions with the ``smartico_stream_`` prefix. Labels are bounded: topic,
partition, result, event type, error class; never a user or event id. docs/metrics.md lists them all.
"""

from __future__ import annotations

import contextlib
import platform
import time

import confluent_kafka
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from smartico_stream import __version__

_BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000)


class Metrics:
    """Every metric the service exports. Create one per service instance."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Info("smartico_stream_build", "Version of the service and its Kafka client", registry=r)
        self.build_info.info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "confluent_kafka": confluent_kafka.version()[0],
                "librdkafka": confluent_kafka.libversion()[0],
            }
        )
        self.records = Counter(
            "smartico_stream_records", "Records handled, by topic and result (ok, deduplicated, dead_lettered)",
            ["topic", "result"], registry=r,
        )
        self.events = Counter("smartico_stream_events", "Canonical events applied, by event type", ["type"], registry=r)
        self.dead_letters = Counter(
            "smartico_stream_dead_letters", "Records dead-lettered, by topic, stage and error class",
            ["topic", "stage", "error_class"], registry=r,
        )
        self.dedup_hits = Counter(
            "smartico_stream_dedup_hits", "Events dropped as repeats inside the dedup window", ["topic"], registry=r
        )
        self.dedup_keys = Gauge(
            "smartico_stream_dedup_window_keys", "Keys held in the dedup windows of assigned partitions", registry=r
        )
        self.dedup_evictions = Counter(
            "smartico_stream_dedup_evictions", "Keys dropped before their window ended because the window was full",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "smartico_stream_batch_processing_seconds", "Time to process one batch, decode to commit",
            buckets=_BATCH_SECONDS_BUCKETS, registry=r,
        )
        self.batch_records = Histogram(
            "smartico_stream_batch_records", "Records per consumed batch", buckets=_BATCH_SIZE_BUCKETS, registry=r
        )
        self.lag_messages = Gauge(
            "smartico_stream_consumer_lag_messages",
            "High watermark minus committed offset, per assigned partition (librdkafka statistics)",
            ["topic", "partition"], registry=r,
        )
        self.lag_seconds = Gauge(
            "smartico_stream_consumer_lag_seconds",
            "Now minus the broker timestamp of the last handled record, per assigned partition with lag; "
            "0 when caught up",
            ["topic", "partition"], registry=r,
        )
        self.high_watermark = Gauge(
            "smartico_stream_high_watermark_offset", "Partition high watermark", ["topic", "partition"], registry=r
        )
        self.committed_offset = Gauge(
            "smartico_stream_committed_offset", "Offset committed by this consumer", ["topic", "partition"], registry=r
        )
        self.assigned_partitions = Gauge(
            "smartico_stream_assigned_partitions", "Partitions assigned to this instance", ["topic"], registry=r
        )
        self.rebalances = Counter(
            "smartico_stream_rebalances", "Partition rebalance events, by kind (assigned, revoked, lost)",
            ["kind"], registry=r,
        )
        self.commits = Counter(
            "smartico_stream_commits", "Offset commits, by result (success, failure)", ["result"], registry=r
        )
        self.last_commit = Gauge(
            "smartico_stream_last_commit_timestamp_seconds", "Unix time of the last successful commit", registry=r
        )
        self.consumer_errors = Counter(
            "smartico_stream_consumer_errors", "Errors reported by the consumer client, by code", ["code"], registry=r
        )
        self.heartbeat = Gauge(
            "smartico_stream_poll_loop_heartbeat_timestamp_seconds", "Unix time the poll loop last turned", registry=r
        )
        self.ready = Gauge("smartico_stream_ready", "1 when connected and joined to the consumer group", registry=r)
        self.actions = Counter(
            "smartico_stream_actions", "Actions emitted by rules (committed to the outbox), by action", ["action"],
            registry=r,
        )
        self.rule_outcomes = Counter(
            "smartico_stream_rule_outcomes", "Rule history entries, by outcome (executed, skipped, qualified, ...)",
            ["outcome"], registry=r,
        )
        self.store_commit_seconds = Histogram(
            "smartico_stream_store_commit_seconds", "Time of one batch's store transaction",
            buckets=_BATCH_SECONDS_BUCKETS, registry=r,
        )
        self.gc_full_collection_seconds = Histogram(
            "smartico_stream_gc_full_collection_seconds",
            "Full garbage collections run every engine.full_gc_interval_s (the service's thread waits)",
            buckets=_BATCH_SECONDS_BUCKETS, registry=r,
        )
        self.batch_retries = Counter(
            "smartico_stream_batch_retries",
            "Batches redone, by reason (fenced, conflict, engine_error, store_content)", ["reason"], registry=r,
        )
        self.sink_deliveries = Counter(
            "smartico_stream_sink_deliveries", "Actions delivered to sinks, by sink and result", ["sink", "result"],
            registry=r,
        )
        self.outbox_pruned = Counter(
            "smartico_stream_outbox_pruned", "Delivered actions deleted from the outbox after outbox.retention_s",
            registry=r,
        )
        self.history_pruned = Counter(
            "smartico_stream_history_pruned", "Rule execution history rows deleted after store.history_retention_s",
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "smartico_stream_outbox_backlog", "Committed actions not yet delivered to every sink (owned partitions)",
            registry=r,
        )
        # RabbitMQ source (per queue)
        # The replica-database source, per view (a view is a topic; docs/replica.md).
        self.replica_rows = Counter(
            "smartico_stream_replica_rows", "Rows read from the replica, by view", ["view"], registry=r
        )
        self.replica_query_seconds = Histogram(
            "smartico_stream_replica_query_seconds", "Time of one page query, by view", ["view"],
            buckets=_BATCH_SECONDS_BUCKETS, registry=r,
        )
        self.replica_cycle_seconds = Histogram(
            "smartico_stream_replica_cycle_seconds", "Time of one cycle over every view (reading and handling)",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0), registry=r,
        )
        self.replica_cycles = Counter(
            "smartico_stream_replica_cycles", "Cycles over every view completed", registry=r
        )
        self.replica_cursor_lag = Gauge(
            "smartico_stream_replica_cursor_lag_seconds",
            "The database's now minus the committed cursor time, by view (0 once a view is read to its end)",
            ["view"], registry=r,
        )
        self.replica_errors = Counter(
            "smartico_stream_replica_errors", "Failed replica reads (retried), by view and error class",
            ["view", "error_class"], registry=r,
        )
        self.replica_leader = Gauge(
            "smartico_stream_replica_leader", "1 while this instance holds the views' lease and polls them",
            registry=r,
        )
        # The REST source (docs/rest.md): its API and the inbox behind it.
        self.rest_requests = Counter(
            "smartico_stream_rest_requests", "REST API requests answered, by route and HTTP status",
            ["route", "status"], registry=r,
        )
        self.rest_request_seconds = Histogram(
            "smartico_stream_rest_request_seconds", "Time to answer one REST API request (durable when 200), by route",
            ["route"], buckets=_BATCH_SECONDS_BUCKETS, registry=r,
        )
        self.rest_events = Counter(
            "smartico_stream_rest_events", "Events of REST requests, by result (accepted, ignored, rejected)",
            ["result"], registry=r,
        )
        self.rest_inbox_backlog = Gauge(
            "smartico_stream_rest_inbox_backlog_events", "Accepted REST events not yet processed (every instance's)",
            registry=r,
        )
        self.rest_inbox_age = Gauge(
            "smartico_stream_rest_inbox_oldest_age_seconds",
            "How long the oldest accepted, unprocessed REST event has waited; 0 when none waits", registry=r,
        )
        self.rabbitmq_deliveries = Counter(
            "smartico_stream_rabbitmq_deliveries", "Messages delivered to this instance, by queue", ["queue"],
            registry=r,
        )
        self.rabbitmq_acks = Counter(
            "smartico_stream_rabbitmq_acks",
            "Messages acknowledged, by queue and kind (ok, dead_lettered, redelivered_handled)",
            ["queue", "kind"], registry=r,
        )
        self.rabbitmq_ready = Gauge(
            "smartico_stream_rabbitmq_queue_messages_ready", "Messages ready in the queue (read from the broker)",
            ["queue"], registry=r,
        )
        self.rabbitmq_consumers = Gauge(
            "smartico_stream_rabbitmq_queue_consumers",
            "Consumers of the queue as the broker reports them; for quorum queues with single-active-consumer "
            "only the active one is counted (classic queues count the standbys too)",
            ["queue"], registry=r,
        )
        self.rabbitmq_unacked = Gauge(
            "smartico_stream_rabbitmq_unacked_messages", "Messages this instance holds unacknowledged, by queue",
            ["queue"], registry=r,
        )
        self.rabbitmq_recoveries = Counter(
            "smartico_stream_rabbitmq_connection_recoveries", "Times the RabbitMQ connection was re-established",
            registry=r,
        )
        self.rabbitmq_connected = Gauge(
            "smartico_stream_rabbitmq_connected", "1 while connected to RabbitMQ", registry=r
        )
        self.paused = Gauge(
            "smartico_stream_consumption_paused", "1 while consumption waits for sinks to drain the outbox", registry=r
        )

    def beat(self) -> float:
        now = time.time()
        self.heartbeat.set(now)
        return now

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop per-partition series of a partition this instance no longer owns."""
        labels = (topic, str(partition))
        for gauge in (self.lag_messages, self.lag_seconds, self.high_watermark, self.committed_offset):
            with contextlib.suppress(KeyError):  # no series was ever set for the partition
                gauge.remove(*labels)

    def render(self) -> bytes:
        return generate_latest(self.registry)
