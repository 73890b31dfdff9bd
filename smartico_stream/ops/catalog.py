"""What the service exports, as data: every metric family (name, type, labels, help) and every
series name a PromQL query can select (``_total``, ``_bucket``, ... included), plus a small PromQL
scanner that lists the metric names a query reads.

Used to keep the dashboard, the alert rules and docs/metrics.md honest: a query that reads a metric
the service does not export shows an empty panel, or worse, an alert that can never fire.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from smartico_stream.observability.metrics import Metrics

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


@dataclass(frozen=True, slots=True)
class MetricFamily:
    name: str  # as documented and queried: counters with _total, info with _info
    type: str
    labels: tuple[str, ...]
    help: str
    series: tuple[str, ...]  # every series name this family exports


def exported_metrics() -> list[MetricFamily]:
    """Every metric family of a fresh service ``Metrics`` (its own registry: nothing global)."""
    metrics = Metrics(CollectorRegistry(auto_describe=True))
    # The service registers the scheduler's and the rule control's metrics on the same registry.
    from smartico_stream.scheduler.metrics import RuleControlMetrics, SchedulerMetrics

    scheduler, control = SchedulerMetrics(metrics.registry), RuleControlMetrics(metrics.registry)
    families: dict[str, MetricFamily] = {}
    for value in [*vars(metrics).values(), *vars(scheduler).values(), *vars(control).values()]:
        if isinstance(value, MetricWrapperBase):
            kind = value._type
            if kind is None:  # only the abstract wrapper base has no type
                raise TypeError(f"metric {value._name} has no type")
            base = value._name
            labels = tuple(value._labelnames)
            series = tuple(base + suffix for suffix in _SUFFIXES[kind])
            shown = {"counter": base + "_total", "info": base + "_info"}.get(kind, base)
            if kind == "info":
                labels = tuple(sorted(value._value.keys())) if hasattr(value, "_value") else labels
            families[shown] = MetricFamily(shown, kind, labels, value._documentation, series)
    # Collectors without wrappers (process_*, python_info): read what they collect.
    for family in metrics.registry.collect():
        if family.name.startswith("smartico_stream_"):
            continue
        labels = tuple(sorted({k for s in family.samples for k in s.labels}))
        names = tuple(sorted({s.name for s in family.samples})) or (family.name,)
        shown = names[0] if len(names) == 1 else family.name
        families.setdefault(shown, MetricFamily(shown, family.type, labels, family.documentation, names))
    return sorted(families.values(), key=lambda f: f.name)


def exported_series_names() -> set[str]:
    return {name for family in exported_metrics() for name in family.series}


# -- PromQL ---------------------------------------------------------------------------------------

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "inf", "nan", "atan2", "start", "end",
}
_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<braces>\{[^{}]*\})
  | (?P<range>\[[^\[\]]*\])
  | (?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)[a-zA-Z]*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<other>\S)
    """,
    re.VERBOSE,
)
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Aggregation operators may be followed by `by (...)` rather than by their parenthesis.
_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (function names, keywords and label names excluded).
    Grafana variables (``$x``, ``${x}``) may appear in label matchers and ranges."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "ident":
            nxt = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
            if text in _GROUPING:
                # skip the label list in parentheses that follows
                if nxt[1] == "(":
                    depth, i = 0, i + 1
                    while i < len(tokens):
                        if tokens[i][1] == "(":
                            depth += 1
                        elif tokens[i][1] == ")":
                            depth -= 1
                            if depth == 0:
                                break
                        i += 1
            elif text not in _KEYWORDS and text not in _AGGREGATIONS and nxt[1] != "(":
                names.add(text)
        elif kind == "braces":
            # a selector given only as {__name__="x"}
            for match in re.finditer(r'__name__\s*=\s*"([^"]+)"', text):
                names.add(match.group(1))
        i += 1
    return names
