"""Service configuration: one YAML file plus environment overrides.

Precedence, highest first: ``SMARTICO_STREAM_RDKAFKA_*`` (librdkafka passthrough), other
``SMARTICO_STREAM_*`` variables (nested with ``__``), the YAML file, the defaults below.
Every librdkafka setting passes through untouched, so SASL_SSL clusters work by configuration alone.

``load_settings`` reports every problem in one ConfigError (exit 2): field errors, cross-field conflicts
(collected even when fields fail), ``SMARTICO_STREAM_*`` variables nothing reads (with the closest known
name) and an adapter that is not installed. ``StartupError`` is what stops the service after that: a
dependency unreachable (exit 3) or refusing the configuration (exit 2), named by setting and resource.
"""

from __future__ import annotations

import difflib
import os
import socket
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from smartico_stream.events.raw import Stream
from smartico_stream.pipeline.dedup import MAX_ENTRIES as MAX_DEDUP_ENTRIES
from smartico_stream.sinks.base import setting_errors
from smartico_stream.sinks.registry import SinkSettings, unique_sink_names
from smartico_stream.sources.replica.settings import ReplicaSettings
from smartico_stream.sources.rest.settings import RestSettings

ENV_PREFIX = "SMARTICO_STREAM_"
RDKAFKA_ENV_PREFIX = "SMARTICO_STREAM_RDKAFKA_"
# Read deliberately outside the Settings model, so never "unknown": the default PII key ring variable
# (pii.keys_env), the crash tests' failpoints, and the test suite's and the bench's own variables.
OTHER_ENV_NAMES = frozenset({
    "SMARTICO_STREAM_PII_KEYS",
    "SMARTICO_STREAM_FAILPOINTS",
    "SMARTICO_STREAM_TEST_KAFKA_BROKERS",
    "SMARTICO_STREAM_TEST_PG_DSN",
    "SMARTICO_STREAM_BENCH_PG_DSN",
    "SMARTICO_STREAM_BENCH_RABBITMQ_URL",
    "SMARTICO_STREAM_REPLICA_PASSWORD",  # replica.password_env's default
})

# Exit codes of every command (README, "Exit codes").
EXIT_OK, EXIT_CHECK_FAILED, EXIT_CONFIG, EXIT_UNREACHABLE = 0, 1, 2, 3

DEFAULT_KAFKA_CONFIG: Mapping[str, Any] = {"bootstrap.servers": "localhost:9092", "group.id": "smartico-stream"}

# One cross-field problem: where (relative to the model), what is wrong, and the fields it reads (a check
# is skipped when one of those fields failed validation itself: its value is unknown then).
Problem = tuple[tuple[str | int, ...], str, frozenset[str]]


def _merged_errors(exc: ValidationError, problems: Sequence[Problem]) -> ValidationError:
    """The field errors of ``exc`` and the cross-field ``problems`` as one ValidationError."""
    lines = [(tuple(err["loc"]), err["msg"], err.get("input")) for err in exc.errors(include_url=False)]
    return setting_errors([*lines, *((loc, message, None) for loc, message, _ in problems)])


def _without(data: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """``data`` without the value at ``path`` (as deep as it goes through mappings)."""
    head, *rest = path
    inner = data.get(head)
    if rest and isinstance(inner, Mapping):
        return {**data, head: _without(inner, tuple(rest))}
    return {k: v for k, v in data.items() if k != head}


class _AllProblems:
    """Cross-field checks that run even when fields fail, so that one run reports every problem.

    pydantic skips ``mode="after"`` model validators once a field fails; here the model is validated
    again without the failing fields (their defaults stand in) and every check that reads none of them
    runs, its problems joining the field errors. A check names the fields it reads as dotted paths
    ``_prune_depth`` deep (``kafka.poll_timeout_s`` for the whole configuration, ``config`` in a section)."""

    _prune_depth: typing.ClassVar[int] = 1

    def cross_field_problems(self) -> list[Problem]:
        """Problems between fields of a model whose fields are each valid; none by default."""
        return []

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        try:
            model = handler(data)
        except ValidationError as exc:
            paths = {tuple(str(p) for p in err["loc"][: cls._prune_depth]) for err in exc.errors() if err["loc"]}
            if not isinstance(data, Mapping) or not paths:
                raise
            pruned_data: Mapping[str, Any] = data
            for path in paths:
                pruned_data = _without(pruned_data, path)
            try:
                pruned = handler(pruned_data)
            except ValidationError:
                raise exc from None
            failed = {".".join(path) for path in paths}
            problems = [p for p in pruned.cross_field_problems() if not p[2] & failed]
            if not problems:
                raise
            raise _merged_errors(exc, problems) from None
        problems = model.cross_field_problems()
        if problems:
            raise setting_errors([(loc, message, None) for loc, message, _ in problems])
        return model


class _Section(_AllProblems, BaseModel):
    # No infinite or NaN number anywhere: `.inf` in YAML is a float, and a window or a timeout of
    # infinity is a typo, not a wish.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def valid_store_url(value: Any) -> Any:
    """``sqlite:///PATH`` or ``postgresql://``/``postgres://``; the scheme is case-insensitive (RFC 3986)
    and returned lower-case. Anything else would open a relative SQLite file named after the URL."""
    if not isinstance(value, str):
        return value
    scheme, sep, rest = value.partition("://")
    kind = scheme.lower()
    if sep and kind in ("postgresql", "postgres"):
        if not rest:
            raise ValueError("postgresql:// needs a host (postgresql://USER@HOST:PORT/DATABASE)")
        return f"{kind}://{rest}"
    if sep and kind == "sqlite" and rest.startswith("/") and rest.strip("/"):
        return f"sqlite://{rest}"
    if sep and kind.startswith(("postgresql+", "postgres+")):
        raise ValueError(f"unsupported scheme {scheme}://; use postgresql:// (the driver is always asyncpg)")
    shown = f"scheme {scheme}://" if sep and scheme and "/" not in scheme and "@" not in scheme else "URL"
    raise ValueError(f"unsupported {shown}; use sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE")


class KafkaSettings(_Section):
    """Kafka source. ``config`` is handed to librdkafka as-is (bootstrap.servers, security.protocol,
    sasl.*, ssl.*, ...); the service only sets what correctness needs (manual commits) and what it
    measures with (statistics), and refuses settings that would break its guarantees."""

    config: dict[str, Any] = Field(
        default_factory=lambda: dict(DEFAULT_KAFKA_CONFIG),
        description="librdkafka consumer settings, passed through untouched; bootstrap.servers and group.id "
        "default to localhost:9092 and smartico-stream when not given",
    )
    producer_config: dict[str, Any] = Field(
        default_factory=dict,
        description="librdkafka settings for the dead-letter producer; defaults to the connection "
        "settings of `config` (everything but consumer-only keys)",
    )
    topics: dict[Stream, list[str]] = Field(
        default_factory=lambda: {
            Stream.PROFILE: ["user_profile"],
            Stream.PAYMENTS: ["payments"],
            Stream.CASINO: ["casino"],
            Stream.SPORT: ["sport"],
        },
        description="topics per stream; a stream may have several topics or none",
    )
    dead_letter_topic: str = "smartico-stream.dead-letters"
    batch_size: int = Field(default=2000, ge=1, le=100_000, description="max records per consume()")
    poll_timeout_s: float = Field(default=0.5, gt=0, le=30)
    statistics_interval_ms: int = Field(default=5000, ge=100, description="librdkafka stats (lag) period")
    dead_letter_flush_timeout_s: float = Field(
        default=30.0, gt=0, description="how long to wait for dead letters to be acknowledged before committing"
    )

    @field_validator("topics", mode="before")
    @classmethod
    def _single_topic_as_list(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("config", mode="before")
    @classmethod
    def _defaults_under_a_partial_config(cls, value: Any) -> Any:
        # A file naming only bootstrap.servers keeps the default group.id (and the other way round).
        if isinstance(value, Mapping):
            return {**DEFAULT_KAFKA_CONFIG, **value}
        return value

    def cross_field_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        config = frozenset({"config"})
        if str(self.config.get("enable.auto.commit", "false")).lower() == "true":
            problems.append((("config", "enable.auto.commit"), "true would commit records before they are "
                             "handled; remove it (the service commits after each batch)", config))
        if not self.config.get("group.id"):
            problems.append((("config", "group.id"), "must not be empty (one consumer group per operator)", config))
        seen: dict[str, Stream] = {}
        for stream, topics in self.topics.items():
            for topic in topics:
                if topic in seen:
                    problems.append((("topics", str(stream)), f"topic {topic!r} is configured for both "
                                     f"{seen[topic]} and {stream}", frozenset({"topics"})))
                seen[topic] = stream
        if not seen:
            problems.append((("topics",), "names no topic at all", frozenset({"topics"})))
        return problems

    def stream_of_topic(self) -> dict[str, Stream]:
        return {topic: stream for stream, topics in self.topics.items() for topic in topics}


class RabbitMqSettings(_Section):
    """RabbitMQ source (docs/rabbitmq.md). Per stream, a consistent-hash exchange spreads messages by
    their routing key (the user id) over ``queues_per_stream`` queues, each consumed by one active
    consumer at a time (single-active-consumer), so each user's messages stay in order."""

    url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/", description="AMQP URL (amqps:// for TLS)")
    connection: dict[str, Any] = Field(
        default_factory=dict, description="extra aio-pika connect_robust() arguments, passed through untouched"
    )
    exchanges: dict[Stream, str] = Field(
        default_factory=lambda: {
            Stream.PROFILE: "user_profile",
            Stream.PAYMENTS: "payments",
            Stream.CASINO: "casino",
            Stream.SPORT: "sport",
        },
        description="consistent-hash exchange per stream; its queues are <exchange>.<n>",
    )
    queues_per_stream: int = Field(default=4, ge=1, le=256)
    queue_type: Literal["quorum", "classic"] = "quorum"
    declare: bool = Field(default=True, description="declare the topology; false: only verify it exists")
    prefetch: int = Field(default=2000, ge=1, le=65535)
    batch_size: int = Field(default=500, ge=1, description="messages handled (and acked) together")
    batch_wait_s: float = Field(default=0.05, gt=0, description="longest wait to fill a batch")
    poll_timeout_s: float = Field(default=0.5, gt=0, le=30, description="longest wait for a first message")
    dead_letter_exchange: str = "smartico-stream.dead-letters"
    handled_retention_s: float = Field(
        default=7 * 24 * 3600, gt=0, description="how long ids of handled messages are kept to ignore redeliveries"
    )
    queue_stats_interval_s: float = Field(default=5.0, gt=0, description="how often queue depth is read")

    def queues(self) -> dict[str, Stream]:
        """Queue name -> stream."""
        return {
            f"{exchange}.{n}": stream
            for stream, exchange in self.exchanges.items()
            for n in range(self.queues_per_stream)
        }


class DedupSettings(_Section):
    """Deduplication by brand + event type + transaction id: the spec's short window (2 minutes of
    the records' source time) for every event, and for money events (deposits and withdrawals) a
    per-user memory of the transactions applied (README, "Deduplication")."""

    enabled: bool = Field(default=True, description="false turns off both the window and the payments memory")
    window_seconds: float = Field(
        default=120.0, gt=0, description="a repeat within this much source time of the sighting is dropped"
    )
    max_entries: int = Field(
        default=2_000_000, ge=1, le=MAX_DEDUP_ENTRIES,
        description="bound per partition; the oldest keys are dropped first (40-60 bytes each)",
    )
    payments_horizon_s: float = Field(
        default=2_592_000.0, gt=0, le=10 * 365 * 86_400,
        description="money transactions are remembered per user for this much event time (30 days)",
    )
    payments_max_per_user: int = Field(
        default=1_000, ge=0, le=100_000,
        description="at most this many money transactions per user (12 bytes each in memory, 16 in the "
        "stored state); the oldest go first; 0 turns the payments memory off",
    )


class LimitSettings(_Section):
    max_message_bytes: int = Field(
        default=1_000_000, ge=1, description="larger records are dead-lettered unread"
    )
    require_key: bool = Field(
        default=True,
        description="dead-letter records without a key: topics must be keyed by user id, or per-user "
        "order is not guaranteed",
    )


class MetricsSettings(_Section):
    enabled: bool = True
    host: str = "0.0.0.0"  # noqa: S104 - Prometheus scrapes the endpoint from outside the container
    port: int = Field(default=9108, ge=0, le=65535, description="0 picks a free port")
    heartbeat_timeout_s: float = Field(
        default=60.0, gt=0, description="/healthz fails when the poll loop has not turned for this long"
    )


class StoreSettings(_Section):
    """Where per-user state, the outbox, history, dedup keys and source offsets live."""

    url: Annotated[str, AfterValidator(valid_store_url)] = Field(
        default="sqlite:///var/smartico-stream/state.db",
        description="sqlite:///PATH (embedded, one instance) or postgresql://... (several instances)",
    )
    db_schema: str | None = Field(
        default=None, description="PostgreSQL schema (created if missing); default: search_path"
    )
    sqlite_synchronous: Literal["FULL", "NORMAL", "EXTRA"] = Field(
        default="FULL",
        description="SQLite fsync policy (WAL): FULL syncs every commit; NORMAL survives a process crash but a "
        "power loss may undo the last commits, which are then redone from the stored offsets",
    )
    history_retention_s: float = Field(
        default=30 * 86_400.0, ge=0,
        description="rule execution history is deleted this long after it was recorded (0: kept forever)",
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0, le=300,
        description="PostgreSQL: give up connecting after this long at start (the message names the server)",
    )


class EngineSettings(_Section):
    rules: Path | None = Field(default=None, description="rule file or folder; none: aggregates only")
    state_cache_size: int = Field(default=100_000, ge=0, description="users kept in memory between batches")
    full_gc_interval_s: float = Field(
        default=300.0, ge=0,
        description="long-lived objects are kept out of Python's garbage collector, with one full collection "
        "this often (0: Python's own schedule, whose full collections walk the whole state cache)",
    )
    control_interval_s: float = Field(
        default=2.0, gt=0,
        description="how often the running service checks the store for rule stops/starts and reload requests "
        "(between batches; SIGHUP reloads at once)",
    )


class SchedulerSettings(_Section):
    enabled: bool = Field(default=True, description="run scheduled rules (one leader among the instances)")
    lease_ttl_s: float = Field(
        default=30.0, gt=0, description="the leader's lease; another instance takes over this long after it died",
    )
    step_users: int = Field(default=500, ge=1, description="most users of a run executed in one store transaction")
    idle_s: float = Field(default=5.0, gt=0, description="longest sleep between two scheduler rounds")


class OutboxSettings(_Section):
    # Large enough for one batch's actions (2,000 records emit ~5,700 with the bench's rules): each
    # delivery is a store read and a cursor transaction, and at 500 the relay fell behind.
    batch_size: int = Field(default=5000, ge=1, description="most actions per delivery to a sink")
    poll_interval_s: float = Field(default=0.5, gt=0)
    linger_s: float = Field(
        default=0.05, ge=0,
        description="after a commit wakes the relay, wait this long so that one delivery (one sink write, one "
        "cursor transaction) carries the actions of several small batches (0: deliver at once)",
    )
    max_backlog: int = Field(
        default=100_000, ge=1, description="undelivered actions at which consumption pauses until sinks catch up"
    )
    retry_backoff_s: float = Field(default=1.0, gt=0)
    max_backoff_s: float = Field(default=30.0, gt=0)
    retention_s: float = Field(
        default=86_400.0, ge=0,
        description="delivered actions are deleted from the outbox this long after they were committed",
    )
    prune_interval_s: float = Field(default=60.0, gt=0, description="how often the relay deletes delivered actions")


class PiiSettings(_Section):
    """Personal data (email, phone, names): encrypted on arrival into an isolated store (docs/pii.md)."""

    keys_file: Path | None = Field(default=None, description="JSON key ring (smartico-stream pii keygen)")
    keys_env: str = Field(
        default="SMARTICO_STREAM_PII_KEYS", description="environment variable holding the key ring, if set"
    )
    store_url: Annotated[str, AfterValidator(valid_store_url)] = Field(
        default="sqlite:///var/smartico-stream/pii.db", description="the isolated PII store"
    )
    store_db_schema: str | None = Field(default=None, description="PostgreSQL schema of the PII store")
    store_connect_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="PostgreSQL: give up connecting to the PII store after this long"
    )
    encrypt_names: bool = Field(default=True, description="store first/last names encrypted (else: not at all)")
    email_domain: bool = Field(default=False, description="let rules see the email domain")
    custom_fields: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="custom (extra) fields that are personal data whatever their values look like, by key or dotted "
        "path; values that look like an email or a phone are protected in any field (docs/pii.md)",
    )
    dead_letters: Literal["encrypt", "redact"] = Field(
        default="encrypt", description="protect dead-letter payloads: encrypt with the key ring, or drop them"
    )
    unchanged_memory_users: int = Field(
        default=50_000, ge=0,
        description="users whose stored email, phone and names the guard remembers, so an update repeating them "
        "is not normalised, encrypted or written again (0: protect every value every time; docs/pii.md)",
    )
    phone_cache_size: int = Field(
        default=10_000, ge=1, description="phone normalisations kept, by (number as received, country)"
    )


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"


class Settings(_AllProblems, BaseSettings):
    """The whole service configuration."""

    _prune_depth: typing.ClassVar[int] = 2

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    source: Literal["kafka", "rabbitmq", "replica", "rest"] = "kafka"
    adapter: str = Field(default="reference", description="adapter name (entry point) mapping operator records")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    rabbitmq: RabbitMqSettings = Field(default_factory=RabbitMqSettings)
    replica: ReplicaSettings = Field(default_factory=ReplicaSettings)
    rest: RestSettings = Field(default_factory=RestSettings)
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    pii: PiiSettings = Field(default_factory=PiiSettings)
    sinks: Annotated[list[SinkSettings], AfterValidator(unique_sink_names)] = Field(
        default_factory=list,
        description="action sinks, each chosen by its `type` (docs/sinks.md); none: actions stay in the outbox",
    )
    instance_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="names this member in partition leases (fencing)",
    )

    def cross_field_problems(self) -> list[Problem]:
        if self.source == "replica" and not self.replica.dsn:
            return [(("replica", "dsn"), "is required with source: replica", frozenset({"source", "replica.dsn"}))]
        # The heartbeat is the poll loop turning; the longest single wait inside one turn must fit.
        longest = self.kafka.dead_letter_flush_timeout_s + self.kafka.poll_timeout_s
        if self.metrics.heartbeat_timeout_s <= longest:
            return [(("metrics", "heartbeat_timeout_s"),
                     f"{self.metrics.heartbeat_timeout_s} must exceed kafka.dead_letter_flush_timeout_s + "
                     f"kafka.poll_timeout_s = {longest}, or /healthz fails (and the pod restarts) while the loop "
                     "is merely waiting for the broker",
                     frozenset({"metrics.heartbeat_timeout_s", "kafka.dead_letter_flush_timeout_s",
                                "kafka.poll_timeout_s"}))]
        return []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (init_settings carries the file's content).
        return (env_settings, init_settings)


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file and the offending setting."""

    exit_code = EXIT_CONFIG


class StartupError(RuntimeError):
    """The service cannot start: a dependency (database, broker, port, file) is unreachable or refuses
    what the configuration asks of it. The message is one line naming the setting and the resource,
    never a credential; ``exit_code`` is 3 for an unreachable dependency, 2 for a configuration the
    dependency refuses (bad credentials, unknown database)."""

    def __init__(self, message: str, exit_code: int = EXIT_UNREACHABLE, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.timed_out = timed_out

    def about(self, setting: str, timeout_setting: str | None = None) -> StartupError:
        """The same problem, prefixed by the setting that names the resource (``store.url: ...``) and,
        when it is a timeout, followed by the setting that bounds the wait."""
        suffix = f" ({timeout_setting})" if self.timed_out and timeout_setting else ""
        return StartupError(f"{setting}: {self}{suffix}", self.exit_code, timed_out=self.timed_out)


_PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def sasl_problems(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """librdkafka settings a SASL username/password login lacks, as (key, reason). librdkafka itself
    refuses them only at client creation, in words that name neither the variable nor the fix."""
    protocol = str(config.get("security.protocol", "")).upper()
    mechanism = str(config.get("sasl.mechanism", config.get("sasl.mechanisms", "GSSAPI"))).upper()
    if not protocol.startswith("SASL_") or mechanism not in _PASSWORD_MECHANISMS:
        return []
    return [
        (key, f"required with security.protocol={protocol} and sasl.mechanism={mechanism}; set it in the file "
         f"or (for a secret) in {RDKAFKA_ENV_PREFIX}{key.upper().replace('.', '_')}")
        for key in ("sasl.username", "sasl.password")
        if not config.get(key)
    ]


def connection_problems(settings: Settings, origin: str) -> ConfigError | None:
    """What a command that connects to Kafka (``run``, ``lag``) needs beyond a valid file: the SASL
    login settings. Not part of validation, because tools that only read the file (the alert generator)
    run without the Secret that supplies them."""
    if settings.source != "kafka":
        return None
    problems = sasl_problems(settings.kafka.config)
    if not problems:
        return None
    lines = "\n".join(f"  kafka.config.{key}: {reason}" for key, reason in problems)
    return ConfigError(f"{origin}: invalid configuration\n{lines}")


def rdkafka_env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """``SMARTICO_STREAM_RDKAFKA_SASL_PASSWORD=x`` -> ``{"sasl.password": "x"}``."""
    return {
        name[len(RDKAFKA_ENV_PREFIX) :].lower().replace("_", "."): value
        for name, value in environ.items()
        if name.upper().startswith(RDKAFKA_ENV_PREFIX)
    }


def env_names(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> tuple[frozenset[str], frozenset[str]]:
    """The environment variables the Settings model reads: exact names (``SMARTICO_STREAM_DEDUP``,
    ``SMARTICO_STREAM_DEDUP__WINDOW_SECONDS``, ...) and open prefixes (below a mapping setting such as
    ``kafka.config``, any key: ``SMARTICO_STREAM_KAFKA__CONFIG__``). Upper case."""
    exact: set[str] = set()
    open_prefixes: set[str] = set()
    for name, field in model.model_fields.items():
        full = prefix + name.upper()
        exact.add(full)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            inner_exact, inner_open = env_names(annotation, full + "__")
            exact |= inner_exact
            open_prefixes |= inner_open
        elif typing.get_origin(annotation) is dict:
            open_prefixes.add(full + "__")
    return frozenset(exact), frozenset(open_prefixes)


def unknown_env_problems(environ: Mapping[str, str], also_known: Sequence[str] = ()) -> list[str]:
    """One line per ``SMARTICO_STREAM_*`` variable nothing reads (a typo would otherwise be ignored),
    with the closest known name."""
    exact, open_prefixes = env_names()
    allowed = exact | OTHER_ENV_NAMES | {name.upper() for name in also_known}
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper.startswith(RDKAFKA_ENV_PREFIX) or upper in allowed:
            continue
        if upper.startswith(tuple(open_prefixes)):
            continue
        close = difflib.get_close_matches(upper, sorted(allowed), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f"; see README, Environment overrides ({ENV_PREFIX}" \
            "<SECTION>__<KEY>)"
        problems.append(f"{name}: unknown environment variable{hint}")
    return problems


def _message(msg: str) -> str:
    # pydantic words a ValueError raised in a validator as "Value error, <message>".
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _installed_adapter_problem(name: Any) -> str | None:
    from smartico_stream.adapters.registry import available_adapters

    installed = sorted(available_adapters())
    if not isinstance(name, str) or name in installed:
        return None
    close = difflib.get_close_matches(name, installed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"adapter: no adapter named {name!r}; {hint}installed: {', '.join(installed) or 'none'}"


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (if any), apply environment overrides, validate.

    Raises ConfigError with every problem, each named by its dotted setting path (or its environment
    variable): unknown ``SMARTICO_STREAM_*`` variables, invalid values, cross-field conflicts and an
    adapter that is not installed, all in one run."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    origin = str(path) if path else "defaults"
    if path is not None:
        data = _read_yaml(path)
    data = _deep_merge(data, overrides)
    rdkafka = rdkafka_env_overrides(environ)
    if rdkafka:
        kafka = dict(data.get("kafka") or {})
        kafka["config"] = {**(kafka.get("config") or {}), **rdkafka}
        data["kafka"] = kafka
    pii = data.get("pii")
    keys_env = pii.get("keys_env") if isinstance(pii, Mapping) else None
    problems = unknown_env_problems(environ, [keys_env] if isinstance(keys_env, str) else [])
    settings: Settings | None = None
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        problems.extend(
            f"{'.'.join(str(p) for p in err['loc'])}: {_message(err['msg'])}" if err["loc"] else _message(err["msg"])
            for err in errors
        )
        adapter_failed = any(err["loc"][:1] == ("adapter",) for err in errors)
        adapter = None if adapter_failed else environ.get(f"{ENV_PREFIX}ADAPTER", data.get("adapter", "reference"))
    else:
        adapter = settings.adapter
    adapter_problem = _installed_adapter_problem(adapter) if adapter is not None else None
    if adapter_problem:
        problems.append(adapter_problem)
    if problems or settings is None:
        raise ConfigError(f"{origin}: invalid configuration\n" + "\n".join(f"  {line}" for line in problems))
    return settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    loaded = loaded or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping, not {type(loaded).__name__}")
    return loaded


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged
