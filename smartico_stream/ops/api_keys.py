"""``smartico-stream api-keys create|list|revoke``: the REST source's API keys, each bound to one or
more brands, kept in the state store as hashes only (docs/rest.md). The key itself is printed once,
by ``create``, and never again. Dependencies are imported when a command runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

api_keys_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                           help="REST API keys, bound to brands, stored as hashes (docs/rest.md).")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="the service's config file", exists=True,
                                            dir_okay=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


async def _with_keys(config: Path, work: Any) -> Any:
    from smartico_stream.config import ConfigError, load_settings
    from smartico_stream.store import open_store_from_url
    from smartico_stream.store.rest import ApiKeyStore
    from smartico_stream.store.sql import SqlStore

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _fail(str(exc))
    store_settings = settings.store
    store = open_store_from_url(store_settings.url, store_settings.db_schema, store_settings.sqlite_synchronous,
                                store_settings.connect_timeout_s)
    from smartico_stream.config import StartupError

    if not isinstance(store, SqlStore):
        raise TypeError("API keys are kept in a SQL store")

    try:
        await store.open()
    except StartupError as exc:
        raise exc.about("store.url", "store.connect_timeout_s") from None
    try:
        return await work(ApiKeyStore(store))
    finally:
        await store.close()


@api_keys_app.command("create")
def create(
    config: ConfigOption,
    brand: Annotated[list[str], typer.Option("--brand", help="a brand the key may send events for (repeatable)")],
    name: Annotated[str, typer.Option(help="what the key is for (shown by list)")] = "",
    json: JsonOption = False,
) -> None:
    """Make a key bound to the given brands; the key is printed once (keep it: only its hash is stored)."""
    from smartico_stream.sources.rest.keys import new_key

    brands = sorted({b.strip() for b in brand if b.strip()})
    if not brands:
        _fail("--brand: give at least one brand")
    key = new_key()
    asyncio.run(_with_keys(config, lambda keys: keys.create(key.key_id, key.key_hash, name, brands)))
    if json:
        typer.echo(orjson.dumps({"key_id": key.key_id, "key": key.token, "brands": brands, "name": name}).decode())
        return
    typer.echo(f"key id  {key.key_id}")
    typer.echo(f"brands  {', '.join(brands)}")
    typer.echo(f"key     {key.token}")
    typer.echo("(shown once: only its hash is stored)", err=True)


@api_keys_app.command("list")
def list_keys(config: ConfigOption, json: JsonOption = False) -> None:
    """Every key: id, name, brands, created, revoked (never the key or its hash)."""
    keys = asyncio.run(_with_keys(config, lambda store: store.all()))
    rows = [{"key_id": k.key_id, "name": k.name, "brands": list(k.brands), "created_at": k.created_at,
             "revoked_at": k.revoked_at} for k in keys]
    if json:
        typer.echo(orjson.dumps(rows).decode())
        return
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        typer.echo(f"{row['key_id']}  {state:<36}  {','.join(row['brands'])}  {row['name']}")


@api_keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id (api-keys list)")],
    config: ConfigOption,
) -> None:
    """Revoke a key: refused (401) within rest.key_cache_s on every instance."""
    done = asyncio.run(_with_keys(config, lambda keys: keys.revoke(key_id)))
    if not done:
        _fail(f"no active key with id {key_id!r}", 1)
    typer.echo(f"revoked {key_id}")
