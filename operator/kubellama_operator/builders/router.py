"""The router in front of a LlamaServer's replicas (`spec.routing`): a Deployment running
`kubellama-router` from the server image, its Service, and a ServiceAccount whose Role may only
list and watch EndpointSlices in the namespace (to follow the ready replicas)."""

from __future__ import annotations

from typing import Any

from ..config import OperatorConfig
from ..api import LlamaServerSpec
from ..spec import SERVER_PORT
from .meta import LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME, LABEL_OWNER, Body, object_meta
from .statefulset import RUN_AS

ROUTER_COMPONENT = "router"
#: What the router's Role grants: nothing but following EndpointSlices.
ROUTER_RULES = [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]


def router_name(name: str) -> str:
    return f"{name}-router"


def wants_router(spec: LlamaServerSpec) -> bool:
    return spec.routing.enabled


def router_selector(name: str) -> dict[str, str]:
    """Router pods: never matched by the server's selector (app.kubernetes.io/name differs)."""
    return {LABEL_NAME: "kubellama-router", LABEL_INSTANCE: name, LABEL_OWNER: name}


def _meta(owner: Body, name: str) -> dict[str, Any]:
    meta = object_meta(owner, router_name(name))
    meta["labels"].update({**router_selector(name), LABEL_COMPONENT: ROUTER_COMPONENT})
    return meta


def wants_autoscaling(spec: LlamaServerSpec) -> bool:
    return spec.autoscaled


def router_scales(spec: LlamaServerSpec) -> bool:
    """Whether the router itself sets the replicas (driver router), rather than an HPA or KEDA."""
    return spec.autoscaled and spec.autoscaling.driver == "router"


def router_rules(name: str, spec: LlamaServerSpec) -> list[dict[str, Any]]:
    """The router Role's rules: EndpointSlices; when the router autoscales, this LlamaServer's scale too."""
    rules = [dict(r) for r in ROUTER_RULES]
    if router_scales(spec):
        rules.append({"apiGroups": ["kubellama.dev"], "resources": ["llamaservers/scale"], "resourceNames": [name],
                      "verbs": ["get", "patch"]})
    return rules


def build_router_rbac(owner: Body, spec: LlamaServerSpec) -> list[dict[str, Any]]:
    name = owner["metadata"]["name"]
    rname = router_name(name)
    rbac = "rbac.authorization.k8s.io/v1"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(owner, name),
         "automountServiceAccountToken": False},  # mounted by the router's pod only
        {"apiVersion": rbac, "kind": "Role", "metadata": _meta(owner, name), "rules": router_rules(name, spec)},
        {"apiVersion": rbac, "kind": "RoleBinding", "metadata": _meta(owner, name),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": rname},
         "subjects": [{"kind": "ServiceAccount", "name": rname, "namespace": owner["metadata"]["namespace"]}]},
    ]


def router_args(owner: Body, spec: LlamaServerSpec) -> list[str]:
    args = ["--service", owner["metadata"]["name"], "--namespace", owner["metadata"]["namespace"],
            "--strategy", spec.routing.strategy, "--port", str(SERVER_PORT)]
    if router_scales(spec):
        auto = spec.autoscaling
        args += ["--autoscale", owner["metadata"]["name"],
                 "--min-replicas", str(auto.min_replicas), "--max-replicas", str(auto.max_replicas),
                 "--target-requests", str(auto.target_requests),
                 "--autoscale-window", str(auto.window_seconds),
                 "--scale-down-delay", str(auto.scale_down_delay_seconds),
                 "--queue-timeout", str(auto.hold_seconds)]
    elif spec.autoscaled:  # an HPA or KEDA scales: the router still holds requests while replicas start
        args += ["--queue-timeout", str(spec.autoscaling.hold_seconds)]
    return args


def build_router_deployment(owner: Body, spec: LlamaServerSpec, config: OperatorConfig) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    probe = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 3}
    container = {
        "name": "router",
        # the server image carries kubellama-router (one distribution); the CPU image is enough even for GPU servers
        "image": spec.image or config.cpu_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["kubellama-router"],
        "args": router_args(owner, spec),
        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
        "readinessProbe": {**probe, "failureThreshold": 3},
        "livenessProbe": {**probe, "failureThreshold": 6},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    pod: dict[str, Any] = {
        "serviceAccountName": router_name(name),
        "automountServiceAccountToken": True,  # the API token: list/watch EndpointSlices, nothing else
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    }
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    meta = _meta(owner, name)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.routing.replicas,
            "selector": {"matchLabels": router_selector(name)},
            "revisionHistoryLimit": 5,
            "template": {"metadata": {"labels": dict(meta["labels"])}, "spec": pod},
        },
    }


def build_router_service(owner: Body, spec: LlamaServerSpec) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    svc = spec.service
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**_meta(owner, name), **({"annotations": dict(svc.annotations)} if svc.annotations
                                              else {})},
        "spec": {
            "type": svc.type,
            "selector": router_selector(name),
            "ports": [{"name": "http", "port": svc.port, "targetPort": "http",
                       "protocol": "TCP"}],
        },
    }


def build_router(owner: Body, spec: LlamaServerSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    """The router's objects, in the order they are applied (identity before the pods that use it)."""
    return [*build_router_rbac(owner, spec), build_router_service(owner, spec), build_router_deployment(owner, spec, config)]


def router_refs(name: str) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of every router object (to delete when routing is turned off)."""
    rname = router_name(name)
    return [("apps/v1", "Deployment", rname), ("v1", "Service", rname),
            ("rbac.authorization.k8s.io/v1", "RoleBinding", rname), ("rbac.authorization.k8s.io/v1", "Role", rname),
            ("v1", "ServiceAccount", rname)]


