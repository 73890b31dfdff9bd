"""Configuration errors through the real command: every bad setting is refused at start with exit 2,
named by its setting path (or environment variable), all of a file's problems in one run, no
traceback; nothing a mistake would silently change is accepted. And the help reads as plain text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from smartico_stream.cli import app
from smartico_stream.config import ENV_PREFIX, EXIT_CONFIG, OTHER_ENV_NAMES, ConfigError, env_names, load_settings
from tests.cli.cli_run import assert_clean_failure, cli, error_lines, write_config


def _run(tmp_path: Path, overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Any:
    config = write_config(tmp_path, overrides)
    return cli(["run", "-c", str(config)], env=env, cwd=tmp_path)


# -- values accepted silently before: refused now ----------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "url", "reason"),
    [
        ("store", "mysql://user:pw@db:3306/state", "unsupported scheme mysql://"),
        ("store", "postgresql+asyncpg://db/state", "unsupported scheme postgresql+asyncpg://; use postgresql://"),
        ("store", "state.db", "unsupported URL"),
        ("store", "sqlite://state.db", "unsupported scheme sqlite://"),
        ("pii", "mysql://db/pii", "unsupported scheme mysql://"),
    ],
)
def test_an_unknown_store_url_scheme_is_refused(tmp_path: Path, setting: str, url: str, reason: str) -> None:
    key = "url" if setting == "store" else "store_url"
    done = _run(tmp_path, {setting: {key: url}})
    assert_clean_failure(done, EXIT_CONFIG, f"{setting}.{key}: {reason}")
    assert "pw" not in done.stderr  # the URL (and its password) is not echoed
    assert not list(tmp_path.glob("*:*")), "no SQLite file named after the URL"


def test_store_url_schemes_are_case_insensitive_and_kept_lower_case() -> None:
    settings = load_settings(environ={}, store={"url": "POSTGRESQL://u@h:5432/db"},
                             pii={"store_url": "SQLite:////var/pii.db"})
    assert settings.store.url == "postgresql://u@h:5432/db"
    assert settings.pii.store_url == "sqlite:////var/pii.db"


def test_an_unknown_environment_variable_is_refused_with_the_closest_name(tmp_path: Path) -> None:
    done = _run(tmp_path, env={"SMARTICO_STREAM_STORE_URL": f"sqlite:///{tmp_path / 'x.db'}",
                               "SMARTICO_STREAM_DEDUP__WINDOW_SECOND": "5"})
    assert_clean_failure(done, EXIT_CONFIG,
                         "SMARTICO_STREAM_STORE_URL: unknown environment variable; did you mean "
                         "SMARTICO_STREAM_STORE__URL?",
                         "SMARTICO_STREAM_DEDUP__WINDOW_SECOND: unknown environment variable; did you mean "
                         "SMARTICO_STREAM_DEDUP__WINDOW_SECONDS?")


def test_variables_read_elsewhere_and_below_mappings_are_allowed() -> None:
    environ = dict.fromkeys(OTHER_ENV_NAMES, "x") | {
        "SMARTICO_STREAM_RDKAFKA_CLIENT_ID": "svc",
        "SMARTICO_STREAM_KAFKA__CONFIG__CLIENT.ID": "svc",
        "SMARTICO_STREAM_MY_KEYS": "",  # the configured pii.keys_env
    }
    settings = load_settings(environ=environ, pii={"keys_env": "SMARTICO_STREAM_MY_KEYS"})
    assert settings.kafka.config["client.id"] == "svc"


def test_known_environment_names_follow_the_settings_model() -> None:
    exact, below = env_names()
    assert {"SMARTICO_STREAM_ADAPTER", "SMARTICO_STREAM_STORE__URL", "SMARTICO_STREAM_DEDUP",
            "SMARTICO_STREAM_METRICS__PORT", "SMARTICO_STREAM_PII__STORE_CONNECT_TIMEOUT_S"} <= exact
    assert f"{ENV_PREFIX}KAFKA__CONFIG__" in below


def test_a_jsonl_sink_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    done = _run(tmp_path, {"sinks": [{"type": "jsonl", "path": str(tmp_path)}]})
    assert_clean_failure(done, EXIT_CONFIG, "sinks.0.jsonl.path: is a directory")


def test_an_infinite_dedup_window_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("dedup:\n  window_seconds: .inf\n")
    done = cli(["run", "-c", str(config)], cwd=tmp_path)
    assert_clean_failure(done, EXIT_CONFIG, "dedup.window_seconds: Input should be a finite number")


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("setting", ["kafka.poll_timeout_s", "outbox.linger_s", "store.history_retention_s",
                                     "rabbitmq.batch_wait_s", "engine.full_gc_interval_s"])
def test_no_float_setting_takes_infinity_or_nan(setting: str, value: float) -> None:
    section, key = setting.split(".")
    with pytest.raises(ConfigError, match=rf"{setting}: Input should be a finite number"):
        load_settings(environ={}, **{section: {key: value}})


# -- every problem in one run -------------------------------------------------------------------------


def test_field_and_cross_field_problems_are_reported_together(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "adapter: referense\n"
        "kafka:\n"
        "  batch_size: 0\n"
        "  config: {group.id: g, enable.auto.commit: 'true'}\n"
        "  topics: {payments: t, casino: t}\n"
        "metrics: {heartbeat_timeout_s: 5}\n"
        "dedup: {window_seconds: -1}\n"
        "store: {url: 'mysql://db/x'}\n"
    )
    done = cli(["run", "-c", str(config)], cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "Traceback" not in done.stderr
    lines = error_lines(done)
    assert lines[0] == f"{config}: invalid configuration"
    fields = sorted(line.split(":", 1)[0].strip() for line in lines[1:])
    assert fields == sorted([
        "adapter", "kafka.batch_size", "kafka.config.enable.auto.commit", "kafka.topics.casino",
        "metrics.heartbeat_timeout_s", "dedup.window_seconds", "store.url",
    ]), lines
    assert "did you mean 'reference'?" in done.stderr
    assert "Value error" not in done.stderr
    assert "(top level)" not in done.stderr


def test_a_partial_kafka_config_keeps_the_default_group_id() -> None:
    settings = load_settings(environ={}, kafka={"config": {"bootstrap.servers": "broker:9092"}})
    assert settings.kafka.config == {"bootstrap.servers": "broker:9092", "group.id": "smartico-stream"}
    env_only = load_settings(environ={"SMARTICO_STREAM_RDKAFKA_BOOTSTRAP_SERVERS": "other:9092"})
    assert env_only.kafka.config["group.id"] == "smartico-stream"


# -- adapters and librdkafka --------------------------------------------------------------------------


def test_an_unknown_adapter_names_the_installed_ones(tmp_path: Path) -> None:
    done = _run(tmp_path, {"adapter": "zephyrr"})
    assert_clean_failure(done, EXIT_CONFIG, "adapter: no adapter named 'zephyrr'", "betwave, reference")


def test_an_unknown_adapter_from_the_environment(tmp_path: Path) -> None:
    done = _run(tmp_path, env={"SMARTICO_STREAM_ADAPTER": "zephyrr"})
    assert_clean_failure(done, EXIT_CONFIG, "adapter: no adapter named 'zephyrr'")


def test_an_unknown_librdkafka_property_is_named(tmp_path: Path) -> None:
    done = _run(tmp_path, {"kafka": {"config": {"bootstrap.servers": "127.0.0.1:1", "group.id": "g",
                                                "fetch.wait.mss": 5}}})
    assert_clean_failure(done, EXIT_CONFIG, "kafka.config.fetch.wait.mss: librdkafka refuses it")


def test_an_invalid_librdkafka_value_is_named(tmp_path: Path) -> None:
    done = _run(tmp_path, {"kafka": {"config": {"bootstrap.servers": "127.0.0.1:1", "group.id": "g",
                                                "session.timeout.ms": "soon"}}})
    assert_clean_failure(done, EXIT_CONFIG, "kafka.config.session.timeout.ms: librdkafka refuses it",
                         "Invalid value")


def test_a_librdkafka_property_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    done = _run(tmp_path, env={"SMARTICO_STREAM_RDKAFKA_FETCH_WAIT_MSS": "5"})
    assert_clean_failure(done, EXIT_CONFIG, "kafka.config.fetch.wait.mss",
                         "(set by SMARTICO_STREAM_RDKAFKA_FETCH_WAIT_MSS)")


def test_sasl_without_the_password_names_the_variable(tmp_path: Path) -> None:
    done = _run(tmp_path, {"kafka": {"config": {
        "bootstrap.servers": "127.0.0.1:1", "group.id": "g", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc",
    }}})
    assert_clean_failure(done, EXIT_CONFIG, "kafka.config.sasl.password: required with security.protocol=SASL_SSL",
                         "SMARTICO_STREAM_RDKAFKA_SASL_PASSWORD")


def test_lag_refuses_sasl_without_the_password_too(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"kafka": {"config": {
        "bootstrap.servers": "127.0.0.1:1", "group.id": "g", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN", "sasl.username": "svc",
    }}})
    done = cli(["lag", "-c", str(config), "--timeout", "2"], cwd=tmp_path)
    assert_clean_failure(done, EXIT_CONFIG, "kafka.config.sasl.password: required")


def test_a_file_without_the_sasl_secrets_still_loads_for_tools() -> None:
    """The alert generator reads the overlay's file without the Secret that supplies the login."""
    settings = load_settings(environ={}, kafka={"config": {"security.protocol": "SASL_SSL",
                                                           "sasl.mechanism": "SCRAM-SHA-512"}})
    assert "sasl.password" not in settings.kafka.config


def test_sasl_with_the_password_in_the_environment_is_accepted() -> None:
    settings = load_settings(environ={"SMARTICO_STREAM_RDKAFKA_SASL_PASSWORD": "s"}, kafka={"config": {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "svc"}})
    assert settings.kafka.config["sasl.password"] == "s"


# -- rule files and config files that are not text -------------------------------------------------


def _binary(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 8)
    return path


def _deep(path: Path) -> Path:
    path.write_text("[" * 5000 + "]" * 5000 + "\n")
    return path


@pytest.mark.parametrize(("make", "reason"), [(_binary, "not a UTF-8 text file"),
                                              (_deep, "nested too deeply")])
def test_a_broken_rules_file_is_named_by_run_and_by_rules_check(tmp_path: Path, make: Any, reason: str) -> None:
    rules = make(tmp_path / "rules.yaml")
    done = _run(tmp_path, {"engine": {"rules": str(rules)}})
    assert_clean_failure(done, EXIT_CONFIG, f"{rules}: {reason}")
    checked = cli(["rules", "check", str(rules)], cwd=tmp_path)
    assert_clean_failure(checked, 1, f"{rules}: {reason}")


@pytest.mark.parametrize(("make", "reason"), [(_binary, "not a UTF-8 text file"),
                                              (_deep, "nested too deeply")])
def test_a_broken_config_file_is_named(tmp_path: Path, make: Any, reason: str) -> None:
    config = make(tmp_path / "config.yaml")
    done = cli(["run", "-c", str(config)], cwd=tmp_path)
    assert_clean_failure(done, EXIT_CONFIG, f"{config}: {reason}")


# -- help ---------------------------------------------------------------------------------------------


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found += _commands(sub, (*path, name))
    return found


def _options_without_help(help_text: str) -> list[str]:
    """Entries of the Options section (plain click layout) that have no description: nothing after the
    option on its line and no more indented continuation line."""
    lines = help_text.splitlines()
    start = lines.index("Options:") + 1
    missing = []
    for i in range(start, len(lines)):
        line = lines[i]
        if not line.startswith("  ") or line.startswith("   "):
            if line and not line.startswith(" "):
                break
            continue
        entry = line.strip()
        parts = entry.split("  ", 1)
        continued = i + 1 < len(lines) and lines[i + 1].startswith("   ")
        if (len(parts) < 2 or not parts[1].strip()) and not continued:
            missing.append(entry)
    return missing


def test_every_command_help_is_plain_text_with_every_option_described() -> None:
    runner = CliRunner()
    commands = _commands(get_command(app))
    assert ("pii", "rotate") in commands
    assert ("lag",) in commands
    for path in commands:
        done = runner.invoke(app, [*path, "--help"])
        assert done.exit_code == 0, (path, done.output)
        assert "``" not in done.output, (path, done.output)
        assert "<bool>" not in done.output, (path, done.output)
        assert "Options:" in done.output, (path, done.output)
        assert _options_without_help(done.output) == [], (path, done.output)


def test_the_installed_command_shows_the_same_help() -> None:
    done = cli(["--help"])
    assert done.returncode == 0, done.stderr
    assert "``" not in done.stdout
    assert "--debug" in done.stdout
    assert "Exit codes: 0 ok; 1 a check failed" in done.stdout.replace("\n  ", " ")


def test_json_is_a_flag() -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["history", "--help"])
    assert "  --json  " in done.output or "  --json\n" in done.output, done.output


def test_history_refuses_an_unknown_store_url_scheme(tmp_path: Path) -> None:
    done = cli(["history", "--store", "mysql://db/state"], cwd=tmp_path)
    assert_clean_failure(done, EXIT_CONFIG, "--store: unsupported scheme mysql://")
    assert not list(tmp_path.iterdir()), "nothing created"
