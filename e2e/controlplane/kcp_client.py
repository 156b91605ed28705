"""`Kube`: the tests' synchronous view of the API server, on the operator's one Kubernetes client."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Callable

from kubellama_operator.kube import ApiError
from kubellama_operator.kubesync import SyncKubeClient, kubeconfig_login, token_login
from kubellama_server.testing.wait import wait_until


def ssl_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


class Kube:
    """The operator's Kubernetes client (`kubellama_operator.kube`, driven synchronously) with what the tests
    need on top: paths from API discovery, CRDs applied and waited for, polling."""

    def __init__(self, url: str, token: str, ca_file: Path, *, login: Callable[[], Any] | None = None):
        self.api = SyncKubeClient(login or token_login(url, token, str(ca_file)))
        self._resources: dict[tuple[str, str], tuple[str, bool]] = {}
        self._names: dict[str, tuple[str, str]] = {}

    @classmethod
    def from_kubeconfig(cls) -> "Kube":
        """A client for the cluster of $KUBECONFIG (any credentials kopf reads: tokens, client certificates)."""
        return cls("", "", Path(), login=kubeconfig_login)

    def __enter__(self) -> "Kube":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.api.close()

    # ---- raw verbs -------------------------------------------------------------------
    def request(self, method: str, path: str, *, missing_ok: bool = False, json: Any = None,
                params: dict[str, Any] | None = None, content_type: str = "application/json") -> dict | None:
        try:
            out = self.api.request(method, path, body=json, content_type=content_type,
                                   params={k: str(v) for k, v in (params or {}).items()} or None)
        except ApiError as exc:
            if exc.status == 404 and missing_ok:
                return None
            raise
        return out if isinstance(out, dict) else {}

    def get(self, path: str, missing_ok: bool = False, **params: Any) -> dict | None:
        return self.request("GET", path, missing_ok=missing_ok, params=params)

    def post(self, path: str, body: dict) -> dict:
        return self.request("POST", path, json=body)

    def delete(self, path: str, missing_ok: bool = True, **params: Any) -> dict | None:
        return self.request("DELETE", path, missing_ok=missing_ok, params=params)

    def patch(self, path: str, body: dict, kind: str = "merge") -> dict:
        ctype = {"merge": "application/merge-patch+json",
                 "strategic": "application/strategic-merge-patch+json",
                 "json": "application/json-patch+json"}[kind]
        return self.request("PATCH", path, json=body, content_type=ctype)

    # ---- objects by apiVersion/kind ----------------------------------------------------
    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) for a kind, from API discovery."""
        key = (api_version, kind)
        if key not in self._resources:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            for res in self.get(base)["resources"]:
                if "/" not in res["name"]:
                    self._resources[(api_version, res["kind"])] = (res["name"], res["namespaced"])
        if key not in self._resources:
            raise KeyError(f"the API server serves no {kind} in {api_version}")
        return self._resources[key]

    def kind_named(self, name: str) -> tuple[str, str]:
        """(apiVersion, kind) of a resource as kubectl names it: plural, singular, kind or short name
        ("pvc", "llama", "statefulsets"), from API discovery (preferred versions)."""
        if name.lower() not in self._names:  # (again: a CRD may have been installed since)
            versions = ["v1"] + [g["preferredVersion"]["groupVersion"] for g in self.get("/apis")["groups"]]
            for version in reversed(versions):  # the core group wins a name it shares
                base = "/api/v1" if version == "v1" else f"/apis/{version}"
                try:
                    found = (self.get(base, missing_ok=True) or {}).get("resources", [])
                except ApiError:  # an aggregated API that is not available: not a name the tests use
                    continue
                for res in found:
                    if "/" in res["name"]:
                        continue
                    self._resources[(version, res["kind"])] = (res["name"], res["namespaced"])
                    for alias in (res["name"], res.get("singularName") or res["kind"].lower(), res["kind"].lower(),
                                  *res.get("shortNames", [])):
                        self._names[alias] = (version, res["kind"])
        try:
            return self._names[name.lower()]
        except KeyError:
            raise KeyError(f"the API server serves no resource named {name!r}") from None

    def path(self, api_version: str, kind: str, namespace: str | None = None,
             name: str | None = None) -> str:
        plural, namespaced = self.resource(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespaced:
            if not namespace:
                raise ValueError(f"{kind} is namespaced: give a namespace")
            base += f"/namespaces/{namespace}"
        return f"{base}/{plural}" + (f"/{name}" if name else "")

    def path_of(self, obj: dict, namespace: str | None = None, named: bool = True) -> str:
        meta = obj.get("metadata", {})
        return self.path(obj["apiVersion"], obj["kind"], meta.get("namespace") or namespace,
                         meta.get("name") if named else None)

    def create(self, obj: dict, namespace: str | None = None) -> dict:
        return self.post(self.path_of(obj, namespace, named=False), obj)

    def apply(self, obj: dict, namespace: str | None = None, manager: str = "kubellama-tests") -> dict:
        """Server-side apply (force)."""
        return self.request("PATCH", self.path_of(obj, namespace), json=obj,
                            content_type="application/apply-patch+yaml",
                            params={"fieldManager": manager, "force": "true"})

    def read(self, api_version: str, kind: str, name: str, namespace: str | None = None,
             missing_ok: bool = True) -> dict | None:
        return self.get(self.path(api_version, kind, namespace, name), missing_ok=missing_ok)

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             **params: Any) -> list[dict]:
        return self.get(self.path(api_version, kind, namespace), **params)["items"]

    def remove(self, api_version: str, kind: str, name: str, namespace: str | None = None,
               **params: Any) -> dict | None:
        return self.delete(self.path(api_version, kind, namespace, name), **params)

    def apply_crd(self, crd: dict, timeout: float = 60.0) -> dict:
        """Apply a CustomResourceDefinition and wait until its kinds are served."""
        applied = self.apply(crd)
        name = crd["metadata"]["name"]

        def established() -> bool:
            got = self.read("apiextensions.k8s.io/v1", "CustomResourceDefinition", name) or {}
            return any(c["type"] == "Established" and c["status"] == "True"
                       for c in (got.get("status") or {}).get("conditions") or [])

        self.wait_for(established, f"CRD {name} Established", timeout)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                self.wait_for(lambda v=version["name"]: self.resource(f"{group}/{v}", kind),
                              f"{kind} {group}/{version['name']} served", timeout)
        return applied

    def wait_for(self, probe: Callable[[], Any], what: str, timeout: float = 60.0,
                 interval: float = 0.25) -> Any:
        """Poll until `probe()` is truthy; fail naming `what` and the last value seen."""
        # KeyError: a kind not served yet
        return wait_until(probe, what, timeout, interval=interval, transient=(ApiError, KeyError))
