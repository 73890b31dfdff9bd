"""Configuration: YAML file, environment overrides, librdkafka passthrough, clear errors."""

from pathlib import Path

import pytest

from smartico_stream.config import ConfigError, load_settings, rdkafka_env_overrides
from smartico_stream.events.raw import Stream
from tests.support.common import REPO

EXAMPLE = REPO / "deploy" / "config.example.yaml"


def test_example_config_loads_with_every_section() -> None:
    settings = load_settings(EXAMPLE, environ={})
    assert settings.kafka.config["group.id"] == "smartico-stream-operator-a"
    assert settings.kafka.stream_of_topic() == {
        "user_profile": Stream.PROFILE, "payments": Stream.PAYMENTS, "casino": Stream.CASINO, "sport": Stream.SPORT,
    }
    assert settings.dedup.window_seconds == 120
    assert (settings.dedup.payments_horizon_s, settings.dedup.payments_max_per_user) == (2_592_000, 1_000)


def test_librdkafka_settings_pass_through_untouched(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "kafka:\n  config:\n    bootstrap.servers: b:9093\n    group.id: op-a\n"
        "    security.protocol: SASL_SSL\n    sasl.mechanisms: SCRAM-SHA-512\n    ssl.ca.location: /ca.pem\n"
    )
    settings = load_settings(config, environ={"SMARTICO_STREAM_RDKAFKA_SASL_PASSWORD": "s3cret"})
    assert settings.kafka.config == {
        "bootstrap.servers": "b:9093", "group.id": "op-a", "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512", "ssl.ca.location": "/ca.pem", "sasl.password": "s3cret",
    }


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTICO_STREAM_DEDUP__WINDOW_SECONDS", "30")
    monkeypatch.setenv("SMARTICO_STREAM_KAFKA__BATCH_SIZE", "99")
    settings = load_settings(EXAMPLE)
    assert settings.dedup.window_seconds == 30
    assert settings.kafka.batch_size == 99
    assert settings.kafka.config["group.id"] == "smartico-stream-operator-a"  # the file still applies


def test_rdkafka_env_names_map_to_dotted_keys() -> None:
    assert rdkafka_env_overrides(
        {"SMARTICO_STREAM_RDKAFKA_SSL_KEY_PASSWORD": "k", "OTHER": "x"}
    ) == {"ssl.key.password": "k"}


def test_a_single_topic_may_be_written_as_a_string() -> None:
    settings = load_settings(kafka={"topics": {"payments": "pay-topic"}}, environ={})
    assert settings.kafka.topics[Stream.PAYMENTS] == ["pay-topic"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"kafka": {"config": {"group.id": "g", "enable.auto.commit": "true"}}},
            "kafka.config.enable.auto.commit: true would commit",
        ),
        ({"kafka": {"config": {"group.id": ""}}}, "kafka.config.group.id: must not be empty"),
        ({"kafka": {"topics": {"payments": "t", "casino": "t"}}}, "configured for both"),
        ({"dedup": {"window_seconds": 0}}, "dedup.window_seconds: Input should be greater than 0"),
        ({"dedup": {"windw_seconds": 5}}, "dedup.windw_seconds: Extra inputs are not permitted"),
        ({"dedup": {"max_entries": 2**32}}, "dedup.max_entries: Input should be less than or equal to 4294967295"),
        ({"dedup": {"payments_horizon_s": 0}}, "dedup.payments_horizon_s: Input should be greater than 0"),
        ({"dedup": {"payments_max_per_user": -1}},
         "dedup.payments_max_per_user: Input should be greater than or equal to 0"),
        ({"dedup": {"payments_max_per_user": 100_001}},
         "dedup.payments_max_per_user: Input should be less than or equal to 100000"),
        ({"kafka": {"topics": {"bets": "t"}}}, "kafka.topics.bets.[key]"),
        (
            {"store": {"sqlite_synchronous": "OFF"}},
            "store.sqlite_synchronous: Input should be 'FULL', 'NORMAL' or 'EXTRA'",
        ),
    ],
)
def test_invalid_settings_name_the_setting(overrides: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(environ={}, **overrides)
    assert expected in str(error.value)


def test_unreadable_and_non_mapping_files_are_reported_with_their_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read config"):
        load_settings(missing, environ={})
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: the config must be a YAML mapping"):
        load_settings(listy, environ={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("kafka: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_settings(broken, environ={})
