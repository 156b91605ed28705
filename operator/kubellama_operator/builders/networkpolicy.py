"""The NetworkPolicy that admits only the router, Prometheus and the sources the spec names to the server pods."""

from __future__ import annotations

from typing import Any

from ..config import OperatorConfig
from ..crd import EXTERNAL_SERVICE_TYPES
from ..spec import SERVER_PORT, Spec
from .meta import LABEL_COMPONENT, Body, object_meta, selector_labels

#: The router's pods (same namespace) call the servers.
ROUTER_LABELS = {LABEL_COMPONENT: "router"}
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def wants_networkpolicy(spec: Spec) -> bool:
    return spec.get("networkPolicy", {}).get("enabled", True) is not False


def allowed_peers(spec: Spec, config: OperatorConfig) -> list[dict[str, Any]] | None:
    """The sources admitted to the server port; None: every source (a Service published outside the cluster)."""
    if spec.get("service", {}).get("type") in EXTERNAL_SERVICE_TYPES:
        return None
    policy = spec.get("networkPolicy", {})
    namespaces = config.prometheus_namespace_selector
    prometheus: dict[str, Any] = {"namespaceSelector": {"matchLabels": dict(namespaces)} if namespaces else {}}
    if config.prometheus_pod_selector:
        prometheus["podSelector"] = {"matchLabels": dict(config.prometheus_pod_selector)}
    peers = [{"podSelector": {"matchLabels": dict(ROUTER_LABELS)}}, prometheus]
    if policy.get("allowedNamespaces"):
        peers.append({"namespaceSelector": {"matchExpressions": [{
            "key": NAMESPACE_NAME_LABEL, "operator": "In", "values": sorted(set(policy["allowedNamespaces"]))}]}})
    peers += [dict(peer) for peer in policy.get("from") or []]
    return peers


def build_networkpolicy(owner: Body, spec: Spec, config: OperatorConfig) -> dict[str, Any]:
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
