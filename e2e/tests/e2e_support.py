"""Small helpers for the end-to-end tests: kubectl/helm calls, waits, port-forwards.

What a user does goes through the real `kubectl` and `helm` binaries against the cluster
in $KUBECONFIG, so a failure here is what a user would see; objects are read with the
project's one Kubernetes client (the operator's, `kubellama_controlplane.Kube.from_kubeconfig`). Waits print what they
are waiting for every few seconds (long work shows progress) and, when they time
out, fail with the state of the namespace (events, pods, the resource) attached.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = REPO_ROOT / "e2e"
sys.path.insert(0, str(E2E_DIR / "controlplane"))
import kubellama_controlplane as kcp  # noqa: E402
from kubellama_operator.kube import ApiError  # noqa: E402
MANIFESTS = E2E_DIR / "manifests"
CHART = REPO_ROOT / "charts" / "kubellama"
#: The file the in-cluster model server serves (e2e/manifests/model-server.yaml).
MODEL_FILE = "kubellama-tiny.gguf"


def project_version() -> str:
    text = (REPO_ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    assert match, "pyproject.toml has no [project] version"
    return match.group(1)


def image_repo() -> str:
    return os.environ.get("IMAGE_REPO") or "ghcr.io/kubellama"


def image_tag() -> str:
    return os.environ.get("IMAGE_TAG") or project_version()


def image(name: str) -> str:
    """Reference of one of the project's images, as `make images` tags it."""
    return f"{image_repo()}/{name}:{image_tag()}"


def image_values() -> dict:
    """Helm values that point the chart at the images under test (on top of e2e/values.yaml)."""
    def ref(name: str) -> dict:
        repository, tag = image(name).rsplit(":", 1)
        return {"repository": repository, "tag": tag}

    return {
        "operator": {"image": ref("kubellama-operator")},
        "serverImages": {"cpu": ref("kubellama-server"), "cuda": ref("kubellama-server-cuda")},
    }


def find_tool(name: str) -> str | None:
    """The binary for `helm`/`kubectl`: $KUBELLAMA_<NAME>, then PATH, then .tools/bin."""
    env = os.environ.get(f"KUBELLAMA_{name.upper()}")
    if env and Path(env).is_file() and os.access(env, os.X_OK):
        return env
    found = shutil.which(name)
    if found:
        return found
    local = REPO_ROOT / ".tools" / "bin" / name
    return str(local) if local.is_file() else None


def log(message: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, input: str | bytes | None = None, check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess:
    text = not isinstance(input, bytes)
    proc = subprocess.run(cmd, input=input, capture_output=True, text=text, timeout=timeout)
    if check and proc.returncode != 0:
        err = proc.stderr if text else proc.stderr.decode(errors="replace")
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return proc


_API: kcp.Kube | None = None


def api() -> kcp.Kube:
    """The REST client of the cluster in $KUBECONFIG (one per test session)."""
    global _API
    if _API is None:
        _API = kcp.Kube.from_kubeconfig()
        atexit.register(_API.close)
    return _API


class Kube:
    """kubectl bound to one namespace (what a user types), and reads of its objects (`get`)."""

    def __init__(self, namespace: str, kubectl: str | None = None):
        self.namespace = namespace
        self.kubectl = kubectl or find_tool("kubectl") or "kubectl"

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = 120, namespaced: bool = True) -> str:
        cmd = [self.kubectl, *(["-n", self.namespace] if namespaced else []), *args]
        return run(cmd, input=input, check=check, timeout=timeout).stdout

    def apply(self, objects: list[dict] | dict, *, server_side: bool = False) -> None:
        docs = objects if isinstance(objects, list) else [objects]
        args = ["apply", "-f", "-"]
        if server_side:
            args[1:1] = ["--server-side", "--force-conflicts", "--field-manager=kubellama-e2e"]
        self(*args, input=yaml.safe_dump_all(docs))

    def get(self, kind: str, name: str | None = None, *, selector: str | None = None) -> Any:
        """One object (None when absent) or, without a name, the list of items; `kind` as kubectl names it."""
        api_version, kind_name = api().kind_named(kind)
        if name:
            return api().read(api_version, kind_name, name, self.namespace)
        return api().list(api_version, kind_name, self.namespace, **({"labelSelector": selector} if selector else {}))

    def diagnostics(self, llamaserver: str | None = None) -> str:
        """What a person would look at when something did not become ready."""
        parts = []
        for args in (
            ["get", "llamaservers,statefulsets,pods,svc,pvc", "-o", "wide"],
            ["get", "events", "--sort-by=.lastTimestamp"],
            *([["describe", "llamaserver", llamaserver]] if llamaserver else []),
            ["describe", "pods", *(["-l", f"kubellama.dev/llamaserver={llamaserver}"] if llamaserver else [])],
        ):
            proc = run([self.kubectl, "-n", self.namespace, *args], check=False)
            parts.append(f"$ kubectl {' '.join(args)}\n{proc.stdout}{proc.stderr}")
        if llamaserver:
            for pod in self.get("pods", selector=f"kubellama.dev/llamaserver={llamaserver}") or []:
                name = pod["metadata"]["name"]
                for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
                    proc = run([self.kubectl, "-n", self.namespace, "logs", name, "-c", container["name"],
                                "--tail=40"], check=False)
                    parts.append(f"$ kubectl logs {name} -c {container['name']}\n{proc.stdout}{proc.stderr}")
        return "\n".join(parts)

    def wait_for(self, what: str, predicate: Callable[[], Any], *, timeout: float = 300,
                 interval: float = 2.0, llamaserver: str | None = None) -> Any:
        """Poll `predicate` until it returns a truthy value; fail with diagnostics on timeout."""
        start = last_report = time.monotonic()
        log(f"waiting for {what} (up to {timeout:.0f}s)")
        last_error: Exception | None = None
        while True:
            try:
                result = predicate()
                if result:
                    log(f"ok: {what} after {time.monotonic() - start:.0f}s")
                    return result
            except (AssertionError, KeyError, TypeError, OSError, ApiError) as exc:  # transient while rolling
                last_error = exc
            now = time.monotonic()
            if now - start > timeout:
                detail = f" (last error: {last_error})" if last_error else ""
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {what}{detail}\n"
                    + self.diagnostics(llamaserver)
                )
            if now - last_report >= 15:
                log(f"... still waiting for {what} ({now - start:.0f}s)")
                last_report = now
            time.sleep(interval)


def pod_ready(pod: dict | None) -> bool:
    if not pod or pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def llamaserver_ready(ns: Kube, name: str, replicas: int) -> dict | None:
    obj = ns.get("llamaserver", name)
    if not obj:
        return None
    status = obj.get("status", {})
    if (status.get("phase") == "Ready" and status.get("readyReplicas") == replicas
            and status.get("observedGeneration") == obj["metadata"]["generation"]):
        return obj
    return None


def server_pods(ns: Kube, name: str) -> list[dict]:
    return ns.get("pods", selector=f"kubellama.dev/llamaserver={name}") or []


def ready_pods(ns: Kube, name: str) -> list[dict]:
    return [p for p in server_pods(ns, name) if pod_ready(p)]


@contextmanager
def port_forward(kube: Kube, target: str, port: int, *, timeout: float = 60) -> Iterator[str]:
    """`kubectl port-forward TARGET :PORT` on loopback; yields the local base URL."""
    cmd = [kube.kubectl, "-n", kube.namespace, "port-forward", "--address", "127.0.0.1", target, f":{port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        local = None
        assert proc.stdout is not None
        while local is None:
            line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read() if proc.stderr else ""
                raise AssertionError(f"kubectl port-forward {target} exited: {err.strip()}")
            match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
            if match:
                local = int(match.group(1))
            if time.monotonic() > deadline:
                raise AssertionError(f"kubectl port-forward {target} did not start within {timeout}s")
        yield f"http://127.0.0.1:{local}"
    finally:
        stop(proc, grace=10)


def stop(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http(method: str, url: str, body: dict | None = None, *, timeout: float = 60) -> tuple[int, str]:
    """A plain HTTP request; returns (status, body text) for any status."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def http_json(method: str, url: str, body: dict | None = None, *, timeout: float = 60) -> dict:
    status, text = http(method, url, body, timeout=timeout)
    assert status == 200, f"{method} {url} -> HTTP {status}: {text[:500]}"
    return json.loads(text)


def load_manifest(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def with_image(objects: list[dict], ref: str) -> list[dict]:
    """Point every container of the given workloads at `ref` (the image under test)."""
    for obj in objects:
        spec = obj.get("spec", {}).get("template", {}).get("spec")
        if spec:
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                container["image"] = ref
    return objects
