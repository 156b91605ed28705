"""A Gateway API Inference Extension `InferencePool` (inference.networking.k8s.io/v1) selecting the
LlamaServer's server pods, for clusters that route through an inference gateway: written only when
the cluster serves the InferencePool CRD (and `spec.inferencePool.enabled`, the default)."""

from __future__ import annotations

from typing import Any

from ..api import LlamaServerSpec
from ..spec import SERVER_PORT
from .meta import Body, object_meta, selector_labels

INFERENCEPOOL_API = "inference.networking.k8s.io/v1"
INFERENCEPOOL_PLURAL = "inferencepools"


def wants_inferencepool(spec: LlamaServerSpec, crd_installed: bool) -> bool:
    return crd_installed and spec.inference_pool.enabled


def build_inferencepool(owner: Body, spec: LlamaServerSpec) -> dict[str, Any]:
    """The pool: the server pods (never the router's) on the server port. `endpointPickerRef` only when
    the spec names a picker: it is optional in the v1 schema since v1.5 (most gateways still need one)."""
    name = owner["metadata"]["name"]
    pool_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(name)},
        "targetPorts": [{"number": SERVER_PORT}],
        "appProtocol": "http",
    }
    picker = spec.inference_pool.endpoint_picker_ref
    if picker is not None:
        pool_spec["endpointPickerRef"] = {
            "group": "", "kind": "Service", "name": picker.name, "port": {"number": picker.port},
            "failureMode": picker.failure_mode}
    return {"apiVersion": INFERENCEPOOL_API, "kind": "InferencePool", "metadata": object_meta(owner, name),
            "spec": pool_spec}
