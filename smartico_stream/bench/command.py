"""``smartico-stream bench``: the command, its options and what it prints."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import yaml

from smartico_stream.bench.profiles import DEFAULT_PG_DSN, DEFAULT_RABBITMQ_URL, PARTS
from smartico_stream.bench.report import render_table
from smartico_stream.bench.runner import run_bench
from smartico_stream.bench.settings import merge_settings, parse_setting


def bench_command(
    quick: Annotated[bool, typer.Option("--quick", help="small run for CI smoke tests (under a minute)")] = False,
    json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of the table")] = False,
    profile: Annotated[Path | None, typer.Option(
        help="write a pyinstrument profile of the pipeline scenario's service process to this file (.txt and "
             ".html); with --only pipeline_postgres alone, of that scenario's"
    )] = None,
    postgres_dsn: Annotated[str | None, typer.Option(
        help=f"PostgreSQL for pipeline_postgres (env SMARTICO_STREAM_BENCH_PG_DSN; default {DEFAULT_PG_DSN})"
    )] = None,
    rabbitmq_url: Annotated[str | None, typer.Option(
        help="RabbitMQ for the rabbitmq_* scenarios (env SMARTICO_STREAM_BENCH_RABBITMQ_URL; "
             f"default {DEFAULT_RABBITMQ_URL})"
    )] = None,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help=f"run only these parts (repeatable): {', '.join(PARTS)}"
    )] = None,
    latency_rate: Annotated[float | None, typer.Option(
        min=1.0, help="pace the latency part at this many records/s instead of half the pipeline's measured rate "
                      "(then --only latency runs without the pipeline part)"
    )] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="a service setting for every scenario that runs the service (repeatable), "
        "e.g. --set store.sqlite_synchronous=NORMAL --set kafka.batch_size=5000"
    )] = None,
) -> None:
    """Measure throughput (raw ceiling, the service on SQLite and PostgreSQL, RabbitMQ), latency,
    memory and scaling against the embedded Kafka, in one run (docs/performance.md)."""
    import uvloop

    from smartico_stream.config import ConfigError, load_settings

    def progress(line: str) -> None:
        typer.echo(line, err=True)

    if profile is not None and importlib.util.find_spec("pyinstrument") is None:
        # Optional, not a dependency: without it every profiled scenario would fail in its process.
        raise typer.BadParameter("needs pyinstrument, which is not installed (pip install pyinstrument)",
                                 param_hint="--profile")
    unknown = sorted(set(only or ()) - set(PARTS))
    if unknown:
        raise typer.BadParameter(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}",
                                 param_hint="--only")
    overrides: dict[str, Any] = {}
    for text in set_ or ():
        try:
            overrides = merge_settings(overrides, parse_setting(text))
        except (ValueError, yaml.YAMLError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--set") from None
    try:
        # A typo fails here, not in every scenario's process (the base is what every scenario sets).
        load_settings(environ={}, **merge_settings({"kafka": {"config": {"group.id": "bench"}}}, overrides))
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from None
    report = uvloop.run(run_bench(quick, progress, pg_dsn=postgres_dsn, rabbitmq_url=rabbitmq_url,
                                  profile_path=profile, only=only, overrides=overrides, latency_rate=latency_rate))
    if json:
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
    else:
        typer.echo(render_table(report))
    if not report["complete"]:
        raise typer.Exit(1)
