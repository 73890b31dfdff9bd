"""The settings tables of ``docs/sinks.md``, generated from the sinks' settings models, so the
documentation cannot drift from what validation accepts (a test compares them).

``python -m smartico_stream.sinks.docs [--check] [PATH]`` rewrites every table between its markers
in PATH (default ``docs/sinks.md``); ``--check`` only says whether they are current (exit 1 if not).
"""

from __future__ import annotations

import re
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from smartico_stream.sinks.registry import SINK_TYPES

__all__ = ["main", "render", "settings_table"]

BEGIN = "<!-- sink settings: {kind} (generated from its model by `python -m smartico_stream.sinks.docs`) -->"
END = "<!-- end of sink settings: {kind} -->"
_TYPE_NAMES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " or ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) if arg is not type(None) else "null" for arg in typing.get_args(annotation))
    if origin is dict:
        value = typing.get_args(annotation)[1]
        return "mapping" if value is Any else f"mapping of {_type_name(value)}s"
    return _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _constraints(field: FieldInfo) -> str:
    words = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Gt):
            words.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Ge):
            words.append(f">= {item.ge}")
        elif isinstance(item, annotated_types.MinLen) and item.min_length == 1:
            words.append("not empty")
    return f" ({', '.join(words)})" if words else ""


def _default(name: str, field: FieldInfo) -> str:
    if name == "type" or field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict) and not value:
        return "`{}`"
    if isinstance(value, str) and not value:
        return '`""`'
    return f"`{value}`"


def settings_table(model: type[BaseModel]) -> str:
    """A Markdown table of the model's settings: name, type (with its bounds), default, meaning."""
    rows = ["| setting | type | default | meaning |", "|---|---|---|---|"]
    # ``type`` first, ``name`` (shared by every sink) last; the model's own fields in between.
    names = sorted(model.model_fields, key=lambda n: (n != "type", n == "name"))
    for name in names:
        field = model.model_fields[name]
        kind = _type_name(field.annotation) + _constraints(field)
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {kind} | {_default(name, field)} | {meaning} |")
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    """``text`` with every sink's table between its markers replaced by the generated one. Raises
    ValueError when a sink's markers are missing: the documentation must show every sink."""
    for kind, model in SINK_TYPES.items():
        begin, end = BEGIN.format(kind=kind), END.format(kind=kind)
        pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.DOTALL)
        found = pattern.search(text)
        if found is None:
            raise ValueError(f"no generated table for the {kind} sink: add the lines\n{begin}\n{end}")
        text = f"{text[: found.start()]}{begin}\n{settings_table(model)}{end}{text[found.end() :]}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or with ``--check`` verify) the tables; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    path = Path(paths[0]) if paths else Path("docs/sinks.md")
    text = path.read_text()
    rendered = render(text)
    if check:
        if rendered != text:
            sys.stderr.write(f"{path}: the sink settings tables are out of date; run python -m {__spec__.name}\n")
            return 1
        return 0
    if rendered != text:
        path.write_text(rendered)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
