"""``smartico-stream replica ...``: the replica views' cursors and leases as the store holds them, and
re-push on demand (``reset-cursor``, audited), for the service running or not (docs/replica.md)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

replica_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                          help="Replica-database source: view cursors, re-push on demand (docs/replica.md).")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="the service's config file", exists=True,
                                            dir_okay=False)]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _settings(config: Path) -> Any:
    from smartico_stream.config import ConfigError, load_settings

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _fail(str(exc))
    if settings.source != "replica":
        _fail(f"{config}: source is {settings.source}, not replica")
    return settings


def _store(settings: Any) -> Any:
    from smartico_stream.store import open_store_from_url

    store = settings.store
    return open_store_from_url(store.url, store.db_schema, store.sqlite_synchronous, store.connect_timeout_s)


def _shown(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value if isinstance(value, int | str | None) else str(value)


def _target(view: Any, to: str | None, zone: Any) -> Any:
    """The position ``--to`` means for ``view`` (``None``: from its first row)."""
    from smartico_stream.sources.replica.cursor import Position

    if to is None:
        return None
    if view.kind == "id":
        try:
            return Position((int(to),), inclusive=True)
        except ValueError:
            _fail(f"--to: view {view.name} is read by id; give an id, not {to!r}")
    try:
        moment = datetime.fromisoformat(to.replace("Z", "+00:00"))
    except ValueError:
        _fail(f"--to: {to!r} is not an ISO-8601 time (e.g. 2026-11-01T00:00:00Z)")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Bound as the column is read: naive, in replica.db_timezone (as a configured start).
    return Position((moment.astimezone(zone).replace(tzinfo=None),), inclusive=True)


@replica_app.command("reset-cursor")
def reset_cursor(
    view: Annotated[str, typer.Argument(help="a configured view (replica.views[].name)")],
    config: ConfigOption,
    actor: Annotated[str, typer.Option(help="who resets (audited)")],
    reason: Annotated[str, typer.Option(help="why (audited), e.g. 'new profile field: re-push users'")],
    to: Annotated[str | None, typer.Option(help="a time (an id for a kind id view); default: the first row")] = None,
) -> None:
    """Re-read a view from a time (or from its first row), audited. The poller is fenced and takes
    the view again after replica.lease_timeout_s, from the new cursor."""
    from smartico_stream.sources.replica.cursor import BEGINNING, encode_position

    settings = _settings(config)
    views = {v.name: v for v in settings.replica.views}
    if view not in views:
        _fail(f"no view {view!r} in replica.views; configured: {', '.join(views)}")
    position = _target(views[view], to, settings.replica.zone())
    text = encode_position(position) if position is not None else BEGINNING

    async def reset() -> str | None:
        store = _store(settings)
        await store.open()
        try:
            previous: str | None = await store.reset_source_cursor((view, 0), text, f"reset-cursor:{actor}", actor,
                                                                   reason)
            return previous
        finally:
            await store.close()

    previous = asyncio.run(reset())
    typer.echo(f"view {view}: cursor reset from {previous or 'none'} to {text} by {actor} ({reason}); polling "
               f"resumes there within replica.lease_timeout_s={settings.replica.lease_timeout_s:g} s")


@replica_app.command("status")
def status(
    config: ConfigOption,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per view")] = False,
) -> None:
    """Each view's stored cursor, lease holder and dead letters, read from the store."""
    from smartico_stream.sources.replica.cursor import decode_position

    settings = _settings(config)
    partitions = [(view.name, 0) for view in settings.replica.cycle()]

    async def read() -> tuple[dict[Any, str], dict[Any, Any], list[Any]]:
        store = _store(settings)
        await store.open()
        try:
            return (await store.source_cursors(partitions), await store.lease_holders(partitions),
                    await store.dead_letters())
        finally:
            await store.close()

    cursors, holders, letters = asyncio.run(read())
    for tp in partitions:
        position = decode_position(cursors[tp]) if tp in cursors else None
        holder = holders.get(tp)
        row = {
            "view": tp[0],
            "cursor": [_shown(v) for v in position.values] if position is not None else None,
            "holder": holder.owner if holder else None,
            "epoch": holder.epoch if holder else None,
            "renewed_at": holder.renewed_at.isoformat() if holder else None,
            "dead_letters": sum(1 for letter in letters if letter.partition == tp),
        }
        if as_json:
            typer.echo(orjson.dumps(row).decode())
        else:
            typer.echo(f"{row['view']:<32} cursor={row['cursor']} holder={row['holder']} epoch={row['epoch']} "
                       f"renewed_at={row['renewed_at']} dead_letters={row['dead_letters']}")
