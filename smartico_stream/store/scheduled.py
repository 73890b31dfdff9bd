"""What scheduled rules keep in the state store: rule status and its audit, the scheduler's leader,
runs with their fixed audiences and progress, and per-user executions (migration 6 in schema.py);
rule reload requests and each instance's rule-set version (migration 8).

Every write of a run is fenced twice: by the scheduled-actions partition's lease epoch (the same
check as a consumer batch, see ``SqlStore._check_epochs``) and by the run still being ``running``
(an operator's stop wins over a step in flight). Leadership is a row with an expiry, renewed by the
leader; a new leader bumps the partition's epoch, so a late former leader's writes are refused.
No session advisory locks (they break behind PgBouncer's transaction pooling).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from smartico_stream.engine.state import UserState, readable_document
from smartico_stream.events.raw import PartitionId, UserKey
from smartico_stream.store.base import BatchWrite, FencedError
from smartico_stream.store.sql import STATE_COLUMNS, SqlStore

# The outbox partition of scheduled rules' actions: the relay delivers it like a source partition,
# under the lease the scheduler's leader holds.
SCHEDULED_PARTITION: PartitionId = ("smartico.scheduled", 0)
LEADER = "scheduler"

RUNNING = "running"
COMPLETED = "completed"
STOPPED = "stopped"


class RunStopped(RuntimeError):
    """The run is no longer running (an operator stopped it): the step was not written."""


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass(frozen=True, slots=True)
class RuleStatus:
    rule_id: str
    active: bool
    active_since: datetime
    changed_by: str
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class AuditEntry:
    rule_id: str
    active: bool
    changed_by: str
    changed_at: datetime
    note: str | None


@dataclass(frozen=True, slots=True)
class RuleSetVersion:
    """The rule set one service instance runs, and the last reload it refused."""

    instance_id: str
    version: str
    rules_path: str
    loaded_at: datetime
    refused_version: str | None
    refused_at: datetime | None
    refused_error: str | None


# A refusal's stored error is the loader's problem list (file, rule id, field: no user data), cut here.
_ERROR_CHARS = 4000


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    rule_id: str
    scheduled_at: datetime
    started_at: datetime
    finished_at: datetime | None
    status: str
    audience: int
    position: int  # users [0, position) are done (executed or skipped)
    executed: int
    skipped: int

    @property
    def pending(self) -> int:
        return self.audience - self.position


def run_id_for(rule_id: str, scheduled_at: datetime) -> str:
    """Deterministic: two leaders (a failover) deciding on the same instant make the same run."""
    return f"{rule_id}@{scheduled_at.astimezone(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}"


_RUN_COLUMNS = "run_id, rule_id, scheduled_at, started_at, finished_at, status, audience, position, executed, skipped"


def _run(row: Sequence[object]) -> Run:
    run_id, rule_id, scheduled, started, finished, status, audience, position, executed, skipped = row
    return Run(str(run_id), str(rule_id), datetime.fromisoformat(str(scheduled)),
               datetime.fromisoformat(str(started)), _dt(finished if finished is None else str(finished)),
               str(status), int(str(audience)), int(str(position)), int(str(executed)), int(str(skipped)))


class ScheduleStore:
    """Scheduled rules' tables over an opened :class:`SqlStore` (SQLite or PostgreSQL)."""

    _USER_PAGE = 5000

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # users -----------------------------------------------------------------------------------

    async def stream_documents(self, brand: str | None = None,
                               page: int | None = None) -> AsyncIterator[list[tuple[str, str, bytes]]]:
        """Every stored user's ``(brand, user, state document)`` (of ``brand``), in (brand, user)
        order, a page per query (keyset pagination: each page is an index range, never an OFFSET
        scan)."""
        async for rows in self._pages("state, profile", brand, page):
            yield [(str(b), str(u), readable_document(core, profile)) for b, u, core, profile in rows]

    async def stream_users(self, brand: str | None = None, page: int | None = None) -> AsyncIterator[UserState]:
        """Every stored user (of ``brand``), decoded, in (brand, user) order."""
        async for rows in self._pages(f"{STATE_COLUMNS}, version", brand, page):
            for _brand, _user, core, profile, progress, payments, version in rows:
                state = UserState.from_stored_parts(core, profile, progress, payments)
                state.version = int(version)
                yield state

    async def _pages(self, columns: str, brand: str | None, page: int | None) -> AsyncIterator[list[tuple[Any, ...]]]:
        size = page or self._USER_PAGE
        after: tuple[str, str] | None = None
        while True:
            clauses: list[str] = []
            args: list[object] = []
            if brand is not None:
                clauses.append("brand = ?")
                args.append(brand)
            if after is not None:
                # A row value: both databases read it as an index range (the OR form made SQLite
                # scan from the start for every page).
                clauses.append("(brand, user_id) > (?, ?)")
                args += [after[0], after[1]]
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            async with self.store.connection() as conn:
                rows = await conn.fetch(
                    f"SELECT brand, user_id, {columns} FROM users {where} ORDER BY brand, user_id LIMIT ?",
                    *args, size,
                )
            if rows:
                yield rows
            if len(rows) < size:
                return
            after = (str(rows[-1][0]), str(rows[-1][1]))

    async def executed_since(self, rule_id: str, since: datetime) -> set[UserKey]:
        """Users ``rule_id`` executed for at or after ``since`` (``not_executed_within``)."""
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                "SELECT brand, user_id FROM scheduled_executions WHERE rule_id = ? AND executed_at >= ?",
                rule_id, _iso(since),
            )
        return {(str(b), str(u)) for b, u in rows}

    # status ----------------------------------------------------------------------------------

    async def statuses(self) -> dict[str, RuleStatus]:
        async with self.store.connection() as conn:
            rows = await conn.fetch("SELECT rule_id, active, active_since, changed_by, changed_at FROM rule_status")
        return {
            str(r): RuleStatus(str(r), bool(a), datetime.fromisoformat(s), str(by), datetime.fromisoformat(at))
            for r, a, s, by, at in rows
        }

    async def stopped_rules(self) -> set[str]:
        """Rules an operator stopped (``RuleSet.without`` takes these for real-time rules)."""
        return {rule_id for rule_id, status in (await self.statuses()).items() if not status.active}

    async def ensure_status(self, rule_id: str, at: datetime) -> RuleStatus:
        """The rule's status, recording it as active since ``at`` when it has none (first seen)."""
        async with self.store.transaction() as conn:
            await conn.execute(
                "INSERT INTO rule_status (rule_id, active, active_since, changed_by, changed_at) "
                "VALUES (?, 1, ?, 'deploy', ?) ON CONFLICT (rule_id) DO NOTHING",
                rule_id, _iso(at), _iso(at),
            )
        return (await self.statuses())[rule_id]

    async def set_status(self, rule_id: str, active: bool, who: str, at: datetime, note: str | None = None) -> bool:
        """Start or stop a rule, audited. Stopping also stops its running run (pending users no
        longer progress). Returns False when the rule already had that status (nothing changed)."""
        async with self.store.transaction() as conn:
            rows = await conn.fetch("SELECT active FROM rule_status WHERE rule_id = ?", rule_id)
            if rows and bool(rows[0][0]) == active:
                return False
            await conn.execute(
                "INSERT INTO rule_status (rule_id, active, active_since, changed_by, changed_at) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (rule_id) DO UPDATE SET active = excluded.active, changed_by = excluded.changed_by, "
                "changed_at = excluded.changed_at, active_since = CASE WHEN excluded.active = 1 "
                "THEN excluded.active_since ELSE rule_status.active_since END",
                rule_id, int(active), _iso(at), who, _iso(at),
            )
            await conn.execute(
                "INSERT INTO rule_status_audit (rule_id, active, changed_by, changed_at, note) VALUES (?, ?, ?, ?, ?)",
                rule_id, int(active), who, _iso(at), note,
            )
            if not active:
                await conn.execute(
                    "UPDATE scheduled_runs SET status = ?, finished_at = ? WHERE rule_id = ? AND status = ?",
                    STOPPED, _iso(at), rule_id, RUNNING,
                )
        return True

    async def audit(self, rule_id: str) -> list[AuditEntry]:
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                "SELECT rule_id, active, changed_by, changed_at, note FROM rule_status_audit WHERE rule_id = ? "
                "ORDER BY seq", rule_id,
            )
        return [AuditEntry(str(r), bool(a), str(by), datetime.fromisoformat(at), n) for r, a, by, at, n in rows]

    # rule control: status marks, reload requests, rule-set versions ------------------------

    async def control_marks(self) -> tuple[int, int]:
        """``(last status change, last reload request)``: two sequence numbers that grow with every
        ``rules stop``/``start`` and every ``rules reload`` (0: none yet). Two index look-ups, cheap
        enough for a running service to poll every few seconds."""
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                "SELECT (SELECT MAX(seq) FROM rule_status_audit), (SELECT MAX(seq) FROM rule_reload_requests)"
            )
        status, reload = rows[0]
        return int(status or 0), int(reload or 0)

    async def request_reload(self, version: str, who: str, at: datetime) -> int:
        """Ask every running instance to reload its rule files (the requester validated them and
        found ``version``); returns the request's number."""
        async with self.store.transaction() as conn:
            await conn.execute(
                "INSERT INTO rule_reload_requests (version, requested_by, requested_at) VALUES (?, ?, ?)",
                version, who, _iso(at),
            )
            rows = await conn.fetch("SELECT MAX(seq) FROM rule_reload_requests")
        return int(rows[0][0])

    async def last_reload_request(self) -> tuple[int, str, str, datetime] | None:
        """The newest reload request: ``(seq, version, requested_by, requested_at)``."""
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                "SELECT seq, version, requested_by, requested_at FROM rule_reload_requests ORDER BY seq DESC LIMIT 1"
            )
        if not rows:
            return None
        seq, version, who, at = rows[0]
        return int(seq), str(version), str(who), datetime.fromisoformat(str(at))

    async def record_version(self, instance_id: str, version: str, rules_path: str, at: datetime) -> None:
        """``instance_id`` now runs rule-set ``version`` (a refusal recorded before is cleared)."""
        async with self.store.transaction() as conn:
            await conn.execute(
                "INSERT INTO rule_set_versions (instance_id, version, rules_path, loaded_at, refused_version, "
                "refused_at, refused_error) VALUES (?, ?, ?, ?, NULL, NULL, NULL) "
                "ON CONFLICT (instance_id) DO UPDATE SET version = excluded.version, rules_path = excluded.rules_path, "
                "loaded_at = excluded.loaded_at, refused_version = NULL, refused_at = NULL, refused_error = NULL",
                instance_id, version, rules_path, _iso(at),
            )

    async def record_refusal(self, instance_id: str, version: str, error: str, at: datetime) -> None:
        """``instance_id`` refused rule files of ``version`` (invalid: it keeps the rules it runs)."""
        async with self.store.transaction() as conn:
            await conn.execute(
                "UPDATE rule_set_versions SET refused_version = ?, refused_at = ?, refused_error = ? "
                "WHERE instance_id = ?",
                version, _iso(at), error[:_ERROR_CHARS], instance_id,
            )

    async def forget_instance(self, instance_id: str) -> None:
        """A cleanly stopped instance no longer runs any rule set."""
        async with self.store.transaction() as conn:
            await conn.execute("DELETE FROM rule_set_versions WHERE instance_id = ?", instance_id)

    async def rule_set_versions(self) -> list[RuleSetVersion]:
        """The rule set of every running instance, by instance id."""
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                "SELECT instance_id, version, rules_path, loaded_at, refused_version, refused_at, refused_error "
                "FROM rule_set_versions ORDER BY instance_id"
            )
        return [
            RuleSetVersion(str(i), str(v), str(p), datetime.fromisoformat(str(at)),
                           None if rv is None else str(rv), _dt(None if ra is None else str(ra)),
                           None if err is None else str(err))
            for i, v, p, at, rv, ra, err in rows
        ]

    # leadership ------------------------------------------------------------------------------

    async def lead(self, owner: str, now: datetime, ttl: timedelta) -> int | None:
        """Become or stay the scheduler's leader until ``now + ttl``; the scheduled partition's
        lease epoch to write with, or ``None`` while another instance's lease has not expired.

        Taking over (from nobody, or from an expired leader) bumps the partition's epoch, fencing
        the former leader; renewing keeps it."""
        async with self.store.transaction() as conn:
            rows = await conn.fetch(
                "SELECT owner, expires_at FROM scheduler_leader WHERE name = ?" + self.store._lease_lock, LEADER
            )
            if rows and rows[0][0] != owner and datetime.fromisoformat(rows[0][1]) > now:
                return None
            renewing = bool(rows) and rows[0][0] == owner
            await conn.execute(
                "INSERT INTO scheduler_leader (name, owner, epoch, expires_at) VALUES (?, ?, 0, ?) "
                "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at",
                LEADER, owner, _iso(now + ttl),
            )
            topic, part = SCHEDULED_PARTITION
            if not renewing:
                await conn.execute(
                    "INSERT INTO partition_leases (topic, part, owner, epoch, acquired_at) VALUES (?, ?, ?, 1, ?) "
                    "ON CONFLICT (topic, part) DO UPDATE SET owner = excluded.owner, "
                    "epoch = partition_leases.epoch + 1, acquired_at = excluded.acquired_at",
                    topic, part, owner, _iso(now),
                )
            epoch_rows = await conn.fetch(
                "SELECT epoch, owner FROM partition_leases WHERE topic = ? AND part = ?", topic, part
            )
            if not epoch_rows or epoch_rows[0][1] != owner:
                # The partition was taken by another path (acquire by hand): take it back properly.
                return None
            epoch = int(epoch_rows[0][0])
            await conn.execute("UPDATE scheduler_leader SET epoch = ? WHERE name = ?", epoch, LEADER)
        return epoch

    async def resign(self, owner: str) -> None:
        """Give up leadership at once (a clean shutdown): another instance need not wait the TTL."""
        async with self.store.transaction() as conn:
            await conn.execute("DELETE FROM scheduler_leader WHERE name = ? AND owner = ?", LEADER, owner)

    async def _check_epoch(self, conn: object, epoch: int) -> None:
        await self.store._check_epochs(conn, {SCHEDULED_PARTITION: epoch})  # type: ignore[arg-type]

    # runs ------------------------------------------------------------------------------------

    async def create_run(self, rule_id: str, scheduled_at: datetime, started_at: datetime,
                         audience: Sequence[UserKey], epoch: int) -> Run:
        """Record a run and its audience (fixed now), unless that run exists (then it is returned)."""
        run_id = run_id_for(rule_id, scheduled_at)
        async with self.store.transaction() as conn:
            await self._check_epoch(conn, epoch)
            existing = await conn.fetch("SELECT run_id FROM scheduled_runs WHERE run_id = ?", run_id)
            if not existing:
                await conn.execute(
                    f"INSERT INTO scheduled_runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, NULL, ?, ?, 0, 0, 0)",
                    run_id, rule_id, _iso(scheduled_at), _iso(started_at), RUNNING, len(audience),
                )
                await conn.executemany(
                    "INSERT INTO scheduled_run_users (run_id, idx, brand, user_id) VALUES (?, ?, ?, ?)",
                    [(run_id, i, brand, user) for i, (brand, user) in enumerate(audience)],
                )
        run = await self.run(run_id)
        if run is None:  # pragma: no cover - written just above
            raise RuntimeError(f"run {run_id} vanished")
        return run

    async def run(self, run_id: str) -> Run | None:
        async with self.store.connection() as conn:
            rows = await conn.fetch(f"SELECT {_RUN_COLUMNS} FROM scheduled_runs WHERE run_id = ?", run_id)
        return _run(rows[0]) if rows else None

    async def runs(self, rule_id: str | None = None, status: str | None = None) -> list[Run]:
        """Runs (of a rule, with a status), oldest first."""
        clauses, args = [], []
        if rule_id is not None:
            clauses.append("rule_id = ?")
            args.append(rule_id)
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self.store.connection() as conn:
            rows = await conn.fetch(f"SELECT {_RUN_COLUMNS} FROM scheduled_runs {where} ORDER BY scheduled_at", *args)
        return [_run(row) for row in rows]

    async def run_users(self, run_id: str, start: int, limit: int) -> list[UserKey]:
        """The audience's users ``start``, ``start + 1``, ... (at most ``limit``)."""
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                "SELECT brand, user_id FROM scheduled_run_users WHERE run_id = ? AND idx >= ? ORDER BY idx LIMIT ?",
                run_id, start, limit,
            )
        return [(str(b), str(u)) for b, u in rows]

    async def commit_step(self, run: Run, batch: BatchWrite, done: int, executed: Sequence[UserKey],
                          skipped: int, at: datetime) -> None:
        """Write one step of a run in one transaction: the users' states, actions and history
        (``batch``, fenced by its epoch and the users' versions), the run's new position and counts,
        and the executions. Raises :class:`RunStopped` (writing nothing) when the run is no longer
        running at ``run.position``, FencedError or ConflictError as a consumer batch."""
        async with self.store.transaction() as conn:
            # The lease first: a fenced former leader learns it is fenced, whatever the run became.
            await self.store._check_epochs(conn, batch.epochs)
            rows = await conn.fetch(
                "SELECT status, position FROM scheduled_runs WHERE run_id = ?" + self.store._lease_lock, run.run_id
            )
            if not rows or rows[0][0] != RUNNING:
                raise RunStopped(f"run {run.run_id} is {rows[0][0] if rows else 'gone'}")
            if int(rows[0][1]) != run.position:
                # Another leader moved it on meanwhile: this one is late and must not write.
                raise FencedError([SCHEDULED_PARTITION])
            await self.store.write_in(conn, batch)
            finished = run.position + done >= run.audience
            await conn.execute(
                "UPDATE scheduled_runs SET position = position + ?, executed = executed + ?, skipped = skipped + ?, "
                "status = ?, finished_at = ? WHERE run_id = ?",
                done, len(executed), skipped, COMPLETED if finished else RUNNING,
                _iso(at) if finished else None, run.run_id,
            )
            if executed:
                await conn.executemany(
                    "INSERT INTO scheduled_executions (rule_id, brand, user_id, run_id, executed_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(run.rule_id, brand, user, run.run_id, _iso(at)) for brand, user in executed],
                )

    async def finish_empty(self, run: Run, at: datetime, epoch: int) -> None:
        """Complete a run whose audience is empty."""
        async with self.store.transaction() as conn:
            await self._check_epoch(conn, epoch)
            await conn.execute(
                "UPDATE scheduled_runs SET status = ?, finished_at = ? WHERE run_id = ? AND status = ?",
                COMPLETED, _iso(at), run.run_id, RUNNING,
            )
