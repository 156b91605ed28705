"""Run the real `kubellama-operator` as the Helm chart would: its ServiceAccount, its RBAC, its args.

The chart is rendered with `helm template`; its ServiceAccount, (Cluster)Roles and bindings are
applied to the test control plane, and the operator runs as a local process with a token of
that ServiceAccount and the Deployment's own container arguments (ports moved to free loopback
ones). Every request it makes is in the API server's audit log (`forbidden_requests`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
import kubellama_controlplane as kcp
import yaml

from kubellama_server.testing.wait import free_port, wait_until

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kubellama"
OPERATOR_NS = "kubellama-system"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
LLAMA_API = "kubellama.dev/v1alpha1"
MODEL_URL = "http://models.invalid/models/tiny-q4_0.gguf"


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


def render_chart(helm: Callable, release: str, *args: str) -> list[dict]:
    out = helm("template", release, str(CHART), "--namespace", OPERATOR_NS, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def operator_command() -> list[str]:
    script = Path(sys.executable).parent / "kubellama-operator"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kubellama_operator.cli"]


def operator_args(deployment: dict, health_port: int, metrics_port: int) -> list[str]:
    """The chart's own arguments for the operator container, on free loopback ports."""
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator")
    args = [a for a in container.get("args", [])
            if not a.startswith(("--health-port", "--metrics-port", "--bind-address", "--log-format"))]
    return args + ["--bind-address=127.0.0.1", f"--health-port={health_port}",
                   f"--metrics-port={metrics_port}", "--log-format=text"]


@contextlib.contextmanager
def chart_operator(control_plane: kcp.ControlPlane, kube: kcp.Kube, helm: Callable, workdir: Path,
                   release: str, *helm_args: str) -> Iterator[RunningOperator]:
    """Apply the chart's RBAC (rendered with `helm_args`) and run the operator as its ServiceAccount."""
    docs = render_chart(helm, release, *helm_args)
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}})
    rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
    assert any(d["kind"] == "ServiceAccount" for d in rbac), "the chart renders no ServiceAccount"
    assert any(d["kind"] in ("ClusterRole", "Role") for d in rbac), "the chart renders no (Cluster)Role"
    for obj in rbac:
        kube.apply(obj, namespace=OPERATOR_NS)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]

    workdir.mkdir(parents=True, exist_ok=True)
    config = control_plane.service_account_kubeconfig(OPERATOR_NS, account, workdir / "operator.kubeconfig")
    health_port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELLAMA_") and k != "KUBECONFIG"}
    env.update({"KUBECONFIG": str(config), "POD_NAMESPACE": OPERATOR_NS, "POD_NAME": f"{release}-operator-test"})
    log = workdir / "operator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*operator_command(), *operator_args(deployment, health_port, metrics_port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=kcp.die_with_parent)
    running = RunningOperator(proc, log, f"system:serviceaccount:{OPERATOR_NS}:{account}",
                              f"http://127.0.0.1:{health_port}", f"http://127.0.0.1:{metrics_port}")
    try:
        wait_until(lambda: httpx.get(f"{running.health_url}/readyz", timeout=2).status_code == 200,
                   "the operator's /readyz", 60, transient=(httpx.HTTPError,), alive=running.check_alive,
                   detail=lambda: kcp.tail(log, 30))
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for obj in rbac:  # the next run renders its own
            if obj["kind"] != "ServiceAccount":
                kube.remove(obj["apiVersion"], obj["kind"], obj["metadata"]["name"],
                            obj["metadata"].get("namespace") or OPERATOR_NS)


def assert_no_forbidden(control_plane: kcp.ControlPlane, operator: RunningOperator, before: int) -> None:
    """Fail when the operator made a request RBAC refused since `before` (a count)."""
    time.sleep(0.5)  # the audit log is written as responses complete
    forbidden = control_plane.forbidden_requests(operator.user)[before:]
    assert not forbidden, (f"the chart's RBAC refused requests of the operator ({operator.user}): "
                           f"{sorted(set(forbidden))}\n{kcp.tail(operator.log, 20)}")
    operator.check_alive()


@pytest.fixture(autouse=True)
def rbac_is_exactly_enough(operator: RunningOperator, control_plane: kcp.ControlPlane):
    """Imported by the modules that run an `operator`: fail the test during which the operator made
    a request RBAC refused (or died)."""
    before = len(control_plane.forbidden_requests(operator.user))
    yield
    assert_no_forbidden(control_plane, operator, before)


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
