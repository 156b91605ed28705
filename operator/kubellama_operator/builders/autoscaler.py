"""spec.autoscaling with driver hpa or keda: the object that scales the LlamaServer through its scale
subresource instead of the router, on the router's in-flight + queued requests (the router still holds
requests while replicas start)."""

from __future__ import annotations

from typing import Any

from .. import API_VERSION, KIND
from ..api.scaling import HPA_METRIC
from ..api import LlamaServerSpec
from .meta import Body, object_meta

KEDA_API = "keda.sh/v1alpha1"
KEDA_PLURAL = "scaledobjects"
HPA_API = "autoscaling/v2"
#: The HPA's longest scale-down stabilization window (the API server refuses more).
MAX_STABILIZATION = 3600


def autoscaling_driver(spec: LlamaServerSpec) -> str | None:
    """router, hpa or keda; None without autoscaling."""
    return spec.autoscaling.driver if spec.autoscaled else None


def _target(owner: Body) -> dict[str, str]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": owner["metadata"]["name"]}


def build_hpa(owner: Body, spec: LlamaServerSpec) -> dict[str, Any]:
    """An HPA on the Object metric HPA_METRIC of the LlamaServer (a metrics adapter must serve it): with an
    AverageValue target the HPA wants ceil(load / targetRequests) replicas, as the router would."""
    auto = spec.autoscaling
    name = owner["metadata"]["name"]
    return {
        "apiVersion": HPA_API, "kind": "HorizontalPodAutoscaler", "metadata": object_meta(owner, name),
        "spec": {
            "scaleTargetRef": _target(owner),
            "minReplicas": max(1, auto.min_replicas),
            "maxReplicas": auto.max_replicas,
            "metrics": [{"type": "Object", "object": {
                "describedObject": _target(owner),
                "metric": {"name": HPA_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(auto.target_requests)}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds":
                                       min(MAX_STABILIZATION, auto.scale_down_delay_seconds)}},
        },
    }


def router_load_query(namespace: str, name: str) -> str:
    """PromQL: the router's queued + in-flight requests of one LlamaServer (0 without series)."""
    sel = f'{{namespace="{namespace}", llamaserver="{name}"}}'
    return (f"(sum(kubellama_router_queue_length{sel}) or vector(0)) + "
            f"(sum(kubellama_router_inflight_requests{sel}) or vector(0))")


def build_scaledobject(owner: Body, spec: LlamaServerSpec) -> dict[str, Any]:
    """A KEDA ScaledObject with a Prometheus trigger on the router's load: KEDA scales from zero itself
    (activation at any queued request) and the router holds the request meanwhile."""
    auto = spec.autoscaling
    meta = owner["metadata"]
    return {
        "apiVersion": KEDA_API, "kind": "ScaledObject", "metadata": object_meta(owner, meta["name"]),
        "spec": {
            "scaleTargetRef": _target(owner),
            "minReplicaCount": auto.min_replicas,
            "maxReplicaCount": auto.max_replicas,
            "pollingInterval": 15,
            "cooldownPeriod": auto.scale_down_delay_seconds,
            "triggers": [{"type": "prometheus", "metadata": {
                "serverAddress": auto.prometheus_address,
                "query": router_load_query(meta["namespace"], meta["name"]),
                "threshold": str(auto.target_requests),
                "activationThreshold": "0",
            }}],
        },
    }


KEDA_MISSING = ("spec.autoscaling.driver keda: the cluster does not serve KEDA's ScaledObject CRD (keda.sh/v1alpha1); "
                "install KEDA, or use driver router or hpa")
