"""Objects the harness creates for tests: fake (kwok) nodes and volumes, and node readiness."""

from __future__ import annotations

from kcp_assets import GPU_PRODUCT_LABEL, GPU_RESOURCE, GPU_TAINT, KWOK_NODE_ANNOTATION


def hostpath_volume(name: str, path: str, size: str, label: str, path_type: str | None = None) -> dict:
    """A PersistentVolume on a hostPath of the node (no provisioner runs here), labelled `type: label`."""
    host_path = {"path": path, **({"type": path_type} if path_type else {})}
    return {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"type": label}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "standard",
            "hostPath": host_path,
        },
    }


def fake_volume(name: str, size: str = "1Ti") -> dict:
    """A PersistentVolume nothing backs: never touched (kwok's pods never mount it, and Retain
    means nothing deletes it)."""
    return hostpath_volume(name, f"/nonexistent/kubellama-kwok/{name}", size, "kwok")


def fake_node(name: str, cpu: str = "16", memory: str = "64Gi", pods: str = "110",
              gpus: int = 0, gpu_product: str = "NVIDIA-L4") -> dict:
    """A Node that kwok manages; GPU nodes carry the GPU capacity, product label and taint."""
    capacity = {"cpu": cpu, "memory": memory, "pods": pods, "ephemeral-storage": "500Gi"}
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "type": "kwok"}
    taints = []
    if gpus:
        capacity[GPU_RESOURCE] = str(gpus)
        labels.update({GPU_PRODUCT_LABEL: gpu_product, "nvidia.com/gpu.present": "true",
                       "nvidia.com/gpu.count": str(gpus)})
        taints.append(dict(GPU_TAINT))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"taints": taints},
        "status": {"capacity": capacity, "allocatable": dict(capacity),
                   "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                                "kubeletVersion": "fake", "kubeProxyVersion": "fake"}},
    }


def node_ready(node: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in node.get("status", {}).get("conditions", []))
