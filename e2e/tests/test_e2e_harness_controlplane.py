"""The e2e harness itself, run where no container can: on the local control plane of
e2e/controlplane (real kube-apiserver, controllers and scheduler; KWOK plays the kubelets)
with the real operator running beside it. `helm install` of the chart with the e2e values,
the in-cluster model server's rollout, and the cluster tests that need no running container
(LlamaServer Ready, scale to two, delete with slot claims kept) go through exactly the code
`make e2e` runs, so a broken wait, selector or fixture shows up in `make test`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubellama_server.testing.wait import free_port

from e2e_support import CHART, REPO_ROOT, find_tool, stop

CONTROLPLANE = REPO_ROOT / "e2e" / "controlplane"
#: The cluster tests that need no kubelet: no port-forward, no container exit codes.
WITHOUT_CONTAINERS = "becomes_ready or scale_to_two or delete_removes"


@pytest.mark.timeout(900)
def test_e2e_harness_on_the_local_control_plane(tmp_path: Path) -> None:
    sys.path.insert(0, str(CONTROLPLANE))
    try:
        import kubellama_controlplane as kcp
    finally:
        sys.path.remove(str(CONTROLPLANE))
    try:
        binaries = kcp.find_binaries()
    except kcp.BinariesNotFound as exc:
        pytest.skip(str(exc))
    operator_bin = Path(sys.executable).parent / "kubellama-operator"
    assert operator_bin.exists(), "kubellama-operator is not installed; run `make install`"

    operator_log = tmp_path / "operator.log"
    with kcp.ControlPlane(tmp_path / "cp", binaries) as cp:
        cp.add_nodes(cpu_nodes=2, gpu_nodes=0)
        cp.ensure_volumes(available=6)
        env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig_path)}
        # The CRD first (as `helm install` would), so the operator finds it when it starts.
        kubectl = find_tool("kubectl") or "kubectl"
        for args in (["apply", "--server-side", "-f", str(CHART / "crds")],
                     ["wait", "--for=condition=Established", "crd/llamaservers.kubellama.dev", "--timeout=60s"]):
            done = subprocess.run([kubectl, *args], env=env, capture_output=True, text=True, timeout=90)
            assert done.returncode == 0, f"kubectl {' '.join(args)}:\n{done.stderr}"
        # The chart's operator pod is only played by KWOK: this process does the reconciling.
        with operator_log.open("w") as log:
            operator = subprocess.Popen(
                [str(operator_bin), "--log-format", "text", "--resync-seconds", "5",
                 "--bind-address", "127.0.0.1",
                 "--health-port", str(free_port()), "--metrics-port", str(free_port())],
                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "e2e/tests", "-m", "e2e", "-k", WITHOUT_CONTAINERS,
                 "-p", "no:cacheprovider", "-q", "-x", "--tb=short", "--timeout", "500"],
                env={**env, "E2E": "1", "E2E_READY_TIMEOUT": "240"}, cwd=REPO_ROOT,
                capture_output=True, text=True, timeout=780)
        finally:
            stop(operator)
    report = proc.stdout[-8000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, f"{report}\n--- operator log (tail) ---\n{operator_log.read_text()[-4000:]}"
    assert "3 passed" in proc.stdout, report
