"""The service's configuration in a scenario: what the bench sets, what ``--set`` overrides, and
what the service read back."""

from __future__ import annotations

from typing import Any

import yaml

from smartico_stream.bench.cluster import MOCK_CLUSTER_CONSUMER
from smartico_stream.bench.stream import MAX_MESSAGE_BYTES, TOPICS


def service_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The service configuration of a scenario: defaults everywhere except what the embedded
    cluster, the scratch directory and the bench rules require (listed in docs/performance.md)."""
    prefix = params["prefix"]
    settings: dict[str, Any] = {
        "kafka": {
            "config": {"bootstrap.servers": params.get("bootstrap", "127.0.0.1:9"), "group.id": f"{prefix}-group",
                       **MOCK_CLUSTER_CONSUMER},
            "topics": {stream.value: [f"{prefix}.{topic}"] for stream, topic in TOPICS.items()},
            "dead_letter_topic": f"{prefix}.dead-letters",
        },
        "metrics": {"port": params.get("metrics_port", 0), "host": "127.0.0.1"},
        "limits": {"max_message_bytes": MAX_MESSAGE_BYTES},
        "store": {"url": params["store_url"], **({"db_schema": params["schema"]} if params.get("schema") else {})},
        "pii": {"keys_file": params["keys_file"], "store_url": params["pii_store_url"],
                **({"store_db_schema": params["pii_schema"]} if params.get("pii_schema") else {})},
        "engine": {"rules": params["rules"]},
        "sinks": [{"type": "jsonl", "path": params["sink_path"]}],
        "logging": {"level": "ERROR", "format": "console"},
        "instance_id": params.get("instance_id", f"{prefix}-member"),
    }
    if params.get("rabbitmq_url"):
        settings["source"] = "rabbitmq"
        settings["rabbitmq"] = {
            "url": params["rabbitmq_url"],
            "exchanges": {stream.value: f"{prefix}.{topic}" for stream, topic in TOPICS.items()},
            "dead_letter_exchange": f"{prefix}.dead-letters",
        }
    if params.get("replica"):
        settings["source"] = "replica"
        settings["replica"] = params["replica"]
    return merge_settings(settings, params.get("overrides") or {})


def merge_settings(base: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Settings ``more`` over ``base``: section by section, and key by key in ``kafka.config``."""
    merged = dict(base)
    for section, values in more.items():
        current = merged.get(section)
        if not isinstance(current, dict) or not isinstance(values, dict):
            merged[section] = values
            continue
        merged[section] = {**current, **values}
        if isinstance(current.get("config"), dict) and isinstance(values.get("config"), dict):
            merged[section]["config"] = {**current["config"], **values["config"]}
    return merged


def parse_setting(text: str) -> dict[str, dict[str, Any]]:
    """``section.key=value`` (``--set``) as ``{section: {key: value}}``; the value is read as YAML
    (``500``, ``true``, ``NORMAL``). ``kafka.config.<librdkafka property>=value`` sets a
    librdkafka property."""
    path, sep, raw = text.partition("=")
    section, dot, key = path.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ValueError(f"{text!r}: expected section.key=value, e.g. store.sqlite_synchronous=NORMAL")
    value = yaml.safe_load(raw) if raw.strip() else ""
    if section == "kafka" and key.startswith("config."):
        return {"kafka": {"config": {key.removeprefix("config."): value}}}
    return {section: {key: value}}


def flat_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{section: {key: value}}`` (``kafka.config`` one level deeper) as ``{"section.key": value}``."""
    flat: dict[str, Any] = {}
    for section, values in overrides.items():
        for key, value in values.items():
            if key == "config" and isinstance(value, dict):
                flat.update({f"{section}.config.{name}": item for name, item in value.items()})
            else:
                flat[f"{section}.{key}"] = value
    return flat


def applied_settings(settings: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The service's effective value of every overridden setting, read back from its Settings."""
    return {path: _setting(settings, path) for path in flat_settings(overrides)}


def _setting(settings: Any, path: str) -> Any:
    """``section.key`` (or ``section.config.<property>``) of a Settings."""
    section, key = path.split(".", 1)
    if key.startswith("config."):
        return getattr(settings, section).config.get(key.removeprefix("config."))
    return getattr(getattr(settings, section), key)


# The service settings every scenario leaves at their defaults (reported, read from the defaults).
_DEFAULTS_KEPT = (
    "kafka.batch_size", "kafka.poll_timeout_s", "kafka.statistics_interval_ms", "engine.state_cache_size",
    "engine.full_gc_interval_s", "dedup.window_seconds", "dedup.max_entries", "outbox.batch_size",
    "outbox.max_backlog", "store.sqlite_synchronous",
)


def defaults_kept() -> dict[str, Any]:
    """The default value of every setting in ``_DEFAULTS_KEPT``, read from the service's own
    Settings (the report's ``settings.service_defaults_kept``)."""
    from smartico_stream.config import load_settings

    defaults = load_settings(environ={})
    return {path: _setting(defaults, path) for path in _DEFAULTS_KEPT}
