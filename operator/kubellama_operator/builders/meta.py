"""Names, labels and owner references shared by every child object."""

from __future__ import annotations

from typing import Any

from .. import API_VERSION, FIELD_MANAGER, KIND

Body = dict[str, Any]

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_OWNER = "kubellama.dev/llamaserver"
ANNOTATION_MODEL = "kubellama.dev/model"  # the served model, for the `model` label of scraped series
#: Tells the client-facing Service from the headless one (a ServiceMonitor selects one only).
LABEL_SERVICE_ROLE = "kubellama.dev/service-role"


def selector_labels(name: str) -> dict[str, str]:
    """The immutable label set that selects a LlamaServer's pods."""
    return {LABEL_NAME: "kubellama-server", LABEL_INSTANCE: name, LABEL_OWNER: name}


def labels(name: str) -> dict[str, str]:
    """Standard labels of every child."""
    return {**selector_labels(name), LABEL_MANAGED_BY: FIELD_MANAGER, LABEL_COMPONENT: "server"}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def owner_reference(owner: Body) -> dict[str, Any]:
    meta = owner["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta.get("uid", ""),
            "controller": True, "blockOwnerDeletion": True}


def object_meta(owner: Body, name: str, *, extra_labels: dict[str, str] | None = None,
                annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner["metadata"]["namespace"],
        "labels": {**labels(owner["metadata"]["name"]), **(extra_labels or {})},
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def headless_name(name: str) -> str:
    return f"{name}-headless"


def config_name(name: str) -> str:
    return f"{name}-config"
