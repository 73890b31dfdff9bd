"""smartico-stream: run the service, the demo, and the tools around them.

Exit codes: 0 ok; 1 a check failed (rules check, schemas check, adapters test, lag above --max-lag);
2 invalid configuration; 3 a dependency (broker, database) unreachable. Errors are one line (a list
for configuration problems); --debug shows the traceback of an unexpected one.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
import uvloop
from typer.core import TyperGroup

from smartico_stream.config import (
    EXIT_CHECK_FAILED,
    EXIT_CONFIG,
    EXIT_UNREACHABLE,
    RDKAFKA_ENV_PREFIX,
    ConfigError,
    StartupError,
    connection_problems,
    load_settings,
)
from smartico_stream.observability.logging import configure_logging

if TYPE_CHECKING:
    from confluent_kafka import KafkaException

    from smartico_stream.config import Settings


def user_error(exc: Exception) -> tuple[int, str]:
    """The exit code and the one-line message for an error that escaped a command. Known errors say
    what they are about (setting, resource); anything else is named by its class only, because its
    message may quote a record's content (run with --debug for the traceback)."""
    if isinstance(exc, (ConfigError, StartupError)):
        return exc.exit_code, str(exc)
    if type(exc).__name__ == "KafkaException":  # not imported here: most commands never load librdkafka
        return _kafka_error(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return EXIT_CHECK_FAILED, f"smartico-stream: {exc.strerror}{where}"
    return EXIT_CHECK_FAILED, f"smartico-stream: unexpected {type(exc).__name__} (run with --debug for the traceback)"


def _kafka_error(exc: Exception) -> tuple[int, str]:
    error = exc.args[0] if exc.args else exc
    text = error.str() if hasattr(error, "str") else str(error)
    invalid = hasattr(error, "code") and error.code() == -186  # _INVALID_ARG: a setting librdkafka refuses
    return (EXIT_CONFIG if invalid else EXIT_UNREACHABLE), f"kafka: {text}"


class _Commands(TyperGroup):
    """The command tree. An error escaping a command becomes one line on stderr and its exit code
    (:func:`user_error`), never a traceback, unless ``--debug`` asks for it."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click Context
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):  # usage errors, exit codes: as typer shows them
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            code, message = user_error(exc)
            typer.echo(message, err=True)
            ctx.exit(code)


# Plain text help (no rich boxes, `--json` shown as the flag it is); no pretty tracebacks (see _Commands).
app = typer.Typer(
    cls=_Commands, no_args_is_help=True, add_completion=False, help=__doc__, rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
adapters_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                           help="Operator adapters: list them, run their golden files.")
schemas_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="JSON Schema of the canonical events.")
rules_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Automation rules: validate them, list the fields they can use.")
pii_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                      help="Personal data: keys, rotation, audited decryption (docs/pii.md).")
app.add_typer(adapters_app, name="adapters")
app.add_typer(schemas_app, name="schemas")
app.add_typer(rules_app, name="rules")
app.add_typer(pii_app, name="pii")
# The replica commands import their dependencies when they run (smartico_stream/ops/replica.py).
from smartico_stream.ops.replica import replica_app  # noqa: E402 - beside the other groups

app.add_typer(replica_app, name="replica")
# The REST source's API keys, likewise (smartico_stream/ops/api_keys.py).
from smartico_stream.ops.api_keys import api_keys_app  # noqa: E402 - beside the other groups

app.add_typer(api_keys_app, name="api-keys")


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help="show the Python traceback of an unexpected error")] = False,
) -> None:
    """Options for every command (given before the command's name)."""


ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config file", exists=True, dir_okay=False)]
OptionalConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (default: defaults and environment)")
]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _librdkafka_refusal(exc: KafkaException, settings: Settings, origin: str) -> str:
    """What librdkafka refused at client creation, named by setting (and by environment variable
    when the value came from one)."""
    error = exc.args[0]
    text = error.str() if hasattr(error, "str") else str(error)
    match = re.search(r'property:? "([^"]+)"', text)
    if match is None:
        return f"{origin}: invalid configuration\n  kafka.config: librdkafka refuses it: {text}"
    name = match.group(1)
    setting = "kafka.producer_config" if name in settings.kafka.producer_config else "kafka.config"
    variable = RDKAFKA_ENV_PREFIX + name.upper().replace(".", "_")
    via = f" (set by {variable})" if variable in {key.upper() for key in os.environ} else ""
    return f"{origin}: invalid configuration\n  {setting}.{name}: librdkafka refuses it: {text}{via}"


async def _until_signalled(run: Any, on_hangup: Any = None) -> None:
    """Run ``run(stop)`` and set ``stop`` on SIGTERM/SIGINT, so the batch in hand is finished. A
    second signal exits at once (what was not committed is read again on restart). SIGHUP calls
    ``on_hangup`` (the service reloads its rule files between two batches)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            os._exit(130)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    if on_hangup is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    await run(stop)


@app.command()
def run(config: ConfigOption) -> None:
    """Run the service with a config file (environment variables override it, see README)."""
    from smartico_stream.service import Service

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _fail(str(exc))
    if problem := connection_problems(settings, str(config)):
        _fail(str(problem))
    configure_logging(settings.logging.level, settings.logging.format)
    from confluent_kafka import KafkaException

    from smartico_stream.adapters.registry import AdapterLoadError
    from smartico_stream.engine.rules import RuleLoadError
    from smartico_stream.pii.keys import PiiKeyError
    from smartico_stream.sinks.base import SinkConfigError

    try:
        service = Service(settings)
    except (RuleLoadError, PiiKeyError) as exc:
        _fail(str(exc))
    except AdapterLoadError as exc:
        _fail(f"{config}: invalid configuration\n  adapter: {exc}")
    except SinkConfigError as exc:  # what only the client library can refuse (librdkafka settings)
        _fail(f"{config}: invalid configuration\n  {exc}")
    except KafkaException as exc:  # the source's consumer or the dead-letter producer refused a setting
        _fail(_librdkafka_refusal(exc, settings, str(config)))
    # A dependency that stops the start (store, port, broker login) is a StartupError: see _Commands.
    uvloop.run(_until_signalled(service.run, service.request_reload))


@app.command()
def demo(
    events: Annotated[int, typer.Option(help="records to produce (including duplicates and malformed ones)")] = 20_000,
    users: Annotated[int, typer.Option(help="distinct users in the stream")] = 2_000,
    duration: Annotated[float | None, typer.Option(help="stop producing after this many seconds")] = None,
    metrics_port: Annotated[int, typer.Option(help="port for /metrics, /healthz, /readyz (0: any free port)")] = 9108,
    json: Annotated[bool, typer.Option("--json", help="print the summary as one JSON object")] = False,
    keep: Annotated[
        Path | None, typer.Option(help="keep the demo's stores, actions, dead letters and metrics here")
    ] = None,
    transport: Annotated[str, typer.Option(
        help="kafka (embedded), rabbitmq (the local broker), replica (views on local PostgreSQL) or rest "
             "(the service's own HTTP API)")] = "kafka",
    rabbitmq_url: Annotated[str, typer.Option(help="broker for --transport rabbitmq")] = "amqp://guest:guest@127.0.0.1:5672/",
    replica_dsn: Annotated[
        str, typer.Option(help="PostgreSQL for --transport replica (a scratch schema, dropped afterwards)")
    ] = "postgresql://postgres@127.0.0.1:5432/test",
) -> None:
    """Run the service on an embedded Kafka (or the local RabbitMQ, or views of the local
    PostgreSQL) with a realistic synthetic operator stream, then summarise."""
    from smartico_stream.demo.runner import DemoUnavailable, run_demo

    if transport not in ("kafka", "rabbitmq", "replica", "rest"):
        _fail(f"--transport takes kafka, rabbitmq, replica or rest, not {transport!r}")
    configure_logging("ERROR", "console")  # the progress line already counts dead letters
    progress = None if json else (lambda line: typer.echo(line, err=True))
    try:
        summary = uvloop.run(run_demo(events=events, users=users, duration_s=duration, metrics_port=metrics_port,
                                      progress=progress, keep=keep, transport=transport, rabbitmq_url=rabbitmq_url,
                                      replica_dsn=replica_dsn))
    except DemoUnavailable as exc:
        _fail(str(exc), 1)
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
    typer.echo(f"actions        {summary.actions:>9}  (delivered to the JSONL sink: {summary.actions_delivered})")
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
    from smartico_stream.adapters.golden import (
        ContractViolation,
        GoldenFileError,
        golden_cases,
        run_golden,
        write_golden,
    )
    from smartico_stream.adapters.registry import AdapterLoadError, UnknownAdapter, available_adapters, load_adapter

    names = [name] if name else list(available_adapters())
    failed = False
    for adapter_name in names:
        try:
            adapter = load_adapter(adapter_name)
            if update:
                for case in golden_cases(adapter):
                    typer.echo(f"updated {write_golden(adapter, case)}")
        except (UnknownAdapter, AdapterLoadError, GoldenFileError) as exc:
            _fail(f"{adapter_name}: {exc}")
        except ContractViolation as exc:
            # The adapter failed its own test (AdapterBug carries its traceback): nothing was recorded.
            _fail(f"{adapter_name}: refusing to update: {exc}", 1)
        report = run_golden(adapter)
        typer.echo(report.render())
        failed = failed or not report.passed
    if failed:
        raise typer.Exit(1)


@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Argument(help="folder to write the schema files to")] = Path("schemas"),
) -> None:
    """Write the JSON Schema of every canonical event."""
    from smartico_stream.events.schema import write_schemas

    for path in write_schemas(directory):
        typer.echo(str(path))


@schemas_app.command("check")
def schemas_check(
    directory: Annotated[Path, typer.Argument(help="folder holding the schema files")] = Path("schemas"),
) -> None:
    """Fail when the schema files differ from the models."""
    from smartico_stream.events.schema import stale_schemas

    stale = stale_schemas(directory)
    if stale:
        _fail(f"stale schema files in {directory}: {', '.join(stale)}; run `smartico-stream schemas export`", 1)
    typer.echo("schemas up to date")


@rules_app.command("check")
def rules_check(path: Annotated[Path, typer.Argument(help="rule file or folder", exists=True)]) -> None:
    """Validate rules without running them; exit 1 listing every problem."""
    from smartico_stream.engine.rules import RuleLoadError, load_rules

    try:
        rules = load_rules(path)
    except RuleLoadError as exc:
        _fail(str(exc), 1)
    for rule in rules.rules:
        typer.echo(f"ok  {rule.id:<32} trigger={rule.spec.trigger.event}  priority={rule.spec.priority}")
    for rule_id in rules.disabled:
        typer.echo(f"off {rule_id:<32} (enabled: false)")
    from smartico_stream.engine.scheduled.spec import load_scheduled_rules

    try:
        scheduled = load_scheduled_rules(path)
    except RuleLoadError as exc:
        _fail(str(exc), 1)
    for rule_id, scheduled_rule in scheduled.items():
        typer.echo(f"ok  {rule_id:<32} schedule={scheduled_rule.spec.schedule.type}  "
                   f"priority={scheduled_rule.spec.priority}")
    typer.echo(f"{len(rules.rules) + len(scheduled)} enabled, {len(rules.disabled)} disabled")


@rules_app.command("fields")
def rules_fields(
    event: Annotated[str | None, typer.Argument(help="trigger event type; omitted: user fields only")] = None,
) -> None:
    """Fields conditions may read (user.* always, event.* for the given trigger type)."""
    from smartico_stream.engine.conditions import event_schema
    from smartico_stream.engine.state import USER_SCHEMA
    from smartico_stream.events.models import MODEL_BY_TYPE, EventType

    schema = dict(USER_SCHEMA)
    if event is not None:
        try:
            schema.update(event_schema(MODEL_BY_TYPE[EventType(event)]))
        except ValueError:
            _fail(f"unknown event type {event!r}; one of: {', '.join(EventType)}")
    for name, kind in sorted(schema.items()):
        typer.echo(f"{name:<40} {kind}")


@app.command()
def simulate(
    rules: Annotated[Path, typer.Option(help="rule file or folder", exists=True)],
    events: Annotated[Path, typer.Option(help="JSONL of raw operator records", exists=True, dir_okay=False)],
    config: Annotated[Path | None, typer.Option(
        "--config", "-c",
        help="the service's config: its adapter, record limits (limits.*) and PII options apply, so the "
        "actions are the live service's; without it unkeyed records are accepted (hand-written files)",
    )] = None,
    adapter: Annotated[str | None, typer.Option(
        help="adapter mapping the records (default: the config's, else reference)")] = None,
    state: Annotated[Path | None, typer.Option(help="keep the SQLite store here for inspection")] = None,
    stream: Annotated[str | None, typer.Option(help="stream of bare (non-envelope) lines")] = None,
    pii_keys: Annotated[Path | None, typer.Option(help="PII key ring (JSON); without it PII is dropped")] = None,
    pii_state: Annotated[Path | None, typer.Option(help="keep the encrypted PII store here")] = None,
    until: Annotated[str | None, typer.Option(
        help="scheduled rules: go on to this instant after the last record (ISO date-time with an offset, "
        "e.g. 2026-06-01T09:00:00Z); `now` rules run at the end of the timeline",
    )] = None,
) -> None:
    """Dry run: print every action as one JSON line (deterministic: same input, same bytes).
    Scheduled rules run on the input's event timeline (docs/rules.md, Scheduled rules)."""
    from datetime import datetime

    from smartico_stream.adapters.registry import UnknownAdapter, load_adapter
    from smartico_stream.engine.rule_files import load_rule_files
    from smartico_stream.engine.rules import RuleLoadError
    from smartico_stream.events.raw import Stream
    from smartico_stream.pipeline.pipeline import PipelineLimits
    from smartico_stream.simulate import InputError, read_records
    from smartico_stream.simulate import simulate as run_simulation

    if state is not None and state.exists():
        _fail(f"--state {state} already exists; simulate starts from an empty store (remove it or choose another path)")
    settings: Settings | None = None
    if config is not None:
        try:
            settings = load_settings(config)
        except ConfigError as exc:
            _fail(str(exc))
    limits = (PipelineLimits(settings.limits.max_message_bytes, settings.limits.require_key) if settings
              else PipelineLimits(require_key=False))
    until_at = None
    if until is not None:
        try:
            until_at = datetime.fromisoformat(until.replace("Z", "+00:00"))
        except ValueError:
            _fail(f"--until {until!r}: expected an ISO date-time such as 2026-06-01T09:00:00Z")
        if until_at is None or until_at.tzinfo is None:
            _fail(f"--until {until!r}: give the offset (Z or +02:00): the instant must be unambiguous")
    try:
        loaded = load_rule_files(rules)
        rule_set = loaded.real_time
        mapper = load_adapter(adapter or (settings.adapter if settings else "reference"))
        default_stream = Stream(stream) if stream else None
    except (RuleLoadError, UnknownAdapter) as exc:
        _fail(str(exc))
    except ValueError:
        _fail(f"unknown stream {stream!r}; one of: {', '.join(Stream)}")
    out = sys.stdout.buffer
    configure_logging("WARNING", "console")  # stdout is the actions only; the scheduler's notes are INFO

    def emit(actions: list[Any]) -> None:
        for action in actions:
            out.write(action.to_json() + b"\n")

    from smartico_stream.pii.guard import PiiGuard
    from smartico_stream.pii.keys import KeyRing, PiiKeyError
    from smartico_stream.pii.vault import PiiVault
    from smartico_stream.store.sqlite import SqliteDatabase

    try:
        ring = KeyRing.load(pii_keys, None) if pii_keys else None
    except PiiKeyError as exc:
        _fail(str(exc))
    if pii_state is not None and ring is None:
        _fail("--pii-state needs --pii-keys (values are stored encrypted, never in plaintext)")
    vault = PiiVault(SqliteDatabase(pii_state), ring) if pii_state is not None and ring is not None else None
    pii = settings.pii if settings else None
    guard = PiiGuard(ring, pii.encrypt_names, pii.email_domain, pii.custom_fields) if pii else PiiGuard(ring)
    try:
        summary = asyncio.run(
            run_simulation(read_records(events, default_stream), mapper, rule_set, emit, state, limits=limits,
                           guard=guard, vault=vault, dedup=settings.dedup if settings else None,
                           scheduled=loaded.scheduled, until=until_at)
        )
    except InputError as exc:
        _fail(str(exc))
    out.flush()
    typer.echo(
        f"records {summary.records}, processed {summary.processed}, deduplicated {summary.deduplicated}, "
        f"dead-lettered {summary.dead_lettered}, actions {summary.actions}"
        + (f", scheduled runs {summary.scheduled_runs}" if loaded.scheduled else ""),
        err=True,
    )


@app.command()
def history(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="service config (for the store URL)")] = None,
    store: Annotated[str | None, typer.Option(help="store URL, e.g. sqlite:///state.db (overrides --config)")] = None,
    user: Annotated[str | None, typer.Option(help="BRAND:USER")] = None,
    rule: Annotated[str | None, typer.Option(help="rule id")] = None,
    limit: Annotated[int, typer.Option(help="most rows")] = 1000,
    json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Execution history, per user and/or per rule, with qualification date and validity."""
    from smartico_stream.store import open_store_from_url

    schema = None
    if store is not None:
        from smartico_stream.config import valid_store_url

        try:
            store = valid_store_url(store)
        except ValueError as exc:
            _fail(f"--store: {exc}")
    if store is None:
        try:
            store_settings = load_settings(config).store
        except ConfigError as exc:
            _fail(str(exc))
        store, schema = store_settings.url, store_settings.db_schema
    brand = user_id = None
    if user is not None:
        brand, sep, user_id = user.partition(":")
        if not sep or not brand or not user_id:
            _fail("--user takes BRAND:USER, e.g. --user brand-eu:u-123")

    async def read() -> list[Any]:
        opened = open_store_from_url(store, schema)
        await opened.open()
        try:
            return await opened.history(brand=brand, user=user_id, rule=rule, limit=limit)
        finally:
            await opened.close()

    entries = asyncio.run(read())
    for entry in entries:
        row = {
            "brand": entry.brand, "user": entry.user, "rule_id": entry.rule_id, "event_id": entry.event_id,
            "event_type": entry.event_type, "event_time": _iso(entry.event_time), "outcome": entry.outcome,
            "executions": entry.executions, "reason": entry.reason,
            "qualification_date": _iso(entry.qualified_at), "qualification_valid_until": _iso(entry.qualified_until),
        }
        if json:
            sys.stdout.buffer.write(orjson.dumps(row) + b"\n")
        else:
            typer.echo(
                f"{row['event_time']}  {entry.brand}:{entry.user}  {entry.rule_id:<24} {entry.outcome:<22} "
                f"x{entry.executions}  qualified {row['qualification_date'] or '-'} "
                f"valid until {row['qualification_valid_until'] or '-'}  {entry.reason or ''}".rstrip()
            )


KeyFileOption = Annotated[Path, typer.Option("--keys", help="key ring file (JSON)")]
ActorOption = Annotated[str, typer.Option(help="who decrypts (audited)")]
PurposeOption = Annotated[str, typer.Option(help="why (audited), e.g. 'support ticket 4711'")]


def _write_private(path: Path, content: bytes) -> None:
    """Create or replace a key file readable by its owner only."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    os.replace(tmp, path)


@pii_app.command("keygen")
def pii_keygen(
    out: Annotated[Path, typer.Option(help="key ring file to create (mode 0600)")],
    key_id: Annotated[str, typer.Option(help="id of the first key")] = "k1",
) -> None:
    """Create a new key ring (one AES-256 key and an HMAC key)."""
    from smartico_stream.pii.keys import generate_key_ring, key_ring_to_json

    if out.exists():
        _fail(f"{out} exists; to rotate, use `smartico-stream pii add-key --keys {out}`")
    _write_private(out, key_ring_to_json(generate_key_ring(key_id)))
    typer.echo(f"wrote {out}; point pii.keys_file at it (or put its content in $SMARTICO_STREAM_PII_KEYS)")


@pii_app.command("add-key")
def pii_add_key(keys: KeyFileOption, key_id: Annotated[str, typer.Option(help="id of the new key")]) -> None:
    """Rotation step 1: add a key that new writes use; old values stay readable."""
    from smartico_stream.pii.keys import KeyRing, PiiKeyError, add_key, key_ring_to_json

    try:
        ring = add_key(KeyRing.load(keys, None), key_id)
    except PiiKeyError as exc:
        _fail(str(exc))
    _write_private(keys, key_ring_to_json(ring))
    typer.echo(f"{key_id} is now the current key; restart the service, then run `smartico-stream pii rotate`")


def _vault(config: Path | None) -> Any:
    from smartico_stream.pii.keys import PiiKeyError
    from smartico_stream.pii.setup import pii_components

    try:
        components = pii_components(load_settings(config).pii)
    except (ConfigError, PiiKeyError) as exc:
        _fail(str(exc))
    if components.vault is None:
        _fail("no PII key ring configured (pii.keys_file or $SMARTICO_STREAM_PII_KEYS): nothing is stored")
    return components.vault


def _with_vault(config: Path | None, work: Any) -> Any:
    async def run() -> Any:
        vault = _vault(config)
        try:
            await vault.open()
        except StartupError as exc:
            raise exc.about("pii.store_url", "pii.store_connect_timeout_s") from None
        try:
            return await work(vault)
        finally:
            await vault.close()

    return asyncio.run(run())


@pii_app.command("rotate")
def pii_rotate(
    config: OptionalConfigOption = None,
    batch_size: Annotated[int, typer.Option(help="values per transaction")] = 500,
) -> None:
    """Rotation step 2: re-encrypt every stored value under the current key, in batches."""
    count = _with_vault(config, lambda vault: vault.rotate(batch_size))
    usage = _with_vault(config, lambda vault: vault.key_usage())
    typer.echo(f"re-encrypted {count} value(s); values per key now: {usage}")


@pii_app.command("key-usage")
def pii_key_usage(config: OptionalConfigOption = None) -> None:
    """Values per key id: a key can be retired once it has none."""
    for key_id, count in _with_vault(config, lambda vault: vault.key_usage()).items():
        typer.echo(f"{key_id:<16} {count}")


@pii_app.command("reveal")
def pii_reveal(
    user: Annotated[str, typer.Option(help="BRAND:USER")],
    field: Annotated[str, typer.Option(help="email, phone, first_name, last_name or custom.<field>")],
    actor: ActorOption,
    purpose: PurposeOption,
    config: OptionalConfigOption = None,
) -> None:
    """Decrypt one value for an explicit, audited purpose (e.g. templating {{state.user_first_name}})."""
    brand, sep, user_id = user.partition(":")
    if not sep:
        _fail("--user takes BRAND:USER")
    value = _with_vault(config, lambda vault: vault.reveal(brand, user_id, field, actor=actor, purpose=purpose))
    if value is None:
        _fail(f"no {field} stored for {user}", 1)
    typer.echo(value)


@pii_app.command("find")
def pii_find(
    field: Annotated[str, typer.Option(help="email, phone or custom.<field>")],
    value: Annotated[str, typer.Option(help="the value to look for (normalised as on arrival)")],
    config: OptionalConfigOption = None,
    country: Annotated[str | None, typer.Option(help="region of a national-format phone, e.g. GB")] = None,
) -> None:
    """Users holding a value, matched by keyed hash without decrypting anything."""
    from smartico_stream.pii.detect import lookup_value

    normalised = lookup_value(field, value, country)
    for brand, user_id in _with_vault(config, lambda vault: vault.find(field, normalised)):
        typer.echo(f"{brand}:{user_id}")


@pii_app.command("decrypt-dead-letters")
def pii_decrypt_dead_letters(
    actor: ActorOption,
    purpose: PurposeOption,
    config: OptionalConfigOption = None,
    limit: Annotated[int, typer.Option(help="most dead letters to read")] = 100,
    timeout_s: Annotated[float, typer.Option(help="stop when nothing arrives for this long")] = 10.0,
) -> None:
    """Read the dead-letter topic (without committing) and print each letter's reason, coordinates
    and decrypted payload as JSON lines. The decryption is audited."""
    import uuid

    from confluent_kafka import Consumer

    from smartico_stream.pii.payloads import reveal_dead_letter
    from smartico_stream.sources.kafka import message_headers

    settings = load_settings(config)
    vault = _vault(config)

    async def audit() -> None:  # before anything is decrypted, not after
        await vault.open()
        try:
            await vault.audit_decryption(actor=actor, purpose=purpose, action=f"decrypt up to {limit} dead letter(s)")
        finally:
            await vault.close()

    asyncio.run(audit())
    consumer = Consumer(
        {
            **settings.kafka.config,
            "group.id": f"smartico-stream-dead-letter-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.kafka.dead_letter_topic])
    shown = 0
    try:
        while shown < limit:
            message = consumer.poll(timeout_s)
            if message is None:
                break
            if message.error():
                continue
            headers = dict(message_headers(message))
            try:
                payload = reveal_dead_letter(vault.ring, message.value() or b"", headers).decode("utf-8", "replace")
            except ValueError as exc:
                payload = None
                headers["x-smartico-reveal-error"] = str(exc).encode()
            row = {
                k: v.decode("utf-8", "replace") if v is not None else None
                for k, v in headers.items()
                if k.startswith("x-smartico-")
            }
            row["payload"] = payload
            sys.stdout.buffer.write(orjson.dumps(row) + b"\n")
            shown += 1
    finally:
        consumer.close()


def _iso(moment: Any) -> str | None:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z") if moment else None


# `lag` and `bench` live in modules of their own and are imported only when they run: the bench
# package, and the Kafka source and Prometheus client behind `lag`, would otherwise cost every command's
# start-up (docs/performance.md, Start-up).
from typer.core import TyperCommand  # noqa: E402 - only the lazy commands need it


class _LazyCommand(TyperCommand):
    """A command whose typer function (``target``, ``module:function``) is imported when the command
    is invoked, ``--help`` included; until then it is only its name and summary in the listing."""

    target = ""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        import importlib

        module, _, function = self.target.partition(":")
        real = typer.Typer(add_completion=False, rich_markup_mode=None)
        real.command(self.name)(getattr(importlib.import_module(module), function))
        # Built as typer builds every command: the same options, help and errors as if registered directly.
        return typer.main.get_command(real).make_context(info_name, args, parent=parent, **extra)


def _lazy(target: str) -> type[TyperCommand]:
    return type("_LazyCommand", (_LazyCommand,), {"target": target})


def _lag() -> None:
    """Per-partition committed offset, high watermark and lag of the group (Kafka), per-queue depth
    and consumers (RabbitMQ), or per-view cursor, cursor lag, rows behind and lease holder (replica),
    read from the broker (the store and the replica); works while the service is down."""


def _bench() -> None:
    """Measure throughput (raw ceiling, the service on SQLite and PostgreSQL, RabbitMQ), latency,
    memory and scaling against the embedded Kafka, in one run (docs/performance.md)."""


# The summaries above are the real commands' first paragraphs (tests/bench/test_bench.py compares them).
app.command("lag", cls=_lazy("smartico_stream.ops.lag:lag_command"))(_lag)
app.command("bench", cls=_lazy("smartico_stream.bench.command:bench_command"))(_bench)


# Audience estimate and rule control: smartico_stream/scheduler/commands.py (imports lazily).
from smartico_stream.scheduler.commands import register as _register_rule_commands  # noqa: E402

_register_rule_commands(rules_app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
