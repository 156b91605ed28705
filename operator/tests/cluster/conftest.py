"""Fixtures for tests against a real control plane (e2e/controlplane): one per session.

The control plane runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
kwok as local processes; kwok plays two CPU nodes and two GPU nodes (one
`nvidia.com/gpu` each, the GPU product label and taint). Without the binaries every
test here skips with one line saying how to get them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "e2e" / "controlplane"))

import kubellama_controlplane as kcp  # noqa: E402

CPU_NODES = 2
GPU_NODES = 2


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory):
    kcp.skip_module_if_unavailable()  # each test module calls it first: one line per module
    cp = kcp.ControlPlane(tmp_path_factory.mktemp("controlplane"), kcp.find_binaries())
    cp.start()
    try:
        names = cp.add_nodes(cpu_nodes=CPU_NODES, gpu_nodes=GPU_NODES, gpus_per_node=1)
        cp.cpu_nodes, cp.gpu_nodes = names[:CPU_NODES], names[CPU_NODES:]
        cp.ensure_volumes(20)
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def kube(control_plane: kcp.ControlPlane):
    """An admin client (system:masters)."""
    with control_plane.client() as client:
        yield client


@pytest.fixture
def namespace(control_plane: kcp.ControlPlane, kube: kcp.Kube):
    """A fresh namespace; deleted afterwards, waiting until its pods are gone (frees GPUs)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    kube.wait_for(lambda: kube.read("v1", "ServiceAccount", "default", name),
                  f"the default ServiceAccount in {name}")
    control_plane.ensure_volumes(10)
    yield name
    kube.remove("v1", "Namespace", name)
    kube.wait_for(lambda: not kube.list("v1", "Pod", name), f"pods of namespace {name} gone",
                  timeout=90)


def _tool(name: str) -> str | None:
    """helm/kubectl: $KUBELLAMA_HELM/$KUBELLAMA_KUBECTL (mk/helm.mk), .tools/bin, then PATH."""
    env = os.environ.get(f"KUBELLAMA_{name.upper()}")
    for candidate in (env, str(REPO / ".tools" / "bin" / name), shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def kubectl(control_plane: kcp.ControlPlane):
    """Run kubectl against the control plane: kubectl("get", "pods", "-n", ns) -> stdout."""
    path = _tool("kubectl")
    if not path:
        pytest.skip("kubectl not found: run `make helm-tool` (extracts it into .tools/bin)")

    def run(*args: str, check: bool = True, kubeconfig: Path | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [path, f"--kubeconfig={kubeconfig or control_plane.kubeconfig_path}", *args],
            capture_output=True, text=True, timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    return run


@pytest.fixture(scope="session")
def helm(control_plane: kcp.ControlPlane, tmp_path_factory: pytest.TempPathFactory):
    """Run helm against the control plane: helm("install", ...) -> CompletedProcess."""
    path = _tool("helm")
    if not path:
        pytest.skip("helm not found: run `make helm-tool` (extracts it into .tools/bin)")
    home = tmp_path_factory.mktemp("helm-home")
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig_path),
           "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([path, *args], capture_output=True, text=True, timeout=180, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    return run


# KUBELLAMA_CRD_FILE: try a candidate CRD against the real API server.
CRD_FILE = Path(os.environ.get("KUBELLAMA_CRD_FILE") or REPO / "crds" / "kubellama.dev_llamaservers.yaml")
LLAMA_API = "kubellama.dev/v1alpha1"


@pytest.fixture(scope="session")
def llama_crd(kube: kcp.Kube) -> dict:
    """The LlamaServer CRD from crds/, installed and served."""
    if not CRD_FILE.exists():
        pytest.skip(f"{CRD_FILE} does not exist yet")
    crd = yaml.safe_load(CRD_FILE.read_text())
    kube.apply_crd(crd)
    return crd
