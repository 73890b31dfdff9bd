"""The replica ceiling under test: the views paged through the dialect's own connection (the
queries the service runs, rows converted to mappings by the driver) and nothing else."""

from __future__ import annotations

import time
from typing import Any

from smartico_stream.bench.processes import FETCHED, STARTED_AT


async def replica_raw(params: dict[str, Any], shared: Any) -> dict[str, Any]:
    """Read every row of ``params["views"]`` a page at a time; rows per second of reading."""
    from smartico_stream.sources.replica.cursor import position_of
    from smartico_stream.sources.replica.dialect import ConnectOptions, ViewQuery, dialect_of_dsn, load_dialect

    dsn = params["dsn"]
    dialect = load_dialect(dialect_of_dsn(dsn) or "postgresql")
    conn = await dialect.connect(dsn, ConnectOptions(30.0, "UTC", 10.0))
    page = int(params["page_size"])
    rows_read = pages = 0
    try:
        started, cpu = time.time(), time.process_time()
        shared[STARTED_AT] = started
        for view in params["views"]:
            query = ViewQuery(view["name"], (view["cursor"],), "id")
            position = None
            while True:
                sql, args = dialect.page_query(query, position, page, 0.0)
                rows = await conn.fetch(sql, args)
                pages += 1
                rows_read += len(rows)
                shared[FETCHED] = rows_read
                if len(rows) < page:
                    break
                position = position_of(rows[-1], query.order)
        elapsed = time.time() - started
        cpu = time.process_time() - cpu
    finally:
        await conn.close()
    return {
        "records": rows_read,
        "expected_records": params["expected"],
        "complete": rows_read == params["expected"],
        "pages": pages,
        "measured_s": round(elapsed, 3),
        "events_per_s": round(rows_read / elapsed, 1) if elapsed > 0 else None,
        "cpu_s": round(cpu, 3),
        "cpu_cores_used": round(cpu / elapsed, 2) if elapsed > 0 else None,
    }
