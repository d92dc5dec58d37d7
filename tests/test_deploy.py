"""deploy/: the Kubernetes manifests, Dockerfile and Grafana dashboard agree with the config and metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from interlock.config import LoadedConfig, parse_config
from interlock.engine import Guard
from interlock.server.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"


def manifests() -> dict[str, dict]:
    """By kind; a second object of a kind (the headless Service) as ``kind/name``."""
    docs = {}
    for p in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(p.read_text()):
            name = doc.get("metadata", {}).get("name")  # the Kustomization has none
            docs[
                doc["kind"] if name in (None, "interlock", "interlock-config") else f"{doc['kind']}/{name}"
            ] = doc
    return docs


@pytest.fixture(scope="module")
def k8s():
    return manifests()


@pytest.fixture(scope="module")
def served(k8s, tmp_path_factory):
    text = k8s["ConfigMap"]["data"]["interlock.yaml"]
    cfg = parse_config(yaml.safe_load(text), source="configmap interlock.yaml")
    Guard(LoadedConfig(cfg, tmp_path_factory.mktemp("k8s"), "k8s", "configmap")).load()  # rules compile
    return cfg


def test_every_manifest_is_listed_and_well_formed(k8s):
    kust = k8s.pop("Kustomization")
    assert sorted(kust["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    assert set(k8s) == {
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "Service/interlock-headless",
        "ServiceMonitor",
    }
    for key, doc in k8s.items():
        assert doc["apiVersion"] and doc["metadata"]["name"] == {
            "ConfigMap": "interlock-config",
            "Service/interlock-headless": "interlock-headless",
        }.get(key, "interlock")


def test_probes_and_ports_match_the_served_config(k8s, served):
    server = served.server
    assert server.host == "0.0.0.0", "in a pod the server must listen on all interfaces"
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    [c] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": server.port, "metrics": server.metrics_port}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["grpc"] == {"port": server.port, "service": ""}  # grpc.health.v1, served by Interlock
    assert pod["terminationGracePeriodSeconds"] > server.drain_seconds + server.grace_seconds
    # The config file the container is told to read is the ConfigMap's key, mounted where args say.
    [mount] = c["volumeMounts"]
    [vol] = pod["volumes"]
    assert vol["configMap"]["name"] == k8s["ConfigMap"]["metadata"]["name"] and vol["name"] == mount["name"]
    assert c["args"] == ["--config", f"{mount['mountPath']}/interlock.yaml"]
    # The audit DSN comes from a Secret through the variable the config reads.
    env = {e["name"] for e in c["env"]}
    assert re.fullmatch(r"\$\{(\w+)\}", served.server.audit.dsn).group(1) in env
    labels = pod.get("metadata", k8s["Deployment"]["spec"]["template"]["metadata"])["labels"]
    assert k8s["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_service_and_servicemonitor_reach_the_pods(k8s):
    svc = k8s["Service"]["spec"]
    pod_labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert svc["selector"].items() <= pod_labels.items()
    container_ports = {
        p["name"] for p in k8s["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert {p["targetPort"] for p in svc["ports"]} == container_ports
    sm = k8s["ServiceMonitor"]["spec"]
    assert sm["selector"]["matchLabels"].items() <= k8s["Service"]["metadata"]["labels"].items()
    assert [e["port"] for e in sm["endpoints"]] == ["metrics"] and "metrics" in {
        p["name"] for p in svc["ports"]
    }


def test_dockerfile_runs_the_install_script_and_serves(served):
    text = (ROOT / "Dockerfile").read_text()
    assert "RUN bash deploy/install.sh /opt/interlock" in text
    assert 'ENTRYPOINT ["interlock", "serve"]' in text
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    assert exposed == {served.server.port, served.server.metrics_port}
    assert (ROOT / "deploy" / "install.sh").stat().st_mode & 0o111


def test_grafana_dashboard_uses_only_real_metrics():
    dash = json.loads((ROOT / "deploy" / "grafana" / "interlock-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set(re.findall(r"\binterlock_[a-z_]+", " ".join(exprs)))
    known = set()
    for metric in Metrics().registry.collect():
        known |= {s.name for s in metric.samples} | {metric.name}
    known |= {f"{n}_total" for n in known}
    unknown = used - known
    assert not unknown, f"dashboard queries metrics that do not exist: {sorted(unknown)}"
    assert {
        "interlock_decisions_total",
        "interlock_config_reloads_total",
        "interlock_audit_errors_total",
    } <= used
