"""Service configuration: one YAML file plus environment overrides.

Precedence, highest first: ``SMARTICO_STREAM_RDKAFKA_*`` (librdkafka passthrough), other
``SMARTICO_STREAM_*`` variables (nested with ``__``), the YAML file, the defaults below.
Every librdkafka setting passes through untouched, so SASL_SSL clusters work by configuration alone.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from smartico_stream.events.raw import Stream
from smartico_stream.sinks.registry import SinkSettings, unique_sink_names

ENV_PREFIX = "SMARTICO_STREAM_"
RDKAFKA_ENV_PREFIX = "SMARTICO_STREAM_RDKAFKA_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    """Kafka source. ``config`` is handed to librdkafka as-is (bootstrap.servers, security.protocol,
    sasl.*, ssl.*, ...); the service only sets what correctness needs (manual commits) and what it
    measures with (statistics), and refuses settings that would break its guarantees."""

    config: dict[str, Any] = Field(
        default_factory=lambda: {"bootstrap.servers": "localhost:9092", "group.id": "smartico-stream"},
        description="librdkafka consumer settings, passed through untouched",
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

    @model_validator(mode="after")
    def _guarantees(self) -> KafkaSettings:
        if str(self.config.get("enable.auto.commit", "false")).lower() == "true":
            raise ValueError(
                "kafka.config enable.auto.commit=true would commit records before they are handled; "
                "remove it (the service commits after each batch)"
            )
        if "group.id" not in self.config:
            raise ValueError("kafka.config needs group.id (one consumer group per operator)")
        seen: dict[str, Stream] = {}
        for stream, topics in self.topics.items():
            for topic in topics:
                if topic in seen:
                    raise ValueError(f"topic {topic!r} is configured for both {seen[topic]} and {stream}")
                seen[topic] = stream
        if not seen:
            raise ValueError("kafka.topics names no topic at all")
        return self

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
    """Short-window deduplication by brand + event type + transaction id (the spec's 2 minutes)."""

    enabled: bool = True
    window_seconds: float = Field(default=120.0, gt=0)
    max_entries: int = Field(
        default=2_000_000, ge=1, description="bound per partition set; the oldest keys are dropped first"
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

    url: str = Field(
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


class EngineSettings(_Section):
    rules: Path | None = Field(default=None, description="rule file or folder; none: aggregates only")
    state_cache_size: int = Field(default=100_000, ge=0, description="users kept in memory between batches")
    full_gc_interval_s: float = Field(
        default=300.0, ge=0,
        description="long-lived objects are kept out of Python's garbage collector, with one full collection "
        "this often (0: Python's own schedule, whose full collections walk the whole state cache)",
    )


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
    store_url: str = Field(default="sqlite:///var/smartico-stream/pii.db", description="the isolated PII store")
    store_db_schema: str | None = None
    encrypt_names: bool = Field(default=True, description="store first/last names encrypted (else: not at all)")
    email_domain: bool = Field(default=False, description="let rules see the email domain")
    dead_letters: Literal["encrypt", "redact"] = Field(
        default="encrypt", description="protect dead-letter payloads: encrypt with the key ring, or drop them"
    )


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"


class Settings(BaseSettings):
    """The whole service configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    source: Literal["kafka", "rabbitmq"] = "kafka"
    adapter: str = Field(default="reference", description="adapter name (entry point) mapping operator records")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    rabbitmq: RabbitMqSettings = Field(default_factory=RabbitMqSettings)
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
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

    @model_validator(mode="after")
    def _liveness_outlasts_blocking_waits(self) -> Settings:
        # The heartbeat is the poll loop turning; the longest single wait inside one turn must fit.
        longest = self.kafka.dead_letter_flush_timeout_s + self.kafka.poll_timeout_s
        if self.metrics.heartbeat_timeout_s <= longest:
            raise ValueError(
                f"metrics.heartbeat_timeout_s={self.metrics.heartbeat_timeout_s} must exceed "
                f"kafka.dead_letter_flush_timeout_s + kafka.poll_timeout_s = {longest}, or /healthz fails "
                "(and the pod restarts) while the loop is merely waiting for the broker"
            )
        return self

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


def rdkafka_env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """``SMARTICO_STREAM_RDKAFKA_SASL_PASSWORD=x`` -> ``{"sasl.password": "x"}``."""
    return {
        name[len(RDKAFKA_ENV_PREFIX) :].lower().replace("_", "."): value
        for name, value in environ.items()
        if name.upper().startswith(RDKAFKA_ENV_PREFIX)
    }


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (if any), apply environment overrides, validate.

    Raises ConfigError with every problem, each named by its dotted setting path."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    origin = str(path) if path else "defaults"
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the config must be a YAML mapping, not {type(loaded).__name__}")
        data = loaded
    data = _deep_merge(data, overrides)
    rdkafka = rdkafka_env_overrides(environ)
    if rdkafka:
        kafka = dict(data.get("kafka") or {})
        kafka["config"] = {**(kafka.get("config") or KafkaSettings().config), **rdkafka}
        data["kafka"] = kafka
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigError(f"{origin}: invalid configuration\n{problems}") from None


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged
