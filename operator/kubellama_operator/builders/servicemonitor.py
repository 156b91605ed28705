"""Prometheus Operator ServiceMonitor scraping the server pods' /metrics through the API Service."""

from __future__ import annotations

from typing import Any

from ..spec import Spec
from .meta import LABEL_SERVICE_ROLE, Body, object_meta, selector_labels


def wants_servicemonitor(spec: Spec, crd_installed: bool) -> bool:
    metrics = spec.get("server", {}).get("metrics", True)
    return bool(metrics and crd_installed and spec.get("monitoring", {}).get("serviceMonitor"))


def build_servicemonitor(owner: Body, spec: Spec) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": object_meta(owner, name),
        "spec": {
            "selector": {"matchLabels": {**selector_labels(name), LABEL_SERVICE_ROLE: "api"}},
            "namespaceSelector": {"matchNames": [owner["metadata"]["namespace"]]},
            "endpoints": [{"port": "http", "path": "/metrics",
                           "interval": spec.get("monitoring", {}).get("interval", "30s")}],
        },
    }
