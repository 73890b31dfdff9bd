"""The Grafana dashboard (deploy/grafana/dashboards/smartico-stream.json), generated so that every
query is written once and checked: tests/test_ops_grafana.py fails when the checked-in JSON differs
from this module's output, when a query is not valid PromQL (promtool), or when it reads a metric
the service does not export.

    python -m smartico_stream.ops.dashboard > deploy/grafana/dashboards/smartico-stream.json

Variables: datasource, namespace, operator, consumer group, topic. ``namespace``, ``operator`` and
``consumer_group`` are target labels (set by the ServiceMonitor in Kubernetes, statically in
docker-compose); the service itself exports ``topic``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

UID = "smartico-stream"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'namespace=~"$namespace", operator=~"$operator", consumer_group=~"$consumer_group"'
TOPIC_SEL = f'{SEL}, topic=~"$topic"'
RATE = "$__rate_interval"
# process_* series are exported by every Python exporter: keep the targets that are smartico-stream.
ONLY_SERVICE = f"and on (instance) smartico_stream_build_info{{{SEL}}}"
RUNBOOK = "https://github.com/smartico/smartico-stream/blob/main/docs/runbook.md"


@dataclass
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    description: str = ""
    stack: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    title: str
    panels: list[Panel]
    collapsed: bool = False


def rows() -> list[Row]:
    return [
        Row("Overview", [
            Panel("Instances ready", [(f"sum(smartico_stream_ready{{{SEL}}})", "ready")],
                  kind="stat", width=4, height=4,
                  description="Instances connected and joined to the group (/readyz)."),
            Panel("Total lag", [(
                f"sum(max by (topic, partition) (smartico_stream_consumer_lag_messages{{{TOPIC_SEL}}}))",
                "messages")], kind="stat", width=5, height=4,
                  description="High watermark minus committed offset, summed over the selected topics' partitions."),
            Panel("Max lag (seconds)", [(f"max(smartico_stream_consumer_lag_seconds{{{TOPIC_SEL}}})", "seconds")],
                  unit="s", kind="stat", width=5, height=4,
                  description="Age of the last handled record on the most delayed partition (0 when caught up)."),
            Panel("Consumed", [(f"sum(rate(smartico_stream_records_total{{{TOPIC_SEL}}}[{RATE}]))", "records/s")],
                  unit="reqps", kind="stat", width=5, height=4),
            Panel("Dead-letter ratio", [(
                f'sum(rate(smartico_stream_records_total{{{TOPIC_SEL}, result="dead_lettered"}}[{RATE}]))'
                f" / sum(rate(smartico_stream_records_total{{{TOPIC_SEL}}}[{RATE}]))", "dead-lettered")],
                unit="percentunit", kind="stat", width=5, height=4,
                description="Alert SmarticoStreamDeadLetterRatioHigh fires above 5 % over 10 minutes."),
        ]),
        Row("Lag", [
            Panel("Lag per partition (messages)", [(
                f"max by (topic, partition) (smartico_stream_consumer_lag_messages{{{TOPIC_SEL}}})",
                "{{topic}}[{{partition}}]")],
                description="From librdkafka statistics: high watermark minus the group's committed offset."),
            Panel("Lag per partition (seconds)", [(
                f"max by (topic, partition) (smartico_stream_consumer_lag_seconds{{{TOPIC_SEL}}})",
                "{{topic}}[{{partition}}]")], unit="s",
                description="Now minus the broker timestamp of the last handled record; 0 when caught up."),
            Panel("Committed offset progress per partition", [(
                f"sum by (topic, partition) (deriv(smartico_stream_committed_offset{{{TOPIC_SEL}}}[{RATE}]))",
                "{{topic}}[{{partition}}]")], unit="reqps",
                description="A partition with lag and a flat line here is stalled (SmarticoStreamPartitionStalled)."),
            Panel("High watermark progress per partition (produce rate)", [(
                f"sum by (topic, partition) (deriv(smartico_stream_high_watermark_offset{{{TOPIC_SEL}}}[{RATE}]))",
                "{{topic}}[{{partition}}]")], unit="reqps"),
        ]),
        Row("Throughput and latency", [
            Panel("Consume rate by topic and result", [(
                f"sum by (topic, result) (rate(smartico_stream_records_total{{{TOPIC_SEL}}}[{RATE}]))",
                "{{topic}} {{result}}")], unit="reqps", stack=True),
            Panel("Events applied by type", [(
                f"sum by (type) (rate(smartico_stream_events_total{{{SEL}}}[{RATE}]))", "{{type}}")],
                unit="reqps", stack=True),
            Panel("Batch processing time", [
                (f"histogram_quantile({q}, sum by (le) "
                 f"(rate(smartico_stream_batch_processing_seconds_bucket{{{SEL}}}[{RATE}])))", f"p{p}")
                for q, p in (("0.5", 50), ("0.95", 95), ("0.99", 99))
            ], unit="s", description="One batch, decode to commit."),
            Panel("Store commit time and batch size", [
                ("histogram_quantile(0.95, sum by (le) "
                 f"(rate(smartico_stream_store_commit_seconds_bucket{{{SEL}}}[{RATE}])))", "store commit p95 (s)"),
                (f"sum(rate(smartico_stream_batch_records_sum{{{SEL}}}[{RATE}])) "
                 f"/ sum(rate(smartico_stream_batch_records_count{{{SEL}}}[{RATE}]))", "mean batch size (records)"),
            ], unit="short"),
        ]),
        Row("Dead letters and dedup", [
            Panel("Dead letters by stage and error class", [(
                "sum by (topic, stage, error_class) "
                f"(rate(smartico_stream_dead_letters_total{{{TOPIC_SEL}}}[{RATE}]))",
                "{{topic}} {{stage}} {{error_class}}")], unit="reqps", stack=True),
            Panel("Dedup drops", [
                (f"sum by (topic) (rate(smartico_stream_dedup_hits_total{{{TOPIC_SEL}}}[{RATE}]))",
                 "{{topic}} repeats dropped"),
                (f"sum(rate(smartico_stream_dedup_evictions_total{{{SEL}}}[{RATE}]))", "keys evicted (window full)"),
            ], unit="reqps"),
            Panel("Dedup window keys", [(
                f"sum by (instance) (smartico_stream_dedup_window_keys{{{SEL}}})", "{{instance}}")]),
            Panel("Consumer errors, failed commits, redone batches", [
                (f"sum by (code) (rate(smartico_stream_consumer_errors_total{{{SEL}}}[{RATE}]))",
                 "consumer error {{code}}"),
                (f'sum(rate(smartico_stream_commits_total{{{SEL}, result="failure"}}[{RATE}]))', "commit failures"),
                (f"sum by (reason) (rate(smartico_stream_batch_retries_total{{{SEL}}}[{RATE}]))",
                 "batch redone: {{reason}}"),
            ], unit="reqps"),
        ]),
        Row("Consumer group", [
            Panel("Rebalances", [(
                f"sum by (instance, kind) (increase(smartico_stream_rebalances_total{{{SEL}}}[{RATE}]))",
                "{{instance}} {{kind}}")],
                description="SmarticoStreamRebalanceStorm fires above 20 assignments per instance in 15 minutes."),
            Panel("Assigned partitions", [(
                f"sum by (instance, topic) (smartico_stream_assigned_partitions{{{TOPIC_SEL}}})",
                "{{instance}} {{topic}}")], stack=True),
            Panel("Seconds since last commit / poll-loop heartbeat", [
                (f"time() - max by (instance) (smartico_stream_last_commit_timestamp_seconds{{{SEL}}})",
                 "{{instance}} since commit"),
                (f"time() - max by (instance) (smartico_stream_poll_loop_heartbeat_timestamp_seconds{{{SEL}}})",
                 "{{instance}} since heartbeat"),
            ], unit="s", description="/healthz fails when the heartbeat is older than metrics.heartbeat_timeout_s."),
            Panel("Ready and paused", [
                (f"sum by (instance) (smartico_stream_ready{{{SEL}}})", "{{instance}} ready"),
                (f"sum by (instance) (smartico_stream_consumption_paused{{{SEL}}})", "{{instance}} paused (outbox)"),
            ]),
        ]),
        Row("Outbox and sinks", [
            Panel("Outbox backlog", [(f"max(smartico_stream_outbox_backlog{{{SEL}}})", "undelivered actions")],
                  description="Consumption pauses at outbox.max_backlog and resumes at half."),
            Panel("Sink deliveries", [(
                f"sum by (sink, result) (rate(smartico_stream_sink_deliveries_total{{{SEL}}}[{RATE}]))",
                "{{sink}} {{result}}")], unit="reqps"),
            Panel("Actions by kind", [(
                f"sum by (action) (rate(smartico_stream_actions_total{{{SEL}}}[{RATE}]))", "{{action}}")],
                unit="reqps", stack=True),
            Panel("Rule outcomes", [(
                f"sum by (outcome) (rate(smartico_stream_rule_outcomes_total{{{SEL}}}[{RATE}]))", "{{outcome}}")],
                unit="reqps", stack=True),
        ]),
        Row("RabbitMQ source", [
            Panel("Queue depth (ready messages)", [(
                f"max by (queue) (smartico_stream_rabbitmq_queue_messages_ready{{{SEL}}})", "{{queue}}")]),
            Panel("Queue consumers and unacknowledged", [
                (f"max by (queue) (smartico_stream_rabbitmq_queue_consumers{{{SEL}}})", "{{queue}} consumers"),
                (f"sum by (queue) (smartico_stream_rabbitmq_unacked_messages{{{SEL}}})", "{{queue}} unacked (held)"),
            ]),
        ], collapsed=True),
        Row("Replica source", [
            Panel("Cursor lag per view", [(
                f"max by (view) (smartico_stream_replica_cursor_lag_seconds{{{SEL}}})", "{{view}}")], unit="s",
                description="The database's now() minus the view's committed cursor; 0 once a cycle read the view to "
                            "its end. SmarticoStreamReplicaCursorLagHigh fires at 15 minutes."),
            Panel("Rows read per view", [(
                f"sum by (view) (rate(smartico_stream_replica_rows_total{{{SEL}}}[{RATE}]))", "{{view}}")],
                unit="reqps", stack=True),
            Panel("Page query time per view", [
                (f"histogram_quantile({q}, sum by (view, le) "
                 f"(rate(smartico_stream_replica_query_seconds_bucket{{{SEL}}}[{RATE}])))", f"{{{{view}}}} p{p}")
                for q, p in (("0.5", 50), ("0.95", 95))
            ], unit="s", description="Near replica.statement_timeout_s: the view's (cursor, id) index is missing."),
            Panel("Cycles and cycle time", [
                (f"sum(rate(smartico_stream_replica_cycles_total{{{SEL}}}[{RATE}])) * 60", "cycles per minute"),
                ("histogram_quantile(0.95, sum by (le) "
                 f"(rate(smartico_stream_replica_cycle_seconds_bucket{{{SEL}}}[{RATE}])))", "cycle time p95 (s)"),
            ], description="SmarticoStreamReplicaCycleStalled fires when no cycle completes and no row is read "
                           "for 15 minutes."),
            Panel("Read errors by view and class", [(
                f"sum by (view, error_class) (rate(smartico_stream_replica_errors_total{{{SEL}}}[{RATE}]))",
                "{{view}} {{error_class}}")], unit="reqps", stack=True,
                description="Retried with backoff; the cursor does not move."),
            Panel("Poller (lease holder)", [(
                f"sum by (instance) (smartico_stream_replica_leader{{{SEL}}})", "{{instance}}")],
                description="1 on the instance that holds the views' lease and polls them; the others stand by."),
        ], collapsed=True),
        Row("Process", [
            Panel("CPU", [(
                f"rate(process_cpu_seconds_total{{{SEL}}}[{RATE}]) {ONLY_SERVICE}", "{{instance}}")],
                unit="percentunit", description="Cores used (1.0 = one core)."),
            Panel("Memory", [
                (f"process_resident_memory_bytes{{{SEL}}} {ONLY_SERVICE}", "{{instance}} resident"),
                (f"process_virtual_memory_bytes{{{SEL}}} {ONLY_SERVICE}", "{{instance}} virtual"),
            ], unit="bytes"),
            Panel("Open file descriptors", [
                (f"process_open_fds{{{SEL}}} {ONLY_SERVICE}", "{{instance}} open"),
                (f"process_max_fds{{{SEL}}} {ONLY_SERVICE}", "{{instance}} max"),
            ]),
        ]),
    ]


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.kind == "timeseries":
        defaults["custom"] = {"fillOpacity": 10, "showPoints": "never", "lineWidth": 1,
                              "stacking": {"mode": "normal" if panel.stack else "none"}}
    out: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "datasource": DS,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend, "range": True}
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }
    if panel.description:
        out["description"] = panel.description
    if panel.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "colorMode": "value", "graphMode": "area"}
    else:
        out["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                          "tooltip": {"mode": "multi", "sort": "desc"}}
    return out


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row in rows():
        row_panel: dict[str, Any] = {"id": next_id, "type": "row", "title": row.title, "collapsed": row.collapsed,
                                     "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}
        next_id += 1
        y += 1
        children = []
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + line_height
                line_height = 0
            children.append(_panel(panel, next_id, x, y))
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
        if row.collapsed:
            row_panel["panels"] = children
            panels.append(row_panel)
        else:
            panels.append(row_panel)
            panels.extend(children)
    return {
        "uid": UID,
        "title": "smartico-stream",
        "description": "Consumer lag, throughput, dead letters, rebalances, outbox and process health of "
                       "smartico-stream, per operator and consumer group.",
        "tags": ["smartico-stream", "kafka", "consumer"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-3h", "to": "now"},
        "links": [{"title": "Runbook", "type": "link", "url": RUNBOOK, "targetBlank": True, "icon": "doc"}],
        "annotations": {"list": [{
            "name": "Annotations & Alerts", "type": "dashboard", "builtIn": 1, "enable": True, "hide": True,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "iconColor": "rgba(0, 211, 255, 1)",
        }]},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "refresh": 1, "hide": 0},
            _variable("namespace", "Namespace", "label_values(smartico_stream_build_info, namespace)"),
            _variable("operator", "Operator",
                      'label_values(smartico_stream_build_info{namespace=~"$namespace"}, operator)'),
            _variable("consumer_group", "Consumer group",
                      'label_values(smartico_stream_build_info{namespace=~"$namespace", operator=~"$operator"}, '
                      "consumer_group)"),
            _variable("topic", "Topic", f"label_values(smartico_stream_records_total{{{SEL}}}, topic)"),
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def queries(document: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard document: panel targets (rows included) and the
    variables' label_values() metric selectors."""
    found: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(document.get("panels", []))
    for variable in document.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if variable.get("type") == "query" and isinstance(text, str) and text.startswith("label_values("):
            inner = text[len("label_values("):-1]
            found.append(inner.rsplit(",", 1)[0].strip())
    return found


if __name__ == "__main__":
    sys.stdout.write(render())
