"""Versioned migrations, one schema for SQLite and PostgreSQL (only column types differ).

Times are stored as ISO-8601 UTC text in both, which sorts chronologically. Dedup digests are
unsigned 64-bit values stored as signed BIGINT (see :func:`to_signed`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgres"]
# A migration step SQL cannot express (packing binary data SQLite has no function for): called with
# the migration's connection and the dialect, inside the migrations' transaction.
Step = Callable[[Any, Dialect], Awaitable[None]]
# (version, script); append only. A script is shared by both dialects or, when they must differ
# (SQLite cannot drop a constraint without rebuilding the table), given per dialect; or a step.
Script = str | Mapping[Dialect, str] | Step
Migrations = Sequence[tuple[int, Script]]

_TYPES = {
    "sqlite": {"SERIAL": "INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB": "BLOB", "FLOAT": "REAL"},
    "postgres": {"SERIAL": "BIGSERIAL PRIMARY KEY", "BLOB": "BYTEA", "FLOAT": "DOUBLE PRECISION"},
}

# Append only: a released migration is never edited.
STATE_MIGRATIONS: list[tuple[int, Script]] = [
    (
        1,
        """
        CREATE TABLE users (
            brand TEXT NOT NULL,
            user_id TEXT NOT NULL,
            state {BLOB} NOT NULL,
            version BIGINT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (brand, user_id)
        );
        CREATE TABLE outbox (
            seq {SERIAL},
            action_id TEXT NOT NULL UNIQUE,
            topic TEXT NOT NULL,
            part INTEGER NOT NULL,
            brand TEXT NOT NULL,
            user_id TEXT NOT NULL,
            rule_id TEXT NOT NULL,
            body {BLOB} NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX outbox_partition ON outbox (topic, part, seq);
        CREATE TABLE sink_cursors (
            sink TEXT NOT NULL,
            topic TEXT NOT NULL,
            part INTEGER NOT NULL,
            last_seq BIGINT NOT NULL,
            PRIMARY KEY (sink, topic, part)
        );
        CREATE TABLE history (
            seq {SERIAL},
            brand TEXT NOT NULL,
            user_id TEXT NOT NULL,
            rule_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            event_time TEXT NOT NULL,
            outcome TEXT NOT NULL,
            executions INTEGER NOT NULL,
            reason TEXT,
            qualified_at TEXT,
            qualified_until TEXT,
            recorded_at TEXT NOT NULL
        );
        CREATE INDEX history_user ON history (brand, user_id, seq);
        CREATE INDEX history_rule ON history (rule_id, seq);
        CREATE TABLE dedup_keys (
            topic TEXT NOT NULL,
            part INTEGER NOT NULL,
            digest BIGINT NOT NULL,
            first_seen {FLOAT} NOT NULL,
            PRIMARY KEY (topic, part, digest)
        );
        CREATE INDEX dedup_age ON dedup_keys (first_seen);
        CREATE TABLE source_offsets (
            topic TEXT NOT NULL,
            part INTEGER NOT NULL,
            next_offset BIGINT NOT NULL,
            PRIMARY KEY (topic, part)
        );
        CREATE TABLE handled_messages (
            topic TEXT NOT NULL,
            part INTEGER NOT NULL,
            message_key TEXT NOT NULL,
            handled_at {FLOAT} NOT NULL,
            PRIMARY KEY (topic, part, message_key)
        );
        CREATE INDEX handled_age ON handled_messages (handled_at);
        CREATE TABLE partition_leases (
            topic TEXT NOT NULL,
            part INTEGER NOT NULL,
            owner TEXT NOT NULL,
            epoch BIGINT NOT NULL,
            acquired_at TEXT NOT NULL,
            PRIMARY KEY (topic, part)
        );
        """,
    ),
    (
        2,
        # Expired dedup keys and handled message ids are deleted per partition with every batch:
        # an age index over all partitions made that a scan of the partition's whole window.
        """
        DROP INDEX dedup_age;
        CREATE INDEX dedup_partition_age ON dedup_keys (topic, part, first_seen);
        DROP INDEX handled_age;
        CREATE INDEX handled_partition_age ON handled_messages (topic, part, handled_at);
        """,
    ),
    (
        3,
        # The outbox no longer indexes action ids. The engine never writes an id twice (a batch
        # commits with its source offsets, so it is never redone after it landed) and receivers
        # deduplicate by id anyway, since delivery is at-least-once (docs/sinks.md). A unique index
        # on that ~60-byte key cost up to two thirds of the outbox's write time on SQLite and a
        # third on PostgreSQL, the most when transaction ids are random (docs/performance.md).
        {
            # Rebuilt: SQLite cannot drop a column's UNIQUE. The AUTOINCREMENT high-water mark is
            # carried over, so a seq is never reused even when the outbox was pruned empty (the sinks'
            # cursors point past every seq ever handed out).
            "sqlite": """
            CREATE TABLE outbox_v3 (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                action_id TEXT NOT NULL,
                topic TEXT NOT NULL,
                part INTEGER NOT NULL,
                brand TEXT NOT NULL,
                user_id TEXT NOT NULL,
                rule_id TEXT NOT NULL,
                body BLOB NOT NULL,
                created_at TEXT NOT NULL
            );
            INSERT INTO outbox_v3 (seq, action_id, topic, part, brand, user_id, rule_id, body, created_at)
                SELECT seq, action_id, topic, part, brand, user_id, rule_id, body, created_at FROM outbox;
            DELETE FROM sqlite_sequence WHERE name = 'outbox_v3';
            INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_v3', seq FROM sqlite_sequence WHERE name = 'outbox';
            DROP TABLE outbox;
            ALTER TABLE outbox_v3 RENAME TO outbox;
            CREATE INDEX outbox_partition ON outbox (topic, part, seq);
            """,
            "postgres": """
            ALTER TABLE outbox DROP CONSTRAINT outbox_action_id_key;
            """,
        },
    ),
]


# Migration 4: actions, history and dedup keys are written as one row per partition per batch (per
# batch for history, whose entries carry no partition) instead of one row per item; the sinks'
# cursors point at an action inside such a row. Every existing row becomes a row of one item, with
# its seq, so the cursors stay valid: an old cursor at seq s had delivered the whole (one-action)
# row s, which is (s, next_index 1) now.
_BATCH_ROWS: Mapping[Dialect, str] = {
    "sqlite": """
    CREATE TABLE outbox_v4 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        part INTEGER NOT NULL,
        actions INTEGER NOT NULL,
        body BLOB NOT NULL,
        created_at TEXT NOT NULL
    );
    INSERT INTO outbox_v4 (seq, topic, part, actions, body, created_at)
        SELECT seq, topic, part, 1, body, created_at FROM outbox;
    DELETE FROM sqlite_sequence WHERE name = 'outbox_v4';
    INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_v4', seq FROM sqlite_sequence WHERE name = 'outbox';
    DROP TABLE outbox;
    ALTER TABLE outbox_v4 RENAME TO outbox;
    CREATE INDEX outbox_partition ON outbox (topic, part, seq);
    ALTER TABLE sink_cursors ADD COLUMN next_index BIGINT NOT NULL DEFAULT 1;
    CREATE TABLE history_v4 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        entries INTEGER NOT NULL,
        body BLOB NOT NULL,
        recorded_at TEXT NOT NULL
    );
    INSERT INTO history_v4 (seq, entries, body, recorded_at)
        SELECT seq, 1, CAST(json_array(json_array(brand, user_id, rule_id, event_id, event_type, event_time,
            outcome, executions, reason, qualified_at, qualified_until)) AS BLOB), recorded_at FROM history;
    DELETE FROM sqlite_sequence WHERE name = 'history_v4';
    INSERT INTO sqlite_sequence (name, seq) SELECT 'history_v4', seq FROM sqlite_sequence WHERE name = 'history';
    DROP TABLE history;
    ALTER TABLE history_v4 RENAME TO history;
    ALTER TABLE dedup_keys RENAME TO dedup_keys_v3;
    DROP INDEX dedup_partition_age
    """,
    "postgres": """
    ALTER TABLE outbox DROP COLUMN action_id, DROP COLUMN brand, DROP COLUMN user_id, DROP COLUMN rule_id,
        ADD COLUMN actions INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE outbox ALTER COLUMN actions DROP DEFAULT;
    ALTER TABLE sink_cursors ADD COLUMN next_index BIGINT NOT NULL DEFAULT 1;
    ALTER TABLE sink_cursors ALTER COLUMN next_index DROP DEFAULT;
    ALTER TABLE history ADD COLUMN entries INTEGER NOT NULL DEFAULT 1, ADD COLUMN body BYTEA;
    UPDATE history SET body = convert_to(json_build_array(json_build_array(brand, user_id, rule_id, event_id,
        event_type, event_time, outcome, executions, reason, qualified_at, qualified_until))::text, 'UTF8');
    ALTER TABLE history ALTER COLUMN body SET NOT NULL, ALTER COLUMN entries DROP DEFAULT,
        DROP COLUMN brand, DROP COLUMN user_id, DROP COLUMN rule_id, DROP COLUMN event_id, DROP COLUMN event_type,
        DROP COLUMN event_time, DROP COLUMN outcome, DROP COLUMN executions, DROP COLUMN reason,
        DROP COLUMN qualified_at, DROP COLUMN qualified_until;
    ALTER TABLE dedup_keys RENAME TO dedup_keys_v3;
    ALTER TABLE dedup_keys_v3 RENAME CONSTRAINT dedup_keys_pkey TO dedup_keys_v3_pkey;
    DROP INDEX dedup_partition_age
    """,
}
_DEDUP_ROWS = """
CREATE TABLE dedup_keys (
    seq {SERIAL},
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    keys INTEGER NOT NULL,
    newest {FLOAT} NOT NULL,
    digests {BLOB} NOT NULL,
    seen {BLOB} NOT NULL
);
CREATE INDEX dedup_partition_newest ON dedup_keys (topic, part, newest)
"""
_DEDUP_KEYS_PER_ROW = 100_000  # a migrated window of millions of keys is split into rows of this many


async def _migrate_to_batch_rows(conn: Any, dialect: Dialect) -> None:
    """Migration 4 (see ``_BATCH_ROWS``). The dedup window is packed here: SQLite has no function
    that writes a number's bytes."""
    from smartico_stream.store.packing import pack_dedup  # store.base imports the engine

    for statement in [*statements(_BATCH_ROWS, dialect), *statements(_DEDUP_ROWS, dialect)]:
        await conn.execute(statement)
    rows = await conn.fetch(
        "SELECT topic, part, digest, first_seen FROM dedup_keys_v3 ORDER BY topic, part, first_seen"
    )
    window: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for topic, part, digest, seen in rows:
        window.setdefault((topic, int(part)), []).append((to_unsigned(int(digest)), float(seen)))
    for (topic, part), keys in window.items():
        for start in range(0, len(keys), _DEDUP_KEYS_PER_ROW):
            chunk = keys[start : start + _DEDUP_KEYS_PER_ROW]
            digests, seen = pack_dedup(chunk)
            await conn.execute(
                "INSERT INTO dedup_keys (topic, part, keys, newest, digests, seen) VALUES (?, ?, ?, ?, ?, ?)",
                topic, part, len(chunk), max(t for _, t in chunk), digests, seen,
            )
    await conn.execute("DROP TABLE dedup_keys_v3")


STATE_MIGRATIONS.append((4, _migrate_to_batch_rows))

# Migration 5: sources whose progress is not an integer offset. A replica view's cursor (the last
# row's cursor value and id, encoded by smartico_stream/sources/replica/cursor.py) is written in the
# batch's transaction like a Kafka offset; dead letters of sources without a broker are kept here; a
# cursor moved by hand (re-push on demand) is audited.
STATE_MIGRATIONS.append((
    5,
    """
    CREATE TABLE source_cursors (
        topic TEXT NOT NULL,
        part INTEGER NOT NULL,
        cursor TEXT NOT NULL,
        PRIMARY KEY (topic, part)
    );
    CREATE TABLE dead_letters (
        topic TEXT NOT NULL,
        part INTEGER NOT NULL,
        coordinates TEXT NOT NULL,
        source_offset BIGINT NOT NULL,
        stage TEXT NOT NULL,
        error_class TEXT NOT NULL,
        message TEXT NOT NULL,
        payload {BLOB},
        protection TEXT NOT NULL,
        failed_at TEXT NOT NULL,
        PRIMARY KEY (topic, part, coordinates)
    );
    CREATE TABLE cursor_resets (
        seq {SERIAL},
        topic TEXT NOT NULL,
        part INTEGER NOT NULL,
        previous TEXT,
        cursor TEXT NOT NULL,
        actor TEXT NOT NULL,
        reason TEXT NOT NULL,
        reset_at TEXT NOT NULL
    );
    """,
))

# Migration 6: scheduled rules (smartico_stream/store/scheduled.py). A rule's status (active or
# stopped by an operator, for real-time rules too) and its audit trail; the scheduler's leader row
# (who may take the scheduled-actions partition's lease); runs, each with its audience fixed at the
# run's instant (one row per user, numbered: ``position`` is the next to execute, so a resumed run
# skips nobody and repeats nobody); and which users each rule executed for, when.
STATE_MIGRATIONS.append((
    6,
    """
    CREATE TABLE rule_status (
        rule_id TEXT PRIMARY KEY,
        active INTEGER NOT NULL,
        active_since TEXT NOT NULL,
        changed_by TEXT NOT NULL,
        changed_at TEXT NOT NULL
    );
    CREATE TABLE rule_status_audit (
        seq {SERIAL},
        rule_id TEXT NOT NULL,
        active INTEGER NOT NULL,
        changed_by TEXT NOT NULL,
        changed_at TEXT NOT NULL,
        note TEXT
    );
    CREATE INDEX rule_status_audit_rule ON rule_status_audit (rule_id, seq);
    CREATE TABLE scheduler_leader (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        expires_at TEXT NOT NULL
    );
    CREATE TABLE scheduled_runs (
        run_id TEXT PRIMARY KEY,
        rule_id TEXT NOT NULL,
        scheduled_at TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL,
        audience INTEGER NOT NULL,
        position INTEGER NOT NULL,
        executed INTEGER NOT NULL,
        skipped INTEGER NOT NULL
    );
    CREATE INDEX scheduled_runs_rule ON scheduled_runs (rule_id, scheduled_at);
    CREATE TABLE scheduled_run_users (
        run_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        brand TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (run_id, idx)
    );
    CREATE TABLE scheduled_executions (
        rule_id TEXT NOT NULL,
        brand TEXT NOT NULL,
        user_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        executed_at TEXT NOT NULL,
        PRIMARY KEY (rule_id, run_id, brand, user_id)
    );
    CREATE INDEX scheduled_executions_recent ON scheduled_executions (rule_id, executed_at)
    """,
))

# Migration 7: the REST source (smartico_stream/store/rest.py). API keys, only as hashes, each bound
# to brands; the inbox of accepted events, numbered per partition from a counter row that the
# accepting transaction locks (so a partition's rows commit in the order of their numbers, and a
# reader never passes a number still to commit); answers stored under an Idempotency-Key.
STATE_MIGRATIONS.append((
    7,
    """
    CREATE TABLE api_keys (
        key_id TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL,
        name TEXT NOT NULL,
        brands TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE rest_partitions (
        part INTEGER PRIMARY KEY,
        next_seq BIGINT NOT NULL
    );
    CREATE TABLE rest_inbox (
        part INTEGER NOT NULL,
        seq BIGINT NOT NULL,
        stream TEXT NOT NULL,
        user_key TEXT NOT NULL,
        body {BLOB} NOT NULL,
        accepted_at {FLOAT} NOT NULL,
        PRIMARY KEY (part, seq)
    );
    CREATE TABLE rest_idempotency (
        key_id TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        status INTEGER NOT NULL,
        body {BLOB} NOT NULL,
        created_at {FLOAT} NOT NULL,
        PRIMARY KEY (key_id, idempotency_key)
    );
    CREATE INDEX rest_idempotency_age ON rest_idempotency (created_at)
    """,
))

# Migration 8: rule changes without a restart (smartico_stream/scheduler/control.py). A reload
# request is a row every instance sees (whatever host it runs on), numbered so that each instance
# applies each request once; each instance records the rule-set version (the rule files' digest) it
# runs, and the last reload it refused and why, for `rules status`.
STATE_MIGRATIONS.append((
    8,
    """
    CREATE TABLE rule_reload_requests (
        seq {SERIAL},
        version TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        requested_at TEXT NOT NULL
    );
    CREATE TABLE rule_set_versions (
        instance_id TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        rules_path TEXT NOT NULL,
        loaded_at TEXT NOT NULL,
        refused_version TEXT,
        refused_at TEXT,
        refused_error TEXT
    )
    """,
))

# Migration 9: a user's state in parts (engine/state.py UserState.stored_parts), so a batch rewrites
# only the parts it changed. ``state`` keeps the core document (aggregates, times, points, tags); the
# profile, the rule progress and the remembered payment ids get their own columns. A row from before
# has its whole document in ``state`` and the parts NULL: it is read as it is and rewritten in parts
# at its next commit.
STATE_MIGRATIONS.append((
    9,
    """
    ALTER TABLE users ADD COLUMN profile {BLOB};
    ALTER TABLE users ADD COLUMN progress {BLOB};
    ALTER TABLE users ADD COLUMN payments {BLOB}
    """,
))

LATEST_VERSION = STATE_MIGRATIONS[-1][0]


def statements(script: str | Mapping[Dialect, str], dialect: Dialect) -> list[str]:
    """The script's statements for ``dialect``, with its column types filled in."""
    text = script if isinstance(script, str) else script[dialect]
    types = _TYPES[dialect]
    return [s.strip().format(**types) for s in text.split(";") if s.strip()]


class _Database(Protocol):
    dialect: Dialect

    def transaction(self) -> Any: ...


async def apply_migrations(db: _Database, migrations: Migrations) -> None:
    """Apply, in one transaction, the migrations this database does not have yet."""
    async with db.transaction() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        applied = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, script in migrations:
            if version in applied:
                continue
            if callable(script):
                await script(conn, db.dialect)
            else:
                for statement in statements(script, db.dialect):
                    await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                version, datetime.now(UTC).isoformat(timespec="milliseconds"),
            )


def to_signed(digest: int) -> int:
    return digest - (1 << 64) if digest >= 1 << 63 else digest


def to_unsigned(value: int) -> int:
    return value + (1 << 64) if value < 0 else value
