"""``smartico-stream simulate`` drops repeats as the service does: within the window of the records'
source time (the line's ``timestamp_ms``, else the event time), and money events however late;
no longer every repeat in the file."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson

from tests.support.common import CLI

T0_MS = 1_700_000_000_000
MINUTE_MS = 60_000
RULES = """
rules:
  - id: per-bet
    name: a point per bet
    trigger: {event: casino_bet}
    actions:
      - {action: give_points, amount: 1}
  - id: per-deposit
    name: a point per deposit
    trigger: {event: deposit}
    actions:
      - {action: give_points, amount: 1}
"""


def bet(tx: str, when_ms: int) -> dict[str, Any]:
    return {"type": "casino_bet", "ext_brand_id": "b1", "user_ext_id": "u1", "transaction_id": tx,
            "bet_amount": "1.00", "game_id": "g1", "game_name": "Game", "bet_date": when_ms}


def deposit(tx: str, when_ms: int) -> dict[str, Any]:
    return {"type": "deposit", "ext_brand_id": "b1", "user_ext_id": "u1", "transaction_id": tx,
            "amount": "10.00", "dt_finalized": when_ms}


def run(tmp_path: Path, lines: list[dict[str, Any]]) -> subprocess.CompletedProcess[bytes]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return subprocess.run([*CLI, "simulate", "--rules", str(rules), "--events", str(events)],
                          capture_output=True, timeout=60, check=False)


def envelope(stream: str, value: dict[str, Any], timestamp_ms: int | None = None) -> dict[str, Any]:
    line: dict[str, Any] = {"stream": stream, "key": "u1", "value": value}
    if timestamp_ms is not None:
        line["timestamp_ms"] = timestamp_ms
    return line


def test_repeats_are_measured_on_source_time_and_money_events_are_never_applied_twice(tmp_path: Path) -> None:
    lines = [
        envelope("casino", bet("b-1", T0_MS)),
        envelope("casino", bet("b-1", T0_MS), T0_MS + MINUTE_MS),  # a minute later (timestamp): a repeat
        envelope("casino", bet("b-1", T0_MS), T0_MS + 10 * MINUTE_MS),  # 10 minutes later: applied again
        envelope("casino", bet("b-2", T0_MS + 30 * MINUTE_MS)),
        envelope("casino", bet("b-2", T0_MS + 40 * MINUTE_MS)),  # no timestamp: the event time, 10 min on
        envelope("payments", deposit("d-1", T0_MS)),
        envelope("payments", deposit("d-1", T0_MS), T0_MS + 600 * MINUTE_MS),  # 10 hours later: remembered
    ]
    done = run(tmp_path, lines)
    assert done.returncode == 0, done.stderr.decode()
    actions = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [(a["event_id"], a["executions"]) for a in actions] == [
        ("b-1", 1), ("b-1", 1), ("b-2", 1), ("b-2", 1), ("d-1", 1),
    ]
    assert "records 7, processed 5, deduplicated 2, dead-lettered 0, actions 5" in done.stderr.decode()


def test_a_timestamp_that_is_not_whole_milliseconds_names_the_line(tmp_path: Path) -> None:
    done = run(tmp_path, [envelope("casino", bet("b-1", T0_MS)), {**envelope("casino", bet("b-2", T0_MS)),
                                                                  "timestamp_ms": "yesterday"}])
    assert done.returncode != 0
    assert "events.jsonl:2: timestamp_ms must be a whole number of milliseconds" in done.stderr.decode()
