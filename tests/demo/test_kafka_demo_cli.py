"""`smartico-stream demo --json` end to end, as a user runs it: a subprocess that starts the embedded
Kafka, produces a synthetic stream with duplicates and malformed records, consumes it with the real
service and prints one JSON summary whose numbers add up."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.common import REPO

pytestmark = pytest.mark.kafka

EVENTS = 3000
USERS = 300


def demo_command() -> list[str]:
    script = Path(sys.executable).with_name("smartico-stream")
    if script.exists():
        return [str(script)]
    found = shutil.which("smartico-stream")
    return [found] if found else [sys.executable, "-m", "smartico_stream.cli"]


def test_demo_cli_prints_one_json_summary_whose_counts_add_up():
    args = ["demo", "--events", str(EVENTS), "--users", str(USERS), "--json", "--metrics-port", "0"]
    completed = subprocess.run(
        [*demo_command(), *args],
        capture_output=True,
        timeout=300,  # seconds normally; generous for a loaded shared CI machine
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    stderr_lines = re.sub(r"\x1b\[[0-9;]*m", "", completed.stderr.decode(errors="replace")).splitlines()
    stderr_tail = "\n".join([line for line in stderr_lines if "record dead-lettered" not in line][-25:])
    assert completed.returncode == 0, f"exit code {completed.returncode}; stderr ends with:\n{stderr_tail}"

    stdout = completed.stdout.decode()
    try:
        summary = json.loads(stdout)  # the whole of stdout is the one JSON object
    except json.JSONDecodeError as exc:
        pytest.fail(f"stdout is not one JSON object ({exc}): {stdout[:500]!r}")
    assert isinstance(summary, dict)

    for key in ("produced", "consumed", "processed", "deduplicated", "dead_lettered", "events_per_s", "max_lag",
                "expected"):
        assert key in summary, f"summary lacks {key!r}: {sorted(summary)}"
    assert summary["produced"] == EVENTS
    assert summary["consumed"] == EVENTS
    assert summary["processed"] + summary["deduplicated"] + summary["dead_lettered"] == summary["consumed"]

    expected = summary["expected"]
    assert expected["duplicate"] > 0 and expected["malformed"] > 0, expected
    assert expected["ok"] + expected["duplicate"] + expected["malformed"] == EVENTS
    assert summary["deduplicated"] == expected["duplicate"]
    assert summary["dead_lettered"] == expected["malformed"]
    assert summary["processed"] == expected["ok"]
    # Every malformed kind was produced, and the per-kind counts add up to the malformed total.
    defects = {k: v for k, v in expected.items() if k.startswith("malformed:")}
    assert sum(defects.values()) == expected["malformed"]
    assert len(defects) >= 10, defects

    assert summary["events_per_s"] > 0
    assert summary["max_lag"] >= 0
