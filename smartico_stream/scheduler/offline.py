"""Scheduled rules on the event timeline of a simulation (``smartico-stream simulate``).

Offline there is no wall clock: the clock is the input's event time. It starts at the first
record's event time (the rules are deployed then) and only moves forward, to the latest event time
seen. The real :class:`~smartico_stream.scheduler.runner.Scheduler` runs on that clock, against the
simulation's own store: a run starts when the timeline reaches its instant (its audience fixed on
the state of users at that point: every record before the instant applied, none after), and its
users are executed at the rule's speed on the same timeline, interleaved with the records that
follow. After the last record the clock moves on to ``until`` (if given) and then runs every
running run to its end; a ``now`` rule ("send now") runs at that point, the end of the timeline,
since that is when an operator would press the button after replaying this history.

The simulation splits its batches at the scheduler's wake-up instants, so which records precede a
run does not depend on the batch size. Scheduled actions are read back from the store's outbox (the
scheduled partition), as a sink would receive them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from smartico_stream.adapters.base import Adapter, RecordContext, canonical_events
from smartico_stream.engine.actions import Action
from smartico_stream.engine.scheduled.spec import ScheduledRule
from smartico_stream.events.raw import RawRecord, Stream
from smartico_stream.pipeline.pipeline import load_json_keeping_literals
from smartico_stream.scheduler.runner import Scheduler
from smartico_stream.store.scheduled import RUNNING, SCHEDULED_PARTITION, ScheduleStore
from smartico_stream.store.sql import SqlStore

__all__ = ["OfflineSchedule", "event_time_of"]

_OWNER = "simulate"
_SINK = "simulate"
# One process, one store: nobody else ever needs the lease, so it never expires during a simulation.
_LEASE = timedelta(days=365 * 50)
_READ = 100_000


def event_time_of(record: RawRecord, adapter: Adapter) -> datetime | None:
    """The latest event time of the events ``record`` maps to; ``None`` for a record the pipeline
    will dead-letter (it does not move the timeline)."""
    if record.value is None:
        return None
    try:
        message = load_json_keeping_literals(record.value)
        if not isinstance(message, Mapping):
            return None
        context = RecordContext(stream=Stream(record.topic), topic=record.topic,
                                key=None if record.key is None else record.key.decode("utf-8", "replace"))
        times = [event.event_time for event in canonical_events(adapter, message, context)]
    except Exception:  # noqa: BLE001 - whatever the pipeline rejects, it rejects on its own
        return None
    return max(times) if times else None


class OfflineSchedule:
    """The scheduler of one simulation, on its event-time clock (see the module notes)."""

    def __init__(self, store: SqlStore, rules: Mapping[str, ScheduledRule], emit: Callable[[list[Action]], None],
                 until: datetime | None = None) -> None:
        if until is not None and (until.tzinfo is None or until.utcoffset() is None):
            raise ValueError("until must be a timezone-aware datetime")
        self._store = store
        self._tables = ScheduleStore(store)
        self._rules = dict(rules)
        # "now" rules are deployed at the end of the timeline (see the module notes).
        self._timed = {rule_id: rule for rule_id, rule in self._rules.items() if rule.spec.schedule.type != "now"}
        self._emit = emit
        self._until = None if until is None else until.astimezone(UTC)
        self._clock: datetime | None = None
        self._wake: datetime | None = None
        self.scheduler = Scheduler(store, self._timed, _OWNER, self._now, lease_ttl=_LEASE)
        self.actions = 0

    def _now(self) -> datetime:
        if self._clock is None:  # pragma: no cover - ticks happen only once the clock is set
            raise RuntimeError("the offline clock has not started")
        return self._clock

    def due_before(self, moment: datetime | None) -> bool:
        """Whether the scheduler has work at or before ``moment`` (then the batch in hand is
        committed first and :meth:`advance` runs before the record stamped ``moment``)."""
        if moment is None:
            return False
        if self._clock is None:
            return True  # the first record: the rules are deployed at its time
        return self._wake is not None and self._wake <= moment

    async def advance(self, moment: datetime) -> None:
        """Move the clock to ``moment`` (never back), running every scheduler round due on the way."""
        if self._clock is None:
            self._clock = moment
            await self._tick()
        while self._wake is not None and self._wake <= moment:
            self._clock = max(self._clock, self._wake)
            await self._tick()
        self._clock = max(self._clock, moment)

    async def finish(self) -> None:
        """After the last record: on to ``until``, the ``now`` rules, and every running run to its end."""
        end = self._until or self._clock
        if end is None:
            return  # no record had an event time and no until: there is no timeline
        await self.advance(end)
        self.scheduler.set_rules(self._rules)
        await self._tick()
        while True:
            running = {run.rule_id for run in await self._tables.runs(status=RUNNING)}
            # Runs in progress go on to their end; no rule starts a new one past the end.
            self.scheduler.set_rules({rule_id: rule for rule_id, rule in self._rules.items() if rule_id in running})
            if not running or self._wake is None:
                return
            self._clock = max(self._now(), self._wake)
            await self._tick()

    async def _tick(self) -> None:
        self._wake = await self.scheduler.tick()
        epoch = self.scheduler.epoch
        if epoch is None:
            return
        rows = await self._store.pending_actions(_SINK, [SCHEDULED_PARTITION], _READ)
        while rows:
            self._emit([row.action for row in rows])
            self.actions += len(rows)
            await self._store.mark_delivered(_SINK, rows, {SCHEDULED_PARTITION: epoch})
            rows = await self._store.pending_actions(_SINK, [SCHEDULED_PARTITION], _READ)
