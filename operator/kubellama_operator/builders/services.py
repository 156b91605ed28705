"""The client-facing Service (named after the LlamaServer) and the StatefulSet's headless Service."""

from __future__ import annotations

from typing import Any

from ..api import LlamaServerSpec
from ..spec import SERVER_PORT
from .meta import LABEL_SERVICE_ROLE, Body, headless_name, object_meta, selector_labels


def build_service(owner: Body, spec: LlamaServerSpec) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    svc = spec.service
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(owner, name, extra_labels={LABEL_SERVICE_ROLE: "api"},
                                annotations=svc.annotations or None),
        "spec": {
            "type": svc.type,
            "selector": selector_labels(name),
            "ports": [{"name": "http", "port": svc.port,
                       "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_headless_service(owner: Body) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(owner, headless_name(name), extra_labels={LABEL_SERVICE_ROLE: "headless"}),
        "spec": {
            "clusterIP": "None",
            # Stable DNS names for every pod, loaded or not (for debugging and slot tooling).
            "publishNotReadyAddresses": True,
            "selector": selector_labels(name),
            "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
