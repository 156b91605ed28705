"""End-to-end fixtures: a real cluster, the Helm chart installed, an in-cluster model server.

Tests marked `e2e` run against a real cluster:
- with E2E=1 (what `make e2e` sets), the cluster in $KUBECONFIG (kind in GitHub Actions);
  a missing tool or an unreachable cluster stops the run with an error;
- otherwise (`make test`), the local cluster of e2e/node: the test control plane with one
  real node (containerd, kubelet, kube-proxy, CoreDNS) and the project's images built
  there from images/*/Dockerfile. Where that node cannot run they are skipped with one
  line, unless KUBELLAMA_REQUIRE_CLUSTER=1 (what .ci/run sets), which makes it a failure.

Environment: IMAGE_REPO / IMAGE_TAG (the images under test, as `make images` tagged
them), E2E_NAMESPACE (default kubellama-e2e), E2E_SYSTEM_NAMESPACE (where the chart
goes, default kubellama-system), E2E_KEEP=1 to leave everything installed afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "node"))

from e2e_support import (  # noqa: E402
    CHART,
    E2E_DIR,
    MODEL_FILE,
    Kube,
    find_tool,
    image,
    image_repo,
    image_tag,
    image_values,
    load_manifest,
    log,
    run,
    with_image,
)

E2E_ENABLED = os.environ.get("E2E") == "1"
REQUIRE_CLUSTER = os.environ.get("KUBELLAMA_REQUIRE_CLUSTER") == "1"
RELEASE = "kubellama"


def local_node_unavailable() -> str | None:
    """Why the local cluster of e2e/node cannot run here (one line), or None."""
    import kubellama_node

    reason = kubellama_node.unavailable_reason()
    if reason is None and find_tool("helm") is None:
        reason = "helm not found (make helm-tool)"
    return reason


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e_items = [item for item in items if item.get_closest_marker("e2e")]
    if not e2e_items:
        return
    if not E2E_ENABLED:
        reason = local_node_unavailable()
        if reason is None:
            return
        if REQUIRE_CLUSTER:
            pytest.exit(f"KUBELLAMA_REQUIRE_CLUSTER=1 but the e2e tests cannot run on the local node: {reason}",
                        returncode=1)
        skip = pytest.mark.skip(reason=f"e2e tests: no local node here ({reason}); `make e2e` runs them on kind")
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
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The cluster under test: $KUBECONFIG's with E2E=1, else the local node's, started here
    (control plane, node, images built from the Dockerfiles) and stopped at the end."""
    if E2E_ENABLED:
        yield
        return
    import kubellama_node
    import node_images

    workdir = tmp_path_factory.mktemp("local-cluster")
    with kubellama_node.local_cluster(workdir) as (cp, node):
        node.ensure_volumes(available=16)
        node_images.build_project_images(node, image_repo(), image_tag())
        saved = {k: os.environ.get(k) for k in ("KUBECONFIG",)}
        os.environ["KUBECONFIG"] = str(cp.kubeconfig_path)
        log(f"local cluster up: export KUBECONFIG={cp.kubeconfig_path} (logs in {workdir})")
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="session")
def system(cluster: None) -> Kube:
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

