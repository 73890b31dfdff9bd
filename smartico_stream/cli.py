"""``smartico-stream``: run the service, the demo, and the tools around them."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import uvloop

from smartico_stream.config import ConfigError, load_settings
from smartico_stream.observability.logging import configure_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
adapters_app = typer.Typer(no_args_is_help=True, help="Operator adapters: list them, run their golden files.")
schemas_app = typer.Typer(no_args_is_help=True, help="JSON Schema of the canonical events.")
app.add_typer(adapters_app, name="adapters")
app.add_typer(schemas_app, name="schemas")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config file", exists=True, dir_okay=False)]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


async def _until_signalled(run: Any) -> None:
    """Run ``run(stop)`` and set ``stop`` on SIGTERM/SIGINT, so the batch in hand is finished."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run(stop)


@app.command()
def run(config: ConfigOption) -> None:
    """Run the service with a config file (environment variables override it, see README)."""
    from smartico_stream.service import Service

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _fail(str(exc))
    configure_logging(settings.logging.level, settings.logging.format)
    service = Service(settings)
    uvloop.run(_until_signalled(service.run))


@app.command()
def demo(
    events: Annotated[int, typer.Option(help="records to produce (including duplicates and malformed ones)")] = 20_000,
    users: Annotated[int, typer.Option(help="distinct users in the stream")] = 2_000,
    duration: Annotated[float | None, typer.Option(help="stop producing after this many seconds")] = None,
    metrics_port: Annotated[int, typer.Option(help="port for /metrics, /healthz, /readyz (0: any free port)")] = 9108,
    json: Annotated[bool, typer.Option("--json", help="print the summary as one JSON object")] = False,
) -> None:
    """Run the service on an embedded Kafka with a realistic synthetic operator stream, then summarise."""
    from smartico_stream.demo.runner import run_demo

    configure_logging("ERROR", "console")  # the progress line already counts dead letters
    progress = None if json else (lambda line: typer.echo(line, err=True))
    summary = uvloop.run(run_demo(events=events, users=users, duration_s=duration, metrics_port=metrics_port,
                                  progress=progress))
    if json:
        sys.stdout.buffer.write(orjson.dumps(summary.as_dict()) + b"\n")
        return
    typer.echo("")
    typer.echo(f"produced       {summary.produced:>9}")
    typer.echo(f"consumed       {summary.consumed:>9}")
    typer.echo(f"  processed    {summary.processed:>9}")
    typer.echo(f"  deduplicated {summary.deduplicated:>9}")
    typer.echo(f"  dead-lettered{summary.dead_lettered:>9}")
    typer.echo(f"events applied {summary.events_applied:>9}")
    typer.echo(f"records/s      {summary.events_per_s:>9.0f}")
    typer.echo(f"max lag        {summary.max_lag:>9}")
    typer.echo(f"duration (s)   {summary.duration_s:>9}")


@adapters_app.command("list")
def adapters_list() -> None:
    """Adapters installed (entry-point group smartico_stream.adapters)."""
    from smartico_stream.adapters.registry import available_adapters

    for name, entry_point in available_adapters().items():
        typer.echo(f"{name:<20} {entry_point.value}")


@adapters_app.command("test")
def adapters_test(
    name: Annotated[str | None, typer.Argument(help="adapter name; all when omitted")] = None,
    update: Annotated[bool, typer.Option(help="rewrite expected files from the current output")] = False,
) -> None:
    """Run adapters' golden files; print a diff for every mismatch."""
    from smartico_stream.adapters.golden import ContractViolation, GoldenFileError, golden_cases, run_golden, write_golden
    from smartico_stream.adapters.registry import AdapterLoadError, UnknownAdapter, available_adapters, load_adapter

    names = [name] if name else list(available_adapters())
    failed = False
    for adapter_name in names:
        try:
            adapter = load_adapter(adapter_name)
            if update:
                for case in golden_cases(adapter):
                    typer.echo(f"updated {write_golden(adapter, case)}")
        except (UnknownAdapter, AdapterLoadError, GoldenFileError, ContractViolation) as exc:
            _fail(f"{adapter_name}: {exc}")
        report = run_golden(adapter)
        typer.echo(report.render())
        failed = failed or not report.passed
    if failed:
        raise typer.Exit(1)


@schemas_app.command("export")
def schemas_export(directory: Annotated[Path, typer.Argument()] = Path("schemas")) -> None:
    """Write the JSON Schema of every canonical event."""
    from smartico_stream.events.schema import write_schemas

    for path in write_schemas(directory):
        typer.echo(str(path))


@schemas_app.command("check")
def schemas_check(directory: Annotated[Path, typer.Argument()] = Path("schemas")) -> None:
    """Fail when the schema files differ from the models."""
    from smartico_stream.events.schema import stale_schemas

    stale = stale_schemas(directory)
    if stale:
        _fail(f"stale schema files in {directory}: {', '.join(stale)}; run `smartico-stream schemas export`", 1)
    typer.echo("schemas up to date")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
