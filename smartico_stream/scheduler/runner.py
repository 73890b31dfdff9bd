"""The scheduler: the leader runs scheduled rules' runs over stored users, at their speed.

One :class:`Scheduler` per service instance; at most one of them, the leader, does anything (a
lease with an expiry in the store, see :meth:`ScheduleStore.lead`). Each :meth:`Scheduler.tick`:

1. takes or renews leadership (a non-leader returns and tries again later);
2. for each active scheduled rule, in priority order: if it has a running run, executes the users
   that are due; else, if its next instant has come, fixes the audience (segment and extra
   conditions on the state at that moment), records the run and starts executing it.

User ``i`` of a run is due at ``started_at + i / speed`` minutes (spread evenly). A step executes the
due users (at most ``step_users``) in one store transaction: their states (version-checked: a
consumer writing one of them meanwhile makes a ConflictError, and the step is reloaded and redone,
so nothing is lost or doubled), their actions (the outbox, deterministic ids), their history and
the run's new position. A crash between steps resumes at the stored position: nobody skipped,
nobody twice. Instants missed while no leader ran are coalesced into one run (the latest).

Time comes from an injectable clock; :meth:`Scheduler.run` sleeps on an injectable sleep, so tests
drive a run minute by minute without waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

from smartico_stream.engine.scheduled.execute import execute_for_user
from smartico_stream.engine.scheduled.spec import ScheduledRule
from smartico_stream.engine.state import UserState
from smartico_stream.events.raw import UserKey
from smartico_stream.observability.logging import get_logger
from smartico_stream.scheduler.audience import fix_audience
from smartico_stream.scheduler.metrics import SchedulerMetrics
from smartico_stream.store.base import BatchWrite, ConflictError, FencedError
from smartico_stream.store.scheduled import (
    RUNNING,
    SCHEDULED_PARTITION,
    Run,
    RunStopped,
    ScheduleStore,
)
from smartico_stream.store.sql import SqlStore

log = get_logger(__name__)

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]

_MAX_COALESCE = 100_000  # missed instants skipped over at most (a cron every minute, ~70 days)


class Scheduler:
    """Runs scheduled rules while this instance leads (see the module notes)."""

    def __init__(
        self,
        store: SqlStore,
        rules: Mapping[str, ScheduledRule],
        owner: str,
        clock: Clock,
        *,
        lease_ttl: timedelta = timedelta(seconds=30),
        step_users: int = 500,
        conflict_retries: int = 20,
        metrics: SchedulerMetrics | None = None,
        sleep: Sleep = asyncio.sleep,
        idle: timedelta = timedelta(seconds=5),
        on_written: Callable[[list[UserKey]], None] | None = None,
    ) -> None:
        if step_users < 1:
            raise ValueError("step_users must be at least 1")
        self.store = store
        self.tables = ScheduleStore(store)
        self.owner = owner
        self.clock = clock
        self.lease_ttl = lease_ttl
        self.step_users = step_users
        self.conflict_retries = conflict_retries
        self.metrics = metrics
        self.epoch: int | None = None
        self._sleep = sleep
        self._idle = idle
        # Told which users a step wrote (the service drops them from its state cache, so that its
        # next batch reads them instead of conflicting; correctness never depends on it: versions).
        self._on_written = on_written
        self._rules: dict[str, ScheduledRule] = {}
        self.set_rules(rules)

    def set_rules(self, rules: Mapping[str, ScheduledRule]) -> None:
        """Replace the rule set (a reload); takes effect at the next tick."""
        self._rules = dict(sorted(rules.items(), key=lambda item: (item[1].spec.priority, item[0])))

    @property
    def leading(self) -> bool:
        return self.epoch is not None

    def leases(self) -> dict[tuple[str, int], int]:
        """The scheduled partition's lease while leading, for the outbox relay's ``leases``."""
        return {SCHEDULED_PARTITION: self.epoch} if self.epoch is not None else {}

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set, sleeping until the next due work (at most ``idle``); resigns
        leadership on the way out so another instance takes over at once."""
        try:
            while not stop.is_set():
                wake = await self.tick()
                now = self.clock()
                delay = self._idle if wake is None else min(max(wake - now, timedelta(0)), self._idle)
                await self._sleep(max(delay.total_seconds(), 0.01))
        finally:
            if self.epoch is not None:
                await self.tables.resign(self.owner)
                self.epoch = None

    async def tick(self) -> datetime | None:
        """One round of work; when there is more to do next (``None``: nothing planned)."""
        now = self.clock()
        if not self._rules:
            # No scheduled rule (yet: a reload may add some): no lease taken, no store write.
            if self.epoch is not None:
                await self.tables.resign(self.owner)
                self.epoch = None
            return None
        epoch = await self.tables.lead(self.owner, now, self.lease_ttl)
        if epoch is None:
            if self.epoch is not None:
                log.info("scheduler_leadership_lost", owner=self.owner)
            self.epoch = None
            return now + self.lease_ttl / 3
        if self.epoch != epoch:
            log.info("scheduler_leading", owner=self.owner, epoch=epoch)
        self.epoch = epoch
        statuses = await self.tables.statuses()
        wakes: list[datetime] = [now + self.lease_ttl / 3]
        for rule_id, rule in self._rules.items():
            status = statuses.get(rule_id) or await self.tables.ensure_status(rule_id, now)
            if not status.active:
                continue
            runs = await self.tables.runs(rule_id)
            running = [r for r in runs if r.status == RUNNING]
            if running:
                wake = await self._advance(rule, running[0])
            else:
                instant = self._due(rule, status.active_since, runs, now)
                if instant is None:
                    continue
                if instant > now:
                    wakes.append(instant)
                    continue
                wake = await self._start(rule, instant, now)
            if not self.leading:  # fenced meanwhile (self.epoch changes under the awaits above)
                return now + self.lease_ttl / 3
            if wake is None:
                # The run finished in this round: the rule's next instant is the next work (an
                # offline clock, as simulate's, would otherwise jump past it).
                wake = self.next_instant(rule, status.active_since, await self.tables.runs(rule_id))
            if wake is not None:
                wakes.append(wake)
        return min(wakes)

    def next_instant(self, rule: ScheduledRule, active_since: datetime, runs: list[Run]) -> datetime | None:
        """The rule's next run instant: after its latest run and after it was (re)activated."""
        after = max([active_since, *(r.scheduled_at for r in runs)])
        return rule.next_run_after(after, ran=bool(runs))

    def _due(self, rule: ScheduledRule, active_since: datetime, runs: list[Run], now: datetime) -> datetime | None:
        instant = self.next_instant(rule, active_since, runs)
        for _ in range(_MAX_COALESCE):
            if instant is None or instant > now:
                break
            following = rule.next_run_after(instant, ran=True)
            if following is None or following > now:
                break
            instant = following  # missed while nobody led: only the latest runs
        return instant

    async def _start(self, rule: ScheduledRule, instant: datetime, now: datetime) -> datetime | None:
        if self.epoch is None:
            return None
        audience = await fix_audience(self.tables, rule, now)
        try:
            run = await self.tables.create_run(rule.id, instant, now, audience, self.epoch)
        except FencedError:
            self.epoch = None
            return None
        log.info("scheduled_run_started", rule=rule.id, run=run.run_id, audience=run.audience)
        if self.metrics is not None:
            self.metrics.runs_started.inc()
        if run.audience == 0:
            await self.tables.finish_empty(run, now, self.epoch)
            self._finished(run, "completed")
            return None
        return await self._advance(rule, run)

    async def _advance(self, rule: ScheduledRule, run: Run) -> datetime | None:
        """Execute the users of ``run`` due by now; when the next one is due (``None``: done)."""
        interval = rule.interval()
        while self.epoch is not None:
            now = self.clock()
            due = min(run.audience, int((now - run.started_at) / interval) + 1)
            if self.metrics is not None:
                self.metrics.users_pending.labels(rule=rule.id).set(run.pending)
            if run.position >= run.audience:
                return None
            if due <= run.position:
                return run.started_at + interval * run.position
            count = min(due - run.position, self.step_users)
            try:
                run = await self._step(rule, run, count, now)
            except RunStopped:
                log.info("scheduled_run_stopped", rule=rule.id, run=run.run_id, position=run.position)
                self._finished(run, "stopped")
                return None
            except FencedError:
                log.warning("scheduler_fenced", rule=rule.id, run=run.run_id)
                self.epoch = None
                return None
            if run.position >= run.audience:
                log.info("scheduled_run_completed", rule=rule.id, run=run.run_id, executed=run.executed,
                         skipped=run.skipped)
                self._finished(run, "completed")
                return None
        return None

    async def _step(self, rule: ScheduledRule, run: Run, count: int, now: datetime) -> Run:
        keys = await self.tables.run_users(run.run_id, run.position, count)
        for _attempt in range(self.conflict_retries):
            if self.epoch is None:
                raise FencedError([SCHEDULED_PARTITION])
            stored = await self.store.load_users(keys)
            batch = BatchWrite(epochs={SCHEDULED_PARTITION: self.epoch})
            executed: list[tuple[str, str]] = []
            skipped = 0
            for key in keys:
                state = stored.get(key) or UserState(brand=key[0], user=key[1])
                outcome = execute_for_user(rule, state, run.run_id, now)
                batch.users.append(state)
                batch.history += outcome.history
                if outcome.executed:
                    executed.append(key)
                    batch.actions = [*batch.actions, *((SCHEDULED_PARTITION, a) for a in outcome.actions)]
                else:
                    skipped += 1
            try:
                await self.tables.commit_step(run, batch, len(keys), executed, skipped, now)
            except ConflictError:
                # A consumer wrote one of these users since they were loaded: reload, redo.
                if self.metrics is not None:
                    self.metrics.conflicts.inc()
                continue
            if self._on_written is not None:
                self._on_written(keys)
            if self.metrics is not None:
                self.metrics.users_executed.labels(result="executed").inc(len(executed))
                self.metrics.users_executed.labels(result="skipped").inc(skipped)
            updated = await self.tables.run(run.run_id)
            if updated is None:  # pragma: no cover - runs are never deleted
                raise RunStopped(run.run_id)
            return updated
        raise ConflictError(keys)

    def _finished(self, run: Run, result: str) -> None:
        if self.metrics is not None:
            self.metrics.runs.labels(result=result).inc()
            self.metrics.users_pending.labels(rule=run.rule_id).set(0)
