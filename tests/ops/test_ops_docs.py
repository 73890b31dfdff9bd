"""The operations docs stay true to the code.

- docs/metrics.md lists every metric family the service exports, with its type and labels, and
  nothing it does not export;
- docs/runbook.md has a section per alert (the section each alert's runbook_url points at), each
  saying what it means, how to confirm it and what to do; docs/operations.md's alert table names
  the same alerts;
- every deploy/ path and relative link the three documents mention exists.
"""

from __future__ import annotations

import re

import pytest

from smartico_stream.ops.alerts import alert_names
from smartico_stream.ops.catalog import exported_metrics
from tests.support.common import REPO as ROOT

DOCS = {name: ROOT / "docs" / name for name in ("operations.md", "runbook.md", "metrics.md")}


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_metrics_doc_lists_every_exported_metric_with_type_and_labels():
    text = DOCS["metrics.md"].read_text()
    documented = {}
    for heading in ("Service metrics", "Process metrics"):
        for name, kind, labels, meaning in (row[:4] for row in table_rows(text, heading)):
            label_set = () if labels == "—" else tuple(sorted(label.strip() for label in labels.split(",")))
            documented[name.strip("`")] = (kind, label_set, meaning)
    exported = {f.name: (f.type, tuple(sorted(f.labels))) for f in exported_metrics()}
    missing = sorted(set(exported) - set(documented))
    assert not missing, f"exported but not in docs/metrics.md: {missing}"
    extra = sorted(set(documented) - set(exported))
    assert not extra, f"in docs/metrics.md but not exported: {extra}"
    for name, (kind, labels) in exported.items():
        assert documented[name][:2] == (kind, labels), f"{name}: docs say {documented[name][:2]}, code {(kind, labels)}"
        assert documented[name][2], f"{name}: no meaning given"


@pytest.mark.parametrize("alert", alert_names())
def test_runbook_has_a_section_per_alert(alert):
    text = DOCS["runbook.md"].read_text()
    assert f"\n## {alert}\n" in text, f"docs/runbook.md has no section '## {alert}'"
    section = text.split(f"\n## {alert}\n", 1)[1].split("\n## ", 1)[0]
    for part in ("**Meaning.**", "**Confirm.**", "**Act.**"):
        assert part in section, f"{alert}: the section lacks {part}"


def test_operations_alert_table_names_every_alert():
    text = DOCS["operations.md"].read_text()
    rows = {line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "|" in line[2:]}
    assert set(alert_names()) <= rows


@pytest.mark.parametrize("name", sorted(DOCS))
def test_paths_and_links_exist(name):
    path = DOCS[name]
    text = path.read_text()
    for mentioned in set(re.findall(r"(?<![\w/.-])(deploy/[\w./-]+\w)", text)):
        if mentioned == "deploy/smartico-stream" or any(p in mentioned for p in ("acme", "OPERATOR")):
            continue  # kubectl's deploy/NAME, and the example operator's paths
        assert (ROOT / mentioned).exists(), f"{name} mentions {mentioned}, which does not exist"
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (path.parent / target).exists(), f"{name} links to {target}, which does not exist"


def _setting_paths(model: type, prefix: str = "") -> set[str]:
    from pydantic import BaseModel

    paths = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths |= _setting_paths(annotation, f"{prefix}{name}.")
        else:
            paths.add(f"{prefix}{name}")
    return paths


def test_config_example_shows_every_setting_and_loads():
    import yaml

    from smartico_stream.config import Settings, load_settings

    example = ROOT / "deploy" / "config.example.yaml"
    load_settings(example, environ={})
    text = example.read_text()
    document = yaml.safe_load(text)

    def present(path: str) -> bool:
        node = document
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return f"# {path.rsplit('.', 1)[-1]}:" in text  # shown commented out
            node = node[part]
        return True

    missing = sorted(p for p in _setting_paths(Settings) if not present(p))
    assert not missing, f"deploy/config.example.yaml does not show: {missing}"
