"""Rule control from the CLI: status, stop (with the 5-minute window for scheduled rules), start,
runs; stored and audited; a stopped real-time rule ignores events."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smartico_stream.cli import app
from smartico_stream.engine.evaluator import Evaluation, RuleEngine
from smartico_stream.engine.rules import load_rules
from smartico_stream.engine.scheduled.spec import load_scheduled_rules
from smartico_stream.engine.state import UserState
from smartico_stream.events.models import MODEL_BY_TYPE, EventType
from smartico_stream.scheduler.runner import Scheduler
from smartico_stream.store.scheduled import ScheduleStore
from smartico_stream.store.sqlite import SqliteStore
from tests.scheduled.support import ManualClock, seed, user


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    soon = (datetime.now(UTC) + timedelta(minutes=3)).isoformat(timespec="seconds")
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - id: rt-bonus\n    name: deposit bonus\n    trigger: {event: deposit}\n"
        "    actions: [{action: give_bonus, template_id: b}]\n"
        "  - id: yearly\n    name: far away\n    schedule: {type: days_of_month, days: [1], at: '00:00',"
        f" start: '{datetime.now(UTC).year + 1}-06-01T00:00'}}\n"
        "    actions: [{action: give_points, amount: 1}]\n"
        f"  - id: soon\n    name: about to run\n    schedule: {{type: once, at: '{soon}'}}\n"
        "    actions: [{action: mark_user, tag: t}]\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(f"store:\n  url: sqlite:///{tmp_path / 'state.db'}\nengine:\n  rules: {rules}\n")
    return config, tmp_path / "state.db"


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["rules", *args])
    return result.exit_code, result.output


def test_status_stop_start_and_audit(setup: tuple[Path, Path]) -> None:
    config, db = setup
    code, out = cli("status", "--config", str(config))
    assert code == 0, out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["rt-bonus"].split()[1:3] == ["real-time", "active"]
    assert "scheduled active" in " ".join(lines["yearly"].split()[1:3])
    assert f"next run {datetime.now(UTC).year + 1}-06-01T00:00:00Z" in lines["yearly"]

    code, out = cli("stop", "yearly", "--config", str(config), "--by", "alice")
    assert code == 1 and "not running or about to run" in out and "--force" in out
    code, out = cli("stop", "soon", "--config", str(config), "--by", "alice")
    assert code == 0 and "soon stopped by alice" in out
    code, out = cli("stop", "yearly", "--config", str(config), "--by", "alice", "--force")
    assert code == 0, out
    code, out = cli("stop", "rt-bonus", "--config", str(config), "--by", "carol")
    assert code == 0 and "rt-bonus stopped by carol" in out
    code, out = cli("stop", "rt-bonus", "--config", str(config))
    assert code == 0 and "already stopped" in out
    code, out = cli("stop", "nope", "--config", str(config))
    assert code == 1 and "no rule nope" in out

    code, out = cli("status", "--config", str(config))
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "inactive" in lines["rt-bonus"] and "changed by carol" in lines["rt-bonus"]

    async def stopped() -> set[str]:
        store = SqliteStore(db)
        await store.open()
        try:
            return await ScheduleStore(store).stopped_rules()
        finally:
            await store.close()

    assert asyncio.run(stopped()) == {"rt-bonus", "yearly", "soon"}
    code, out = cli("start", "rt-bonus", "--config", str(config), "--by", "dave")
    assert code == 0 and "started by dave" in out
    assert asyncio.run(stopped()) == {"yearly", "soon"}

    async def audit() -> list[tuple[bool, str]]:
        store = SqliteStore(db)
        await store.open()
        try:
            return [(a.active, a.changed_by) for a in await ScheduleStore(store).audit("rt-bonus")]
        finally:
            await store.close()

    assert asyncio.run(audit()) == [(False, "carol"), (True, "dave")]


def test_a_stopped_real_time_rule_ignores_events(setup: tuple[Path, Path]) -> None:
    config, _ = setup
    rules = load_rules(Path(config.read_text().split("rules: ")[1].strip()))
    deposit = MODEL_BY_TYPE[EventType.DEPOSIT].model_validate({
        "event_id": "e1", "brand_id": "b1", "user_id": "u1", "event_time": "2026-06-01T10:00:00Z",
        "type": "deposit", "amount": "10", "currency": "EUR",
    })
    out = Evaluation()
    RuleEngine(rules).evaluate(UserState("b1", "u1"), deposit, out)
    assert [a.rule_id for a in out.actions] == ["rt-bonus"]
    stopped = rules.without({"rt-bonus", "not-a-real-time-rule"})
    out = Evaluation()
    RuleEngine(stopped).evaluate(UserState("b1", "u1"), deposit, out)
    assert out.actions == [] and "rt-bonus" in stopped.disabled
    assert rules.without(set()) is rules


def test_runs_lists_past_runs(setup: tuple[Path, Path]) -> None:
    config, db = setup
    path = Path(config.read_text().split("rules: ")[1].strip())
    scheduled = load_scheduled_rules(path)
    assert set(scheduled) == {"yearly", "soon"}

    async def run_soon() -> None:
        store = SqliteStore(db)
        await store.open()
        await seed(store, [user("b1", "u1"), user("b1", "u2", account_status="BANNED")])
        clock = ManualClock(scheduled["soon"].next_run_after(datetime.now(UTC)) or datetime.now(UTC))
        scheduler = Scheduler(store, {"soon": scheduled["soon"]}, "a", clock)
        clock.advance(seconds=1)
        await ScheduleStore(store).ensure_status("soon", datetime.now(UTC) - timedelta(minutes=1))
        await scheduler.tick()
        clock.advance(seconds=5)
        await scheduler.tick()
        [state] = [u for u in await store.all_users() if u.user == "u1"]
        assert "t" in state.tags and state.points == Decimal(0)
        await store.close()

    asyncio.run(run_soon())
    code, out = cli("runs", "soon", "--config", str(config))
    assert code == 0, out
    assert "completed" in out and "audience 2  executed 1  skipped 1  not reached 0" in out
    code, out = cli("runs", "yearly", "--config", str(config))
    assert "no runs of yearly" in out


def test_a_run_left_by_a_removed_rule_can_be_stopped(setup: tuple[Path, Path]) -> None:
    config, db = setup
    path = Path(config.read_text().split("rules: ")[1].strip())
    soon = load_scheduled_rules(path)["soon"]

    async def start_run() -> None:
        store = SqliteStore(db)
        await store.open()
        await seed(store, [user("b1", f"u{i}") for i in range(5)])
        clock = ManualClock(soon.next_run_after(datetime.now(UTC)) or datetime.now(UTC))
        await ScheduleStore(store).ensure_status("soon", datetime.now(UTC) - timedelta(minutes=1))
        slow = dataclasses.replace(soon, spec=soon.spec.model_copy(update={"speed": 1}), not_executed_within=None)
        await Scheduler(store, {"soon": slow}, "a", clock).tick()
        await store.close()

    asyncio.run(start_run())
    path.write_text(path.read_text().split("  - id: soon")[0])  # the rule is removed from the file
    code, out = cli("runs", "soon", "--config", str(config))
    assert "running" in out, out
    code, out = cli("stop", "soon", "--config", str(config), "--by", "erin")
    assert code == 0 and "soon stopped by erin" in out, out
    code, out = cli("runs", "soon", "--config", str(config))
    assert "stopped" in out and "not reached 4" in out, out
    code, out = cli("stop", "never-existed", "--config", str(config))
    assert code == 1 and "no rule never-existed" in out
