"""``smartico-stream rules audience|status|stop|start|runs|reload``: the audience estimate and manual
control of rules (both kinds), registered on the CLI's ``rules`` sub-app by :func:`register`.

Imports happen inside the commands: the CLI's start-up stays as fast as before for every other
command.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from smartico_stream.engine.rules import Rule
    from smartico_stream.engine.scheduled.spec import ScheduledRule
    from smartico_stream.store.sql import SqlStore

# The seed: "only available when the rule is about to execute (5 mins before the set date) or is
# currently running".
STOP_WINDOW = timedelta(minutes=5)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="service config (store URL, engine.rules)")]
StoreOption = Annotated[str | None, typer.Option(help="store URL, e.g. sqlite:///state.db (overrides --config)")]
RulesOption = Annotated[Path | None, typer.Option(
    help="rule file or folder (default: the config's engine.rules); may be a file not deployed yet")]
ByOption = Annotated[str | None, typer.Option("--by", help="who makes the change (audited; default: $USER)")]


@dataclass(frozen=True)
class _Rules:
    real_time: dict[str, Rule]
    disabled: tuple[str, ...]
    scheduled: dict[str, ScheduledRule]
    version: str

    def kind(self, rule_id: str) -> str | None:
        if rule_id in self.scheduled:
            return "scheduled"
        if rule_id in self.real_time or rule_id in self.disabled:
            return "real-time"
        return None


def fail(message: str, code: int = 2) -> NoReturn:
    """Report an error on stderr and exit with ``code`` (as the CLI's own ``_fail``)."""
    typer.echo(message, err=True)
    raise typer.Exit(code)


def register(rules_app: typer.Typer) -> None:
    """Add the commands to ``rules_app``."""

    def settings(config: Path | None) -> Any:
        from smartico_stream.config import ConfigError, load_settings

        try:
            return load_settings(config)
        except ConfigError as exc:
            fail(str(exc), 2)

    def store_of(config: Path | None, store: str | None) -> SqlStore:
        from smartico_stream.config import valid_store_url
        from smartico_stream.store import open_store_from_url

        schema = None
        if store is not None:
            try:
                store = valid_store_url(store)
            except ValueError as exc:
                fail(f"--store: {exc}", 2)
        else:
            store_settings = settings(config).store
            store, schema = store_settings.url, store_settings.db_schema
        opened = open_store_from_url(str(store), schema)
        return opened  # type: ignore[return-value]  # both implementations are SqlStores

    def rules_path(config: Path | None, path: Path | None) -> Path:
        if path is None:
            path = settings(config).engine.rules
            if path is None:
                fail("no rules: give --rules FILE or set engine.rules in the config", 2)
        if not path.exists():
            fail(f"--rules: {path} does not exist", 2)
        return path

    def rules_of(config: Path | None, path: Path | None) -> _Rules:
        from smartico_stream.engine.rule_files import load_rule_files
        from smartico_stream.engine.rules import RuleLoadError

        path = rules_path(config, path)
        try:
            loaded = load_rule_files(path)
        except RuleLoadError as exc:
            fail(str(exc), 1)
        real_time = loaded.real_time
        return _Rules({r.id: r for r in real_time.rules}, real_time.disabled, loaded.scheduled, loaded.version)

    def run_async(work: Callable[[Any], Any], store: SqlStore) -> Any:
        async def go() -> Any:
            from smartico_stream.store.scheduled import ScheduleStore

            await store.open()
            try:
                return await work(ScheduleStore(store))
            finally:
                await store.close()

        return asyncio.run(go())

    @rules_app.command("audience")
    def audience(
        rule_id: Annotated[str, typer.Argument(help="rule id (real-time or scheduled)")],
        config: ConfigOption = None, store: StoreOption = None, rules: RulesOption = None,
        brand: Annotated[str | None, typer.Option(help="count this brand only")] = None,
    ) -> None:
        """Exact number of stored users in a rule's segment (and extra conditions), by brand, on the
        state of users now."""
        from smartico_stream.scheduler.audience import count_audience

        loaded = rules_of(config, rules)
        rule = loaded.scheduled.get(rule_id) or loaded.real_time.get(rule_id)
        if rule is None:
            fail(f"no rule {rule_id} (enabled) in the rule files", 1)
        now = datetime.now(UTC)
        counted = run_async(lambda tables: count_audience(tables, rule, now, brand), store_of(config, store))
        for name in sorted(counted.by_brand):
            typer.echo(f"{name}  {counted.by_brand[name]}")
        typer.echo(f"total  {counted.total}  (of {counted.seen} stored users)")

    @rules_app.command("status")
    def status(config: ConfigOption = None, store: StoreOption = None, rules: RulesOption = None) -> None:
        """Every rule: kind, active or inactive, next run, the running run's progress; then the
        rule-set version of the files and the version each running instance applies."""
        from smartico_stream.store.scheduled import RUNNING

        loaded = rules_of(config, rules)
        now = datetime.now(UTC)

        async def read(tables: Any) -> tuple[dict[str, Any], dict[str, list[Any]], list[Any]]:
            statuses = await tables.statuses()
            runs = {rule_id: await tables.runs(rule_id) for rule_id in loaded.scheduled}
            return statuses, runs, await tables.rule_set_versions()

        statuses, runs, versions = run_async(read, store_of(config, store))
        for rule_id in sorted({*loaded.real_time, *loaded.disabled, *loaded.scheduled}):
            stored = statuses.get(rule_id)
            active = "disabled" if rule_id in loaded.disabled else (
                "inactive" if stored is not None and not stored.active else "active")
            line = f"{rule_id:<32} {loaded.kind(rule_id):<9} {active:<8}"
            if rule_id in loaded.scheduled and active == "active":
                rule_runs = runs[rule_id]
                running = [r for r in rule_runs if r.status == RUNNING]
                if running:
                    r = running[0]
                    line += (f" running {r.run_id} {r.position}/{r.audience} "
                             f"({r.executed} executed, {r.skipped} skipped)")
                else:
                    since = stored.active_since if stored is not None else now
                    after = max([since, *(r.scheduled_at for r in rule_runs)])
                    following = loaded.scheduled[rule_id].next_run_after(after, ran=bool(rule_runs))
                    line += f" next run {_iso(following) if following else 'none'}"
            if stored is not None:
                line += f"  (changed by {stored.changed_by} at {_iso(stored.changed_at)})"
            typer.echo(line.rstrip())
        typer.echo(f"rule set version {loaded.version} (the files read now)")
        for v in versions:
            agrees = "same as the files" if v.version == loaded.version else "DIFFERS from the files"
            line = f"instance {v.instance_id:<24} version {v.version}  loaded {_iso(v.loaded_at)}  {agrees}"
            if v.refused_version is not None:
                first = (v.refused_error or "").splitlines()[1:2] or [""]
                line += f"  refused {v.refused_version} at {_iso(v.refused_at)}: {first[0].strip()}"
            typer.echo(line)
        if not versions:
            typer.echo("no running instance has recorded its rule set")

    @rules_app.command("reload")
    def reload(
        config: ConfigOption = None, store: StoreOption = None, rules: RulesOption = None, by: ByOption = None,
        wait: Annotated[float, typer.Option(
            help="wait up to this many seconds for every running instance to apply it (0: do not wait)",
        )] = 0.0,
    ) -> None:
        """Validate the rule files and ask every running instance to apply them, between two batches
        (each instance reads its own engine.rules). Invalid files are refused here and nothing is
        requested; an instance that finds them invalid keeps its rules and says so in `rules status`."""
        import time

        loaded = rules_of(config, rules)
        who = by or getpass.getuser()
        tables_store = store_of(config, store)

        async def request(tables: Any) -> int:
            return int(await tables.request_reload(loaded.version, who, datetime.now(UTC)))

        seq = run_async(request, tables_store)
        typer.echo(f"reload {seq} requested by {who}: version {loaded.version} "
                   f"({len(loaded.real_time)} real-time, {len(loaded.scheduled)} scheduled rules)")
        if wait <= 0:
            return
        deadline = time.monotonic() + wait
        while True:
            versions = run_async(lambda tables: tables.rule_set_versions(), store_of(config, store))
            behind = [v for v in versions if v.version != loaded.version]
            if versions and not behind:
                typer.echo(f"every running instance ({len(versions)}) applies version {loaded.version}")
                return
            if time.monotonic() >= deadline:
                for v in behind:
                    why = f" (refused {v.refused_version})" if v.refused_version else ""
                    typer.echo(f"instance {v.instance_id} still applies {v.version}{why}", err=True)
                fail(f"not every instance applied version {loaded.version} within {wait}s", 1)
            time.sleep(0.2)

    @rules_app.command("stop")
    def stop(
        rule_id: Annotated[str, typer.Argument(help="rule id")],
        config: ConfigOption = None, store: StoreOption = None, rules: RulesOption = None, by: ByOption = None,
        force: Annotated[bool, typer.Option(help="stop a scheduled rule that is not about to run")] = False,
    ) -> None:
        """Stop a rule: a scheduled rule's current and future runs halt (pending users no longer
        progress); a real-time rule ignores events. It stays inactive until `rules start`."""
        from smartico_stream.store.scheduled import RUNNING

        loaded = rules_of(config, rules)
        kind = loaded.kind(rule_id)
        if kind is None:
            # A scheduled rule removed from the files may have left a run behind: it can be stopped.
            if not run_async(lambda tables: tables.runs(rule_id, RUNNING), store_of(config, store)):
                fail(f"no rule {rule_id} in the rule files", 1)
            kind = "removed"
        now = datetime.now(UTC)
        who = by or getpass.getuser()

        async def change(tables: Any) -> tuple[bool, str | None]:
            if kind == "scheduled" and not force:
                rule_runs = await tables.runs(rule_id)
                if not any(r.status == RUNNING for r in rule_runs):
                    stored = (await tables.statuses()).get(rule_id)
                    since = stored.active_since if stored is not None else now
                    after = max([since, *(r.scheduled_at for r in rule_runs)])
                    following = loaded.scheduled[rule_id].next_run_after(after, ran=bool(rule_runs))
                    if following is None or following - now > STOP_WINDOW:
                        return False, (
                            f"rule {rule_id} is not running or about to run (next run: "
                            f"{_iso(following) if following else 'none'}); a stop is available from 5 minutes "
                            "before a run. Use --force to stop it anyway, or set enabled: false in its file"
                        )
            return await tables.set_status(rule_id, False, who, now, "rules stop"), None

        changed, refusal = run_async(change, store_of(config, store))
        if refusal:
            fail(refusal, 1)
        typer.echo(f"{rule_id} stopped by {who}" if changed else f"{rule_id} was already stopped")

    @rules_app.command("start")
    def start(
        rule_id: Annotated[str, typer.Argument(help="rule id")],
        config: ConfigOption = None, store: StoreOption = None, rules: RulesOption = None, by: ByOption = None,
    ) -> None:
        """Reactivate a stopped rule. A stopped run is not resumed: the next scheduled instant runs."""
        loaded = rules_of(config, rules)
        if loaded.kind(rule_id) is None:
            fail(f"no rule {rule_id} in the rule files", 1)
        who = by or getpass.getuser()
        now = datetime.now(UTC)
        changed = run_async(lambda tables: tables.set_status(rule_id, True, who, now, "rules start"),
                            store_of(config, store))
        typer.echo(f"{rule_id} started by {who}" if changed else f"{rule_id} was already active")

    @rules_app.command("runs")
    def runs(rule_id: Annotated[str, typer.Argument(help="scheduled rule id")],
             config: ConfigOption = None, store: StoreOption = None) -> None:
        """A scheduled rule's runs: instant, status, audience, executed, skipped, pending."""
        found = run_async(lambda tables: tables.runs(rule_id), store_of(config, store))
        if not found:
            typer.echo(f"no runs of {rule_id}")
        for r in found:
            typer.echo(
                f"{r.run_id}  {r.status:<9} scheduled {_iso(r.scheduled_at)}  started {_iso(r.started_at)}  "
                f"finished {_iso(r.finished_at) or '-'}  audience {r.audience}  executed {r.executed}  "
                f"skipped {r.skipped}  not reached {r.pending}"
            )


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if moment else None
