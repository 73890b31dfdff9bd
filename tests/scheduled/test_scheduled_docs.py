"""docs/rules.md, Scheduled rules and Changing rules without a restart: every option has an example
(the yaml and simulate examples themselves run in tests/engine/test_rules_docs.py), and the console
examples of the rule commands are run as written, against a fresh store, each documented output
line found in the command's output (``...`` stands for text that differs per run)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from smartico_stream.engine.scheduled.calendar import ScheduleSpec
from smartico_stream.engine.scheduled.spec import ScheduledRuleSpec
from tests.cli.cli_run import cli
from tests.support.common import REPO

DOC = (REPO / "docs" / "rules.md").read_text()
SECTION = DOC[DOC.index("\n## Scheduled rules\n"):]
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
BLOCKS = [(m[1], m[2]) for m in _FENCE.finditer(SECTION)]
YAML = [text for lang, text in BLOCKS if lang == "yaml"]
CONSOLE = [text for lang, text in BLOCKS if lang == "console" and "$ smartico-stream rules" in text]


@pytest.mark.parametrize("option", sorted(ScheduledRuleSpec.model_fields))
def test_every_scheduled_rule_option_is_documented_with_an_example(option: str) -> None:
    assert f"`{option}`" in SECTION
    assert any(re.search(rf"^\s*-?\s*{option}:", text, re.MULTILINE) for text in YAML), option


@pytest.mark.parametrize("kind", ["daily", "weekdays", "days_of_month", "once", "now", "cron"])
def test_every_schedule_kind_has_an_example(kind: str) -> None:
    assert f"### {kind}" in SECTION or f"`{kind}`" in SECTION
    assert any(f"type: {kind}" in text for text in YAML), kind


@pytest.mark.parametrize("option", sorted(set(ScheduleSpec.model_fields) - {"type"}))
def test_every_schedule_option_has_an_example(option: str) -> None:
    assert f"`{option}`" in SECTION
    assert any(re.search(rf"[\s{{,]{option}:", text) for text in YAML), option


def test_the_section_covers_stop_start_reload_and_the_runbook() -> None:
    for text in ("rules stop", "rules start", "rules status", "rules runs", "rules audience", "rules reload",
                 "kill -HUP", "5 minutes before", "--force", "not_executed_within", "keeps its users' progress"):
        assert text in SECTION, text


def _matches(expected: str, output: str) -> bool:
    parts = [part.strip() for part in expected.split("...")]
    for line in output.splitlines():
        at = 0
        for part in parts:
            found = line.find(part, at)
            if found < 0:
                break
            at = found + len(part)
        else:
            return True
    return False


@pytest.mark.parametrize("block", CONSOLE, ids=[f"console-{i}" for i in range(len(CONSOLE))])
def test_console_examples_run_as_documented(tmp_path: Path, block: str) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(YAML[0])  # the first example: daily-depositor-points
    config = tmp_path / "config.yaml"
    config.write_text(f"store:\n  url: sqlite:///{tmp_path / 'state.db'}\nengine:\n  rules: {rules}\n")
    commands: list[tuple[list[str], list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            commands.append((shlex.split(line[2:]), []))
        elif line.strip() and commands:
            commands[-1][1].append(line)
    assert commands
    for argv, expected in commands:
        assert argv[0] == "smartico-stream"
        args = [str(config) if arg == "config.yaml" else arg for arg in argv[1:]]
        done = cli(args, cwd=tmp_path)
        output = done.stdout + done.stderr
        for line in expected:
            assert _matches(line, output), f"$ {' '.join(argv)}\nexpected: {line}\ngot:\n{output}"
