"""The test control plane behaves like a cluster: scheduling, controllers, GC, CEL, RBAC."""

from __future__ import annotations

import kubellama_controlplane as kcp
import pytest
import yaml

kcp.skip_module_if_unavailable()

PAUSE = "registry.k8s.io/pause:3.10"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def pods(kube: kcp.Kube, namespace: str, **labels: str) -> list[dict]:
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    return kube.list("v1", "Pod", namespace, labelSelector=selector)


def running_ready(pod: dict) -> bool:
    status = pod.get("status", {})
    return status.get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def pod_template(app: str, resources: dict | None = None, tolerations: list | None = None) -> dict:
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {
            "containers": [{"name": "main", "image": PAUSE, "resources": resources or {}}],
            "tolerations": tolerations or [],
        },
    }


def test_fake_nodes_are_ready_with_gpu_capacity_label_and_taint(control_plane, kube):
    nodes = kube.list("v1", "Node")
    assert all(kcp.node_ready(n) for n in nodes)
    gpu = [n for n in nodes if kcp.GPU_RESOURCE in n["status"]["allocatable"]]
    cpu = [n for n in nodes if kcp.GPU_RESOURCE not in n["status"]["allocatable"]]
    assert sorted(n["metadata"]["name"] for n in gpu) == sorted(control_plane.gpu_nodes)
    assert sorted(n["metadata"]["name"] for n in cpu) == sorted(control_plane.cpu_nodes)
    for node in gpu:
        assert node["status"]["allocatable"][kcp.GPU_RESOURCE] == "1"
        assert node["metadata"]["labels"][kcp.GPU_PRODUCT_LABEL] == "NVIDIA-L4"
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node["spec"]["taints"]
    assert not any(t["key"] == "nvidia.com/gpu" for n in cpu for t in n["spec"].get("taints") or [])


def test_deployment_pods_are_scheduled_and_run_on_cpu_nodes(control_plane, kube, namespace):
    kube.apply({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": pod_template("web")},
    })

    def three_ready():
        ready = [p for p in pods(kube, namespace, app="web") if running_ready(p)]
        return ready if len(ready) == 3 else None

    ready = kube.wait_for(three_ready, "3 Running/Ready pods of Deployment web")
    # The GPU taint keeps pods without the toleration off the GPU nodes.
    assert {p["spec"]["nodeName"] for p in ready} <= set(control_plane.cpu_nodes)
    kube.wait_for(lambda: kube.read("apps/v1", "Deployment", "web", namespace)["status"].get("readyReplicas") == 3,
                  "Deployment web status.readyReplicas == 3")


def test_gpu_pods_land_only_on_gpu_nodes_and_pend_when_none_is_free(control_plane, kube, namespace):
    gpus = len(control_plane.gpu_nodes)
    kube.apply({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "gpu", "namespace": namespace},
        "spec": {
            "replicas": gpus + 1, "serviceName": "gpu", "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "gpu"}},
            "template": pod_template("gpu", {"limits": {"nvidia.com/gpu": "1"}}, [GPU_TOLERATION]),
        },
    })

    def settled():
        current = pods(kube, namespace, app="gpu")
        running = [p for p in current if running_ready(p)]
        pending = [p for p in current if any(c["type"] == "PodScheduled" and c["status"] == "False"
                                             for c in p["status"].get("conditions", []))]
        return (running, pending) if len(running) == gpus and len(pending) == 1 else None

    running, pending = kube.wait_for(settled, f"{gpus} GPU pods Running and 1 Pending")
    assert {p["spec"]["nodeName"] for p in running} == set(control_plane.gpu_nodes)
    cond = next(c for c in pending[0]["status"]["conditions"] if c["type"] == "PodScheduled")
    assert cond["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["message"]


def test_statefulset_claims_bind_and_pods_run(kube, namespace):
    kube.apply({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": namespace},
        "spec": {
            "replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {**pod_template("db"), "spec": {**pod_template("db")["spec"], "containers": [
                {"name": "main", "image": PAUSE, "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    })
    kube.wait_for(lambda: sum(running_ready(p) for p in pods(kube, namespace, app="db")) == 2,
                  "2 Running/Ready pods of StatefulSet db (ordered start, claims bound)")
    claims = kube.list("v1", "PersistentVolumeClaim", namespace)
    assert sorted(c["metadata"]["name"] for c in claims) == ["data-db-0", "data-db-1"]
    assert all(c["status"]["phase"] == "Bound" for c in claims)


def test_garbage_collector_deletes_owned_objects(kube, namespace):
    owner = kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "owner", "namespace": namespace}})
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "child", "namespace": namespace,
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                             "uid": owner["metadata"]["uid"]}]}})
    kube.apply({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "gc", "namespace": namespace},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "gc"}}, "template": pod_template("gc")},
    })
    kube.wait_for(lambda: pods(kube, namespace, app="gc"), "the pod of Deployment gc")

    kube.remove("v1", "ConfigMap", "owner", namespace)
    kube.remove("apps/v1", "Deployment", "gc", namespace)  # background propagation
    kube.wait_for(lambda: kube.read("v1", "ConfigMap", "child", namespace) is None,
                  "the garbage collector to delete the owned ConfigMap")
    kube.wait_for(lambda: not kube.list("apps/v1", "ReplicaSet", namespace) and not pods(kube, namespace, app="gc"),
                  "the garbage collector to delete the Deployment's ReplicaSet and pod")


CEL_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.kubellama.dev"},
    "spec": {
        "group": "test.kubellama.dev", "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"spec": {
                "type": "object",
                "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                "x-kubernetes-validations": [{"rule": "self.min <= self.max",
                                              "message": "spec.min must not exceed spec.max"}],
            }},
        }}}],
    },
}


def test_crd_with_cel_validation_rejects_bad_objects(kube, namespace):
    kube.apply_crd(CEL_CRD)
    try:
        widget = {"apiVersion": "test.kubellama.dev/v1", "kind": "Widget",
                  "metadata": {"name": "w", "namespace": namespace}}
        with pytest.raises(kcp.ApiError) as err:
            kube.create({**widget, "spec": {"min": 5, "max": 1}})
        assert err.value.status == 422
        assert "spec.min must not exceed spec.max" in err.value.message
        assert kube.create({**widget, "spec": {"min": 1, "max": 5}})["spec"] == {"min": 1, "max": 5}
    finally:
        kube.remove("apiextensions.k8s.io/v1", "CustomResourceDefinition", "widgets.test.kubellama.dev")


def test_rbac_denies_and_the_audit_log_records_it(control_plane, kube, namespace, tmp_path):
    kube.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody", "namespace": namespace}})
    config = control_plane.service_account_kubeconfig(namespace, "nobody", tmp_path / "nobody.kubeconfig")
    token = yaml.safe_load(config.read_text())["users"][0]["user"]["token"]
    with control_plane.client(token) as client:
        with pytest.raises(kcp.ApiError) as err:
            client.list("v1", "Pod", namespace)
        assert err.value.status == 403
    user = f"system:serviceaccount:{namespace}:nobody"
    kube.wait_for(lambda: f"list /api/v1/namespaces/{namespace}/pods" in control_plane.forbidden_requests(user),
                  "the audit log to record the refused request")
