"""spec.autoscaling with driver hpa or keda: the object that scales the LlamaServer through its scale
subresource instead of the router, on the router's in-flight + queued requests (the router still holds
requests while replicas start)."""

from __future__ import annotations

from typing import Any

from .. import API_VERSION, KIND
from ..crd import HPA_METRIC
from ..spec import Spec
from .meta import Body, object_meta
from .router import wants_autoscaling

KEDA_API = "keda.sh/v1alpha1"
KEDA_PLURAL = "scaledobjects"
HPA_API = "autoscaling/v2"
#: The HPA's longest scale-down stabilization window (the API server refuses more).
MAX_STABILIZATION = 3600


def autoscaling_driver(spec: Spec) -> str | None:
    """router, hpa or keda; None without autoscaling."""
    return (spec.get("autoscaling") or {}).get("driver", "router") if wants_autoscaling(spec) else None


def _target(owner: Body) -> dict[str, str]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": owner["metadata"]["name"]}


def build_hpa(owner: Body, spec: Spec) -> dict[str, Any]:
    """An HPA on the Object metric HPA_METRIC of the LlamaServer (a metrics adapter must serve it): with an
    AverageValue target the HPA wants ceil(load / targetRequests) replicas, as the router would."""
    auto = spec["autoscaling"]
    name = owner["metadata"]["name"]
    return {
        "apiVersion": HPA_API, "kind": "HorizontalPodAutoscaler", "metadata": object_meta(owner, name),
        "spec": {
            "scaleTargetRef": _target(owner),
            "minReplicas": max(1, int(auto.get("minReplicas", 1))),
            "maxReplicas": int(auto.get("maxReplicas", 3)),
            "metrics": [{"type": "Object", "object": {
                "describedObject": _target(owner),
                "metric": {"name": HPA_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(int(auto.get("targetRequests", 4)))}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds":
                                       min(MAX_STABILIZATION, int(auto.get("scaleDownDelaySeconds", 120)))}},
        },
    }


def router_load_query(namespace: str, name: str) -> str:
    """PromQL: the router's queued + in-flight requests of one LlamaServer (0 without series)."""
    sel = f'{{namespace="{namespace}", llamaserver="{name}"}}'
    return (f"(sum(kubellama_router_queue_length{sel}) or vector(0)) + "
            f"(sum(kubellama_router_inflight_requests{sel}) or vector(0))")


def build_scaledobject(owner: Body, spec: Spec) -> dict[str, Any]:
    """A KEDA ScaledObject with a Prometheus trigger on the router's load: KEDA scales from zero itself
    (activation at any queued request) and the router holds the request meanwhile."""
    auto = spec["autoscaling"]
    meta = owner["metadata"]
    return {
        "apiVersion": KEDA_API, "kind": "ScaledObject", "metadata": object_meta(owner, meta["name"]),
        "spec": {
            "scaleTargetRef": _target(owner),
            "minReplicaCount": int(auto.get("minReplicas", 1)),
            "maxReplicaCount": int(auto.get("maxReplicas", 3)),
            "pollingInterval": 15,
            "cooldownPeriod": int(auto.get("scaleDownDelaySeconds", 120)),
            "triggers": [{"type": "prometheus", "metadata": {
                "serverAddress": auto["prometheusAddress"],
                "query": router_load_query(meta["namespace"], meta["name"]),
                "threshold": str(int(auto.get("targetRequests", 4))),
                "activationThreshold": "0",
            }}],
        },
    }


KEDA_MISSING = ("spec.autoscaling.driver keda: the cluster does not serve KEDA's ScaledObject CRD (keda.sh/v1alpha1); "
                "install KEDA, or use driver router or hpa")
