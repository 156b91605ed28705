"""Prometheus Operator ServiceMonitor scraping the server pods' /metrics through the API Service."""

from __future__ import annotations

from typing import Any

from ..api import LlamaServerSpec
from .meta import ANNOTATION_MODEL, LABEL_OWNER, LABEL_SERVICE_ROLE, Body, object_meta, selector_labels


def _meta_label(key: str) -> str:
    """Prometheus' name of a Kubernetes label/annotation key (`kubellama.dev/x` -> `kubellama_dev_x`)."""
    return "".join(c if c.isalnum() else "_" for c in key)


# The same target labels as the Helm chart's PodMonitor (kubellama.serverRelabelings),
# so the dashboard and alerts work whichever object scrapes the pods.
RELABELINGS: list[dict[str, Any]] = [
    {"action": "replace", "sourceLabels": [f"__meta_kubernetes_pod_label_{_meta_label(LABEL_OWNER)}"], "targetLabel": "llamaserver"},
    {"action": "replace", "sourceLabels": ["__meta_kubernetes_namespace"], "targetLabel": "namespace"},
    {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "pod"},
    {"action": "replace", "sourceLabels": [f"__meta_kubernetes_pod_annotation_{_meta_label(ANNOTATION_MODEL)}"],
     "regex": "(.+)", "targetLabel": "model"},
]


def wants_servicemonitor(spec: LlamaServerSpec, crd_installed: bool) -> bool:
    return spec.server.metrics and crd_installed and spec.monitoring.service_monitor


def build_servicemonitor(owner: Body, spec: LlamaServerSpec) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": object_meta(owner, name),
        "spec": {
            "selector": {"matchLabels": {**selector_labels(name), LABEL_SERVICE_ROLE: "api"}},
            "namespaceSelector": {"matchNames": [owner["metadata"]["namespace"]]},
            "endpoints": [{"port": "http", "path": "/metrics",
                           "interval": spec.monitoring.interval,
                           "relabelings": RELABELINGS}],
        },
    }
