"""Prometheus metrics of the scheduler, on the registry it is given (the service's own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SchedulerMetrics:
    """Runs by result, users executed and pending, conflicts with the consumer. The execution rate
    is ``rate(smartico_stream_scheduled_users_total[1m])``. The rule id is a label: rules are few
    and named by operators, unlike users or events."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs_started = Counter(
            "smartico_stream_scheduled_runs_started", "Scheduled rule runs started", registry=registry
        )
        self.runs = Counter(
            "smartico_stream_scheduled_runs", "Scheduled rule runs finished, by result (completed, stopped)",
            ["result"], registry=registry,
        )
        self.users_executed = Counter(
            "smartico_stream_scheduled_users", "Users of scheduled runs handled, by result (executed, skipped)",
            ["result"], registry=registry,
        )
        self.users_pending = Gauge(
            "smartico_stream_scheduled_users_pending", "Users of a rule's running run not handled yet",
            ["rule"], registry=registry,
        )
        self.conflicts = Counter(
            "smartico_stream_scheduled_conflicts",
            "Run steps redone because a consumer changed one of their users meanwhile", registry=registry,
        )


class RuleControlMetrics:
    """Rule changes in a running service: reloads by result, the rules in effect, the stopped ones."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reloads = Counter(
            "smartico_stream_rule_reloads",
            "Rule file reloads, by result (applied, unchanged, refused: invalid files, the running rules kept)",
            ["result"], registry=registry,
        )
        self.rules = Gauge(
            "smartico_stream_rules_in_effect", "Rules this instance applies, by kind (real_time, scheduled)",
            ["kind"], registry=registry,
        )
        self.stopped = Gauge(
            "smartico_stream_rules_stopped", "Rules of the rule files an operator stopped (rules stop)",
            registry=registry,
        )
