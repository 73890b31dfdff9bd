"""Versioned migrations, one schema for SQLite and PostgreSQL (only column types differ).

Times are stored as ISO-8601 UTC text in both, which sorts chronologically. Dedup digests are
unsigned 64-bit values stored as signed BIGINT (see :func:`to_signed`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgres"]
# (version, script); append only. A script is shared by both dialects or, when they must differ
# (SQLite cannot drop a constraint without rebuilding the table), given per dialect.
Script = str | Mapping[Dialect, str]
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

LATEST_VERSION = STATE_MIGRATIONS[-1][0]


def statements(script: Script, dialect: Dialect) -> list[str]:
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
