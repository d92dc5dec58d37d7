"""deploy/: every manifest validates against its schema, and every alert queries a metric the server exports.

Core Kubernetes kinds are checked with kubernetes-validate (the API's own OpenAPI schemas, strict: an
unknown field fails); the Prometheus Operator's PrometheusRule and ServiceMonitor with the typed models of
cloudcoil-models-prometheus-operator (generated from the operator's CRDs). The metric names come from a
real ``interlock serve`` of examples/cartpole/interlock.yaml on loopback, scraped after one Check.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import kubernetes_validate
import numpy as np
import pydantic
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as prom_v1
from prometheus_client.parser import text_string_to_metric_families

from interlock import GuardClient
from tests.support.ops import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
ALERTS = ROOT / "deploy" / "prometheus" / "interlock-alerts.yaml"
#: The oldest Kubernetes minor the manifests promise to work on (native gRPC probes are GA in 1.27).
K8S_VERSION = "1.27.0"
OPERATOR_MODELS = {"PrometheusRule": prom_v1.PrometheusRule, "ServiceMonitor": prom_v1.ServiceMonitor}


def listed_resources() -> list[tuple[str, dict]]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kust["resources"]:
        docs += [(name, d) for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]
    return docs


def all_documents() -> list[tuple[str, dict]]:
    return [*listed_resources(), (ALERTS.name, yaml.safe_load(ALERTS.read_text()))]


def validate_operator_kind(doc: dict) -> None:
    """Validate a PrometheusRule/ServiceMonitor; a field the CRD does not know fails too."""
    model = OPERATOR_MODELS[doc["kind"]].model_validate(doc)
    round_trip = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert round_trip == doc, f"{doc['kind']} has fields its CRD does not define (dropped on parse)"


@pytest.mark.parametrize("name,doc", all_documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_validates_against_its_schema(name, doc):
    if doc["kind"] in OPERATOR_MODELS:
        validate_operator_kind(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validators_reject_broken_manifests():
    """The checks above can fail: a misspelt probe field, a missing alert expression, a bad duration."""
    deployment = next(d for _, d in listed_resources() if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {"port": 50051}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    rule = yaml.safe_load(ALERTS.read_text())
    for mutate in (
        lambda r: r.pop("expr"),
        lambda r: r.update({"for": "5 minutes"}),
        lambda r: r.update({"exprr": "up"}),
    ):
        bad = yaml.safe_load(yaml.safe_dump(rule))
        mutate(bad["spec"]["groups"][0]["rules"][0])
        with pytest.raises((pydantic.ValidationError, AssertionError)):  # AssertionError: unknown field
            validate_operator_kind(bad)


def test_every_resource_file_is_listed_once():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    assert len(set(kust["resources"])) == len(kust["resources"])


def test_drain_probes_and_disruption_budget_fit_together():
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in listed_resources()}
    served = yaml.safe_load(docs[("ConfigMap", "interlock-config")]["data"]["interlock.yaml"])["server"]
    drain, grace = served["drain_seconds"], served["grace_seconds"]
    deployment = docs[("Deployment", "interlock")]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    ready, live = container["readinessProbe"], container["livenessProbe"]
    # Readiness fails (NOT_SERVING) before the server stops accepting calls.
    assert ready["periodSeconds"] * ready["failureThreshold"] < drain
    # Liveness sees the same NOT_SERVING: it must not restart a pod that is draining.
    assert live["periodSeconds"] * (live["failureThreshold"] - 1) >= drain + grace
    assert "preStop" not in container.get("lifecycle", {}), "the server drains itself on SIGTERM"
    assert pod["terminationGracePeriodSeconds"] > drain + grace
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = docs[("PodDisruptionBudget", "interlock")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] < deployment["spec"]["replicas"]
    headless = docs[("Service", "interlock-headless")]["spec"]
    assert headless["clusterIP"] == "None" and headless["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in headless["ports"]] == ["grpc"]


@pytest.fixture(scope="module")
def exported_metric_names(tmp_path_factory) -> set[str]:
    """Every series name a real server exposes on /metrics after one Check of the cartpole example."""
    config = yaml.safe_load((ROOT / "examples" / "cartpole" / "interlock.yaml").read_text())
    with ServerProcess(ROOT / "examples" / "cartpole" / "interlock.yaml", ("--metrics-port", "0")) as srv:
        obs_dim = config["agents"][0]["observation"]["shape"][0]
        with GuardClient(srv.address, agent_id="cartpole") as client:
            client.check(np.zeros(obs_dim, np.float32), 1)
        url = f"http://127.0.0.1:{srv.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for family in text_string_to_metric_families(text):
        # Families without samples yet (a labelled counter nobody incremented) still define their series.
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {s.name for s in family.samples}
    assert "interlock_decisions_total" in names, "the scrape did not see the Check"
    return names


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["spec"]["groups"] for r in g["rules"]]


def test_every_alert_queries_only_exported_metrics(exported_metric_names):
    rules = alert_rules()
    for rule in rules:
        used = set(re.findall(r"\binterlock_[a-z_]+", rule["expr"]))
        assert used, f"{rule['alert']} queries no Interlock metric"
        unknown = used - exported_metric_names
        assert not unknown, f"{rule['alert']} queries metrics the server does not export: {sorted(unknown)}"


def test_every_alert_has_a_runbook_section():
    runbook = (ROOT / "docs" / "operations.md").read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", runbook, re.M)
    }
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == rule["alert"].lower() and anchor in headings, (
            f"no runbook section for {rule['alert']}"
        )
        assert rule["labels"]["severity"] in {"warning", "critical"}
