"""The NetworkPolicy that admits only the router, Prometheus, the sources the spec names and (LoRA adapters with
metrics on) the operator to the server pods."""

from __future__ import annotations

from typing import Any

from ..config import OperatorConfig
from ..api import LlamaServerSpec
from ..spec import SERVER_PORT
from .meta import LABEL_COMPONENT, Body, object_meta, selector_labels

#: The router's pods (same namespace) call the servers.
ROUTER_LABELS = {LABEL_COMPONENT: "router"}
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def wants_networkpolicy(spec: LlamaServerSpec) -> bool:
    return spec.network_policy.enabled


def allowed_peers(spec: LlamaServerSpec, config: OperatorConfig) -> list[dict[str, Any]] | None:
    """The sources admitted to the server port; None: every source (a Service published outside the cluster)."""
    if spec.service.external:
        return None
    policy = spec.network_policy
    namespaces = config.prometheus_namespace_selector
    prometheus: dict[str, Any] = {"namespaceSelector": {"matchLabels": dict(namespaces)} if namespaces else {}}
    if config.prometheus_pod_selector:
        prometheus["podSelector"] = {"matchLabels": dict(config.prometheus_pod_selector)}
    peers = [{"podSelector": {"matchLabels": dict(ROUTER_LABELS)}}, prometheus]
    if spec.checks_lora_scales and config.operator_namespace:  # the status pass reads the pods' LoRA scales
        peers.append({"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: config.operator_namespace}},
                      "podSelector": {"matchLabels": dict(config.operator_pod_selector)}})
    if policy.allowed_namespaces:
        peers.append({"namespaceSelector": {"matchExpressions": [{
            "key": NAMESPACE_NAME_LABEL, "operator": "In", "values": sorted(set(policy.allowed_namespaces))}]}})
    peers += [peer.to_dict() for peer in policy.from_ or []]
    return peers


def build_networkpolicy(owner: Body, spec: LlamaServerSpec, config: OperatorConfig) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": SERVER_PORT}]}
    peers = allowed_peers(spec, config)
    if peers is not None:
        rule["from"] = peers
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(owner, name),
        "spec": {"podSelector": {"matchLabels": selector_labels(name)}, "policyTypes": ["Ingress"],
                 "ingress": [rule]},
    }
