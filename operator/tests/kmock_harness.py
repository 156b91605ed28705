"""Harness for the operator tests: a kmock Kubernetes emulator (with two of its gaps filled) holding the
kinds the operator uses, a plain HTTP client for it, and the real operator (kopf) in a background thread."""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import kmock
import yaml
from kmock._internal import parsing

from kubellama_operator import metrics
from kubellama_operator.cli import run_in_thread
from kubellama_operator.config import OperatorConfig
from kubellama_operator.crd import build_crd
from kubellama_server.testing.wait import eventually  # noqa: F401  (the tests import it from here)

_orig_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    # kmock 0.8 mis-parses /api/v1/namespaces[/NAME] (takes "namespaces" for a namespace prefix)
    # and answers 500; kopf lists namespaces when watching cluster-wide.
    parts = path.strip("/").split("/")
    if parts[:1] == ["api"] and len(parts) in (3, 4) and parts[2] == "namespaces":
        return parsing.ParsedPath("", parts[1], "namespaces", None, parts[3] if len(parts) == 4 else None, None)
    return _orig_parse_path(path)


parsing.parse_path = _parse_path

_orig_handle = kmock.KubernetesEmulator._handle


async def _handle(self: Any, request: Any) -> Any:
    # kmock 0.8 ignores metadata.generateName (every kopf Event would collide): name it like an API server.
    if request.action == kmock.action.CREATE and isinstance(request.data, dict):
        meta = request.data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:6]
    return await _orig_handle(self, request)


kmock.KubernetesEmulator._handle = _handle

NAMESPACE = "ml"

RESOURCES = {
    "kubellama.dev/v1alpha1/llamaservers": ("LlamaServer", True, {"status", "scale"}),
    "apps/v1/statefulsets": ("StatefulSet", True, {"status", "scale"}),
    "v1/services": ("Service", True, {"status"}),
    "v1/configmaps": ("ConfigMap", True, set()),
    "v1/pods": ("Pod", True, {"status"}),
    "v1/secrets": ("Secret", True, set()),
    "v1/persistentvolumeclaims": ("PersistentVolumeClaim", True, {"status"}),
    "v1/events": ("Event", True, set()),
    "v1/namespaces": ("Namespace", False, set()),
    "policy/v1/poddisruptionbudgets": ("PodDisruptionBudget", True, {"status"}),
    "networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", True, set()),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False, {"status"}),
}
SERVICEMONITORS = {"monitoring.coreos.com/v1/servicemonitors": ("ServiceMonitor", True, set())}

VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}


class Api:
    """A plain HTTP client for the emulator (what `kubectl` would do in a real cluster)."""

    def __init__(self, kmock: Any, session: aiohttp.ClientSession):
        self.kmock = kmock
        self.session = session
        self.url = str(kmock.url).rstrip("/")

    @staticmethod
    def path(api_version: str, plural: str, namespace: str | None = NAMESPACE, name: str | None = None,
             sub: str | None = None) -> str:
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        p = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
        return p + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    async def create(self, api_version: str, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(body)
        body.setdefault("metadata", {}).setdefault("namespace", NAMESPACE)
        body["metadata"].setdefault("uid", str(uuid.uuid4()))
        body["metadata"].setdefault("generation", 1)
        body["metadata"].setdefault("resourceVersion", "1")  # kmock keeps none; kopf's JSON patches test it
        async with self.session.post(self.url + self.path(api_version, plural, body["metadata"]["namespace"]),
                                     json=body) as r:
            assert r.status < 300, await r.text()
            return await r.json()

    async def get(self, api_version: str, plural: str, name: str, namespace: str | None = NAMESPACE) -> dict | None:
        async with self.session.get(self.url + self.path(api_version, plural, namespace, name)) as r:
            if r.status == 404:
                return None
            assert r.status < 300, await r.text()
            return await r.json()

    async def patch(self, api_version: str, plural: str, name: str, body: dict[str, Any],
                    sub: str | None = None) -> dict[str, Any]:
        async with self.session.patch(self.url + self.path(api_version, plural, NAMESPACE, name, sub), json=body,
                                      headers={"Content-Type": "application/merge-patch+json"}) as r:
            assert r.status < 300, await r.text()
            return await r.json()

    async def delete(self, api_version: str, plural: str, name: str) -> None:
        async with self.session.delete(self.url + self.path(api_version, plural, NAMESPACE, name)) as r:
            assert r.status < 300, await r.text()

    def objects(self, resource: str, namespace: str | None = NAMESPACE) -> dict[str, dict[str, Any]]:
        """Current (not deleted) objects of a resource, by name."""
        out = {}
        for (res, ns, name), obj in self.kmock.objects.items():
            if str(res.group or "") + "/" + res.version + "/" + res.plural in (resource, "/" + resource) \
                    and ns == namespace and not obj.deleted:
                out[name] = obj.raw
        return out

    def events(self) -> list[dict[str, Any]]:
        """Every Event the operator posted (the emulator stores only one per generateName)."""
        out = []
        for req in list(self.kmock):
            if req.method == "POST" and req.url.path.endswith("/events") and isinstance(req.data, dict):
                out.append(req.data)
        return out

    def writes(self, plural: str) -> list[Any]:
        return [r for r in list(self.kmock) if r.method in ("POST", "PATCH", "PUT", "DELETE")
                and f"/{plural}" in r.url.path]


def counter(name: str, **labels: str) -> float:
    """A sample of the in-process operator's own metrics (0 before the series exists): tests wait on what the
    operator says it did (passes run, children compared) instead of sleeping and asserting nothing happened."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _declare(kmock: Any, resources: dict[str, tuple[str, bool, set[str]]]) -> None:
    for key, (kind, namespaced, subs) in resources.items():
        kmock.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, subresources=subs,
                                                  verbs=VERBS, singular=kind.lower())


@pytest.fixture
def servicemonitor_crd() -> bool:
    """Override in a test module to run without the Prometheus Operator CRD."""
    return True


@pytest_asyncio.fixture
async def api(kmock: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
              servicemonitor_crd: bool) -> AsyncIterator[Api]:
    _declare(kmock, RESOURCES | (SERVICEMONITORS if servicemonitor_crd else {}))
    kmock.objects["v1/namespaces", None, NAMESPACE] = {"apiVersion": "v1", "kind": "Namespace",
                                                      "metadata": {"name": NAMESPACE}}
    kmock.objects["apiextensions.k8s.io/v1/customresourcedefinitions", None, "llamaservers.kubellama.dev"] = build_crd()
    url = str(kmock.url).rstrip("/")
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                      "namespace": NAMESPACE}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    async with aiohttp.ClientSession() as session:
        yield Api(kmock, session)


TEST_CONFIG = OperatorConfig(cpu_image="registry.test/kubellama-server:t", cuda_image="registry.test/kubellama-server-cuda:t",
                             namespaces=(NAMESPACE,), resync_seconds=2.0, log_format="text", log_level="DEBUG")


class Running:
    """The operator in a background thread, restartable."""

    def __init__(self, config: OperatorConfig, *, endpoints: bool = False):
        self.config = config
        self.endpoints = endpoints
        self.thread: Any = None
        self.stop_flag: Any = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.thread, self.stop_flag = await loop.run_in_executor(
            None, lambda: run_in_thread(self.config, endpoints=self.endpoints))

    async def stop(self) -> None:
        if self.thread is not None:
            self.stop_flag.set()
            await asyncio.get_running_loop().run_in_executor(None, self.thread.join, 20)
            assert not self.thread.is_alive(), "the operator did not stop"
            self.thread = None


@pytest_asyncio.fixture
async def operator(api: Api) -> AsyncIterator[Running]:
    running = Running(TEST_CONFIG)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()
