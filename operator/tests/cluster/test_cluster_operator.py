"""The real kopf operator against a real control plane, with exactly the chart's RBAC.

The chart is rendered with `helm template`; its ServiceAccount, ClusterRole(s) and bindings are
applied, and `kubellama-operator` runs as a local process with that ServiceAccount's token and
the Deployment's own arguments. kwok plays the nodes, so pods go Running/Ready without
containers. Every request the operator makes is in the API server's audit log: a request RBAC
refused fails the test during which it happened.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import kubellama_controlplane as kcp
import pytest
import yaml
import upstream_crds
from kubellama_server.promtext import read_samples
from chart_operator import rbac_is_exactly_enough  # noqa: F401 - autouse: no request RBAC refused
from chart_operator import (LLAMA_API, chart_operator, llama,
                            server_pods, wait_phase)

kcp.skip_module_if_unavailable()

REPO = Path(__file__).resolve().parents[3]

# A minimal stand-in for the Prometheus Operator's CRD: enough for the API server to serve
# ServiceMonitors, so the operator's "create one when the CRD is installed" path runs.
SERVICEMONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com", "scope": "Namespaced",
        "names": {"plural": "servicemonitors", "singular": "servicemonitor", "kind": "ServiceMonitor",
                  "listKind": "ServiceMonitorList"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        }}}],
    },
}


@pytest.fixture(scope="module")
def operator(control_plane: kcp.ControlPlane, kube: kcp.Kube, helm, llama_crd, tmp_path_factory):
    """kubellama-operator watching all namespaces, as the chart's ServiceAccount with its RBAC."""
    kube.apply_crd(SERVICEMONITOR_CRD)
    for upstream in (upstream_crds.INFERENCEPOOL, upstream_crds.SCALEDOBJECT):
        crd = upstream_crds.load(upstream)  # when the Go module proxy can be reached
        if isinstance(crd, dict):
            kube.apply_crd({k: v for k, v in crd.items() if k != "status"})
    with chart_operator(control_plane, kube, helm, tmp_path_factory.mktemp("operator"), "kl") as running:
        yield running


def test_llamaserver_gets_children_and_goes_ready(kube, operator, namespace):
    created = kube.create(llama("chat", namespace, monitoring={"serviceMonitor": True}))
    status = wait_phase(kube, operator, "chat", namespace, "Ready", readyReplicas=1)
    assert status["endpoint"] == f"http://chat.{namespace}.svc:8080/v1"
    assert status["ready"] == "1/1"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Available"] == "True"

    sts = kube.read("apps/v1", "StatefulSet", "chat", namespace)
    svc = kube.read("v1", "Service", "chat", namespace)
    sm = kube.read("monitoring.coreos.com/v1", "ServiceMonitor", "chat", namespace)
    policy = kube.read("networking.k8s.io/v1", "NetworkPolicy", "chat", namespace)
    assert policy["spec"]["podSelector"]["matchLabels"]["kubellama.dev/llamaserver"] == "chat"
    for child in (sts, svc, sm, policy):
        assert child is not None
        meta = child["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubellama-operator"
        assert meta["labels"]["kubellama.dev/llamaserver"] == "chat"
        [ref] = meta["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref.get("controller")) == ("LlamaServer", created["metadata"]["uid"], True)
    assert [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])], \
        "the StatefulSet has no volume claim templates for the model cache"
    assert any(p["name"] == "http" for p in svc["spec"]["ports"])
    # Children are applied server-side, under the operator's field manager.
    assert any(m["manager"] == "kubellama-operator" and m["operation"] == "Apply"
               for m in sts["metadata"]["managedFields"])
    # The claims bound, and the pod (kwok) runs on a CPU node.
    [pod] = server_pods(kube, "chat", namespace)
    assert not pod["spec"]["nodeName"].startswith("kwok-gpu")
    claims = kube.list("v1", "PersistentVolumeClaim", namespace)
    assert claims and all(c["status"]["phase"] == "Bound" for c in claims)


def test_gpu_pods_only_on_gpu_nodes_and_pending_with_a_reason_when_none_is_free(
        control_plane, kube, operator, namespace):
    gpus = len(control_plane.gpu_nodes)
    kube.create(llama("big", namespace, replicas=gpus, gpu={"count": 1, "product": "NVIDIA-L4"}))
    wait_phase(kube, operator, "big", namespace, "Ready", readyReplicas=gpus)
    assert sorted(p["spec"]["nodeName"] for p in server_pods(kube, "big", namespace)) == sorted(control_plane.gpu_nodes)

    kube.create(llama("late", namespace, gpu={"count": 1}))
    status = wait_phase(kube, operator, "late", namespace, "Pending", timeout=60, message_has="Unschedulable")
    assert "Insufficient nvidia.com/gpu" in status["message"], status
    [pod] = server_pods(kube, "late", namespace)
    assert not pod["spec"].get("nodeName")

    # Freeing a GPU lets the pending server start.
    kube.patch(kube.path(LLAMA_API, "LlamaServer", namespace, "big") + "/scale",
               {"spec": {"replicas": gpus - 1}})
    wait_phase(kube, operator, "late", namespace, "Ready", timeout=90, readyReplicas=1)


def test_kubectl_scale_changes_replicas(kube, kubectl, operator, namespace):
    kube.create(llama("scaled", namespace))
    wait_phase(kube, operator, "scaled", namespace, "Ready", readyReplicas=1)
    kubectl("scale", "llamaserver/scaled", "--replicas=3", "-n", namespace)
    wait_phase(kube, operator, "scaled", namespace, "Ready", readyReplicas=3, ready="3/3")
    assert kube.read("apps/v1", "StatefulSet", "scaled", namespace)["spec"]["replicas"] == 3
    assert len(server_pods(kube, "scaled", namespace)) == 3
    # More than one replica: a PodDisruptionBudget keeps all but one up during drains.
    assert kube.read("policy/v1", "PodDisruptionBudget", "scaled", namespace)["spec"]["maxUnavailable"] == 1
    kubectl("scale", "llama/scaled", "--replicas=0", "-n", namespace)
    kube.wait_for(lambda: not server_pods(kube, "scaled", namespace), "the pods to go at replicas 0")
    wait_phase(kube, operator, "scaled", namespace, "Ready", readyReplicas=0)
    kube.wait_for(lambda: kube.read("policy/v1", "PodDisruptionBudget", "scaled", namespace) is None,
                  "the operator to delete the PodDisruptionBudget it no longer wants")


def test_a_horizontal_pod_autoscaler_scales_it_through_the_scale_subresource(kube, operator, namespace):
    """The controller-manager's HPA controller reads and writes the LlamaServer's scale
    subresource (replicas and label selector); the operator follows. No metrics API runs
    here, so the HPA moves replicas only up to its minReplicas, which needs no metrics."""
    kube.create(llama("auto", namespace))
    wait_phase(kube, operator, "auto", namespace, "Ready", readyReplicas=1)
    kube.create({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "auto", "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": LLAMA_API, "kind": "LlamaServer", "name": "auto"},
            "minReplicas": 2, "maxReplicas": 4,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": "llamacpp:requests_processing"},
                "target": {"type": "AverageValue", "averageValue": "2"}}}],
        },
    })
    wait_phase(kube, operator, "auto", namespace, "Ready", timeout=90, readyReplicas=2, ready="2/2")
    assert kube.read(LLAMA_API, "LlamaServer", "auto", namespace)["spec"]["replicas"] == 2
    assert kube.read("apps/v1", "StatefulSet", "auto", namespace)["spec"]["replicas"] == 2
    hpa = kube.read("autoscaling/v2", "HorizontalPodAutoscaler", "auto", namespace)
    able = {c["type"]: c for c in hpa["status"]["conditions"]}["AbleToScale"]
    assert able["status"] == "True", able


def test_inferencepool_is_written_and_admitted_by_the_upstream_crd(kube, operator, namespace):
    """With the upstream InferencePool CRD installed (its schema and CEL rules enforced by the API server), the
    operator writes a pool of the server pods, and deletes it when spec.inferencePool.enabled goes false."""
    upstream_crds.crd_or_skip(upstream_crds.INFERENCEPOOL)  # skips without it
    kube.create(llama("pooled", namespace, inferencePool={"endpointPickerRef": {"name": "epp", "port": 9002}}))
    wait_phase(kube, operator, "pooled", namespace, "Ready", readyReplicas=1)
    api = "inference.networking.k8s.io/v1"
    pool = kube.wait_for(lambda: kube.read(api, "InferencePool", "pooled", namespace), "the InferencePool")
    assert pool["spec"]["targetPorts"] == [{"number": 8080}]
    assert pool["spec"]["endpointPickerRef"]["port"] == {"number": 9002}
    assert pool["metadata"]["ownerReferences"][0]["kind"] == "LlamaServer"
    kube.patch(kube.path(LLAMA_API, "LlamaServer", namespace, "pooled"), {"spec": {"inferencePool": {"enabled": False}}})
    kube.wait_for(lambda: kube.read(api, "InferencePool", "pooled", namespace) is None, "the pool to go", timeout=60)


@pytest.mark.parametrize("driver", ["hpa", "keda"])
def test_hpa_or_keda_scaledobject_is_admitted(kube, operator, namespace, driver):
    """spec.autoscaling.driver hpa|keda: the API server (and, for KEDA, the upstream ScaledObject CRD's schema)
    accepts what the operator writes; the router does not scale itself."""
    if driver == "keda":
        upstream_crds.crd_or_skip(upstream_crds.SCALEDOBJECT)
    name = f"scaled-{driver}"
    kube.create(llama(name, namespace, routing={"enabled": True}, autoscaling={
        "enabled": True, "driver": driver, "minReplicas": 1, "maxReplicas": 3,
        "prometheusAddress": "http://prometheus.monitoring.svc:9090"}))
    wait_phase(kube, operator, name, namespace, "Ready", readyReplicas=1)
    api, kind = {"hpa": ("autoscaling/v2", "HorizontalPodAutoscaler"), "keda": ("keda.sh/v1alpha1", "ScaledObject")}[driver]
    obj = kube.wait_for(lambda: kube.read(api, kind, name, namespace), f"the {kind}")
    assert obj["spec"]["scaleTargetRef"] == {"apiVersion": LLAMA_API, "kind": "LlamaServer", "name": name}
    status = kube.read(LLAMA_API, "LlamaServer", name, namespace)["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Autoscaling"] == "True"
    role = kube.read("rbac.authorization.k8s.io/v1", "Role", f"{name}-router", namespace)
    assert [r["resources"] for r in role["rules"]] == [["endpointslices"]]


def test_spec_change_rolls_the_statefulset(kube, operator, namespace):
    kube.create(llama("roll", namespace, server={"contextSize": 2048}))
    wait_phase(kube, operator, "roll", namespace, "Ready", readyReplicas=1)
    before = kube.read("apps/v1", "StatefulSet", "roll", namespace)
    [old_pod] = server_pods(kube, "roll", namespace)

    kube.patch(kube.path(LLAMA_API, "LlamaServer", namespace, "roll"), {"spec": {"server": {"contextSize": 4096}}})

    def rolled():
        sts = kube.read("apps/v1", "StatefulSet", "roll", namespace)
        pods = server_pods(kube, "roll", namespace)
        st = sts.get("status", {})
        return (sts if sts["metadata"]["generation"] > before["metadata"]["generation"]
                and st.get("updateRevision") == st.get("currentRevision")
                and st.get("updatedReplicas") == 1 and len(pods) == 1
                and pods[0]["metadata"]["uid"] != old_pod["metadata"]["uid"] else None)

    after = kube.wait_for(rolled, "the StatefulSet to roll out a new pod", timeout=90)
    container = next(c for c in after["spec"]["template"]["spec"]["containers"] if c["name"] == "server")
    command = " ".join(container.get("command", []) + container.get("args", []))
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert "4096" in command or env.get("LLAMA_ARG_CTX_SIZE") == "4096", (command, env)
    wait_phase(kube, operator, "roll", namespace, "Ready", readyReplicas=1)


@pytest.mark.parametrize("kind, api_version, name", [
    ("StatefulSet", "apps/v1", "restore"),
    ("Service", "v1", "restore"),
    ("NetworkPolicy", "networking.k8s.io/v1", "restore"),
])
def test_deleted_child_is_restored(kube, operator, namespace, kind, api_version, name):
    kube.create(llama("restore", namespace))
    wait_phase(kube, operator, "restore", namespace, "Ready", readyReplicas=1)
    old = kube.read(api_version, kind, name, namespace)
    kube.remove(api_version, kind, name, namespace)
    kube.wait_for(lambda: (kube.read(api_version, kind, name, namespace) or old)["metadata"]["uid"]
                  != old["metadata"]["uid"], f"the operator to re-create {kind} {name}", timeout=60)
    wait_phase(kube, operator, "restore", namespace, "Ready", readyReplicas=1)


DRIFT_CHILDREN = {  # spec of the LlamaServer, the child, an edit of the child's spec and how to see it reverted
    "hpa": ({"routing": {"enabled": True}, "autoscaling": {"enabled": True, "driver": "hpa", "maxReplicas": 3}},
            "autoscaling/v2", "HorizontalPodAutoscaler", "", {"spec": {"maxReplicas": 9}},
            lambda o: o["spec"]["maxReplicas"] == 3),
    "keda": ({"routing": {"enabled": True}, "autoscaling": {
        "enabled": True, "driver": "keda", "maxReplicas": 3, "prometheusAddress": "http://prometheus.monitoring:9090"}},
        "keda.sh/v1alpha1", "ScaledObject", "", {"spec": {"maxReplicaCount": 9}},
        lambda o: o["spec"]["maxReplicaCount"] == 3),
    "inferencepool": ({"inferencePool": {"endpointPickerRef": {"name": "epp", "port": 9002}}},
                      "inference.networking.k8s.io/v1", "InferencePool", "", {"spec": {"targetPorts": [{"number": 9}]}},
                      lambda o: o["spec"]["targetPorts"] == [{"number": 8080}]),
    "router": ({"routing": {"enabled": True}}, "apps/v1", "Deployment", "-router", {"spec": {"replicas": 3}},
               lambda o: o["spec"]["replicas"] == 1),
}


@pytest.mark.parametrize("case", list(DRIFT_CHILDREN))
def test_edited_or_deleted_router_and_autoscaler_children_are_restored(kube, operator, namespace, case):
    """The operator follows its HPA, ScaledObject, InferencePool and router Deployment: an edit of
    one's spec is reverted and a deleted one re-created (each reported with a Warning event) before
    the periodic resync (60 s) would; their status updates start no pass (`SpecChanges`)."""
    spec, api, kind, suffix, edit, reverted = DRIFT_CHILDREN[case]
    if case == "keda":
        upstream_crds.crd_or_skip(upstream_crds.SCALEDOBJECT)
    if case == "inferencepool":
        upstream_crds.crd_or_skip(upstream_crds.INFERENCEPOOL)
    name = f"drift-{case}"
    kube.create(llama(name, namespace, **spec))
    wait_phase(kube, operator, name, namespace, "Ready", readyReplicas=1)
    child = name + suffix
    old = kube.wait_for(lambda: kube.read(api, kind, child, namespace), f"the {kind}")
    kube.patch(kube.path(api, kind, namespace, child), edit)
    kube.wait_for(lambda: reverted(kube.read(api, kind, child, namespace)), f"the edit of the {kind} reverted",
                  timeout=30)
    kube.remove(api, kind, child, namespace)
    kube.wait_for(lambda: (kube.read(api, kind, child, namespace) or old)["metadata"]["uid"] != old["metadata"]["uid"],
                  f"the operator to re-create the {kind}", timeout=30)

    def reported():
        events = kube.list("v1", "Event", namespace)
        reasons = {e["reason"] for e in events if e["involvedObject"].get("name") == name
                   and f"{kind}/{child}" in e.get("message", "")}
        return {"Reverted", "Restored"} <= reasons

    kube.wait_for(reported, "Reverted and Restored events", timeout=30)


def test_deleting_the_llamaserver_garbage_collects_its_children(kube, operator, namespace):
    kube.create(llama("gone", namespace, monitoring={"serviceMonitor": True}))
    wait_phase(kube, operator, "gone", namespace, "Ready", readyReplicas=1)
    children = [("apps/v1", "StatefulSet", "gone"), ("v1", "Service", "gone"),
                ("monitoring.coreos.com/v1", "ServiceMonitor", "gone")]
    assert all(kube.read(*c[:2], c[2], namespace) for c in children)

    kube.remove(LLAMA_API, "LlamaServer", "gone", namespace)
    kube.wait_for(lambda: kube.read(LLAMA_API, "LlamaServer", "gone", namespace) is None,
                  "the LlamaServer to be deleted (no finalizer may block it)", timeout=30)
    kube.wait_for(lambda: not any(kube.read(*c[:2], c[2], namespace) for c in children)
                  and not server_pods(kube, "gone", namespace),
                  "the garbage collector to delete the StatefulSet, Service, ServiceMonitor and pods")
    managed = [o for kind in (("v1", "Service"), ("v1", "ConfigMap"), ("apps/v1", "StatefulSet"))
               for o in kube.list(*kind, namespace, labelSelector="kubellama.dev/llamaserver=gone")]
    assert not managed, [o["metadata"]["name"] for o in managed]


def test_operator_metrics_report_the_phase(kube, operator, namespace):
    kube.create(llama("metered", namespace))
    wait_phase(kube, operator, "metered", namespace, "Ready", readyReplicas=1)
    text = httpx.get(f"{operator.metrics_url}/metrics", timeout=5).text
    assert "kubellama_operator_" in text
    assert any(line.startswith("kubellama_operator_") and "metered" in line for line in text.splitlines()), \
        "no kubellama_operator_* series names the LlamaServer"


EXAMPLES = sorted((REPO / "crds" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_crd_examples_run(control_plane, kube, operator, namespace, example):
    """Each documented example, applied as it is, ends Ready on the fake cluster."""
    # What a GPU cluster has (the NVIDIA GPU Operator installs this RuntimeClass).
    kube.apply({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                "metadata": {"name": "nvidia"}, "handler": "nvidia"})
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    for doc in docs:
        kube.create(doc, namespace=namespace)
    for server in (d for d in docs if d["kind"] == "LlamaServer"):
        name, replicas = server["metadata"]["name"], server["spec"].get("replicas", 1)
        wait_phase(kube, operator, name, namespace, "Ready", timeout=90, readyReplicas=replicas)
        nodes = {p["spec"]["nodeName"] for p in server_pods(kube, name, namespace)}
        gpu = server["spec"].get("gpu", {}).get("count", 0) > 0
        assert nodes <= set(control_plane.gpu_nodes if gpu else control_plane.cpu_nodes), nodes


def test_failing_model_download_is_reported(kube, operator, namespace):
    """kwok plays a fetch init container in CrashLoopBackOff with kubellama-fetch's 404 exit code."""
    from kubellama_operator.status import FETCH_CONTAINER

    message = "not found (HTTP 404): http://models.invalid/models/tiny-q4_0.gguf; check spec.model.url"
    kube.create(llama("broken", namespace,
                      podLabels={"kwok.kubellama.dev/init-fails": "true"},
                      podAnnotations={"kwok.kubellama.dev/init-container": FETCH_CONTAINER,
                                      "kwok.kubellama.dev/exit-code": "3",
                                      "kwok.kubellama.dev/message": message}))
    status = wait_phase(kube, operator, "broken", namespace, "Failed", message_has="model download failed")
    assert message in status["message"]
    model_ready = next(c for c in status["conditions"] if c["type"] == "ModelReady")
    assert (model_ready["status"], model_ready["reason"]) == ("False", "ModelNotFound")
    # What the "model download failing" alert sees.
    page = httpx.get(f"{operator.metrics_url}/metrics", timeout=5).content
    series = [s.value for s in read_samples(page, ("kubellama_operator_llamaserver_phase",))
              if s.labels.get("name") == "broken" and s.labels.get("namespace") == namespace
              and s.labels.get("phase") == "Failed"]
    assert series == [1.0], series


MMPROJ = {"url": "http://models.invalid/models/mmproj-tiny-f16.gguf"}


def test_multimodal_llamaserver_goes_ready(kube, operator, namespace):
    kube.create(llama("vision", namespace, model={"url": "http://models.invalid/models/tiny-q4_0.gguf",
                                                  "mmproj": {**MMPROJ, "offload": False}}))
    status = wait_phase(kube, operator, "vision", namespace, "Ready", readyReplicas=1)
    assert status["model"]["mmproj"] == "mmproj-tiny-f16.gguf"
    model_ready = next(c for c in status["conditions"] if c["type"] == "ModelReady")
    assert model_ready["status"] == "True" and "projector /models/mmproj/mmproj-tiny-f16.gguf" in model_ready["message"]
    pod = kube.read("apps/v1", "StatefulSet", "vision", namespace)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model", "fetch-mmproj"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--mmproj") + 1] == "/models/mmproj/mmproj-tiny-f16.gguf" and "--no-mmproj-offload" in args


def test_failing_projector_download_is_reported(kube, operator, namespace):
    """kwok plays fetch-mmproj in CrashLoopBackOff (fetch-model completed) with kubellama-fetch's 401 exit code."""
    message = "kubellama-fetch: error: 401 Unauthorized: http://models.invalid/models/mmproj-tiny-f16.gguf"
    kube.create(llama("blind", namespace, model={"url": "http://models.invalid/models/tiny-q4_0.gguf", "mmproj": MMPROJ},
                      podLabels={"kwok.kubellama.dev/init-fails": "true"},
                      podAnnotations={"kwok.kubellama.dev/init-container": "fetch-mmproj",
                                      "kwok.kubellama.dev/exit-code": "4",
                                      "kwok.kubellama.dev/message": message}))
    status = wait_phase(kube, operator, "blind", namespace, "Failed",
                        message_has="multimodal projector download failed")
    assert status["message"] == f"multimodal projector download failed: {message}"
    model_ready = next(c for c in status["conditions"] if c["type"] == "ModelReady")
    assert (model_ready["status"], model_ready["reason"]) == ("False", "Unauthorized")


LORAS = [{"name": "sql", "url": "http://models.invalid/loras/sql/adapter-f16.gguf"},
         {"name": "support", "url": "http://models.invalid/loras/support/adapter-f16.gguf"}]


def test_lora_llamaserver_goes_ready(kube, operator, namespace):
    kube.create(llama("tuned", namespace, model={"url": "http://models.invalid/models/tiny-q4_0.gguf", "loras": LORAS}))
    status = wait_phase(kube, operator, "tuned", namespace, "Ready", readyReplicas=1)
    assert status["model"]["loras"] == [{"id": 0, "name": "sql", "file": "adapter-f16.gguf"},
                                        {"id": 1, "name": "support", "file": "adapter-f16.gguf"}]
    model_ready = next(c for c in status["conditions"] if c["type"] == "ModelReady")
    assert model_ready["status"] == "True" and \
        "LoRA adapters /models/lora/0/adapter-f16.gguf, /models/lora/1/adapter-f16.gguf" in model_ready["message"]
    pod = kube.read("apps/v1", "StatefulSet", "tuned", namespace)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model", "fetch-lora-0", "fetch-lora-1"]
    args = pod["containers"][0]["args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--lora"] == [
        "/models/lora/0/adapter-f16.gguf", "/models/lora/1/adapter-f16.gguf"]


def test_failing_adapter_download_is_reported(kube, operator, namespace):
    """kwok plays fetch-lora-1 in CrashLoopBackOff (the model and adapter 0 fetched) with a 404 exit code."""
    message = "not found (HTTP 404): http://models.invalid/loras/support/adapter-f16.gguf"
    kube.create(llama("mistuned", namespace, model={"url": "http://models.invalid/models/tiny-q4_0.gguf", "loras": LORAS},
                      podLabels={"kwok.kubellama.dev/init-fails": "true"},
                      podAnnotations={"kwok.kubellama.dev/init-container": "fetch-lora-1",
                                      "kwok.kubellama.dev/exit-code": "3",
                                      "kwok.kubellama.dev/message": message}))
    status = wait_phase(kube, operator, "mistuned", namespace, "Failed",
                        message_has="LoRA adapter 1 (support) download failed")
    assert status["message"] == f"LoRA adapter 1 (support) download failed: {message}"
    model_ready = next(c for c in status["conditions"] if c["type"] == "ModelReady")
    assert (model_ready["status"], model_ready["reason"]) == ("False", "ModelNotFound")
