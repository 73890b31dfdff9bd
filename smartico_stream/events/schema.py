"""JSON Schema of the canonical events, as committed under ``schemas/``.

The committed files are what adapter authors outside Python read; ``smartico-stream schemas check``
(and the test suite) fails when they drift from the models.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from smartico_stream.events.models import EVENT_MODELS, CanonicalEvent


def schema_file_name(model: type[CanonicalEvent]) -> str:
    return f"{model.__name__}.schema.json"


def render_schemas() -> dict[str, bytes]:
    """File name -> JSON Schema bytes (stable key order, trailing newline) for every event model."""
    rendered = {}
    for model in EVENT_MODELS:
        schema = model.model_json_schema(mode="validation")
        schema["$id"] = f"https://smartico-stream/schemas/{schema_file_name(model)}"
        schema["x-event-types"] = sorted(model.event_type)
        rendered[schema_file_name(model)] = (
            orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
    return rendered


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    expected = render_schemas()
    for leftover in directory.glob("*.schema.json"):
        if leftover.name not in expected:
            leftover.unlink()
    written = []
    for name, content in expected.items():
        path = directory / name
        path.write_bytes(content)
        written.append(path)
    return written


def stale_schemas(directory: Path) -> list[str]:
    """Names of schema files that are missing, different from the models, or no longer generated."""
    expected = render_schemas()
    stale = [name for name, content in expected.items() if not (directory / name).is_file()
             or (directory / name).read_bytes() != content]
    stale += sorted(p.name for p in directory.glob("*.schema.json") if p.name not in expected)
    return stale
