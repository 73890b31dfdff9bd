"""Scheduled runs against the real stores (SQLite and PostgreSQL): speed on a manual clock, outbox
ids, effects through the versioned state, inactive accounts, stop and start, a crash mid-run, a
failover between two instances, and a user the consumer changes while the run gives them points."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from decimal import Decimal

import pytest

from smartico_stream.engine.state import UserState
from smartico_stream.scheduler.runner import Scheduler
from smartico_stream.store.base import BatchWrite
from smartico_stream.store.scheduled import COMPLETED, RUNNING, STOPPED, ScheduleStore
from smartico_stream.store.sql import SqlStore
from tests.scheduled.support import T0, ManualClock, scheduled_rule, seed, user

pytestmark = pytest.mark.asyncio


def depositors(count: int) -> list[UserState]:
    return [user("b1", f"u{i:03d}", deposit_count=1) for i in range(count)]


async def test_a_run_executes_the_audience_at_its_speed(sql_store: SqlStore) -> None:
    await seed(sql_store, [*depositors(10), user("b1", "z-nodeposit")])
    clock = ManualClock()
    rule = scheduled_rule(speed=2)  # 2 users a minute: one every 30 s
    scheduler = Scheduler(sql_store, {rule.id: rule}, "a", clock)
    wake = await scheduler.tick()
    [run] = await ScheduleStore(sql_store).runs(rule.id)
    assert run.audience == 10 and run.position == 1 and run.status == RUNNING
    assert wake is not None and wake <= run.started_at + timedelta(seconds=30)
    clock.advance(seconds=29)
    await scheduler.tick()
    assert (await ScheduleStore(sql_store).runs(rule.id))[0].position == 1
    clock.advance(seconds=1)
    await scheduler.tick()
    assert (await ScheduleStore(sql_store).runs(rule.id))[0].position == 2
    clock.advance(minutes=2)  # four more are due: 30 s each
    await scheduler.tick()
    assert (await ScheduleStore(sql_store).runs(rule.id))[0].position == 6
    clock.advance(minutes=10)
    await scheduler.tick()
    [run] = await ScheduleStore(sql_store).runs(rule.id)
    assert (run.status, run.position, run.executed, run.skipped) == (COMPLETED, 10, 10, 0)
    actions = await sql_store.all_actions()
    assert len(actions) == 20 and len({a.action_id for a in actions}) == 20
    assert actions[0].action_id == f"b1/{run.run_id}/u000/weekly-points/0"
    users = {u.user: u for u in await sql_store.all_users()}
    assert users["u005"].points == Decimal(10) and "got-weekly" in users["u005"].tags
    assert users["z-nodeposit"].points == 0
    # "now" runs once: later ticks start nothing
    clock.advance(days=3)
    await scheduler.tick()
    assert len(await ScheduleStore(sql_store).runs(rule.id)) == 1
    history = await sql_store.history(rule=rule.id)
    assert {h.event_id for h in history} == {run.run_id} and len(history) == 10


async def test_inactive_accounts_get_nothing_with_the_reason(sql_store: SqlStore) -> None:
    await seed(sql_store, [user("b1", "ok", deposit_count=2), user("b1", "blocked", deposit_count=2,
                                                                  account_status="BLOCKED")])
    clock = ManualClock()
    rule = scheduled_rule(speed=1000)
    scheduler = Scheduler(sql_store, {rule.id: rule}, "a", clock)
    await scheduler.tick()
    clock.advance(seconds=1)  # the second user is due 60 ms after the first
    await scheduler.tick()
    [run] = await ScheduleStore(sql_store).runs(rule.id)
    assert (run.status, run.executed, run.skipped) == (COMPLETED, 1, 1)
    assert {a.user for a in await sql_store.all_actions()} == {"ok"}
    [entry] = await sql_store.history(user="blocked")
    assert entry.outcome == "skipped" and "BLOCKED is not ACTIVE" in (entry.reason or "")


async def test_daily_runs_each_day_and_stop_halts_the_run_until_started(sql_store: SqlStore) -> None:
    await seed(sql_store, depositors(6))
    clock = ManualClock(T0.replace(hour=8))
    rule = scheduled_rule(schedule={"type": "daily", "at": "09:00"}, speed=1)
    tables = ScheduleStore(sql_store)
    scheduler = Scheduler(sql_store, {rule.id: rule}, "a", clock)
    wake = await scheduler.tick()  # not due yet: wakes by 09:00 (sooner, to renew its lease)
    assert wake is not None and wake <= T0
    assert await tables.runs(rule.id) == []
    clock.advance(hours=1, minutes=1)  # 09:01: the run starts late; users are spread from its start
    await scheduler.tick()
    assert (await tables.runs(rule.id))[0].position == 1
    clock.advance(minutes=2)  # users 1 and 2 are due
    await scheduler.tick()
    assert (await tables.runs(rule.id))[0].position == 3
    # An operator stops it during the run: pending users no longer progress.
    assert await tables.set_status(rule.id, False, "alice", clock())
    clock.advance(minutes=10)
    await scheduler.tick()
    [run] = await tables.runs(rule.id)
    assert (run.status, run.position) == (STOPPED, 3)
    clock.advance(days=1)  # the next day's 09:00 passes while stopped: no run
    await scheduler.tick()
    assert len(await tables.runs(rule.id)) == 1
    # Started again: the stopped run is not resumed; the next scheduled instant runs.
    assert await tables.set_status(rule.id, True, "bob", clock())
    await scheduler.tick()
    assert len(await tables.runs(rule.id)) == 1
    clock.at = T0.replace(day=3)  # 09:00 on the 3rd
    await scheduler.tick()
    runs = await tables.runs(rule.id)
    assert [r.status for r in runs] == [STOPPED, RUNNING] and runs[1].scheduled_at == T0.replace(day=3)
    audit = await tables.audit(rule.id)
    assert [(a.active, a.changed_by) for a in audit] == [(False, "alice"), (True, "bob")]


async def test_stop_before_a_run_means_no_run(sql_store: SqlStore) -> None:
    await seed(sql_store, depositors(2))
    clock = ManualClock(T0.replace(hour=8, minute=56))
    rule = scheduled_rule(schedule={"type": "daily", "at": "09:00"})
    tables = ScheduleStore(sql_store)
    scheduler = Scheduler(sql_store, {rule.id: rule}, "a", clock)
    await scheduler.tick()
    await tables.set_status(rule.id, False, "alice", clock())
    clock.advance(minutes=30)
    await scheduler.tick()
    assert await tables.runs(rule.id) == []
    assert await sql_store.all_actions() == []


class Crash(Exception):
    pass


async def test_a_crash_mid_step_resumes_exactly_once(sql_store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(sql_store, depositors(30))
    clock = ManualClock()
    rule = scheduled_rule(speed=60)  # one a second
    first = Scheduler(sql_store, {rule.id: rule}, "a", clock, step_users=4)
    await first.tick()
    clock.advance(seconds=9)
    original = type(sql_store).write_in
    calls = 0

    async def crashing(self: SqlStore, conn: object, batch: BatchWrite) -> None:
        nonlocal calls
        calls += 1
        await original(self, conn, batch)  # type: ignore[arg-type]
        if calls == 2:
            raise Crash  # dies inside the transaction, after writing: all of the step rolls back

    monkeypatch.setattr(type(sql_store), "write_in", crashing)
    with pytest.raises(Crash):
        await first.tick()
    monkeypatch.setattr(type(sql_store), "write_in", original)
    [run] = await ScheduleStore(sql_store).runs(rule.id)
    assert run.position == 5  # the first step of this tick (4 users) landed, the second did not
    # Another instance takes over once the crashed one's lease expired, and finishes the run.
    clock.advance(minutes=2)
    second = Scheduler(sql_store, {rule.id: rule}, "b", clock)
    await second.tick()
    [run] = await ScheduleStore(sql_store).runs(rule.id)
    assert (run.status, run.executed) == (COMPLETED, 30)
    ids = Counter(a.action_id for a in await sql_store.all_actions())
    assert len(ids) == 60 and set(ids.values()) == {1}
    assert all(u.points == 10 for u in await sql_store.all_users())


async def test_failover_fences_the_former_leader(sql_store: SqlStore) -> None:
    await seed(sql_store, depositors(20))
    clock = ManualClock()
    rule = scheduled_rule(speed=6)  # one every 10 s
    a = Scheduler(sql_store, {rule.id: rule}, "a", clock)
    b = Scheduler(sql_store, {rule.id: rule}, "b", clock)
    await a.tick()
    assert a.leading
    await b.tick()
    assert not b.leading  # a's lease is still valid
    tables = ScheduleStore(sql_store)
    [stale] = await tables.runs(rule.id)
    clock.advance(seconds=45)  # a stalls past its lease; b takes over
    await b.tick()
    assert b.leading
    assert (await tables.runs(rule.id))[0].position == 5
    # a wakes up late, still believing it leads, and tries to go on from where it was
    assert a.epoch is not None
    await a._advance(rule, stale)
    assert not a.leading
    assert (await tables.runs(rule.id))[0].position == 5  # a wrote nothing
    clock.advance(minutes=5)
    await b.tick()
    [run] = await tables.runs(rule.id)
    assert (run.status, run.executed) == (COMPLETED, 20)
    ids = Counter(x.action_id for x in await sql_store.all_actions())
    assert len(ids) == 40 and set(ids.values()) == {1}


async def test_a_user_who_deposits_while_the_run_gives_them_points(sql_store: SqlStore,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(sql_store, [user("b1", "u1", deposit_count=1, points=5)])
    clock = ManualClock()
    rule = scheduled_rule(speed=1000)
    scheduler = Scheduler(sql_store, {rule.id: rule}, "a", clock)
    original = type(sql_store).load_users
    raced = False

    async def load_then_consumer_writes(self: SqlStore, keys):  # type: ignore[no-untyped-def]
        nonlocal raced
        loaded = await original(self, keys)
        if not raced:
            raced = True
            # The consumer applies a deposit to the same user between the run's load and commit.
            [consumer_view] = (await original(self, keys)).values()
            consumer_view.deposit_count += 1
            consumer_view.points += Decimal(1)
            await self.commit(BatchWrite(users=[consumer_view]))
        return loaded

    monkeypatch.setattr(type(sql_store), "load_users", load_then_consumer_writes)
    await scheduler.tick()
    [state] = await sql_store.all_users()
    assert state.deposit_count == 2  # the consumer's change is kept
    assert state.points == Decimal(16)  # 5 + 1 from the consumer + 10 from the run, once
    assert len(await sql_store.all_actions()) == 2
