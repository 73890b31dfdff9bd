"""The isolated PII store: encrypted values, their lookup hashes, and an audit trail of every
decryption. It lives behind its own connection setting (a separate SQLite file or PostgreSQL
DSN/schema) and never shares tables with the marketing state.

A record may carry an ``on_stored`` callback, which :meth:`PiiVault.write` calls once the transaction
holding the record has committed (never for a dry run or a failed write): that is how the guard learns
which values the vault holds, so it can skip an unchanged repeat (:mod:`.guard`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from smartico_stream.pii.crypto import decrypt, lookup_hash, reencrypt, token_key_id
from smartico_stream.pii.keys import KeyRing
from smartico_stream.store.schema import Migrations
from smartico_stream.store.sql import Connection, Database, dry_run

PII_MIGRATIONS: Migrations = [
    (
        1,
        """
        CREATE TABLE pii_values (
            brand TEXT NOT NULL,
            user_id TEXT NOT NULL,
            field TEXT NOT NULL,
            token {BLOB} NOT NULL,
            key_id TEXT NOT NULL,
            lookup_hash TEXT NOT NULL,
            valid INTEGER NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (brand, user_id, field)
        );
        CREATE INDEX pii_lookup ON pii_values (field, lookup_hash);
        CREATE INDEX pii_key ON pii_values (key_id);
        CREATE TABLE pii_audit (
            seq {SERIAL},
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            purpose TEXT NOT NULL,
            action TEXT NOT NULL,
            brand TEXT,
            user_id TEXT,
            field TEXT
        );
        """,
    ),
]


def value_aad(brand: str, user: str, field: str) -> bytes:
    """Binds a ciphertext to its row: copied to another user or field, it no longer decrypts."""
    return f"{brand}\x1f{user}\x1f{field}".encode()


@dataclass(frozen=True, slots=True)
class PiiRecord:
    """One protected value, ready for the vault. Holds no plaintext."""

    brand: str
    user: str
    field: str
    token: bytes
    lookup_hash: str
    valid: bool
    # Called after the vault committed this record (PiiVault.write); not part of the value.
    on_stored: Callable[[], None] | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def key_id(self) -> str:
        return token_key_id(self.token)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class PiiVault:
    def __init__(self, db: Database, ring: KeyRing) -> None:
        self.db = db
        self.ring = ring

    async def open(self) -> None:
        await self.db.open(PII_MIGRATIONS)

    async def close(self) -> None:
        await self.db.close()

    async def write(self, records: Sequence[PiiRecord]) -> None:
        """Upsert (idempotent: a replayed batch writes the same rows again), then, committed, call each
        record's ``on_stored`` in order (the last record of a row is what the row holds)."""
        if not records:
            return
        async with self.db.transaction() as conn:
            await self._write(conn, records)
        for record in records:
            if record.on_stored is not None:
                record.on_stored()

    async def probe(self, records: Sequence[PiiRecord]) -> None:
        """Dry run of :meth:`write` (rolled back): raises what ``write`` would."""
        if records:
            await dry_run(self.db, lambda conn: self._write(conn, records))

    def refusal(self, exc: BaseException) -> str | None:
        """A value-free description when ``exc`` means the vault's database refused a value written."""
        reason = self.db.refusal(exc)
        return None if reason is None else f"PII vault: {reason}"

    @staticmethod
    async def _write(conn: Connection, records: Sequence[PiiRecord]) -> None:
        now = _now()
        await conn.executemany(
            "INSERT INTO pii_values (brand, user_id, field, token, key_id, lookup_hash, valid, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (brand, user_id, field) DO UPDATE SET "
            "token = excluded.token, key_id = excluded.key_id, lookup_hash = excluded.lookup_hash, "
            "valid = excluded.valid, updated_at = excluded.updated_at",
            [(r.brand, r.user, r.field, r.token, r.key_id, r.lookup_hash, int(r.valid), now) for r in records],
        )

    async def reveal(self, brand: str, user: str, field: str, *, actor: str, purpose: str) -> str | None:
        """Decrypt one value for an explicit purpose (e.g. "email template welcome-1"); audited."""
        if not actor.strip() or not purpose.strip():
            raise ValueError("revealing PII needs an actor and a purpose (both are audited)")
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                "SELECT token FROM pii_values WHERE brand = ? AND user_id = ? AND field = ?", brand, user, field
            )
            await self._audit(conn, actor, purpose, "reveal", brand, user, field)
        if not rows:
            return None
        return decrypt(self.ring, bytes(rows[0][0]), value_aad(brand, user, field)).decode()

    async def find(self, field: str, normalised_value: str) -> list[tuple[str, str]]:
        """(brand, user) pairs holding this value, matched by keyed hash without decrypting (e.g.
        the same email on several brands)."""
        digest = lookup_hash(self.ring, normalised_value, field)
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT brand, user_id FROM pii_values WHERE field = ? AND lookup_hash = ? ORDER BY brand, user_id",
                field, digest,
            )
        return [(r[0], r[1]) for r in rows]

    async def rotate(self, batch_size: int = 500) -> int:
        """Re-encrypt, in batches, every value not under the current key. Returns how many."""
        total = 0
        while True:
            async with self.db.transaction() as conn:
                rows = await conn.fetch(
                    "SELECT brand, user_id, field, token FROM pii_values WHERE key_id != ? LIMIT ?",
                    self.ring.current, batch_size,
                )
                if not rows:
                    return total
                updated = [
                    (
                        reencrypt(self.ring, bytes(token), value_aad(brand, user, field)),
                        self.ring.current, brand, user, field,
                    )
                    for brand, user, field, token in rows
                ]
                await conn.executemany(
                    "UPDATE pii_values SET token = ?, key_id = ? WHERE brand = ? AND user_id = ? AND field = ?", updated
                )
            total += len(rows)

    async def key_usage(self) -> dict[str, int]:
        """Values per key id (what an auditor checks before retiring a key)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch("SELECT key_id, COUNT(*) FROM pii_values GROUP BY key_id ORDER BY key_id")
        return {r[0]: int(r[1]) for r in rows}

    async def audit_decryption(self, *, actor: str, purpose: str, action: str) -> None:
        """Record a decryption done outside the vault's tables (a dead letter's payload)."""
        async with self.db.transaction() as conn:
            await self._audit(conn, actor, purpose, action, None, None, None)

    async def audit_log(self, limit: int = 1000) -> list[dict[str, str | None]]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT at, actor, purpose, action, brand, user_id, field FROM pii_audit ORDER BY seq LIMIT ?", limit
            )
        keys = ("at", "actor", "purpose", "action", "brand", "user", "field")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    @staticmethod
    async def _audit(conn: Connection, actor: str, purpose: str, action: str, brand: str | None, user: str | None,
                     field: str | None) -> None:
        await conn.execute(
            "INSERT INTO pii_audit (at, actor, purpose, action, brand, user_id, field) VALUES (?, ?, ?, ?, ?, ?, ?)",
            _now(), actor, purpose, action, brand, user, field,
        )
