"""`helm install`, `helm upgrade` and `helm uninstall` of the chart against a real API server.

kwok runs the operator's pod (nothing executes), so `--wait` sees the Deployment become
available exactly as on a cluster.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import kubellama_controlplane as kcp
import pytest
import yaml

kcp.skip_module_if_unavailable()

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kubellama"
LLAMA_API = "kubellama.dev/v1alpha1"


def stand_in_crd(kind: str, plural: str) -> dict:
    """A schemaless Prometheus Operator CRD, so the chart's capability checks see it served."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                 "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object",
                     "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]},
    }


@pytest.fixture
def release_ns(kube: kcp.Kube):
    name = f"helm-{uuid.uuid4().hex[:8]}"
    yield name
    kube.remove("v1", "Namespace", name)


def deployment_args(kube: kcp.Kube, name: str, namespace: str) -> list[str]:
    dep = kube.read("apps/v1", "Deployment", name, namespace)
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_helm_install_upgrade_uninstall(kube, helm, release_ns, tmp_path):
    # Helm server-side-applies crds/ over the CRD the other tests installed from crds/:
    # the two must be the same, or the apply conflicts (as it would for a user).
    chart_crd = CHART / "crds" / "kubellama.dev_llamaservers.yaml"
    assert yaml.safe_load(chart_crd.read_text()) == yaml.safe_load(
        (REPO / "crds" / "kubellama.dev_llamaservers.yaml").read_text()), \
        f"{chart_crd.relative_to(REPO)} differs from crds/kubellama.dev_llamaservers.yaml: re-sync the chart's copy"
    release, fullname = "kh", "kh-kubellama-operator"  # the chart names the operator objects so
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"llamaServers": [
        {"name": "demo", "spec": {"model": {"url": "http://models.invalid/demo.gguf"}, "replicas": 0}}]}))

    helm("install", release, str(CHART), "-n", release_ns, "--create-namespace", "-f", str(values),
         "--wait", "--timeout", "3m")
    listed = yaml.safe_load(helm("list", "-n", release_ns, "-o", "yaml").stdout)
    assert [(r["name"], r["status"]) for r in listed] == [(release, "deployed")]
    dep = kube.read("apps/v1", "Deployment", fullname, release_ns)
    assert dep["status"].get("availableReplicas") == 1, dep["status"]
    assert kube.read("rbac.authorization.k8s.io/v1", "ClusterRole", fullname)["rules"]
    assert kube.read("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", fullname)
    assert kube.read("v1", "ServiceAccount", fullname, release_ns)
    assert kube.read("apiextensions.k8s.io/v1", "CustomResourceDefinition", "llamaservers.kubellama.dev")
    assert kube.read(LLAMA_API, "LlamaServer", "demo", release_ns)["spec"]["replicas"] == 0
    assert "--log-level=INFO" in deployment_args(kube, fullname, release_ns)

    # Upgrade: new settings, and the Prometheus Operator objects once their CRDs are served.
    for kind, plural in (("PodMonitor", "podmonitors"), ("ServiceMonitor", "servicemonitors"),
                         ("PrometheusRule", "prometheusrules")):
        kube.apply_crd(stand_in_crd(kind, plural))
    helm("upgrade", release, str(CHART), "-n", release_ns, "-f", str(values),
         "--set", "operator.logLevel=debug", "--set", "monitoring.enabled=true", "--wait", "--timeout", "3m")
    assert "--log-level=DEBUG" in deployment_args(kube, fullname, release_ns)
    kube.wait_for(lambda: (kube.read("apps/v1", "Deployment", fullname, release_ns)["status"]
                           .get("updatedReplicas") == 1), "the upgraded operator pod")
    monitoring = {kind: kube.list("monitoring.coreos.com/v1", kind, release_ns)
                  for kind in ("PodMonitor", "PrometheusRule")}
    assert all(monitoring.values()), {k: len(v) for k, v in monitoring.items()}
    history = yaml.safe_load(helm("history", release, "-n", release_ns, "-o", "yaml").stdout)
    assert [h["revision"] for h in history] == [1, 2]

    helm("uninstall", release, "-n", release_ns, "--wait", "--timeout", "3m")
    kube.wait_for(lambda: kube.read("apps/v1", "Deployment", fullname, release_ns) is None
                  and kube.read("rbac.authorization.k8s.io/v1", "ClusterRole", fullname) is None
                  and kube.read(LLAMA_API, "LlamaServer", "demo", release_ns) is None
                  and not kube.list("v1", "Pod", release_ns),
                  "helm uninstall to remove the operator, its RBAC and the LlamaServer")
    assert yaml.safe_load(helm("list", "-n", release_ns, "-o", "yaml").stdout) == []
    # Helm never deletes CRDs from crds/: LlamaServers elsewhere survive an uninstall.
    assert kube.read("apiextensions.k8s.io/v1", "CustomResourceDefinition", "llamaservers.kubellama.dev")
