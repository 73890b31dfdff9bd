"""The committed JSON schemas under ``schemas/`` are exactly what the models generate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from smartico_stream.events import EVENT_MODELS, EventType
from smartico_stream.events.schema import render_schemas, schema_file_name, stale_schemas
from tests.support.common import REPO

SCHEMAS = REPO / "schemas"
SCHEMA_FILES = sorted(SCHEMAS.glob("*.schema.json"))


def test_committed_schemas_match_the_models() -> None:
    stale = stale_schemas(SCHEMAS)
    assert stale == [], f"regenerate with `smartico-stream schemas export`: {stale}"


def test_there_is_one_schema_file_per_model() -> None:
    assert {p.name for p in SCHEMA_FILES} == {schema_file_name(m) for m in EVENT_MODELS}


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_each_schema_file_is_json_with_an_id_and_its_event_types(path: Path) -> None:
    schema = orjson.loads(path.read_bytes())
    assert isinstance(schema, dict)
    assert schema["$id"].endswith("/" + path.name)
    assert schema["x-event-types"] and all(t in set(EventType) for t in schema["x-event-types"])
    assert schema["type"] == "object"
    # extra="forbid" must reach adapter authors outside Python too.
    assert schema["additionalProperties"] is False
    assert {"type", "brand_id", "user_id", "event_id", "event_time"} <= set(schema["properties"])


def test_every_event_type_is_covered_exactly_once() -> None:
    covered = [t for p in SCHEMA_FILES for t in orjson.loads(p.read_bytes())["x-event-types"]]
    assert sorted(covered) == sorted(t.value for t in EventType)


def test_ids_are_unique_and_rendering_is_stable() -> None:
    assert len({orjson.loads(p.read_bytes())["$id"] for p in SCHEMA_FILES}) == len(SCHEMA_FILES)
    assert render_schemas() == render_schemas()


def test_a_drifted_or_foreign_file_is_reported(tmp_path: Path) -> None:
    for name, content in render_schemas().items():
        (tmp_path / name).write_bytes(content)
    assert stale_schemas(tmp_path) == []
    victim = schema_file_name(EVENT_MODELS[0])
    (tmp_path / victim).write_bytes(b"{}\n")
    (tmp_path / "Gone.schema.json").write_bytes(b"{}\n")
    assert stale_schemas(tmp_path) == [victim, "Gone.schema.json"]


def _walk(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found += _walk(value)
    elif isinstance(node, list):
        for value in node:
            found += _walk(value)
    return found


def test_amount_constraints_use_standard_json_schema_keywords() -> None:
    for path in SCHEMA_FILES:
        for node in _walk(orjson.loads(path.read_bytes())):
            assert "ge" not in node, f"{path.name}: {node.get('description')}"
