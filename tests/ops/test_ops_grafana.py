"""The Grafana dashboard (deploy/grafana/dashboards/smartico-stream.json).

- it is exactly what smartico_stream/ops/dashboard.py generates (edit the generator, not the JSON);
- variables: datasource, namespace, operator, consumer group, topic; every panel uses the
  datasource variable, and every service query is filtered by the namespace/operator/group variables;
- the panels the operations issue asks for are there (lag in messages and seconds per partition,
  consume rate, p95 processing time, dead letters, dedup drops, rebalances, assigned partitions,
  outbox backlog, process CPU and memory);
- every metric any query reads is one the service exports, and every query is valid PromQL
  (promtool parses them as recording rules with the Grafana variables filled in).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from smartico_stream.ops import dashboard
from smartico_stream.ops.catalog import exported_series_names, promql_metric_names
from tests.support.common import REPO as ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "smartico-stream.json"


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(document: dict) -> list[dict]:
    found = []
    for panel in document["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [p for p in found if p["type"] != "row"]


def test_checked_in_json_is_the_generators_output():
    assert DASHBOARD.read_text() == dashboard.render(), (
        "stale dashboard: python -m smartico_stream.ops.dashboard > deploy/grafana/dashboards/smartico-stream.json")


def test_variables_and_datasource(document):
    variables = {v["name"]: v for v in document["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "operator", "consumer_group", "topic"]
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "operator", "consumer_group", "topic"):
        assert variables[name]["includeAll"] and variables[name]["multi"] and variables[name]["allValue"] == ".*"
    ids = [p["id"] for p in document["panels"]] + [c["id"] for p in document["panels"] for c in p.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(document):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            for variable in ("namespace", "operator", "consumer_group"):
                assert f'{variable}=~"${variable}"' in expr, f"{panel['title']}: not filtered by ${variable}"


REQUIRED = {
    "lag in messages per partition": r"max by \(topic, partition\) \(smartico_stream_consumer_lag_messages",
    "lag in seconds per partition": r"max by \(topic, partition\) \(smartico_stream_consumer_lag_seconds",
    "consume rate": r"rate\(smartico_stream_records_total",
    "p95 processing time": (
        r"histogram_quantile\(0\.95, sum by \(le\) \(rate\(smartico_stream_batch_processing_seconds_bucket"
    ),
    "dead letters": r"rate\(smartico_stream_dead_letters_total",
    "dedup drops": r"rate\(smartico_stream_dedup_hits_total",
    "rebalances": r"increase\(smartico_stream_rebalances_total",
    "assigned partitions": r"smartico_stream_assigned_partitions",
    "outbox backlog": r"smartico_stream_outbox_backlog",
    "process CPU": r"rate\(process_cpu_seconds_total",
    "process memory": r"process_resident_memory_bytes",
}


@pytest.mark.parametrize("what", REQUIRED)
def test_required_panel_is_present(document, what):
    exprs = [t["expr"] for p in panels(document) for t in p["targets"]]
    assert any(re.search(REQUIRED[what], e) for e in exprs), f"no panel shows {what}"


def test_every_queried_metric_is_exported(document):
    exported = exported_series_names()
    queries = dashboard.queries(document)
    assert len(queries) >= 30
    for expr in queries:
        names = promql_metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        assert names <= exported, f"{expr!r} reads {sorted(names - exported)}, which the service does not export"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_every_query_is_valid_promql(document, tmp_path):
    def fill(expr: str) -> str:
        expr = expr.replace("$__rate_interval", "1m")
        return re.sub(r'"\$\{?\w+\}?"', '".*"', expr)

    rules = [{"record": f"dashboard:query_{i}", "expr": fill(e)} for i, e in enumerate(dashboard.queries(document))]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    completed = subprocess.run(["promtool", "check", "rules", str(tmp_path / "queries.yaml")],
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
