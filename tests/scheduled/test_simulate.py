"""``smartico-stream simulate`` fires scheduled runs on the event timeline of its input: a run goes
between the last record before its instant and the first at or after it, at its speed; ``--until``
extends the timeline; a ``now`` rule runs at the end; the output is deterministic and does not
depend on the batch size."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from smartico_stream.adapters.registry import load_adapter
from smartico_stream.engine.actions import Action
from smartico_stream.engine.rule_files import load_rule_files
from smartico_stream.simulate import read_records, simulate
from tests.cli.cli_run import assert_clean_failure, cli

RULES = """
rules:
  - id: bonus
    name: bonus on every deposit
    trigger: {event: deposit}
    actions: [{action: give_bonus, template_id: b}]
  - id: daily-points
    name: five points at 09:00 Malta time for depositors
    timezone: Europe/Malta
    segment: user.deposit_count > 0
    schedule: {type: daily, at: "09:00"}
    speed: 60
    actions: [{action: give_points, amount: 5}]
  - id: tag-now
    name: tag every user, now
    schedule: {type: now}
    actions: [{action: mark_user, tag: replayed}]
"""


def _deposit(user: str, tx: str, at: str) -> bytes:
    value = {"type": "deposit", "dt_finalized": at, "ext_brand_id": "b", "user_ext_id": user,
             "transaction_id": tx, "amount": "10", "currency": "EUR"}
    return orjson.dumps({"stream": "payments", "key": user, "value": value})


# Malta is UTC+2 in May: 09:00 there is 07:00Z.
EVENTS = [
    _deposit("u1", "t1", "2026-05-01T06:00:00Z"),
    _deposit("u2", "t2", "2026-05-01T06:59:59Z"),
    _deposit("u3", "t3", "2026-05-01T07:00:00Z"),  # at the instant: after the run's audience is fixed
    _deposit("u3", "t4", "2026-05-02T08:00:00Z"),
]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(EVENTS) + b"\n")
    return rules, events


def _ids(stdout: str) -> list[str]:
    return [orjson.loads(line)["action_id"] for line in stdout.splitlines()]


def test_runs_fire_at_their_instants_on_the_event_timeline(files: tuple[Path, Path]) -> None:
    rules, events = files
    done = cli(["simulate", "--rules", str(rules), "--events", str(events)])
    assert done.returncode == 0, done.stderr
    first, second = "daily-points@20260501T070000.000000Z", "daily-points@20260502T070000.000000Z"
    now = "tag-now@20260502T080000.000000Z"
    assert _ids(done.stdout) == [
        "b/t1/bonus/0", "b/t2/bonus/0",
        f"b/{first}/u1/daily-points/0",  # at 07:00:00; u3 had not deposited yet: not in the audience
        "b/t3/bonus/0",  # 07:00:00, after the run started
        f"b/{first}/u2/daily-points/0",  # 07:00:01: one user a second
        f"b/{second}/u1/daily-points/0", f"b/{second}/u2/daily-points/0", f"b/{second}/u3/daily-points/0",
        "b/t4/bonus/0",
        f"b/{now}/u1/tag-now/0", f"b/{now}/u2/tag-now/0", f"b/{now}/u3/tag-now/0",  # at the end of the input
    ]
    actions = [orjson.loads(line) for line in done.stdout.splitlines()]
    # speed 60 a minute: one user a second, from the instant
    assert [a["event_time"] for a in actions if a["rule_id"] == "daily-points"][:2] == [
        "2026-05-01T07:00:00.000Z", "2026-05-01T07:00:01.000Z"]
    assert {a["event_type"] for a in actions if a["rule_id"] != "bonus"} == {"scheduled_run"}
    assert "actions 12, scheduled runs 3" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # only the summary: no log lines
    again = cli(["simulate", "--rules", str(rules), "--events", str(events)])
    assert again.stdout == done.stdout  # deterministic


def test_until_extends_the_timeline_and_now_runs_there(files: tuple[Path, Path]) -> None:
    rules, events = files
    done = cli(["simulate", "--rules", str(rules), "--events", str(events), "--until", "2026-05-04T00:00:00Z"])
    assert done.returncode == 0, done.stderr
    runs = sorted({orjson.loads(line)["event_id"].split("/")[0] for line in done.stdout.splitlines()
                   if "@" in line})
    assert runs == ["daily-points@20260501T070000.000000Z", "daily-points@20260502T070000.000000Z",
                    "daily-points@20260503T070000.000000Z", "tag-now@20260504T000000.000000Z"]
    assert "actions 15, scheduled runs 4" in done.stderr


def test_the_batch_size_does_not_move_a_run(files: tuple[Path, Path]) -> None:
    rules, events = files
    loaded = load_rule_files(rules)

    def run(batch_size: int) -> list[str]:
        out: list[Action] = []
        asyncio.run(simulate(read_records(events, None), load_adapter("reference"), loaded.real_time, out.extend,
                             batch_size=batch_size, scheduled=loaded.scheduled))
        return [a.action_id for a in out]

    assert run(1) == run(1000) == run(3)


def test_a_bad_until_is_a_clean_error(files: tuple[Path, Path]) -> None:
    rules, events = files
    assert_clean_failure(cli(["simulate", "--rules", str(rules), "--events", str(events), "--until", "soon"]),
                         2, "--until")
    assert_clean_failure(cli(["simulate", "--rules", str(rules), "--events", str(events),
                              "--until", "2026-05-04T00:00"]), 2, "--until", "offset")


def test_an_invalid_scheduled_rule_is_refused_by_simulate(tmp_path: Path, files: tuple[Path, Path]) -> None:
    _, events = files
    rules = tmp_path / "bad.yaml"
    rules.write_text("rules:\n  - id: s\n    name: s\n    schedule: {type: daily}\n"
                     "    actions: [{action: give_points, amount: 1}]\n")
    assert_clean_failure(cli(["simulate", "--rules", str(rules), "--events", str(events)]), 2,
                         "rule s: schedule", "needs at")
