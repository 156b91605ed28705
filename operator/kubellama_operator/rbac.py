"""Every Kubernetes API permission the operator needs: the single source of truth.

The Helm chart's ClusterRole (or Role, when only some namespaces are watched) must grant
exactly these rules; its tests compare against `RULES`. They cover the operator's own calls
(`kube.py`) and kopf's: watching LlamaServers, patching their annotations and status, posting
core/v1 Events, discovering CRDs, and listing namespaces when it watches the whole cluster.
kopf's peering is turned off (the operator runs as a single replica), so no kopf.dev rules.
"""

from __future__ import annotations

from typing import Any

_RW = ["get", "list", "watch", "create", "patch", "update", "delete"]

RULES: list[dict[str, list[str]]] = [
    # The custom resource: watched by kopf; annotations (progress) and status patched.
    {"apiGroups": ["kubellama.dev"], "resources": ["llamaservers"],
     "verbs": ["get", "list", "watch", "patch", "update"]},
    {"apiGroups": ["kubellama.dev"], "resources": ["llamaservers/status"],
     "verbs": ["get", "patch", "update"]},
    # Children, applied server-side and deleted when no longer wanted.
    {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": list(_RW)},
    {"apiGroups": [""], "resources": ["services", "configmaps"], "verbs": list(_RW)},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": list(_RW)},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": list(_RW)},
    {"apiGroups": ["monitoring.coreos.com"], "resources": ["servicemonitors"], "verbs": list(_RW)},
    # spec.routing: the router's Deployment, its identity, and the Role it gets (list/watch EndpointSlices,
    # which the operator must hold itself to grant: Kubernetes forbids granting more than one has).
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": list(_RW)},
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": list(_RW)},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": list(_RW)},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    # spec.autoscaling: the router's Role may read and set its LlamaServer's scale (granted, so held).
    {"apiGroups": ["kubellama.dev"], "resources": ["llamaservers/scale"], "verbs": ["get", "patch"]},
    # spec.autoscaling.driver hpa or keda: the HorizontalPodAutoscaler or KEDA ScaledObject that scales the LlamaServer.
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": list(_RW)},
    {"apiGroups": ["keda.sh"], "resources": ["scaledobjects"], "verbs": list(_RW)},
    # The InferencePool selecting a LlamaServer's pods, when the Gateway API Inference Extension CRD is installed.
    {"apiGroups": ["inference.networking.k8s.io"], "resources": ["inferencepools"], "verbs": list(_RW)},
    # Read-only: pods for status (init-container failures, missing Secrets), claims the spec names.
    # No Secrets: a missing one is seen in the pods' status (CreateContainerConfigError).
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    # The fetch init container's log: download progress in the status message.
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    # spec.model.cache: the download Jobs that fill a shared cache, and the claim of mode shared (created once).
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": list(_RW)},
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "create", "patch"]},
    # Kubernetes Events about LlamaServers (kopf's poster and ours).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    # kopf: resource discovery through CRDs, and namespaces when watching cluster-wide.
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
]


def cluster_role(name: str = "kubellama-operator") -> dict[str, Any]:
    """The ClusterRole granting `RULES` (what `kubectl apply` would take)."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name}, "rules": [dict(r) for r in RULES]}


def allows(group: str, resource: str, verb: str) -> bool:
    """Whether `RULES` grant `verb` on `group`/`resource` (subresources as "pods/status")."""
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               for r in RULES)
