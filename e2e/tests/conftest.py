"""End-to-end fixtures: a real cluster, the Helm chart installed, an in-cluster model server.

Tests marked `e2e` run only with E2E=1 (what `make e2e` sets) against the cluster in
$KUBECONFIG. Without it they are skipped with one line (as in `make test` on a machine
with no cluster); with it, a missing tool or an unreachable cluster stops the run with
an error instead of skipping, so `make e2e` can never pass by testing nothing.

Environment: IMAGE_REPO / IMAGE_TAG (the images under test, as `make images` tagged
them), E2E_NAMESPACE (default kubellama-e2e), E2E_SYSTEM_NAMESPACE (where the chart
goes, default kubellama-system), E2E_KEEP=1 to leave everything installed afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from pathlib import Path

import pytest
import yaml

from e2e_support import (
    CHART,
    E2E_DIR,
    MODEL_FILE,
    Kube,
    find_tool,
    image,
    image_values,
    load_manifest,
    log,
    run,
    with_image,
)

E2E_ENABLED = os.environ.get("E2E") == "1"
SKIP_REASON = (
    "e2e tests need a Kubernetes cluster: run `make e2e` (kind + docker or podman), "
    "or set E2E=1 with KUBECONFIG pointing at a cluster"
)
RELEASE = "kubellama"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e_items = [item for item in items if item.get_closest_marker("e2e")]
    if not e2e_items:
        return
    if not E2E_ENABLED:
        skip = pytest.mark.skip(reason=SKIP_REASON)
        for item in e2e_items:
            item.add_marker(skip)
        return
    problems = [f"`{tool}` not found (PATH, $KUBELLAMA_{tool.upper()} or .tools/bin)"
                for tool in ("kubectl", "helm") if find_tool(tool) is None]
    if not problems:
        proc = run([find_tool("kubectl"), "version", "-o", "yaml"], check=False, timeout=30)
        if proc.returncode != 0 or "serverVersion" not in proc.stdout:
            problems.append(f"the cluster in KUBECONFIG does not answer: {proc.stderr.strip()[:300]}")
    if problems:
        pytest.exit("E2E=1 but the end-to-end tests cannot run: " + "; ".join(problems), returncode=1)


@pytest.fixture(scope="session")
def system() -> Kube:
    return Kube(os.environ.get("E2E_SYSTEM_NAMESPACE", "kubellama-system"))


@pytest.fixture(scope="session")
def platform(system: Kube) -> Kube:
    """`helm install` of the chart (CRD, operator, RBAC) with the e2e values."""
    helm = find_tool("helm")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(image_values(), f)
        overrides = f.name
    log(f"helm upgrade --install {RELEASE} {CHART} in {system.namespace}")
    run([helm, "upgrade", "--install", RELEASE, str(CHART), "--namespace", system.namespace,
         "--create-namespace", "-f", str(E2E_DIR / "values.yaml"), "-f", overrides,
         "--wait", "--timeout", "5m"], timeout=360)
    system("wait", "--for=condition=Established", "crd/llamaservers.kubellama.dev", "--timeout=60s",
           namespaced=False, timeout=90)
    yield system
    if os.environ.get("E2E_KEEP") != "1":
        run([helm, "uninstall", RELEASE, "--namespace", system.namespace, "--wait"], check=False, timeout=300)


@pytest.fixture(scope="session")
def ns(platform: Kube) -> Kube:
    kube = Kube(os.environ.get("E2E_NAMESPACE", "kubellama-e2e"))
    # A previous run's namespace may still be terminating (it is deleted without waiting).
    kube.wait_for(f"namespace {kube.namespace} from an earlier run to finish terminating",
                  lambda: (kube.get("namespace", kube.namespace) or {}).get("status", {}).get("phase")
                  != "Terminating", timeout=300)
    if kube.get("namespace", kube.namespace) is None:
        kube("create", "namespace", kube.namespace, namespaced=False)
    yield kube
    if os.environ.get("E2E_KEEP") != "1":
        kube("delete", "namespace", kube.namespace, "--wait=false", namespaced=False, check=False)


@pytest.fixture(scope="session")
def model_server(ns: Kube) -> str:
    """Serve the tiny test GGUF in the cluster; returns its sha256."""
    from kubellama_server.testing.tiny_gguf import build_tiny_gguf

    with tempfile.TemporaryDirectory() as tmp:
        data = build_tiny_gguf(Path(tmp) / MODEL_FILE).read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    log(f"serving {MODEL_FILE} ({len(data)} bytes, sha256 {sha256[:12]}…) from the cluster")
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "e2e-model", "labels": {"app.kubernetes.io/part-of": "kubellama-e2e"}},
        "binaryData": {MODEL_FILE: base64.b64encode(data).decode()},
    }
    # Server-side apply: a client-side apply would copy ~750 KB into an annotation.
    ns.apply(configmap, server_side=True)
    ns.apply(with_image(load_manifest("model-server.yaml"), image("kubellama-server")))
    ns("rollout", "status", "deployment/e2e-model-server", "--timeout=180s", timeout=200)
    return sha256

