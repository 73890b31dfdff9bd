"""The Prometheus side of committed batches: records, events, dead letters, dedup hits, actions,
rule outcomes, retries and batch timings (observability/metrics.py defines the series)."""

from __future__ import annotations

from collections import Counter

from smartico_stream.batch.observer import BaseObserver, BatchReport
from smartico_stream.observability.metrics import Metrics


class MetricsObserver(BaseObserver):
    """Adds each committed batch to the service's metrics, once per label (a labelled ``inc()`` per
    action would cost more than the action's rule evaluation)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def retried(self, reason: str) -> None:
        self._metrics.batch_retries.labels(reason).inc()

    def alive(self) -> None:
        self._metrics.beat()

    def committed(self, report: BatchReport) -> None:
        m, result = self._metrics, report.result
        for (topic, outcome), count in result.results.items():
            m.records.labels(topic, outcome).inc(count)
        for letter in result.dead_letters:
            m.dead_letters.labels(letter.record.topic, letter.stage, letter.error_class).inc()
        for topic, count in result.duplicates_by_topic.items():
            m.dedup_hits.labels(topic).inc(count)
        for event_type, count in result.events_by_type.items():
            m.events.labels(event_type).inc(count)
        for kind, count in Counter(action.action.value for _, action in report.actions).items():
            m.actions.labels(kind).inc(count)
        for outcome, count in Counter(entry.outcome for entry in report.history).items():
            m.rule_outcomes.labels(outcome).inc(count)
        if report.dedup_evicted:
            m.dedup_evictions.inc(report.dedup_evicted)
        if report.records:  # a batch of handled redeliveries only commits nothing
            m.store_commit_seconds.observe(report.commit_seconds)
        m.batch_seconds.observe(report.seconds)
        m.batch_records.observe(len(report.records))
