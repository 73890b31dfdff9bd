"""deploy/k8s rendered with the real `kubectl kustomize` (base and every operator overlay) and checked
resource by resource, then the rendered config is loaded the way a pod would see it.

- every kustomization renders a Deployment, its ConfigMap, a Service with a port named `metrics`, a
  ServiceMonitor, a PrometheusRule and a PodDisruptionBudget; overlays put all of it in one namespace;
- the Deployment: liveness from /healthz, readiness from /readyz (both on the metrics port, never a
  broker check), requests and limits, non-root uid of the image, read-only root file system,
  terminationGracePeriodSeconds above the shutdown budget of the config it runs;
- the config: the ConfigMap is written to disk as the kubelet does (hidden ..<timestamp>/ copies and
  symlinks), the container's environment is built from its env (Secrets and the pod name replaced by
  stand-ins) and load_settings() accepts it; broker credentials and the PII key ring come from
  Secrets, not from the file; the rule file loads; the metrics port is the one probes and Service use;
- labels and selectors line up: Service -> pods, ServiceMonitor -> Service, PDB -> pods, and the
  ServiceMonitor's relabeling finds the overlay's operator label and consumer-group annotation
  (equal to the config's group.id);
- the PrometheusRule passes `promtool check rules` and, in overlays, is scoped to the operator;
- KEDA (where an overlay enables it): minReplicaCount >= 1, targets the Deployment, reads the
  config's group and bootstrap servers, and the Deployment leaves `replicas` to the autoscaler.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartico_stream.config import load_settings
from smartico_stream.engine.rules import load_rules
from smartico_stream.ops.shutdown import shutdown_budget_s
from tests.support.common import REPO as ROOT

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
KUSTOMIZATIONS = ["base", *(f"overlays/{name}" for name in OVERLAYS)]
KUBECTL = shutil.which("kubectl")
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed (apt-get install kubernetes-client)")

_rendered: dict[str, list[dict[str, Any]]] = {}


def render(target: str) -> list[dict[str, Any]]:
    if target not in _rendered:
        completed = subprocess.run([KUBECTL, "kustomize", str(K8S / target)], capture_output=True, text=True,
                                   timeout=60)
        assert completed.returncode == 0, f"kubectl kustomize {target} failed:\n{completed.stderr}"
        _rendered[target] = [doc for doc in yaml.safe_load_all(completed.stdout) if doc]
    return _rendered[target]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "smartico-stream")


def config_map_for(docs: list[dict[str, Any]], mount_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in container(docs)["volumeMounts"] if m["mountPath"] == mount_path)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    name = volume["configMap"]["name"]
    config_map = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name), None)
    assert config_map is not None, f"the Deployment mounts ConfigMap {name}, which the kustomization does not render"
    return mount, config_map


def materialise(config_map: dict[str, Any], directory: Path) -> None:
    """Write a ConfigMap volume the way the kubelet does: the data in a hidden timestamped folder,
    `..data` pointing at it, and one symlink per key."""
    stamped = directory / "..2026_01_01_00_00_00.000000001"
    stamped.mkdir(parents=True)
    for key, value in config_map["data"].items():
        (stamped / key).write_text(value)
        (directory / key).symlink_to(Path("..data") / key)
    (directory / "..data").symlink_to(stamped.name)


def stand_in_environment(env: list[dict[str, Any]]) -> dict[str, str]:
    values = {}
    for variable in env:
        if "value" in variable:
            values[variable["name"]] = variable["value"]
            continue
        source = variable["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            key = ref["key"]
            if key.endswith("url"):
                values[variable["name"]] = f"postgresql://stand-in@db.invalid/{ref['name']}"
            elif key.endswith(".json"):
                values[variable["name"]] = "{}"  # content is checked by the PII tests, not here
            else:
                values[variable["name"]] = f"secret:{ref['name']}/{key}"
        elif "fieldRef" in source:
            values[variable["name"]] = "smartico-stream-7d9c8-abcde"
    return values


@pytest.fixture
def pod_settings(request, tmp_path, monkeypatch):
    """The Settings a pod of ``request.param`` would load, with its environment."""
    docs = render(request.param)
    args = container(docs)["args"]
    config_path = Path(args[args.index("--config") + 1])
    mount, config_map = config_map_for(docs, str(config_path.parent))
    local = tmp_path / "mount"
    materialise(config_map, local)
    for name in [n for n in os.environ if n.startswith("SMARTICO_STREAM_")]:
        monkeypatch.delenv(name)
    environ = stand_in_environment(container(docs).get("env", []))
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(local / config_path.name)
    return docs, settings, environ, local, Path(mount["mountPath"]), config_map


def test_there_are_at_least_two_operator_overlays():
    assert len(OVERLAYS) >= 2, OVERLAYS


@pytest.mark.parametrize("target", KUSTOMIZATIONS)
def test_renders_every_resource_an_operator_needs(target):
    docs = render(target)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ConfigMap", "Service", "ServiceMonitor", "PrometheusRule", "PodDisruptionBudget"} <= kinds
    if target.startswith("overlays/"):
        namespaces = {d["metadata"].get("namespace") for d in docs}
        assert len(namespaces) == 1 and None not in namespaces, f"one namespace per operator: {namespaces}"


@pytest.mark.parametrize("pod_settings", KUSTOMIZATIONS, indirect=True)
def test_deployment_probes_security_resources_and_grace_period(pod_settings):
    docs, settings, _, _, _, _ = pod_settings
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    main = container(docs)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports.get("metrics") == settings.metrics.port, "the metrics port of the config is the one probed"
    assert settings.metrics.host == "0.0.0.0", "probes and Prometheus reach the pod IP, not loopback"

    # Liveness: the poll-loop heartbeat only; readiness: joined. No probe talks to a broker or a DB.
    probes = (("livenessProbe", "/healthz"), ("startupProbe", "/healthz"), ("readinessProbe", "/readyz"))
    for probe_name, path in probes:
        probe = main.get(probe_name)
        assert probe is not None, f"{probe_name} missing"
        assert set(probe) & {"httpGet", "exec", "tcpSocket", "grpc"} == {"httpGet"}, probe
        assert probe["httpGet"]["path"] == path and probe["httpGet"]["port"] in ("metrics", settings.metrics.port)
    liveness = main["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 20, "one slow batch must not restart the pod"

    resources = main["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"], resources

    pod_security = pod["securityContext"]
    container_security = main["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == 10001 != 0, "the uid the image creates (tests/ops/test_ops_dockerfile.py)"
    assert container_security["readOnlyRootFilesystem"] is True
    assert container_security["allowPrivilegeEscalation"] is False
    assert "ALL" in container_security["capabilities"]["drop"]
    writable = {m["mountPath"] for m in main["volumeMounts"] if not m.get("readOnly")}
    assert "/tmp" in writable, "a read-only root file system needs a writable /tmp"
    for url in (settings.store.url, settings.pii.store_url):
        if url.startswith("sqlite:///"):
            assert any(url[len("sqlite://"):].startswith(w + "/") for w in writable), f"{url} is not writable"

    budget = shutdown_budget_s(settings)
    assert pod["terminationGracePeriodSeconds"] > budget, (
        f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} must exceed the shutdown "
        f"budget {budget:.0f}s of this config (smartico_stream/ops/shutdown.py)")


@pytest.mark.parametrize("pod_settings", KUSTOMIZATIONS, indirect=True)
def test_config_loads_as_mounted_with_secrets_from_the_environment(pod_settings):
    docs, settings, environ, local, mount_path, config_map = pod_settings
    env = {v["name"]: v for v in container(docs)["env"]}

    # Credentials and keys come from Secrets, never from the ConfigMap.
    for name in ("SMARTICO_STREAM_RDKAFKA_SASL_USERNAME", "SMARTICO_STREAM_RDKAFKA_SASL_PASSWORD",
                 "SMARTICO_STREAM_STORE__URL", "SMARTICO_STREAM_PII__STORE_URL", settings.pii.keys_env):
        assert "secretKeyRef" in env[name]["valueFrom"], f"{name} must come from a Secret"
    for text in config_map["data"].values():
        document = yaml.safe_load(text) or {}
        kafka_config = (document.get("kafka") or {}).get("config") or {}
        assert not {"sasl.password", "sasl.username", "ssl.key.password"} & set(kafka_config)
        for key, value in _walk(document):
            assert not any(word in key.lower() for word in ("password", "secret", "token")), f"{key} in a ConfigMap"
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", str(value)), f"{key}: credentials in a URL in a ConfigMap"
    # ... and the service really reads them from there.
    assert settings.kafka.config["sasl.password"] == "secret:smartico-stream-kafka/password"
    assert settings.store.url == "postgresql://stand-in@db.invalid/smartico-stream-store"
    assert settings.pii.store_url == "postgresql://stand-in@db.invalid/smartico-stream-pii"
    assert settings.instance_id == environ["SMARTICO_STREAM_INSTANCE_ID"], "instance id from the pod name"

    # The rule file the config names is in the mounted ConfigMap and loads (a folder would not:
    # the kubelet's hidden copies would load every rule twice).
    assert settings.engine.rules is not None
    rules_path = Path(settings.engine.rules)
    assert rules_path.suffix in (".yaml", ".yml"), "engine.rules must name a file inside a ConfigMap volume"
    load_rules(local / rules_path.relative_to(mount_path))


@pytest.mark.parametrize("pod_settings", KUSTOMIZATIONS, indirect=True)
def test_service_servicemonitor_and_pdb_select_the_pods(pod_settings, request):
    docs, settings, _, _, _, _ = pod_settings
    target = request.node.callspec.params["pod_settings"]
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    metrics_ports = [p for p in service["spec"]["ports"] if p["name"] == "metrics"]
    assert len(metrics_ports) == 1 and metrics_ports[0]["targetPort"] in ("metrics", settings.metrics.port)

    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint.get("path", "/metrics") == "/metrics"
    relabel = {r["targetLabel"]: r["sourceLabels"][0] for r in endpoint["relabelings"]}
    assert set(relabel) >= {"operator", "consumer_group"}

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"].get("maxUnavailable", 0) >= 1 or "minAvailable" in pdb["spec"]

    if target.startswith("overlays/"):
        operator = target.split("/")[1]
        meta = service["metadata"]
        # What the relabeling reads, with Prometheus's sanitising of label names.
        label_source = relabel["operator"].removeprefix("__meta_kubernetes_service_label_")
        annotation_source = relabel["consumer_group"].removeprefix("__meta_kubernetes_service_annotation_")
        labels = {_sanitise(k): v for k, v in meta["labels"].items()}
        annotations = {_sanitise(k): v for k, v in meta.get("annotations", {}).items()}
        assert labels.get(label_source) == operator
        assert annotations.get(annotation_source) == settings.kafka.config["group.id"], (
            "the consumer_group label of every series must be the config's group.id")


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [pair for k, v in node.items() for pair in _walk(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [pair for i, v in enumerate(node) for pair in _walk(v, f"{path}[{i}]")]
    return [(path, node)]


def _sanitise(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
@pytest.mark.parametrize("target", KUSTOMIZATIONS)
def test_prometheusrule_is_valid_and_scoped_to_the_operator(target, tmp_path):
    docs = render(target)
    rule = one(docs, "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    completed = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    if target.startswith("overlays/"):
        operator = target.split("/")[1]
        alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
        assert alerts
        for alert in alerts:
            assert alert["labels"].get("operator") == operator, f"{alert['alert']} is not routed to {operator}"
            if alert["expr"].lstrip().startswith(("sum by (consumergroup)", "sum by (vhost")):
                continue  # broker-side: scoped by group / queue names instead
            assert f'operator="{operator}"' in alert["expr"], f"{alert['alert']} would see other operators"


@pytest.mark.parametrize("pod_settings", [t for t in KUSTOMIZATIONS if t.startswith("overlays/")], indirect=True)
def test_keda_scaling_keeps_a_consumer_and_reads_the_configured_group(pod_settings):
    docs, settings, _, _, _, _ = pod_settings
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    deployment = one(docs, "Deployment")
    if not scaled:
        assert deployment["spec"].get("replicas", 1) >= 1
        return
    spec = scaled[0]["spec"]
    assert spec["minReplicaCount"] >= 1, "0 replicas would mean no consumer: 'no consumers' must stay meaningful"
    assert spec["maxReplicaCount"] >= spec["minReplicaCount"]
    assert spec["scaleTargetRef"]["kind"] == "Deployment"
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"], "the HPA KEDA creates owns the replica count"
    kafka = [t for t in spec["triggers"] if t["type"] == "kafka"]
    assert len(kafka) == 1
    metadata = kafka[0]["metadata"]
    assert metadata["consumerGroup"] == settings.kafka.config["group.id"]
    assert metadata["bootstrapServers"] == settings.kafka.config["bootstrap.servers"]
    assert int(metadata["lagThreshold"]) > 0
    auth = kafka[0].get("authenticationRef", {}).get("name")
    if settings.kafka.config.get("security.protocol", "PLAINTEXT").upper().startswith("SASL"):
        assert auth in {d["metadata"]["name"] for d in docs if d["kind"] == "TriggerAuthentication"}


def test_one_overlay_autoscales_and_one_does_not():
    scaled = [any(d["kind"] == "ScaledObject" for d in render(f"overlays/{o}")) for o in OVERLAYS]
    assert any(scaled) and not all(scaled), dict(zip(OVERLAYS, scaled, strict=True))


def test_grafana_dashboard_configmap_renders():
    docs = render("../grafana")
    config_map = one(docs, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = (ROOT / "deploy/grafana/dashboards/smartico-stream.json").read_text()
    assert dashboard == config_map["data"]["smartico-stream.json"]
