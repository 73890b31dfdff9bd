"""The audience estimate counted from the store, against a brute-force count in plain Python."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smartico_stream.cli import app
from smartico_stream.engine.rules import RuleSpec, compile_rule
from smartico_stream.engine.state import UserState
from smartico_stream.scheduler.audience import count_audience, fix_audience
from smartico_stream.store.scheduled import ScheduleStore
from smartico_stream.store.sql import SqlStore
from smartico_stream.store.sqlite import SqliteStore
from tests.scheduled.support import T0, scheduled_rule, seed, user


def population(count: int, seed_value: int = 7) -> list[UserState]:
    rng = random.Random(seed_value)
    users = []
    for i in range(count):
        users.append(user(
            rng.choice(["b1", "b2", "b3"]), f"u{i:05d}",
            deposit_count=rng.randint(0, 5), country=rng.choice(["CA", "MT", "DE", None]),
            points=rng.randint(0, 300), level=rng.choice([None, 1, 2, 3]),
            tags=set(rng.sample(["vip", "churn", "new"], rng.randint(0, 2))),
            account_status=rng.choice(["ACTIVE", "ACTIVE", "BLOCKED"]),
        ))
    return users


CASES: list[tuple[str | None, list[str], Callable[[UserState], bool]]] = [
    (None, [], lambda u: True),
    ("user.deposit_count > 2", [], lambda u: u.deposit_count > 2),
    ('user.country == "CA"', ['"vip" in user.tags', "user.points >= 100"],
     lambda u: u.country == "CA" and "vip" in u.tags and u.points >= Decimal(100)),
    ("user.level == 2 or user.deposit_count == 0", ["user.is_active"],
     lambda u: (u.level == 2 or u.deposit_count == 0) and u.is_active),
]


def brute_force(users: list[UserState], test: Callable[[UserState], bool]) -> Counter[str]:
    return Counter(u.brand for u in users if test(u))


@pytest.mark.asyncio
@pytest.mark.parametrize(("segment", "conditions", "expected"), CASES)
async def test_count_matches_brute_force(sql_store: SqlStore, segment: str | None, conditions: list[str],
                                         expected: Callable[[UserState], bool]) -> None:
    users = population(1200)
    await seed(sql_store, users)
    rule = scheduled_rule(segment=segment, conditions=conditions)
    tables = ScheduleStore(sql_store)
    tables._USER_PAGE = 97  # several pages, one ending mid-brand
    counted = await count_audience(tables, rule, T0)
    assert counted.by_brand == brute_force(users, expected) and counted.seen == 1200
    fixed = await fix_audience(tables, rule, T0)
    assert fixed == sorted((u.brand, u.user) for u in users if expected(u))
    assert (await count_audience(tables, rule, T0, brand="b2")).by_brand == Counter(
        {"b2": brute_force(users, expected)["b2"]}
    ) - Counter()


@pytest.mark.asyncio
async def test_real_time_rule_audience_is_its_segment(sql_store: SqlStore) -> None:
    users = population(300)
    await seed(sql_store, users)
    spec = RuleSpec.model_validate({"id": "r", "name": "r", "segment": 'user.country == "MT"',
                                    "trigger": {"event": "deposit"}, "actions": [{"action": "give_bonus",
                                                                                 "template_id": "x"}]})
    counted = await count_audience(ScheduleStore(sql_store), compile_rule(spec), T0)
    assert counted.by_brand == brute_force(users, lambda u: u.country == "MT")


@pytest.mark.asyncio
async def test_not_executed_within_leaves_recent_users_out(sql_store: SqlStore) -> None:
    from smartico_stream.scheduler.runner import Scheduler
    from tests.scheduled.support import ManualClock

    await seed(sql_store, [user("b1", f"u{i}", deposit_count=1) for i in range(4)])
    rule = scheduled_rule(not_executed_within="7d", schedule={"type": "daily", "at": "09:00"}, speed=100_000)
    clock = ManualClock(T0 - timedelta(minutes=1))
    scheduler = Scheduler(sql_store, {rule.id: rule}, "a", clock)
    await scheduler.tick()
    clock.advance(minutes=1, seconds=1)
    await scheduler.tick()  # starts the run: the first user
    clock.advance(seconds=1)
    await scheduler.tick()  # the other three
    tables = ScheduleStore(sql_store)
    assert (await count_audience(tables, rule, clock() + timedelta(days=6))).total == 0
    assert (await count_audience(tables, rule, clock() + timedelta(days=7, seconds=1))).total == 4


def test_cli_counts_by_brand_for_a_rule_file_not_deployed(tmp_path: Path) -> None:
    import asyncio

    users = population(500)

    async def prepare() -> None:
        store = SqliteStore(tmp_path / "state.db")
        await store.open()
        await seed(store, users)
        await store.close()

    asyncio.run(prepare())
    rules = tmp_path / "new-rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - id: canada-depositors\n    name: Canada\n    segment: user.deposit_count > 2\n"
        "    conditions: ['user.country == \"CA\"']\n    schedule: {type: daily, at: '10:00'}\n"
        "    actions: [{action: give_points, amount: 5}]\n"
        "  - id: rt\n    name: real-time\n    segment: user.level == 3\n    trigger: {event: deposit}\n"
        "    actions: [{action: give_bonus, template_id: b}]\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(f"store:\n  url: sqlite:///{tmp_path / 'state.db'}\n")
    result = CliRunner().invoke(app, ["rules", "audience", "--config", str(config), "--rules", str(rules),
                                      "canada-depositors"])
    assert result.exit_code == 0, result.output
    expected = brute_force(users, lambda u: u.deposit_count > 2 and u.country == "CA")
    for brand, count in expected.items():
        assert f"{brand}  {count}" in result.output
    assert f"total  {sum(expected.values())}" in result.output
    result = CliRunner().invoke(app, ["rules", "audience", "--config", str(config), "--rules", str(rules), "rt"])
    assert result.exit_code == 0, result.output
    assert f"total  {sum(brute_force(users, lambda u: u.level == 3).values())}" in result.output
    result = CliRunner().invoke(app, ["rules", "audience", "--config", str(config), "--rules", str(rules), "nope"])
    assert result.exit_code != 0 and "no rule nope" in result.output
