"""The rules a running service applies, changed without a restart.

What an instance applies is its rule files' rules (:class:`~smartico_stream.engine.rule_files.LoadedRules`)
less the real-time rules an operator stopped (``rules stop``); the scheduler gets the scheduled ones
(it reads their stopped status itself, every tick). Both change only in :meth:`RuleControl.refresh`,
which the service calls between two batches, so a batch is evaluated by one rule set from its first
record to its commit.

How a change reaches every instance of a consumer group: through the store they share, not through
signals. ``rules stop``/``start`` write an audited status row and ``rules reload`` a numbered
request row; each instance polls the two sequence numbers (two index look-ups) at most every
``engine.control_interval_s`` and acts when one moved. A signal reaches one process on one host
(SIGHUP still reloads that instance at once), a pid file does not exist across pods; a row reaches
every instance on any host, survives the instance being down (it reads the files at start anyway),
and works behind PgBouncer's transaction pooling (no LISTEN/NOTIFY, no session state).

A reload validates the files first: invalid files are refused with their errors (logged, counted in
``smartico_stream_rule_reloads_total{result="refused"}``, stored for ``rules status``) and the
running rules stay. Each instance stores the version (the files' digest) it runs, so ``rules status``
shows whether every instance agrees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from smartico_stream.engine.evaluator import RuleEngine
from smartico_stream.engine.rule_files import LoadedRules, load_rule_files, rule_set_version
from smartico_stream.engine.rules import RuleLoadError
from smartico_stream.observability.logging import get_logger
from smartico_stream.scheduler.metrics import RuleControlMetrics
from smartico_stream.scheduler.runner import Scheduler
from smartico_stream.store.scheduled import ScheduleStore
from smartico_stream.store.sql import SqlStore

__all__ = ["RuleControl"]

log = get_logger(__name__)

# Problems logged per refused reload (all of them are in the stored error and in `rules check`).
_LOGGED_PROBLEMS = 20


class RuleControl:
    """Owns the rule set of one service instance (see the module notes)."""

    def __init__(
        self,
        *,
        loaded: LoadedRules,
        engine: RuleEngine,
        rules_path: Path | None,
        store: SqlStore | None,
        instance_id: str,
        metrics: RuleControlMetrics,
        interval_s: float,
        scheduler: Scheduler | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loaded = loaded
        self._engine = engine
        self._path = rules_path
        self._tables = ScheduleStore(store) if store is not None else None
        self._instance = instance_id
        self._metrics = metrics
        self._interval_s = interval_s
        self._scheduler = scheduler
        self._wall = wall_clock
        self._monotonic = monotonic
        self._stopped: frozenset[str] = frozenset()
        self._marks = (0, 0)
        self._hangup = False
        self._due = 0.0

    @property
    def loaded(self) -> LoadedRules:
        """The rule files' rules this instance runs (before stopped rules are taken out)."""
        return self._loaded

    @property
    def stopped(self) -> frozenset[str]:
        """Rules an operator stopped, as this instance last read them."""
        return self._stopped

    def request_reload(self) -> None:
        """Reload the rule files at the next :meth:`refresh` (the SIGHUP handler: a signal handler
        only sets a flag; the files are read between two batches)."""
        self._hangup = True

    async def start(self) -> None:
        """Read the stored statuses and record this instance's rule-set version (the store is open)."""
        if self._tables is not None:
            self._marks = await self._tables.control_marks()
            self._stopped = frozenset(await self._tables.stopped_rules())
            await self._record_version()
        self._due = self._monotonic() + self._interval_s
        self._apply()
        log.info("rules_in_effect", version=self._loaded.version, real_time=len(self._engine.rules.rules),
                 scheduled=len(self._loaded.scheduled), stopped=sorted(self._stopped))

    async def refresh(self) -> bool:
        """Between two batches: apply a requested reload and status changes; whether the rules
        changed. Reads the store at most every ``interval_s`` (a SIGHUP does not wait for it)."""
        reload, status_changed = self._hangup, False
        self._hangup = False
        if self._tables is not None and self._monotonic() >= self._due:
            self._due = self._monotonic() + self._interval_s
            marks = await self._tables.control_marks()
            reload = reload or marks[1] != self._marks[1]
            status_changed = marks[0] != self._marks[0]
            self._marks = marks
        changed = False
        if reload:
            changed = await self._reload()
        if status_changed and self._tables is not None:
            stopped = frozenset(await self._tables.stopped_rules())
            if stopped != self._stopped:
                log.info("rule_statuses_changed", stopped=sorted(stopped))
                self._stopped = stopped
                changed = True
        if changed:
            self._apply()
        return changed

    async def close(self) -> None:
        """A clean stop: this instance no longer counts in ``rules status``."""
        if self._tables is not None:
            await self._tables.forget_instance(self._instance)

    async def _reload(self) -> bool:
        if self._path is None:
            log.warning("rules_reload_ignored", reason="engine.rules is not set: there are no rule files to read")
            self._metrics.reloads.labels(result="unchanged").inc()
            return False
        try:
            loaded = load_rule_files(self._path)
        except RuleLoadError as exc:
            self._metrics.reloads.labels(result="refused").inc()
            log.error("rules_reload_refused", path=str(self._path), running=self._loaded.version,
                      problems=exc.problems[:_LOGGED_PROBLEMS], count=len(exc.problems))
            if self._tables is not None:
                try:
                    version = rule_set_version(self._path)
                except RuleLoadError:
                    version = "unreadable"
                await self._tables.record_refusal(self._instance, version, str(exc), self._wall())
            return False
        if loaded.version == self._loaded.version:
            self._metrics.reloads.labels(result="unchanged").inc()
            log.info("rules_reload_unchanged", version=loaded.version)
            await self._record_version()  # clears a refusal recorded since
            return False
        previous, self._loaded = self._loaded.version, loaded
        self._metrics.reloads.labels(result="applied").inc()
        log.info("rules_reloaded", version=loaded.version, previous=previous, real_time=len(loaded.real_time.rules),
                 scheduled=len(loaded.scheduled))
        await self._record_version()
        return True

    async def _record_version(self) -> None:
        if self._tables is not None:
            await self._tables.record_version(self._instance, self._loaded.version, str(self._path or "-"),
                                              self._wall())

    def _apply(self) -> None:
        # Rule ids that are kept keep their users' progress: progress lives in the user state,
        # keyed by rule id, not in the rule objects replaced here.
        self._engine.rules = self._loaded.real_time.without(self._stopped)
        if self._scheduler is not None:
            self._scheduler.set_rules(self._loaded.scheduled)
        self._metrics.rules.labels(kind="real_time").set(len(self._engine.rules.rules))
        self._metrics.rules.labels(kind="scheduled").set(len(self._loaded.scheduled))
        known = {r.id for r in self._loaded.real_time.rules} | set(self._loaded.scheduled)
        self._metrics.stopped.set(len(self._stopped & known))
