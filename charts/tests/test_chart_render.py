"""The Helm chart rendered by the real `helm` binary: lint, schemas, RBAC, monitoring, values."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from chart_rbac import CLUSTER_SCOPED
from chart_support import (CHART, DASHBOARD, MONITORING_KINDS, PROMETHEUS_OPERATOR_APIS, REPO_ROOT, HelmError,
                           alert_rules, by_kind, dashboard_panels, load_dashboard, monitoring_validator_available,
                           one, validate_monitoring)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest we have schemas for.
KUBE_VERSIONS = ["1.27.0", kubernetes_validate.utils.latest_version()]
PROJECT_VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
TOP_LEVEL_CRD = REPO_ROOT / "crds" / "kubellama.dev_llamaservers.yaml"
CHART_CRD = CHART / "crds" / "kubellama.dev_llamaservers.yaml"

LLAMASERVER = {
    "name": "gemma",
    "labels": {"team": "ml"},
    "spec": {
        "model": {"huggingFace": {"repo": "unsloth/gemma-3-270m-it-GGUF", "file": "gemma-3-270m-it-Q4_K_M.gguf"}},
        "replicas": 2,
        "server": {"contextSize": 4096, "parallel": 4},
    },
}

# A vision model with its projector (spec.model.mmproj): passed through like any other spec field.
MULTIMODAL = {
    "name": "other",
    "namespace": "team-a",
    "spec": {
        "model": {"huggingFace": {"repo": "ggml-org/gemma-3-4b-it-GGUF", "file": "gemma-3-4b-it-Q4_K_M.gguf"},
                  "mmproj": {"huggingFace": {"repo": "ggml-org/gemma-3-4b-it-GGUF", "file": "mmproj-model-f16.gguf"},
                             "offload": False}},
        "gpu": {"count": 1},
    },
}

# One base model with LoRA adapters (spec.model.loras): a list, passed through like any other spec field.
LORAS = {
    "name": "tuned",
    "namespace": "team-a",
    "spec": {
        "model": {"huggingFace": {"repo": "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "file": "qwen2.5-1.5b-instruct-q4_k_m.gguf"},
                  "tokenSecretRef": {"name": "hf"},
                  "loras": [{"name": "sql", "huggingFace": {"repo": "my-org/qwen2.5-1.5b-sql-lora-GGUF",
                                                            "file": "adapter-f16.gguf"}},
                            {"name": "support", "url": "https://models.example.com/support/adapter-f16.gguf",
                             "sha256": "ab" * 32}]},
    },
}

# Value sets the chart must render cleanly with, and the Prometheus Operator APIs the cluster serves.
CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "defaults": ({}, []),
    "namespaced": ({"operator": {"watchNamespaces": ["team-a", "team-b"]}}, []),
    "monitoring": ({"monitoring": {"enabled": True}}, PROMETHEUS_OPERATOR_APIS),
    "dashboards-off": ({"grafana": {"dashboards": {"enabled": False}}}, []),
    "llamaserver": ({"llamaServers": [LLAMASERVER, MULTIMODAL, LORAS]}, []),
    "everything": ({
        "operator": {
            "watchNamespaces": ["team-a"],
            "image": {"digest": "sha256:" + "a" * 64},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
            "priorityClassName": "system-cluster-critical",
            "podAnnotations": {"a": "b"},
            "extraEnv": [{"name": "FOO", "value": "bar"}],
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"annotations": {"iam": "role"}},
        "commonLabels": {"owner": "platform"},
        "monitoring": {"enabled": True, "podMonitor": {"labels": {"release": "kps"}},
                       "prometheusRule": {"additionalAlertLabels": {"team": "ml"},
                                          "runbookBaseUrl": "https://runbooks.example/kubellama"}},
        "grafana": {"dashboards": {"namespace": "monitoring", "annotations": {"grafana_folder": "LLM"}}},
        "llamaServers": [LLAMASERVER],
    }, PROMETHEUS_OPERATOR_APIS),
}


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict[str, Any]]]:
    return {name: helm.template(values, api_versions=apis) for name, (values, apis) in CASES.items()}


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CHART_CRD.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


# --- lint and schemas -----------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_helm_lint(helm, case):
    proc = helm.lint(CASES[case][0])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("case", CASES)
def test_every_object_validates(rendered, case):
    objects = rendered[case]
    assert objects
    monitoring = [o for o in objects if o["kind"] in MONITORING_KINDS]
    for obj in objects:
        assert obj["metadata"]["name"], obj
        if obj["kind"] in MONITORING_KINDS:
            continue
        if obj["kind"] == "LlamaServer":
            jsonschema.validate(obj, crd_schema())
            continue
        for version in KUBE_VERSIONS:
            # strict: unknown fields are errors, not silently dropped.
            kubernetes_validate.validate(obj, version, strict=True)
    if monitoring:
        reason = monitoring_validator_available()
        assert reason is None, reason
        errors = validate_monitoring(monitoring)
        assert errors == [""] * len(monitoring), errors


def test_validators_reject_broken_objects(rendered):
    """The validators the test above relies on do reject bad objects."""
    deployment = copy.deepcopy(one(rendered["defaults"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)
    pod_monitor = copy.deepcopy(one(rendered["monitoring"], "PodMonitor"))
    pod_monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["action"] = "rename"
    rule = copy.deepcopy(one(rendered["monitoring"], "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "5 minutes"
    errors = validate_monitoring([pod_monitor, rule])
    assert "action" in errors[0] and "for" in errors[1], errors
    server = copy.deepcopy(by_kind(rendered["llamaserver"], "LlamaServer")[0])
    server["spec"]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(server, crd_schema())


# --- what gets installed --------------------------------------------------------------------------

def kinds(objects):
    return sorted(o["kind"] for o in objects)


def test_default_install(rendered):
    objects = rendered["defaults"]
    assert kinds(objects) == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition",
                              "Deployment", "NetworkPolicy", "ServiceAccount"]
    for obj in objects:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert obj["metadata"]["namespace"] == "kubellama-system", obj["kind"]


def test_crd_is_byte_identical_to_top_level():
    assert CHART_CRD.read_bytes() == TOP_LEVEL_CRD.read_bytes(), (
        "charts/kubellama/crds/ is out of date with crds/: run `make chart-crds`")
    assert [p.name for p in (CHART / "crds").iterdir()] == [TOP_LEVEL_CRD.name]


def test_chart_versions_follow_the_project():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == PROJECT_VERSION
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["operator"]["image"]["repository"] == "ghcr.io/kubellama/kubellama-operator"
    assert values["serverImages"]["cpu"]["repository"] == "ghcr.io/kubellama/kubellama-server"
    assert values["serverImages"]["cuda"]["repository"] == "ghcr.io/kubellama/kubellama-server-cuda"


# --- the operator Deployment ----------------------------------------------------------------------

def container(objects):
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return pod, pod["containers"][0]


def env(c):
    return {e["name"]: e.get("value") for e in c["env"]}


def operator_config(c):
    """What kubellama-operator makes of the container's arguments and environment."""
    import os
    from unittest import mock

    from kubellama_operator.cli import parse_config
    env_values = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    with mock.patch.dict(os.environ, env_values):
        return parse_config(c["args"])


def test_operator_deployment_defaults(rendered):
    objects = rendered["defaults"]
    pod, c = container(objects)
    assert c["image"] == f"ghcr.io/kubellama/kubellama-operator:{PROJECT_VERSION}"
    config = operator_config(c)
    assert config.cpu_image == f"ghcr.io/kubellama/kubellama-server:{PROJECT_VERSION}"
    assert config.cuda_image == f"ghcr.io/kubellama/kubellama-server-cuda:{PROJECT_VERSION}"
    assert config.namespaces == ()
    assert (config.log_level, config.log_format) == ("INFO", "json")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": config.metrics_port, "health": config.health_port}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    selector = one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_operator_deployment_options(rendered):
    objects = rendered["everything"]
    pod, c = container(objects)
    assert c["image"] == "ghcr.io/kubellama/kubellama-operator@sha256:" + "a" * 64
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["affinity"]["nodeAffinity"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert env(c)["FOO"] == "bar"
    assert operator_config(c).namespaces == ("team-a",)
    assert one(objects, "Deployment")["metadata"]["labels"]["owner"] == "platform"
    assert one(objects, "ServiceAccount")["metadata"]["annotations"] == {"iam": "role"}


def test_settings_reach_the_operator(helm):
    _, c = container(helm.template({
        "operator": {"logLevel": "debug", "logFormat": "text", "serverLogFormat": "text", "resyncSeconds": 30,
                     "metricsPort": 9000, "healthPort": 9001, "watchNamespaces": ["a", "b", "a"]},
        "serverImages": {"pullPolicy": "Always", "cpu": {"repository": "reg/cpu", "tag": "1"},
                         "cuda": {"repository": "reg/cuda", "tag": "2"}}}))
    config = operator_config(c)
    assert (config.log_level, config.log_format, config.server_log_format) == ("DEBUG", "text", "text")
    assert (config.metrics_port, config.health_port, config.resync_seconds) == (9000, 9001, 30)
    assert config.namespaces == ("a", "b")
    assert (config.cpu_image, config.cuda_image, config.image_pull_policy) == ("reg/cpu:1", "reg/cuda:2", "Always")


def test_operator_network_policy_admits_only_prometheus_to_the_metrics_port(rendered, helm):
    policy = one(rendered["defaults"], "NetworkPolicy")
    pod, c = container(rendered["defaults"])
    deployment = one(rendered["defaults"], "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    # The same Prometheus is what the LlamaServers' NetworkPolicies admit (the operator's settings).
    config = operator_config(c)
    assert config.prometheus_namespace_selector == (("kubernetes.io/metadata.name", "monitoring"),)
    assert config.prometheus_pod_selector == (("app.kubernetes.io/name", "prometheus"),)
    # And the operator's own pods (in POD_NAMESPACE), which read the LoRA scales of the server pods.
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert len(config.operator_pod_selector) > 1 and dict(config.operator_pod_selector).items() <= pod_labels.items()
    assert any(e["name"] == "POD_NAMESPACE" for e in c["env"])

    # Helm merges maps with the defaults: null drops a default label.
    objects = helm.template({"networkPolicy": {"prometheus": {
                                                   "namespaceSelector": {"b": "2", "a": "1",
                                                                         "kubernetes.io/metadata.name": None},
                                                   "podSelector": {"app.kubernetes.io/name": None}},
                                               "extraFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}})
    rule = one(objects, "NetworkPolicy")["spec"]["ingress"][0]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"a": "1", "b": "2"}}},
                            {"ipBlock": {"cidr": "10.0.0.0/8"}}]
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(one(objects, "NetworkPolicy"), version, strict=True)
    config = operator_config(container(objects)[1])
    assert (config.prometheus_namespace_selector, config.prometheus_pod_selector) == ((("a", "1"), ("b", "2")), ())
    assert not by_kind(helm.template({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


def test_allow_lists_reach_the_operator(helm, rendered):
    assert (operator_config(container(rendered["defaults"])[1]).allowed_images) == ()
    _, c = container(helm.template({"operator": {"allowedImages": ["ghcr.io/kubellama/*", "reg.test/llm:*"],
                                                 "allowedServiceAccounts": ["llm"]}}))
    config = operator_config(c)
    assert config.allowed_images == ("ghcr.io/kubellama/*", "reg.test/llm:*")
    assert config.allowed_service_accounts == ("llm",)


def test_hub_mirror_reaches_the_operator(helm, rendered):
    assert operator_config(container(rendered["defaults"])[1]).hf_endpoint == ""
    _, c = container(helm.template({"operator": {"huggingFaceEndpoint": "http://hub.ml.svc:8080"}}))
    assert operator_config(c).hf_endpoint == "http://hub.ml.svc:8080"


def test_existing_service_account(helm):
    objects = helm.template({"serviceAccount": {"create": False, "name": "mine"}})
    assert not by_kind(objects, "ServiceAccount")
    pod, _ = container(objects)
    assert pod["serviceAccountName"] == "mine"
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "mine"
    with pytest.raises(HelmError, match="serviceAccount.name is required"):
        helm.template({"serviceAccount": {"create": False}})


# --- values.schema.json -----------------------------------------------------------------------------

@pytest.mark.parametrize("values, message", [
    ({"operator": {"metricsPort": "9090"}}, r"/operator/metricsPort.*got string, want integer"),
    ({"operator": {"logLevel": "loud"}}, r"/operator/logLevel.*'debug', 'info', 'warning', 'error'"),
    ({"operator": {"watchNamespaces": "team-a"}}, r"/operator/watchNamespaces.*got string, want array"),
    ({"operator": {"watchNamespaces": ["Team_A"]}}, r"/operator/watchNamespaces/0"),
    ({"monitoring": {"enabled": "yes"}}, r"/monitoring/enabled.*got string, want boolean"),
    ({"monitoring": {"prometheusRule": {"alerts": {"kvCacheFull": {"threshold": 90}}}}},
     r"/monitoring/prometheusRule/alerts/kvCacheFull/threshold"),
    ({"monitoring": {"podMonitor": {"interval": "fast"}}}, r"/monitoring/podMonitor/interval"),
    ({"llamaServers": [{"name": "x"}]}, r"/llamaServers/0.*spec"),
    ({"llamaServers": [{"name": "Bad_Name", "spec": {"model": {"url": "http://m/x.gguf"}}}]}, r"/llamaServers/0/name"),
    ({"networkPolicy": {"enabled": "yes"}}, r"/networkPolicy/enabled.*got string, want boolean"),
    ({"networkPolicy": {"prometheus": {"podSelector": {"app": 1}}}}, r"/networkPolicy/prometheus/podSelector/app"),
    ({"operator": {"allowedImages": "ghcr.io/*"}}, r"/operator/allowedImages.*got string, want array"),
    ({"operatr": {}}, r"additional properties 'operatr' not allowed"),
])
def test_schema_rejects_wrong_values(helm, values, message):
    with pytest.raises(HelmError) as err:
        helm.template(values)
    assert "values don't meet the specifications of the schema" in str(err.value)
    assert re.search(message, str(err.value)), str(err.value)


def values_keys_without_comment() -> list[str]:
    """Chart-defined keys in values.yaml without a comment line right above them."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack]
        node = schema
        for part in path:
            node = node.get("properties", {}).get(part) if node else None
        stack.append((indent, key))
        if not node or "properties" not in node:
            continue  # inside a free-form value (resources, labels, ...): the parent is documented
        assert key in node["properties"], f"values.yaml key {'.'.join(path + [key])} is not in values.schema.json"
        if not (i > 0 and lines[i - 1].strip().startswith("#")):
            missing.append(".".join(path + [key]))
    return missing


def test_every_value_is_documented():
    assert values_keys_without_comment() == []
    # and the defaults themselves satisfy the schema
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()),
                        json.loads((CHART / "values.schema.json").read_text()))


# --- RBAC -----------------------------------------------------------------------------------------

def test_rbac_template_is_generated_from_the_operator_rules(operator_rules):
    import chart_rbac
    assert chart_rbac.TEMPLATE.read_text() == chart_rbac.render(operator_rules), (
        "charts/kubellama/templates/_rbac.tpl is out of date with kubellama_operator.rbac.RULES: run `make chart-rbac`")


def triples(rules) -> set[tuple[str, str, str]]:
    out = set()
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {rule}"
        out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


@pytest.fixture(scope="module")
def operator_rules():
    from kubellama_operator.rbac import RULES
    return RULES


def test_cluster_rbac_is_exactly_the_operator_rules(rendered, operator_rules):
    objects = rendered["defaults"]
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")
    role = one(objects, "ClusterRole")
    assert triples(role["rules"]) == triples(operator_rules)
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    sa = one(objects, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}]


def test_namespaced_rbac_is_limited_to_the_watched_namespaces(rendered, operator_rules):
    objects = rendered["namespaced"]
    wanted = triples(operator_rules)
    cluster_wanted = {t for t in wanted if (t[0], t[1].split("/")[0]) in CLUSTER_SCOPED}
    roles = by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert triples(role["rules"]) == wanted - cluster_wanted
    bindings = by_kind(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == "kubellama-system"
    cluster_roles = by_kind(objects, "ClusterRole")
    granted_cluster_wide = set().union(*(triples(r["rules"]) for r in cluster_roles))
    assert granted_cluster_wide == cluster_wanted
    assert {t[:2] for t in granted_cluster_wide} <= CLUSTER_SCOPED


def test_rbac_can_be_left_out(helm):
    objects = helm.template({"rbac": {"create": False}})
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & set(kinds(objects))


# --- monitoring -----------------------------------------------------------------------------------

def test_monitoring_needs_the_prometheus_operator(helm):
    without = helm.template({"monitoring": {"enabled": True}})
    assert not {"PodMonitor", "ServiceMonitor", "PrometheusRule", "Service"} & set(kinds(without))
    assumed = helm.template({"monitoring": {"enabled": True, "assumeCRDs": True}})
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule", "Service"} <= set(kinds(assumed))
    only_rules = helm.template({"monitoring": {"enabled": True}}, api_versions=["monitoring.coreos.com/v1/PrometheusRule"])
    assert [k for k in kinds(only_rules) if k in MONITORING_KINDS] == ["PrometheusRule"]
    off = helm.template({}, api_versions=PROMETHEUS_OPERATOR_APIS)
    assert not set(MONITORING_KINDS) & set(kinds(off))


def test_pod_monitor_selects_llamaserver_pods_and_adds_labels(rendered):
    pm = one(rendered["monitoring"], "PodMonitor")["spec"]
    # The labels the operator puts on every LlamaServer pod (cross-area contract).
    pod_labels = {"app.kubernetes.io/name": "kubellama-server", "app.kubernetes.io/instance": "gemma",
                  "app.kubernetes.io/managed-by": "kubellama-operator", "app.kubernetes.io/component": "server",
                  "kubellama.dev/llamaserver": "gemma"}
    assert pm["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pm["namespaceSelector"] == {"any": True}
    (endpoint,) = pm["podMetricsEndpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    targets = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    assert targets["llamaserver"]["sourceLabels"] == ["__meta_kubernetes_pod_label_kubellama_dev_llamaserver"]
    assert targets["namespace"]["sourceLabels"] == ["__meta_kubernetes_namespace"]
    assert "model" in targets
    namespaced = one(rendered["everything"], "PodMonitor")
    assert namespaced["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    assert namespaced["metadata"]["labels"]["release"] == "kps"


@pytest.mark.parametrize("example", ["cpu-gemma.yaml", "gpu-llm-8b.yaml"])
def test_pod_monitor_matches_the_pods_the_operator_builds(rendered, example):
    """The PodMonitor selects the StatefulSet pods kubellama-operator really makes, on a port they have."""
    from kubellama_operator.builders import desired_children
    from kubellama_operator.config import OperatorConfig
    from kubellama_operator.spec import parse, resolve_model

    docs = yaml.safe_load_all((REPO_ROOT / "crds" / "examples" / example).read_text())
    (server,) = [d for d in docs if d and d["kind"] == "LlamaServer"]
    server["metadata"].setdefault("namespace", "team-a")
    spec = parse(server["spec"])
    children, _ = desired_children(server, spec, resolve_model(spec), OperatorConfig(), servicemonitor_crd=False)
    (sts,) = [c for c in children if c["kind"] == "StatefulSet"]
    template = sts["spec"]["template"]
    pm = one(rendered["monitoring"], "PodMonitor")["spec"]
    assert pm["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    (endpoint,) = pm["podMetricsEndpoints"]
    server_ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    assert endpoint["port"] in server_ports
    (owner_relabel,) = [r for r in endpoint["relabelings"] if r["targetLabel"] == "llamaserver"]
    meta_label = owner_relabel["sourceLabels"][0].removeprefix("__meta_kubernetes_pod_label_")
    pod_labels = {re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in template["metadata"]["labels"].items()}
    assert pod_labels[meta_label] == server["metadata"]["name"]
    # the `model` label comes from the pod annotation the operator sets
    annotations = {re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in template["metadata"]["annotations"].items()}
    model_sources = [r["sourceLabels"][0] for r in endpoint["relabelings"] if r["targetLabel"] == "model"]
    assert any(annotations.get(src.removeprefix("__meta_kubernetes_pod_annotation_")) == resolve_model(spec).name
               for src in model_sources)


def _selects(selector, labels):
    """Whether a label selector (matchLabels, matchExpressions with In) selects these labels."""
    return selector.get("matchLabels", {}).items() <= labels.items() and all(
        e["operator"] == "In" and labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", []))


def test_pod_monitor_selects_the_router_pods_too(rendered):
    """spec.routing's router pods are scraped by the same PodMonitor, with the same llamaserver label."""
    from kubellama_operator.builders import desired_children
    from kubellama_operator.config import OperatorConfig
    from kubellama_operator.spec import parse, resolve_model

    server = {"apiVersion": "kubellama.dev/v1alpha1", "kind": "LlamaServer",
              "metadata": {"name": "gemma", "namespace": "team-a", "uid": "u"},
              "spec": {"model": {"url": "https://models.test/m.gguf"}, "routing": {"enabled": True}}}
    spec = parse(server["spec"])
    children, _ = desired_children(server, spec, resolve_model(spec), OperatorConfig(), servicemonitor_crd=False)
    pm = one(rendered["monitoring"], "PodMonitor")["spec"]
    (endpoint,) = pm["podMetricsEndpoints"]
    for kind in ("StatefulSet", "Deployment"):
        (workload,) = [c for c in children if c["kind"] == kind]
        template = workload["spec"]["template"]
        assert _selects(pm["selector"], template["metadata"]["labels"]), kind
        assert endpoint["port"] in {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert template["metadata"]["labels"]["kubellama.dev/llamaserver"] == "gemma"
    # nothing else the operator runs, e.g. the operator itself
    assert not _selects(pm["selector"], {"app.kubernetes.io/name": "kubellama-operator",
                                         "app.kubernetes.io/managed-by": "kubellama-operator"})


def test_operator_service_monitor_relabels_like_the_pod_monitor(rendered):
    """A LlamaServer's own ServiceMonitor gives its series the same labels as the chart's PodMonitor."""
    from kubellama_operator.builders.servicemonitor import RELABELINGS

    pm = one(rendered["monitoring"], "PodMonitor")["spec"]
    (endpoint,) = pm["podMetricsEndpoints"]
    chart = [r for r in endpoint["relabelings"]]
    for rule in RELABELINGS:
        assert rule in chart, rule
    assert {r["targetLabel"] for r in RELABELINGS} == {r["targetLabel"] for r in chart}


def test_operator_service_monitor(rendered):
    objects = rendered["monitoring"]
    sm = one(objects, "ServiceMonitor")["spec"]
    service = one(objects, "Service")
    assert sm["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    deployment = one(objects, "Deployment")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    _, c = container(objects)
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in c["ports"]}
    assert sm["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert {"targetLabel": "job", "replacement": "kubellama-operator", "action": "replace"} in sm["endpoints"][0]["relabelings"]


REQUIRED_ALERTS = {"KubellamaServerDown", "KubellamaNoReadyReplicas", "KubellamaRequestsDeferred",
                   "KubellamaKVCacheNearlyFull", "KubellamaSlowTimeToFirstToken", "KubellamaModelDownloadFailing",
                   "KubellamaOperatorReconcileErrors", "KubellamaOperatorDown", "KubellamaRequestErrors",
                   "KubellamaSlotSaveFailures", "KubellamaLlamaServerFailed", "KubellamaRouterRejecting"}


def test_prometheus_rule_alerts(rendered):
    rules = alert_rules(rendered["monitoring"])
    assert {r["alert"] for r in rules} == REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])
    deferred = next(r for r in rules if r["alert"] == "KubellamaRequestsDeferred")
    assert "llamacpp:requests_deferred" in deferred["expr"] and deferred["for"] == "5m"
    kv = next(r for r in rules if r["alert"] == "KubellamaKVCacheNearlyFull")
    assert "llamacpp:kv_cache_usage_ratio" in kv["expr"] and kv["expr"].endswith("> 0.9")
    everything = alert_rules(rendered["everything"])
    assert all(r["labels"]["team"] == "ml" for r in everything)
    assert all(r["annotations"]["runbook_url"].startswith("https://runbooks.example/kubellama#") for r in everything)


def test_alert_thresholds_and_switches_come_from_values(helm):
    values = {"monitoring": {"enabled": True, "assumeCRDs": True, "prometheusRule": {"alerts": {
        "timeToFirstToken": {"p95Seconds": 2.5, "for": "3m", "severity": "critical"},
        "kvCacheFull": {"threshold": 0.8},
        "operatorDown": {"enabled": False}}}}}
    rules = {r["alert"]: r for r in alert_rules(helm.template(values))}
    assert "KubellamaOperatorDown" not in rules
    ttft = rules["KubellamaSlowTimeToFirstToken"]
    assert "histogram_quantile(0.95" in ttft["expr"] and "kubellama_time_to_first_token_seconds_bucket" in ttft["expr"]
    assert ttft["expr"].endswith("> 2.5") and ttft["for"] == "3m" and ttft["labels"]["severity"] == "critical"
    assert rules["KubellamaKVCacheNearlyFull"]["expr"].endswith("> 0.8")


# --- Grafana dashboard ----------------------------------------------------------------------------

def test_dashboard_configmap(rendered):
    cm = one(rendered["defaults"], "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["kubellama.json"]) == load_dashboard()
    assert not by_kind(rendered["dashboards-off"], "ConfigMap")
    moved = one(rendered["everything"], "ConfigMap")
    assert moved["metadata"]["namespace"] == "monitoring"
    assert moved["metadata"]["annotations"] == {"grafana_folder": "LLM"}


def test_dashboard_structure():
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "llamaserver", "pod"} <= set(variables)
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "llamaserver", "pod"):
        assert variables[name]["includeAll"] and variables[name]["multi"] and variables[name]["allValue"] == ".*"
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel["targets"]:
            expr = target["expr"]
            if not expr.startswith("sum(up"):
                # router panels: its pods are not among $pod (the server pods)
                for var in ("namespace", "llamaserver") + (() if "kubellama_router_" in expr else ("pod",)):
                    assert f'{var}=~"${var}"' in expr, f"{panel['title']}: {expr} does not filter on ${var}"
    cells = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]!r} and {panel['title']!r} overlap"
                cells[(x, y)] = panel["title"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("prompt tokens/s", "generated tokens/s", "requests processing", "deferred", "busy slots per decode",
                  "kv cache usage", "time to first token", "inter-token", "request duration", "queue wait",
                  "slot saves", "slot restores", "non-2xx", "by pod", "by llamaserver", "router requests/s by decision",
                  "router queue length", "router in-flight requests per replica", "router upstream errors"):
        assert topic in titles, f"no panel about {topic!r}"


# --- LlamaServers from values and NOTES -----------------------------------------------------------

def test_llamaservers_from_values(rendered):
    servers = by_kind(rendered["llamaserver"], "LlamaServer")
    assert [(s["metadata"]["name"], s["metadata"]["namespace"]) for s in servers] == [
        ("gemma", "kubellama-system"), ("other", "team-a"), ("tuned", "team-a")]
    assert servers[0]["apiVersion"] == "kubellama.dev/v1alpha1"
    assert servers[0]["spec"] == LLAMASERVER["spec"]
    assert servers[0]["metadata"]["labels"]["team"] == "ml"
    assert servers[1]["spec"] == MULTIMODAL["spec"]
    assert servers[2]["spec"] == LORAS["spec"]


def test_the_charts_crd_checks_the_projector(rendered):
    server = copy.deepcopy(by_kind(rendered["llamaserver"], "LlamaServer")[1])
    server["spec"]["model"]["mmproj"]["sha256"] = "not-a-sha256"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(server, crd_schema())


def test_the_charts_crd_checks_the_adapters(rendered):
    server = by_kind(rendered["llamaserver"], "LlamaServer")[2]
    jsonschema.validate(server, crd_schema())
    for breaks in (lambda loras: loras[1].update(sha256="not-a-sha256"),
                   lambda loras: loras[0].update(name=""),
                   lambda loras: loras.extend([{"url": f"https://models.example.com/{i}.gguf"} for i in range(15)])):
        broken = copy.deepcopy(server)
        breaks(broken["spec"]["model"]["loras"])
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, crd_schema())


def test_a_lora_server_from_values_is_one_the_operator_runs(rendered):
    """The rendered LoRA LlamaServer passes the operator's own checks and gets one fetch-lora-<i> per adapter."""
    from kubellama_operator.builders import desired_children
    from kubellama_operator.config import OperatorConfig
    from kubellama_operator.spec import parse, problems, resolve_model

    server = by_kind(rendered["llamaserver"], "LlamaServer")[2]
    spec = parse(server["spec"])
    assert problems(spec) == []
    children, _ = desired_children(server, spec, resolve_model(spec), OperatorConfig(), servicemonitor_crd=False)
    (sts,) = [c for c in children if c["kind"] == "StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model", "fetch-lora-0", "fetch-lora-1"]
    args = pod["containers"][0]["args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--lora"] == [
        "/models/lora/0/adapter-f16.gguf", "/models/lora/1/adapter-f16.gguf"]
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(sts, version, strict=True)


def test_notes_explain_the_next_steps(helm):
    proc = helm.run("install", "kubellama", str(CHART), "--dry-run=client", "--namespace", "kubellama-system")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kubectl apply" in notes and "kind: LlamaServer" in notes
    assert "get llama gemma -w" in notes
    assert "http://gemma.default.svc:8080/v1" in notes
    assert "port-forward svc/gemma 8080:8080" in notes
    # the LlamaServer in the NOTES is valid
    manifest = re.search(r"cat <<EOF \| kubectl apply -n \S+ -f -\n(.*?)\n\s*EOF", notes, re.S).group(1)
    example = yaml.safe_load("\n".join(line[2:] for line in manifest.splitlines()))
    jsonschema.validate(example, crd_schema())
    warn = helm.run("install", "kubellama", str(CHART), "--dry-run=client", "--set", "monitoring.enabled=true")
    assert "does not serve the Prometheus Operator" in warn.stdout


def test_kubernetes_version_floor(helm):
    assert helm.template({}, extra=["--kube-version", "1.27.0"])
    with pytest.raises(HelmError, match="kubeVersion"):
        helm.template({}, extra=["--kube-version", "1.26.0"])
