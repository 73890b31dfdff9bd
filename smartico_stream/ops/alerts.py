"""Prometheus alerting rules for smartico-stream, generated from one source with parameters.

``deploy/prometheus/alerts.yaml`` (every operator at once, for docker-compose and promtool tests),
``deploy/k8s/base/prometheusrule.yaml`` and each overlay's ``prometheusrule-patch.yaml`` (one
operator, scoped to its ``operator`` label, consumer group and queues) are all outputs of this
module; tests fail when a checked-in file differs from what its recorded command generates.

    python -m smartico_stream.ops.alerts rules > deploy/prometheus/alerts.yaml
    python -m smartico_stream.ops.alerts prometheusrule --config overlays/x/config.yaml --operator x ...

Labels the rules aggregate by (``namespace``, ``operator``, ``consumer_group``) are target labels:
the ServiceMonitor sets them from the Service's labels and annotations (deploy/k8s/base), the
docker-compose Prometheus sets them statically. The service itself never exports them.

Broker-side rules (a dead consumer exports nothing) read kafka_exporter
(github.com/danielqsj/kafka_exporter: ``kafka_consumergroup_members{consumergroup}``) and the
rabbitmq_prometheus plugin's per-object metrics (``rabbitmq_queue_consumers{vhost,queue}``).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

RUNBOOK_URL = "https://github.com/smartico/smartico-stream/blob/main/docs/runbook.md"
GROUP_BY = ("namespace", "operator", "consumer_group")
TOPIC_LAG = "smartico_stream:consumer_lag_messages:sum_by_topic"
QUEUE_READY = "smartico_stream:rabbitmq_queue_messages_ready:max_by_queue"
VIEW_LAG = "smartico_stream:replica_cursor_lag_seconds:max_by_view"


@dataclass(frozen=True)
class AlertParams:
    """Every threshold and window of the rules. Durations are Prometheus durations."""

    lag_threshold_messages: int = 100_000  # the data-integration spec's "100,000 events or more"
    lag_for: str = "5m"
    trend_window_minutes: int = 15  # Burrow-style: lag never reached 0 and did not go down in this window
    trend_for: str = "2m"
    stall_window: str = "10m"  # no commit on a partition for this long while it has lag
    stall_for: str = "1m"
    no_consumers_for: str = "5m"
    dead_letter_ratio: float = 0.05
    dead_letter_window: str = "10m"
    dead_letter_for: str = "5m"
    rebalance_window: str = "15m"
    rebalance_max: int = 20  # assignments one instance saw in rebalance_window
    rebalance_for: str = "5m"
    paused_for: str = "10m"
    # The replica source (docs/replica.md): a view's cursor lag in seconds, failing reads, cycles.
    replica_lag_threshold_s: int = 900  # 15 minutes behind the database's now()
    replica_lag_for: str = "5m"
    replica_trend_window_minutes: int = 15
    replica_trend_for: str = "2m"
    replica_errors_window: str = "5m"
    replica_errors_for: str = "10m"
    replica_cycle_window: str = "15m"
    replica_cycle_for: str = "5m"
    replica_no_poller_for: str = "5m"
    rest_backlog_age_s: int = 300  # the oldest accepted REST event has waited this long ...
    rest_backlog_window: str = "10m"  # ... and the inbox backlog grew over this window
    rest_backlog_for: str = "5m"
    # Scope: label matchers added to every service-side selector, e.g. {"operator": "operator-a"}.
    selector: Mapping[str, str] = field(default_factory=dict)
    job: str = "smartico-stream"  # the scrape job, for the "service down" rule when no selector is given
    kafka_consumer_group: str | None = "smartico-stream.*"  # regex over kafka_exporter's consumergroup
    rabbitmq_queues: str | None = r"(user_profile|payments|casino|sport)\.[0-9]+"  # regex over queue
    runbook_url: str = RUNBOOK_URL
    group_name: str = "smartico-stream"

    @property
    def trend_segment(self) -> str:
        return f"{max(self.trend_window_minutes // 3, 1)}m"

    @property
    def trend_offset(self) -> str:
        return f"{self.trend_window_minutes - max(self.trend_window_minutes // 3, 1)}m"

    @property
    def replica_trend_segment(self) -> str:
        return f"{max(self.replica_trend_window_minutes // 3, 1)}m"

    @property
    def replica_trend_offset(self) -> str:
        return f"{self.replica_trend_window_minutes - max(self.replica_trend_window_minutes // 3, 1)}m"


def params_from_settings(settings: Any, operator: str | None = None, **overrides: Any) -> AlertParams:
    """Scope the rules to one operator's deployment: its ``operator`` target label, its consumer group
    (exactly) and, for a RabbitMQ source, its queues (exactly)."""
    group = str(settings.kafka.config.get("group.id"))
    queues = None
    if settings.source == "rabbitmq":
        queues = "|".join(re.escape(q) for q in settings.rabbitmq.queues())
    scoped: dict[str, Any] = {
        "selector": {"operator": operator} if operator else {},
        "kafka_consumer_group": re.escape(group) if settings.source == "kafka" else None,
        "rabbitmq_queues": queues,
        "group_name": f"smartico-stream-{operator}" if operator else "smartico-stream",
    }
    scoped.update(overrides)
    return replace(AlertParams(), **scoped)


# -- PromQL helpers --------------------------------------------------------------------------------


def _matchers(params: AlertParams, **extra: str) -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in sorted(params.selector.items())]
    parts += [f'{k}="{_escape(v)}"' for k, v in extra.items()]
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _by(*labels: str) -> str:
    return "by (" + ", ".join((*GROUP_BY, *labels)) + ")"


def _on(*labels: str) -> str:
    return "on (" + ", ".join((*GROUP_BY, *labels)) + ")"


def _anchor(alert: str) -> str:
    return f"{alert.lower()}"


def _alert(params: AlertParams, name: str, expr: str, for_: str, severity: str, summary: str, description: str,
           extra_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    labels = {"severity": severity, **dict(sorted(params.selector.items())), **(extra_labels or {})}
    rule: dict[str, Any] = {"alert": name, "expr": _fold(expr)}
    if for_ not in ("0", "0s", "0m"):
        rule["for"] = for_
    rule["labels"] = labels
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook_url": f"{params.runbook_url}#{_anchor(name)}",
    }
    return rule


def _fold(expr: str) -> str:
    return "\n".join(line.rstrip() for line in expr.strip().splitlines())


# -- the rules -------------------------------------------------------------------------------------


def rule_groups(params: AlertParams) -> list[dict[str, Any]]:
    p = params
    sel = _matchers(p)
    lag = f"smartico_stream_consumer_lag_messages{sel}"
    committed = f"smartico_stream_committed_offset{sel}"
    topic_lag = f"{TOPIC_LAG}{sel}"
    where = "{{ $labels.operator }} ({{ $labels.consumer_group }}, namespace {{ $labels.namespace }})"

    recording = [
        {
            # One number per topic; max by partition first, so a partition two instances both report
            # during a rebalance is counted once.
            "record": TOPIC_LAG,
            "expr": _fold(f"sum {_by('topic')} (max {_by('topic', 'partition')} ({lag}))"),
        },
        {
            "record": QUEUE_READY,
            "expr": _fold(f"max {_by('queue')} (smartico_stream_rabbitmq_queue_messages_ready{sel})"),
        },
        {
            # Only the polling instance updates a view's gauge; a standby's stays at its last value
            # or 0, so max (not sum) over instances.
            "record": VIEW_LAG,
            "expr": _fold(f"max {_by('view')} (smartico_stream_replica_cursor_lag_seconds{sel})"),
        },
    ]
    alerts = [
        _alert(
            p, "SmarticoStreamConsumerLagHigh",
            f"{topic_lag} >= {p.lag_threshold_messages}",
            p.lag_for, "critical",
            f"Consumer lag on {{{{ $labels.topic }}}} is {{{{ $value | humanize }}}} messages for {where}",
            f"The group has been {p.lag_threshold_messages:,} or more messages behind on this topic for "
            f"{p.lag_for}. Events reach the rule engine late.",
        ),
        _alert(
            p, "SmarticoStreamQueueBacklogHigh",
            f"{QUEUE_READY}{sel} >= {p.lag_threshold_messages}",
            p.lag_for, "critical",
            f"RabbitMQ queue {{{{ $labels.queue }}}} holds {{{{ $value | humanize }}}} messages for {where}",
            f"{p.lag_threshold_messages:,} or more messages have been waiting in this queue for {p.lag_for}.",
        ),
        _alert(
            p, "SmarticoStreamConsumerLagNotDecreasing",
            f"""
min_over_time({topic_lag}[{p.trend_window_minutes}m]) > 0
and
min_over_time({topic_lag}[{p.trend_segment}])
  >= max_over_time({topic_lag}[{p.trend_segment}] offset {p.trend_offset})
""",
            p.trend_for, "warning",
            f"Lag on {{{{ $labels.topic }}}} has not gone down for {p.trend_window_minutes} minutes for {where}",
            f"Burrow-style check: over {p.trend_window_minutes} minutes the lag never reached 0 and its lowest "
            f"value in the last {p.trend_segment} is not below its highest value {p.trend_window_minutes} "
            "minutes ago. The group is not catching up, even if the lag is still under the threshold.",
        ),
        _alert(
            p, "SmarticoStreamPartitionStalled",
            f"""
max {_by('topic', 'partition')} (min_over_time({lag}[{p.stall_window}])) > 0
unless {_on('topic', 'partition')}
max {_by('topic', 'partition')} (changes({committed}[{p.stall_window}])) > 0
""",
            p.stall_for, "critical",
            f"Partition {{{{ $labels.topic }}}}[{{{{ $labels.partition }}}}] has lag but no commit for "
            f"{p.stall_window} for {where}",
            f"The partition had lag during the whole of the last {p.stall_window} and its committed offset did "
            "not move: its consumer is stuck (or consumption is paused).",
        ),
        _alert(
            p, "SmarticoStreamDown",
            f"absent(up{_matchers(p) if p.selector else _matchers(replace(p, selector={'job': p.job}))} == 1)",
            p.no_consumers_for, "critical",
            "No smartico-stream instance is up" + (
                f" for {', '.join(f'{k}={v}' for k, v in sorted(p.selector.items()))}" if p.selector else ""),
            f"Prometheus has scraped no healthy smartico-stream target for {p.no_consumers_for}: nothing "
            "consumes the operator's topics. A dead consumer exports no lag, so the lag alerts cannot fire.",
            extra_labels={} if p.selector else {"job": p.job},
        ),
        _alert(
            p, "SmarticoStreamTopicUnassigned",
            f"sum {_by('topic')} (smartico_stream_assigned_partitions{sel}) == 0",
            p.no_consumers_for, "critical",
            f"No instance consumes topic {{{{ $labels.topic }}}} for {where}",
            f"The instances are up but none has a partition of this topic assigned for {p.no_consumers_for} "
            "(topic missing, not authorised, or the group cannot finish a rebalance).",
        ),
        _alert(
            p, "SmarticoStreamQueueWithoutConsumers",
            f"max {_by('queue')} (smartico_stream_rabbitmq_queue_consumers{sel}) == 0",
            p.no_consumers_for, "critical",
            f"RabbitMQ queue {{{{ $labels.queue }}}} has no consumer for {where}",
            "The service reads the queue's consumer count from the broker and it has been 0 for "
            f"{p.no_consumers_for}.",
        ),
    ]
    if p.kafka_consumer_group:
        alerts.append(_alert(
            p, "KafkaConsumerGroupWithoutMembers",
            "sum by (consumergroup) "
            f'(kafka_consumergroup_members{{consumergroup=~"{_escape(p.kafka_consumer_group)}"}}) == 0',
            p.no_consumers_for, "critical",
            "Kafka consumer group {{ $labels.consumergroup }} has no member",
            "Broker-side check (kafka_exporter): the group exists but no consumer has been a member for "
            f"{p.no_consumers_for}, so nobody reads its topics, whatever the service's own metrics say.",
        ))
    if p.rabbitmq_queues:
        alerts.append(_alert(
            p, "RabbitMqQueueWithoutConsumers",
            f'sum by (vhost, queue) (rabbitmq_queue_consumers{{queue=~"{_escape(p.rabbitmq_queues)}"}}) == 0',
            p.no_consumers_for, "critical",
            "RabbitMQ queue {{ $labels.queue }} (vhost {{ $labels.vhost }}) has no consumer",
            "Broker-side check (rabbitmq_prometheus per-object metrics): the queue has had no consumer for "
            f"{p.no_consumers_for}.",
        ))
    alerts += [
        _alert(
            p, "SmarticoStreamDeadLetterRatioHigh",
            f"""
sum {_by('topic')} (rate(smartico_stream_records_total{_matchers(p, result='dead_lettered')}[{p.dead_letter_window}]))
/
sum {_by('topic')} (rate(smartico_stream_records_total{sel}[{p.dead_letter_window}]))
> {p.dead_letter_ratio}
""",
            p.dead_letter_for, "warning",
            f"{{{{ $value | humanizePercentage }}}} of the records on {{{{ $labels.topic }}}} are dead-lettered "
            f"for {where}",
            f"More than {p.dead_letter_ratio:.0%} of the records read from this topic over the last "
            f"{p.dead_letter_window} could not be decoded, mapped or validated. They are committed past and "
            "kept in the dead-letter topic; the operator's producer or the adapter needs a fix.",
        ),
        _alert(
            p, "SmarticoStreamRebalanceStorm",
            f'max {_by()} (increase(smartico_stream_rebalances_total{_matchers(p, kind="assigned")}'
            f"[{p.rebalance_window}])) > {p.rebalance_max}",
            p.rebalance_for, "warning",
            f"Consumer group rebalancing continuously for {where}",
            f"An instance saw more than {p.rebalance_max} partition assignments in {p.rebalance_window}. Each "
            "rebalance pauses consumption; members are probably restarting or missing their poll deadline.",
        ),
        _alert(
            p, "SmarticoStreamConsumptionPaused",
            f"max {_by()} (smartico_stream_consumption_paused{sel}) == 1",
            p.paused_for, "warning",
            f"Consumption paused for the outbox to drain for {where}",
            f"The outbox backlog reached outbox.max_backlog {p.paused_for} ago and sinks have not drained it "
            "to half since: actions are not being delivered.",
        ),
        *_replica_alerts(p, sel, where),
        _alert(
            p, "SmarticoStreamRestBacklogGrowing",
            f"""
max {_by()} (smartico_stream_rest_inbox_oldest_age_seconds{sel}) > {p.rest_backlog_age_s}
and {_on()}
max {_by()} (delta(smartico_stream_rest_inbox_backlog_events{sel}[{p.rest_backlog_window}])) > 0
""",
            p.rest_backlog_for, "warning",
            f"REST inbox backlog growing for {where}",
            f"The oldest accepted REST event has waited more than {p.rest_backlog_age_s}s and the inbox "
            f"backlog grew over the last {p.rest_backlog_window}: events are accepted faster than they are "
            "processed. Above rest.max_backlog the API answers 429.",
        ),
    ]
    return [{"name": p.group_name, "rules": [*recording, *alerts]}]


def _replica_alerts(p: AlertParams, sel: str, where: str) -> list[dict[str, Any]]:
    """The replica source's rules: a view far behind or falling further behind, reads failing,
    no cycle completing, nobody polling. Series exist only for a ``source: replica`` deployment,
    so on the other sources these rules never fire."""
    view_lag = f"{VIEW_LAG}{sel}"
    leader = f"smartico_stream_replica_leader{sel}"
    return [
        _alert(
            p, "SmarticoStreamReplicaCursorLagHigh",
            f"{view_lag} >= {p.replica_lag_threshold_s}",
            p.replica_lag_for, "critical",
            f"Replica view {{{{ $labels.view }}}} is {{{{ $value | humanizeDuration }}}} behind for {where}",
            f"The view's committed cursor has been {p.replica_lag_threshold_s} s or more behind the database's "
            f"now() for {p.replica_lag_for}: its rows reach the rule engine that late.",
        ),
        _alert(
            p, "SmarticoStreamReplicaCursorLagGrowing",
            f"""
min_over_time({view_lag}[{p.replica_trend_window_minutes}m]) > 0
and
min_over_time({view_lag}[{p.replica_trend_segment}])
  > max_over_time({view_lag}[{p.replica_trend_segment}] offset {p.replica_trend_offset})
""",
            p.replica_trend_for, "warning",
            f"Replica view {{{{ $labels.view }}}} is falling behind (at least {{{{ $value | humanizeDuration }}}} "
            f"for {p.replica_trend_window_minutes} minutes) for {where}",
            f"Over {p.replica_trend_window_minutes} minutes the view never caught up (its cursor lag is 0 once "
            f"a cycle reads it to its end) and the lowest lag of the last {p.replica_trend_segment} is above "
            f"the highest of {p.replica_trend_window_minutes} minutes ago: rows arrive faster than they are "
            "read and handled.",
        ),
        _alert(
            p, "SmarticoStreamReplicaReadsFailing",
            f"sum {_by('view')} (increase(smartico_stream_replica_errors_total{sel}[{p.replica_errors_window}])) > 0",
            p.replica_errors_for, "warning",
            f"Reads of replica view {{{{ $labels.view }}}} keep failing for {where}",
            f"Page queries of this view have failed in every {p.replica_errors_window} window for "
            f"{p.replica_errors_for} (connection lost or refused, statement timeout, a missing view or "
            "grant). They are retried with backoff and the cursor does not move.",
        ),
        _alert(
            p, "SmarticoStreamReplicaCycleStalled",
            f"""
max {_by()} ({leader}) == 1
unless {_on()}
sum {_by()} (increase(smartico_stream_replica_cycles_total{sel}[{p.replica_cycle_window}])) > 0
unless {_on()}
sum {_by()} (increase(smartico_stream_replica_rows_total{sel}[{p.replica_cycle_window}])) > 0
""",
            p.replica_cycle_for, "critical",
            f"The replica poller completed no cycle and read no row in {p.replica_cycle_window} for {where}",
            f"An instance holds the views' lease but in the last {p.replica_cycle_window} no cycle over the "
            "views completed and no row was read: the poller is stuck (reads failing, the store refusing "
            "commits, or the outbox pausing consumption). A long first load reads rows and does not fire this.",
        ),
        _alert(
            p, "SmarticoStreamReplicaNoPoller",
            f"max {_by()} ({leader}) == 0",
            p.replica_no_poller_for, "critical",
            f"No instance polls the replica views for {where}",
            f"The instances are up but none has held the views' lease for {p.replica_no_poller_for}: "
            "none can take it (the store is unreachable, or the replica refuses the standby's connection).",
        ),
    ]


def alert_names(params: AlertParams | None = None) -> list[str]:
    return [r["alert"] for g in rule_groups(params or AlertParams()) for r in g["rules"] if "alert" in r]


def render_rules(params: AlertParams) -> dict[str, Any]:
    """A Prometheus rule file."""
    return {"groups": rule_groups(params)}


def render_prometheus_rule(params: AlertParams, name: str = "smartico-stream") -> dict[str, Any]:
    """The same rules as a prometheus-operator PrometheusRule."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "smartico-stream", "app.kubernetes.io/component": "alerts"},
        },
        "spec": {"groups": rule_groups(params)},
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def dump(document: Mapping[str, Any], command: Sequence[str]) -> str:
    header = (
        "# Generated by smartico_stream/ops/alerts.py; do not edit, regenerate with:\n"
        f"# {shlex.join(['python', '-m', 'smartico_stream.ops.alerts', *command])}\n"
    )
    return header + yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smartico_stream.ops.alerts", description=__doc__.split("\n\n")[0])
    parser.add_argument("format", choices=["rules", "prometheusrule"])
    parser.add_argument("--config", type=Path, help="scope the rules to this operator's config (group, queues)")
    parser.add_argument("--operator", help="the operator's `operator` target label")
    parser.add_argument("--lag-threshold", type=int, default=AlertParams.lag_threshold_messages)
    parser.add_argument("--lag-for", default=AlertParams.lag_for)
    parser.add_argument("--name", default="smartico-stream", help="PrometheusRule name")
    parser.add_argument("--runbook-url", default=RUNBOOK_URL)
    args = parser.parse_args(argv)
    overrides = {"lag_threshold_messages": args.lag_threshold, "lag_for": args.lag_for, "runbook_url": args.runbook_url}
    if args.config:
        from smartico_stream.config import load_settings

        params = params_from_settings(load_settings(args.config, environ={}), args.operator, **overrides)
    else:
        params = replace(AlertParams(), **overrides)
        if args.operator:
            params = replace(params, selector={"operator": args.operator})
    document = render_rules(params) if args.format == "rules" else render_prometheus_rule(params, args.name)
    sys.stdout.write(dump(document, list(argv if argv is not None else sys.argv[1:])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
