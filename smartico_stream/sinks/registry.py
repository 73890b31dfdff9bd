"""The sink registry: the ``sinks`` setting as a union of the sink modules' settings models, tagged by
``type``, and the factory that builds sinks from it.

Adding a sink type: a module with the sink class and its settings model (a ``SinkSettingsBase``
subclass with ``type: Literal["name"]``), then its model in :data:`SinkSettings` and
:data:`SINK_TYPES`. Validation (pydantic) reports every problem of every entry by its path, e.g.
``sinks.0.webhook.timeout: Extra inputs are not permitted``; the tag is part of the path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidatorFunctionWrapHandler, WrapValidator

from smartico_stream.sinks.base import ActionSink, SinkConfigError, SinkSettingsBase, setting_error, setting_errors
from smartico_stream.sinks.jsonl import JsonlSinkSettings
from smartico_stream.sinks.kafka import KafkaSinkSettings
from smartico_stream.sinks.rabbitmq import RabbitMqSinkSettings
from smartico_stream.sinks.webhook import WebhookSinkSettings

__all__ = [
    "SINK_TYPES",
    "SinkSettings",
    "build_sink",
    "build_sinks",
    "parse_sink_settings",
    "unique_sink_names",
]

SINK_TYPES: dict[str, type[SinkSettingsBase]] = {
    "jsonl": JsonlSinkSettings,
    "webhook": WebhookSinkSettings,
    "kafka": KafkaSinkSettings,
    "rabbitmq": RabbitMqSinkSettings,
}
"""Sink type -> its settings model, in the order the documentation presents them."""


def _type_named(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Report a missing or unknown ``type`` at ``<entry>.type``, like any other field, rather than in
    the tagged union's own words ("Unable to extract tag using discriminator 'type'")."""
    if isinstance(value, Mapping):
        kind = value.get("type")
        choices = ", ".join(SINK_TYPES)
        if kind is None:
            raise setting_error(("type",), f"Field required: the sink type, one of {choices}", None)
        if not isinstance(kind, str) or kind not in SINK_TYPES:
            raise setting_error(("type",), f"unknown sink type {kind!r}; one of {choices}", kind)
    return handler(value)


SinkSettings = Annotated[
    JsonlSinkSettings | WebhookSinkSettings | KafkaSinkSettings | RabbitMqSinkSettings,
    Field(discriminator="type"),
    WrapValidator(_type_named),
]
"""One entry of the ``sinks`` setting: the model is chosen by the entry's ``type``."""

_ADAPTER: TypeAdapter[SinkSettings] = TypeAdapter(SinkSettings)


def parse_sink_settings(entry: Mapping[str, Any]) -> SinkSettings:
    """Validate one configuration entry (as in the ``sinks`` list) into its settings model. Raises
    pydantic's ValidationError, each error located below the entry (``webhook.url``)."""
    return _ADAPTER.validate_python(entry)


def unique_sink_names(sinks: list[SinkSettings]) -> list[SinkSettings]:
    """The ``sinks`` list's own checks, across entries:

    - every sink has its own name: the relay keeps each sink's delivery cursors, wake-ups and metrics
      under the name, so two sinks of one name would share a cursor and each deliver only part of
      the actions. Unnamed sinks are named after their destination, so two entries for one
      destination need a ``name`` each.
    - no two JSONL sinks write one file: each repairs the file's torn last line on open, which is
      only safe with a single writer."""
    problems: list[tuple[tuple[str | int, ...], str, Any]] = []
    names: dict[str, int] = {}
    files: dict[Path, int] = {}
    for index, sink in enumerate(sinks):
        name = sink.sink_name()
        if name in names:
            if sink.name is not None:
                reason = f"{name!r} is the name of sinks.{names[name]} already; names must be unique"
            else:
                reason = (f"unnamed, the sink is called {name!r} after its destination, like sinks.{names[name]}; "
                          "give one of them a distinct name")
            problems.append(((index, sink.type, "name"), reason, sink.name))
        else:
            names[name] = index
        if isinstance(sink, JsonlSinkSettings):
            path = Path(sink.path).absolute()
            if path in files:
                problems.append(
                    ((index, sink.type, "path"), f"sinks.{files[path]} writes this file already; one sink per file",
                     str(sink.path))
                )
            else:
                files[path] = index
    if problems:
        raise setting_errors(problems)
    return sinks


def build_sink(settings: SinkSettings, kafka_connection: Mapping[str, Any] | None = None) -> ActionSink:
    """Build the sink that ``settings`` (one validated ``sinks`` entry) describes.

    ``kafka_connection`` is what a Kafka sink without its own ``config`` produces with: the source
    cluster's connection settings (see ``smartico_stream.sources.kafka.connection_config``). A given
    ``config`` replaces it entirely rather than merging, so the source's credentials never leak to
    another cluster.

    Raises :class:`SinkConfigError` (``kafka.config: ...``) for what validation cannot judge:
    librdkafka refusing a producer setting, a Kafka sink with neither ``config`` nor a connection."""
    try:
        return settings.create(kafka_connection)
    except ValueError as exc:
        raise SinkConfigError(f"{settings.type}.{exc}") from exc


def build_sinks(
    sinks: Iterable[SinkSettings], kafka_connection: Mapping[str, Any] | None = None
) -> list[ActionSink]:
    """Build every sink of the ``sinks`` setting, in order. A :class:`SinkConfigError` names the
    entry by its index (``sinks.1.kafka.config: No such configuration property: ...``)."""
    built: list[ActionSink] = []
    for index, settings in enumerate(sinks):
        try:
            built.append(build_sink(settings, kafka_connection))
        except SinkConfigError as exc:
            raise SinkConfigError(f"sinks.{index}.{exc}") from exc.__cause__
    return built
