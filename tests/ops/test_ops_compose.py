"""deploy/docker-compose.yml, kept correct without a Docker engine: parsed and cross-checked.

- the services of a local trial are there (Kafka in KRaft mode with its topic initialiser,
  RabbitMQ, PostgreSQL, the service built from the Dockerfile, kafka_exporter, Prometheus, Grafana),
  with the ports the docs name, and every host file they mount exists;
- the service's config (as mounted, with the compose environment) loads, its metrics port is the
  one published and scraped, its bootstrap servers are an advertised Kafka listener, its topics are
  created by kafka-init, its stores point at the compose PostgreSQL with its credentials, it runs
  read-only with a grace period above the shutdown budget;
- Prometheus's config passes `promtool check config` (which also checks the alert file it loads),
  scrapes compose services on their ports and labels the service's series with the consumer group
  of the config; Grafana's data source and dashboard provisioning point at what is mounted.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from smartico_stream.config import load_settings
from smartico_stream.ops.shutdown import shutdown_budget_s
from tests.support.common import REPO as ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
EXPECTED = {"kafka", "kafka-init", "rabbitmq", "postgres", "smartico-stream", "kafka-exporter", "prometheus", "grafana"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (relative to the compose file)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            found[target] = (COMPOSE.parent / source).resolve()
    return found


def published(service: dict[str, Any]) -> dict[int, int]:
    return {int(p.split(":")[1]): int(p.split(":")[0]) for p in service.get("ports", [])}


def test_services_ports_and_mounted_files(compose):
    services = compose["services"]
    assert set(services) >= EXPECTED, sorted(EXPECTED - set(services))
    for name, service in services.items():
        for target, source in mounts(service).items():
            assert source.exists(), f"{name} mounts {source} at {target}: no such file"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    for name, service in services.items():
        volume_names = [v.split(":")[0] for v in service.get("volumes", []) if not v.startswith((".", "/"))]
        assert set(volume_names) <= set(compose.get("volumes", {})), f"{name}: undeclared named volume"
    assert published(services["prometheus"]) == {9090: 9090}
    assert published(services["grafana"]) == {3000: 3000}
    assert 9094 in published(services["kafka"])
    build = services["smartico-stream"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"


def test_kafka_runs_in_kraft_mode(compose):
    env = compose["services"]["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env and "zookeeper" not in compose["services"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")


def test_the_service_config_fits_the_compose_environment(compose, monkeypatch):
    services = compose["services"]
    service = services["smartico-stream"]
    files = mounts(service)
    args = service["command"]
    config_path = args[args.index("--config") + 1]
    assert config_path in files, "the config the command names is mounted"
    for name, value in service["environment"].items():
        monkeypatch.setenv(name, str(value))
    settings = load_settings(files[config_path])

    assert published(service) == {settings.metrics.port: settings.metrics.port}
    assert settings.metrics.host == "0.0.0.0"
    assert str(settings.engine.rules) in files, "the rule file is mounted"

    kafka_env = services["kafka"]["environment"]
    advertised = {listener.split("://")[1] for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert set(settings.kafka.config["bootstrap.servers"].split(",")) <= advertised
    created = set(re.search(r"for topic in ([^;]+);", services["kafka-init"]["command"][0]).group(1).split())
    wanted = set(settings.kafka.stream_of_topic()) | {settings.kafka.dead_letter_topic}
    assert wanted <= created, f"topics kafka-init does not create: {wanted - created}"

    postgres = services["postgres"]["environment"]
    for url in (settings.store.url, settings.pii.store_url):
        parts = urlsplit(url)
        assert (parts.hostname, parts.username, parts.password, parts.path.lstrip("/")) == (
            "postgres", postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"])
    rabbit = services["rabbitmq"]["environment"]
    for sink in settings.sinks:
        if sink.type == "rabbitmq":
            parts = urlsplit(sink.url)
            assert (parts.hostname, parts.username, parts.password) == (
                "rabbitmq", rabbit["RABBITMQ_DEFAULT_USER"], rabbit["RABBITMQ_DEFAULT_PASS"])

    assert service["read_only"] is True and "/tmp" in service["tmpfs"]
    grace = int(service["stop_grace_period"].rstrip("s"))
    assert grace > shutdown_budget_s(settings)
    plugins = (DEPLOY / "compose/rabbitmq/enabled_plugins").read_text()
    assert "rabbitmq_prometheus" in plugins and "rabbitmq_consistent_hash_exchange" in plugins


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_prometheus_config_is_valid_and_scrapes_compose_services(compose, monkeypatch):
    services = compose["services"]
    files = mounts(services["prometheus"])
    config_file = files["/etc/prometheus/prometheus.yml"]
    completed = subprocess.run(["promtool", "check", "config", str(config_file)], capture_output=True, text=True,
                               timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    config = yaml.safe_load(config_file.read_text())
    for rule_file in config["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in files, f"{rule_file} is loaded but not mounted"

    ports = {"smartico-stream": 9108, "kafka-exporter": 9308, "rabbitmq": 15692}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job_name, job in jobs.items():
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                if host != "localhost":
                    assert host in services, f"{job_name} scrapes {host}, not a compose service"
                    assert int(port) == ports[host], f"{job_name}: {host} listens on {ports[host]}"
    labels = jobs["smartico-stream"]["static_configs"][0]["labels"]
    stream = services["smartico-stream"]
    for name, value in stream["environment"].items():
        monkeypatch.setenv(name, str(value))
    settings = load_settings(mounts(stream)["/etc/smartico-stream/config.yaml"])
    assert labels["consumer_group"] == settings.kafka.config["group.id"]
    assert {"namespace", "operator"} <= set(labels)
    assert jobs["rabbitmq"]["metrics_path"] == "/metrics/per-object", "rabbitmq_queue_consumers is per object"


def test_grafana_provisioning_points_at_the_mounted_dashboard(compose):
    grafana = compose["services"]["grafana"]
    files = mounts(grafana)
    provisioning = files["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yaml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus"
    parts = urlsplit(datasource["url"])
    assert parts.hostname == "prometheus" and parts.port == 9090
    provider = yaml.safe_load((provisioning / "dashboards/smartico-stream.yaml").read_text())["providers"][0]
    dashboards = provider["options"]["path"]
    assert dashboards in files and (files[dashboards] / "smartico-stream.json").exists()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (files[dashboards] / Path(home).relative_to(dashboards)).exists()
