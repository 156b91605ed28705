"""A small async Kubernetes API client (aiohttp) for the operator's own calls.

kopf authenticates its own requests; this client takes the same `kopf.ConnectionInfo`
(from the login handler) and re-reads credentials after a 401 (rotated service-account tokens).
Every call it makes is covered by `rbac.RULES`.
"""

from __future__ import annotations

import json
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from . import FIELD_MANAGER

#: kind -> plural for the kinds the operator touches.
PLURALS = {
    "StatefulSet": "statefulsets", "Service": "services", "ConfigMap": "configmaps",
    "PodDisruptionBudget": "poddisruptionbudgets", "ServiceMonitor": "servicemonitors",
    "NetworkPolicy": "networkpolicies",
    "Pod": "pods", "Secret": "secrets", "PersistentVolumeClaim": "persistentvolumeclaims",
    "LlamaServer": "llamaservers", "Event": "events",
    "Deployment": "deployments", "ServiceAccount": "serviceaccounts", "Role": "roles", "RoleBinding": "rolebindings",
    "InferencePool": "inferencepools", "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "ScaledObject": "scaledobjects", "Job": "jobs",
}


class ApiError(Exception):
    def __init__(self, status: int, method: str, url: str, body: Any):
        self.status, self.method, self.url, self.body = status, method, url, body
        msg = body.get("message") if isinstance(body, dict) else str(body)[:300]
        self.message: str = str(msg)
        super().__init__(f"{method} {url}: HTTP {status}: {msg}")


def resource_path(api_version: str, kind_or_plural: str, namespace: str | None = None,
                  name: str | None = None, subresource: str | None = None) -> str:
    plural = PLURALS.get(kind_or_plural, kind_or_plural)
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = base + (f"/namespaces/{quote(namespace)}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


def _ssl_context(info: Any) -> ssl.SSLContext | bool:
    if getattr(info, "insecure", False):
        return False
    ctx = ssl.create_default_context(
        cafile=str(info.ca_path) if getattr(info, "ca_path", None) else None,
        cadata=info.ca_data.decode() if isinstance(getattr(info, "ca_data", None), bytes)
        else getattr(info, "ca_data", None))
    cert, key = getattr(info, "certificate_path", None), getattr(info, "private_key_path", None)
    cert_data, key_data = getattr(info, "certificate_data", None), getattr(info, "private_key_data", None)
    if cert_data and key_data:  # load_cert_chain needs files
        files = []
        for data in (cert_data, key_data):
            f = tempfile.NamedTemporaryFile(delete=False, suffix=".pem")
            f.write(data if isinstance(data, bytes) else data.encode())
            f.close()
            files.append(f.name)
        cert, key = files
    if cert:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


class KubeClient:
    """Minimal async API client. `login` returns a fresh `kopf.ConnectionInfo` (or similar: `server`, `token` or
    `username`/`password`, `ca_path`/`ca_data`, client certificates). The one client of the project: the
    operator's, the router's, and (through `kubesync.SyncKubeClient`) the test harnesses'."""

    def __init__(self, login: Callable[[], Any], *, on_request: Callable[[str, int], None] | None = None,
                 user_agent: str = FIELD_MANAGER):
        self._login = login
        self._user_agent = user_agent
        self._info: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._on_request = on_request

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _ensure(self, refresh: bool = False) -> aiohttp.ClientSession:
        if self._session is None or refresh:
            if self._session is not None:
                await self._session.close()
            self._info = self._login()
            if self._info is None:
                raise RuntimeError("no Kubernetes credentials: neither in-cluster service account "
                                   "nor a kubeconfig (KUBECONFIG or ~/.kube/config) was found")
            headers = {"User-Agent": self._user_agent}
            auth = None
            if getattr(self._info, "token", None):
                headers["Authorization"] = f"{self._info.scheme or 'Bearer'} {self._info.token}"
            elif getattr(self._info, "username", None):
                auth = aiohttp.BasicAuth(self._info.username, self._info.password or "")
            self._session = aiohttp.ClientSession(
                base_url=self._info.server.rstrip("/") + "/", headers=headers, auth=auth,
                connector=aiohttp.TCPConnector(ssl=_ssl_context(self._info)),
                timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def request(self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None,
                      content_type: str = "application/json") -> Any:
        for attempt in (0, 1):
            session = await self._ensure(refresh=attempt > 0)
            data = None if body is None else json.dumps(body)
            headers = {"Content-Type": content_type} if body is not None else {}
            async with session.request(method, path.lstrip("/"), data=data, params=params,
                                       headers=headers) as resp:
                if self._on_request:
                    self._on_request(method, resp.status)
                if resp.status == 401 and attempt == 0:
                    continue  # credentials rotated: log in again once
                text = await resp.text()
                is_json = resp.content_type == "application/json" and text.lstrip().startswith("{")
                payload: Any = json.loads(text) if is_json else text
                if resp.status >= 400:
                    raise ApiError(resp.status, method, path, payload)
                return payload
        raise AssertionError("unreachable")

    async def watch(self, path: str, params: dict[str, str] | None = None, *,
                    timeout_seconds: int = 300) -> AsyncIterator[dict[str, Any]]:
        """Events of a watch on a collection (`{"type", "object"}` each) until the server ends it.

        The caller lists first and passes `resourceVersion` in `params`; an `ERROR` event
        (e.g. 410 Gone) means list again. The router follows EndpointSlices with it."""
        query = {**(params or {}), "watch": "true", "timeoutSeconds": str(timeout_seconds),
                 "allowWatchBookmarks": "true"}
        for attempt in (0, 1):
            session = await self._ensure(refresh=attempt > 0)
            async with session.get(path.lstrip("/"), params=query, timeout=aiohttp.ClientTimeout(
                    total=None, sock_read=timeout_seconds + 30)) as resp:
                if self._on_request:
                    self._on_request("WATCH", resp.status)
                if resp.status == 401 and attempt == 0:
                    continue
                if resp.status >= 400:
                    text = await resp.text()
                    raise ApiError(resp.status, "WATCH", path, text[:300])
                buf = b""
                async for chunk in resp.content.iter_any():  # one JSON event per line
                    buf += chunk
                    if len(buf) > 16 * 1024 * 1024:
                        raise ApiError(resp.status, "WATCH", path, "watch event larger than 16 MiB")
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if line.strip():
                            event = json.loads(line)
                            if event.get("type") != "BOOKMARK":
                                yield event
                return

    # --- typed helpers -------------------------------------------------------------------------

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", resource_path(api_version, kind, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(self, api_version: str, kind: str, namespace: str | None,
                   labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        data = await self.request("GET", resource_path(api_version, kind, namespace), params=params)
        items = data.get("items", []) if isinstance(data, dict) else []
        if labels:  # also filter here: some API emulators ignore labelSelector
            items = [i for i in items
                     if all((i.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in labels.items())]
        return items

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply `obj` with our field manager (creating it when absent)."""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        try:
            return await self.request("PATCH", path, body=obj, content_type="application/apply-patch+yaml",
                                      params={"fieldManager": FIELD_MANAGER, "force": "true"})
        except ApiError as e:
            if e.status != 404:
                raise
        # API servers create on apply; emulators without apply support answer 404: create instead.
        return await self.request("POST", resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace")),
                                  body=obj, params={"fieldManager": FIELD_MANAGER})

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        try:
            await self.request("DELETE", resource_path(api_version, kind, namespace, name),
                               body={"propagationPolicy": "Background"})
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> Any:
        return await self.request("PATCH", resource_path(api_version, kind, namespace, name, "status"),
                                  body={"status": status}, content_type="application/merge-patch+json")

    async def pod_log(self, namespace: str, name: str, container: str, *, tail_lines: int = 20,
                      limit_bytes: int = 16384) -> str | None:
        """The end of a container's log, or None when it cannot be read (not started, forbidden)."""
        try:
            text = await self.request("GET", resource_path("v1", "Pod", namespace, name, "log"),
                                      params={"container": container, "tailLines": str(tail_lines),
                                              "limitBytes": str(limit_bytes)})
        except ApiError as e:
            if e.status in (400, 403, 404):
                return None
            raise
        return text if isinstance(text, str) else None

    async def has_resource(self, group_version: str, plural: str) -> bool:
        """Whether the API server serves `plural` in `group_version` (discovery; no RBAC needed)."""
        try:
            data = await self.request("GET", f"/apis/{group_version}")
        except ApiError as e:
            if e.status in (404, 503):
                return False
            raise
        return any(r.get("name") == plural for r in (data or {}).get("resources", []))
