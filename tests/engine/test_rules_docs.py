"""docs/rules.md: every example is also a test.

Every ```yaml block must be a complete rule list that ``load_rules`` accepts. A ```yaml block followed
by a ```jsonl block (reference-format input records) and a ```text block starting with
``expected actions:`` is run through ``smartico-stream simulate``; the expectation is either a count
(``expected actions: 11``) or the exact list of action ids, one per line, in output order. An id
may be followed by ``xN``: the action then stands for N executions (its ``executions``), and
without it for one. A ```jsonl fence may say ``until=INSTANT`` (```` ```jsonl until=2026-05-04T00:00:00Z````):
simulate then extends the timeline to that instant (scheduled rules).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from smartico_stream.engine.actions import ActionKind
from smartico_stream.engine.rule_files import load_rule_files
from smartico_stream.engine.rules import RuleSpec
from tests.support.common import REPO

DOC = REPO / "docs" / "rules.md"
EXPECTED = "expected actions:"

_FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int
    info: str = ""  # what follows the language on the fence line

    @property
    def until(self) -> str | None:
        found = re.search(r"\buntil=(\S+)", self.info)
        return found[1] if found else None


def blocks() -> list[Block]:
    source = DOC.read_text()
    return [Block(m[1], m[3], source.count("\n", 0, m.start()) + 1, m[2].strip()) for m in _FENCE.finditer(source)]


@dataclass(frozen=True)
class Example:
    rules: Block
    records: Block
    expected: Block

    @property
    def id(self) -> str:
        return f"rules.md:{self.rules.line}"


def examples() -> list[Example]:
    found = []
    all_blocks = blocks()
    for i, block in enumerate(all_blocks):
        if block.lang == "jsonl":
            assert i > 0 and all_blocks[i - 1].lang == "yaml", (
                f"line {block.line}: jsonl input must follow a yaml example")
            assert i + 1 < len(all_blocks) and all_blocks[i + 1].text.startswith(EXPECTED), (
                f"line {block.line}: jsonl input must be followed by a ```text block '{EXPECTED} ...'")
            found.append(Example(all_blocks[i - 1], block, all_blocks[i + 1]))
        elif block.text.startswith(EXPECTED):
            assert block.lang == "text" and i > 0 and all_blocks[i - 1].lang == "jsonl", (
                f"line {block.line}: an expectation must be a ```text block right after a ```jsonl block")
    return found


YAML_BLOCKS = [b for b in blocks() if b.lang == "yaml"]
EXAMPLES = examples()


def test_the_doc_has_examples() -> None:
    assert len(YAML_BLOCKS) >= 20
    assert len(EXAMPLES) >= 15


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[f"rules.md:{b.line}" for b in YAML_BLOCKS])
def test_every_yaml_example_loads(tmp_path: Path, block: Block) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(block.text)
    loaded = load_rule_files(path)
    assert loaded.real_time.rules or loaded.real_time.disabled or loaded.scheduled, (
        "an example should define at least one rule")


def _expectation(block: Block) -> int | list[tuple[str, int]]:
    """A count, or (action id, executions) per listed action."""
    first, *rest = block.text.strip().splitlines()
    count = first.removeprefix(EXPECTED).strip()
    if count:
        assert not rest, f"line {block.line}: give a count or a listing of action ids, not both"
        return int(count)
    listed = []
    for line in filter(None, (line.strip() for line in rest)):
        action_id, _, times = line.partition(" x")
        listed.append((action_id, int(times) if times else 1))
    return listed


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_every_runnable_example_gives_the_documented_actions(tmp_path: Path, example: Example) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(example.rules.text)
    events = tmp_path / "events.jsonl"
    events.write_text(example.records.text)
    for line in example.records.text.splitlines():
        assert set(json.loads(line)) >= {"stream", "key", "value"}
    until = ["--until", example.records.until] if example.records.until else []
    result = subprocess.run(
        [sys.executable, "-m", "smartico_stream.cli", "simulate", "--rules", str(rules), "--events", str(events),
         *until],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, cwd=REPO, timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "dead-lettered 0" in result.stderr, f"an input record of the example was rejected: {result.stderr}"
    actions = [json.loads(line) for line in result.stdout.splitlines()]
    expected = _expectation(example.expected)
    if isinstance(expected, int):
        assert len(actions) == expected
    else:
        assert [(a["action_id"], a["executions"]) for a in actions] == expected


# -- the page documents every option ------------------------------------------------------------------


def _doc() -> str:
    return DOC.read_text()


@pytest.mark.parametrize("option", sorted(RuleSpec.model_fields))
def test_every_rule_option_is_documented_with_an_example(option: str) -> None:
    assert f"`{option}`" in _doc()
    assert any(re.search(rf"^\s*-?\s*{option}:", b.text, re.MULTILINE) for b in YAML_BLOCKS), option


@pytest.mark.parametrize("option", [
    "field", "step", "steps", "max_executions_per_event",  # accumulation
    "start", "end", "weekdays", "active_hours",  # activity
    "event", "condition", "period", "iterations",  # trigger / qualification
])
def test_every_nested_option_is_documented_with_an_example(option: str) -> None:
    assert f"`{option}`" in _doc()
    # max_executions_per_event is described in prose; the others appear in an example
    if option != "max_executions_per_event":
        assert any(re.search(rf"[\s{{,]{option}:", b.text) for b in YAML_BLOCKS), option


@pytest.mark.parametrize("kind", [k.value for k in ActionKind])
def test_every_action_kind_is_documented_with_an_example(kind: str) -> None:
    assert f"`{kind}`" in _doc()
    assert any(f"action: {kind}" in b.text for b in YAML_BLOCKS), kind


@pytest.mark.parametrize("outcome", ["executed", "skipped", "qualified", "qualification_expired"])
def test_every_history_outcome_is_documented(outcome: str) -> None:
    assert f"`{outcome}`" in _doc()


def test_the_page_links_its_companions_and_the_tools() -> None:
    doc = _doc()
    assert "](conditions.md)" in doc
    assert "](rule-timing.md)" in doc
    for text in ("smartico-stream rules fields", "smartico-stream simulate", "smartico-stream history",
                 "smartico-stream rules check", "brand/event_id/rule_id/action_index", "1000"):
        assert text in doc, text


def test_the_specification_table_is_on_the_page() -> None:
    doc = _doc()
    for scenario in ("Start date is earlier than Active Hours start time",
                     "Start date is later than Active Hours start time",
                     "End date is earlier than Active Hours end time",
                     "End date is later than Active Hours end time"):
        assert scenario in doc
