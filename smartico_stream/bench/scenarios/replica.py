"""``replica_pipeline`` (PostgreSQL) and ``replica_pipeline_mysql`` (MariaDB / MySQL): the bench
stream written as rows into four views (one per stream, read by an increasing id) of a scratch
schema, every row before the clock starts; then, each in a pinned process of its own, the ceiling
(the same pages read through the dialect's connection and nothing else) and the service polling the
views through to the store commit. The figure is rows per second; the target is half the ceiling."""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC
from typing import Any

from smartico_stream.bench.processes import DONE, PRODUCED
from smartico_stream.bench.scenarios.env import Env, completeness
from smartico_stream.bench.stream import KINDS, STREAM_ORDER, read_stream
from smartico_stream.demo.replica_feed import VIEW_NAMES, NotARow, Schema

PAGE_SIZE = 5_000  # replica.page_size's default: the ceiling reads the pages the service reads


def _rows(env: Env) -> tuple[Schema, dict[Any, list[tuple[Any, ...]]], dict[str, int]]:
    """The first ``profile.replica_rows`` records of the stream that are rows, by stream."""
    records = [(STREAM_ORDER[s], k, key, value) for s, k, key, value in read_stream(env.stream)]
    schema = Schema.of_records((stream, value) for stream, _, _, value in records)
    rows: dict[Any, list[tuple[Any, ...]]] = {}
    kinds = dict.fromkeys(KINDS, 0)
    count = 0
    for stream, kind, key, value in records:
        if count >= env.profile.replica_rows:
            break
        try:
            row = schema.row(stream, key, value)
        except NotARow:
            continue
        rows.setdefault(stream, []).append(row)
        kinds[KINDS[kind]] += 1
        count += 1
    return schema, rows, kinds


async def _load(kind: str, dsn: str, name: str, schema: Schema, rows: dict[Any, list[tuple[Any, ...]]]) -> str:
    """Create the scratch schema (a database on MySQL) with the rows; the DSN the service reads."""
    if kind == "postgresql":
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'CREATE SCHEMA "{name}"')
            for statement in schema.create_statements(kind, name):
                await conn.execute(statement)
            for stream, batch in rows.items():
                await conn.executemany(schema.insert_statement(kind, name, stream), batch)
            for view in VIEW_NAMES.values():  # as an operator's long-lived tables are
                await conn.execute(f'ANALYZE "{name}"."{view}_rows"')
        finally:
            await conn.close()
        return dsn
    conn = await _mysql(dsn)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(f"CREATE DATABASE `{name}`")
            for statement in schema.create_statements(kind, name):
                await cursor.execute(statement)
            for stream, batch in rows.items():
                naive = [tuple(v.astimezone(UTC).replace(tzinfo=None) if hasattr(v, "tzinfo") and v.tzinfo else v
                               for v in row) for row in batch]
                for start in range(0, len(naive), 2000):
                    await cursor.executemany(schema.insert_statement(kind, name, stream), naive[start:start + 2000])
    finally:
        await conn.ensure_closed()
    return dsn


async def _mysql(dsn: str) -> Any:
    from urllib.parse import unquote, urlsplit

    import asyncmy

    parts = urlsplit(dsn)
    return await asyncmy.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                                 user=unquote(parts.username or "root"), password=unquote(parts.password or ""),
                                 autocommit=True)


async def _drop(kind: str, dsn: str, name: str) -> None:
    if kind == "postgresql":
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()
        return
    conn = await _mysql(dsn)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        await conn.ensure_closed()


def _views(name: str) -> list[dict[str, Any]]:
    return [{"name": f"{name}.{VIEW_NAMES[stream]}", "stream": stream.value, "cursor": "seq", "kind": "id"}
            for stream in STREAM_ORDER]


async def scenario_replica(env: Env, kind: str) -> dict[str, Any]:
    """The ceiling and the service on one database kind (``postgresql`` or ``mysql``)."""
    env.reset()
    dsn = env.pg_dsn if kind == "postgresql" else env.mysql_dsn
    name = f"bench_replica_{uuid.uuid4().hex[:8]}"
    scratch = env.workdir / name
    scratch.mkdir()
    try:
        schema, rows, kinds = _rows(env)
        total = sum(len(batch) for batch in rows.values())
        where = "schema" if kind == "postgresql" else "database"
        env.say(f"  writing {total:,} rows into 4 views of a scratch {where}")
        read_dsn = await _load(kind, dsn, name, schema, rows)
        if kind == "mysql":
            read_dsn = f"{dsn.rsplit('/', 1)[0]}/{name}"
        views = _views(name)
        ceiling = await env.run_worker("replica_raw", {"dsn": read_dsn, "views": views, "page_size": PAGE_SIZE,
                                                       "expected": total}, 900)
        env.reset()
        env.shared[PRODUCED] = total
        env.shared[DONE] = 1
        params = {
            "prefix": name, "rules": str(env.rules), "keys_file": str(env.keys_file),
            "sink_path": str(scratch / "actions.jsonl"), "store_url": f"sqlite:///{scratch / 'state.db'}",
            "pii_store_url": f"sqlite:///{scratch / 'pii.db'}", "timeout_s": 1200, "overrides": env.overrides,
            "replica": {"dsn": read_dsn, "views": views, "page_size": PAGE_SIZE},
        }
        result = await env.run_worker("pipeline", params, 1500)
    finally:
        await _drop(kind, dsn, name)
        shutil.rmtree(scratch, ignore_errors=True)
    result["store"] = "sqlite"
    result["database"] = kind
    completeness(result, {"produced": total, "kinds": kinds}, outcomes=False)
    result["raw"] = ceiling
    raw = ceiling.get("events_per_s")
    pipeline = result.get("events_per_s")
    result["ratio_to_raw"] = round(pipeline / raw, 3) if raw and pipeline else None
    result["min_lead_records"] = None
    result["method"] = ("every row written before either process starts; raw: the same pages read through the "
                        "dialect's connection alone; pipeline: first page fetched to last store commit and "
                        "every action delivered")
    return result
