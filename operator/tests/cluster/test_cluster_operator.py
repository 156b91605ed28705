"""The real kopf operator against a real control plane, with exactly the chart's RBAC.

The chart is rendered with `helm template`; its ServiceAccount, ClusterRole(s) and bindings are
applied, and `kubellama-operator` runs as a local process with that ServiceAccount's token and
the Deployment's own arguments. kwok plays the nodes, so pods go Running/Ready without
containers. Every request the operator makes is in the API server's audit log: a request RBAC
refused fails the test during which it happened.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import kubellama_controlplane as kcp
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kubellama"
LLAMA_API = "kubellama.dev/v1alpha1"
OPERATOR_NS = "kubellama-system"
RELEASE = "kl"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
MODEL_URL = "http://models.invalid/models/tiny-q4_0.gguf"

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


@dataclass
class RunningOperator:
    proc: subprocess.Popen
    log: Path
    user: str  # the ServiceAccount's user name in the audit log
    health_url: str
    metrics_url: str

    def check_alive(self) -> None:
        code = self.proc.poll()
        assert code is None, f"kubellama-operator exited with {code}:\n{kcp.tail(self.log, 40)}"


def render_chart(helm, *args: str) -> list[dict]:
    out = helm("template", RELEASE, str(CHART), "--namespace", OPERATOR_NS, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def operator_command() -> list[str]:
    script = Path(sys.executable).parent / "kubellama-operator"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kubellama_operator.cli"]


def operator_args(deployment: dict, health_port: int, metrics_port: int) -> list[str]:
    """The chart's own arguments for the operator container, on free loopback ports."""
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator")
    args = [a for a in container.get("args", [])
            if not a.startswith(("--health-port", "--metrics-port", "--bind-address"))]
    return args + ["--bind-address=127.0.0.1", f"--health-port={health_port}",
                   f"--metrics-port={metrics_port}", "--log-format=text"]


@pytest.fixture(scope="module")
def operator(control_plane: kcp.ControlPlane, kube: kcp.Kube, helm, llama_crd, tmp_path_factory):
    """kubellama-operator running as the chart's ServiceAccount with the chart's RBAC."""
    kube.apply_crd(SERVICEMONITOR_CRD)
    docs = render_chart(helm)
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}})
    rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
    assert {d["kind"] for d in rbac} >= {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}, \
        "the chart renders no ServiceAccount/ClusterRole/ClusterRoleBinding for the operator"
    for obj in rbac:
        kube.apply(obj, namespace=OPERATOR_NS)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]

    workdir = tmp_path_factory.mktemp("operator")
    config = control_plane.service_account_kubeconfig(OPERATOR_NS, account, workdir / "operator.kubeconfig")
    health_port, metrics_port = kcp.free_port(), kcp.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELLAMA_") and k != "KUBECONFIG"}
    env.update({"KUBECONFIG": str(config), "POD_NAMESPACE": OPERATOR_NS, "POD_NAME": "operator-test"})
    log = workdir / "operator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*operator_command(), *operator_args(deployment, health_port, metrics_port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    running = RunningOperator(proc, log, f"system:serviceaccount:{OPERATOR_NS}:{account}",
                              f"http://127.0.0.1:{health_port}", f"http://127.0.0.1:{metrics_port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            running.check_alive()
            try:
                if httpx.get(f"{running.health_url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the operator is not ready after 60s:\n{kcp.tail(log, 30)}"
            time.sleep(0.25)
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(autouse=True)
def rbac_is_exactly_enough(operator: RunningOperator, control_plane: kcp.ControlPlane):
    """Fail the test during which the operator made a request RBAC refused (or died)."""
    before = len(control_plane.forbidden_requests(operator.user))
    yield
    time.sleep(0.5)  # the audit log is written as responses complete
    forbidden = control_plane.forbidden_requests(operator.user)[before:]
    assert not forbidden, (f"the chart's RBAC refused requests of the operator ({operator.user}): "
                           f"{sorted(set(forbidden))}\n{kcp.tail(operator.log, 20)}")
    operator.check_alive()


def llama(name: str, namespace: str, **spec) -> dict:
    return {"apiVersion": LLAMA_API, "kind": "LlamaServer",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"url": MODEL_URL}, **spec}}


def status_of(kube: kcp.Kube, name: str, namespace: str) -> dict:
    return (kube.read(LLAMA_API, "LlamaServer", name, namespace) or {}).get("status") or {}


def wait_phase(kube: kcp.Kube, operator: RunningOperator, name: str, namespace: str, phase: str,
               timeout: float = 60, message_has: str = "", **expect) -> dict:
    """Wait for status.phase (its message containing `message_has`, and the other status fields
    in `expect`); return the status."""
    def probe():
        operator.check_alive()
        st = status_of(kube, name, namespace)
        return st if (st.get("phase") == phase and message_has in st.get("message", "")
                      and all(st.get(k) == v for k, v in expect.items())) else None
    try:
        return kube.wait_for(probe, f"LlamaServer {name} phase {phase} {message_has!r} {expect or ''}",
                             timeout=timeout)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\nstatus: {status_of(kube, name, namespace)}\n"
                             f"operator log:\n{kcp.tail(operator.log, 25)}") from None


def server_pods(kube: kcp.Kube, name: str, namespace: str) -> list[dict]:
    return kube.list("v1", "Pod", namespace, labelSelector=f"kubellama.dev/llamaserver={name}")


def test_llamaserver_gets_children_and_goes_ready(kube, operator, namespace):
    created = kube.create(llama("chat", namespace, monitoring={"serviceMonitor": True}))
    status = wait_phase(kube, operator, "chat", namespace, "Ready", readyReplicas=1)
    assert status["endpoint"] == f"http://chat.{namespace}.svc:8080/v1"
    assert status["ready"] == "1/1"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Available"] == "True"

    sts = kube.read("apps/v1", "StatefulSet", "chat", namespace)
    svc = kube.read("v1", "Service", "chat", namespace)
    sm = kube.read("monitoring.coreos.com/v1", "ServiceMonitor", "chat", namespace)
    for child in (sts, svc, sm):
        assert child is not None
        meta = child["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubellama-operator"
        assert meta["labels"]["kubellama.dev/llamaserver"] == "chat"
        [ref] = meta["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref.get("controller")) == ("LlamaServer", created["metadata"]["uid"], True)
    assert [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])], \
        "the StatefulSet has no volume claim templates for the model cache"
    assert any(p["name"] == "http" for p in svc["spec"]["ports"])
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
    kubectl("scale", "llama/scaled", "--replicas=0", "-n", namespace)
    kube.wait_for(lambda: not server_pods(kube, "scaled", namespace), "the pods to go at replicas 0")
    wait_phase(kube, operator, "scaled", namespace, "Ready", readyReplicas=0)


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
])
def test_deleted_child_is_restored(kube, operator, namespace, kind, api_version, name):
    kube.create(llama("restore", namespace))
    wait_phase(kube, operator, "restore", namespace, "Ready", readyReplicas=1)
    old = kube.read(api_version, kind, name, namespace)
    kube.remove(api_version, kind, name, namespace)
    kube.wait_for(lambda: (kube.read(api_version, kind, name, namespace) or old)["metadata"]["uid"]
                  != old["metadata"]["uid"], f"the operator to re-create {kind} {name}", timeout=60)
    wait_phase(kube, operator, "restore", namespace, "Ready", readyReplicas=1)


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
