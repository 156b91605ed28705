"""Replicas from a Service's EndpointSlices: listed, then watched; only ready endpoints count.

Uses the operator's Kubernetes client (`kubellama_operator.kube`) with the pod's service
account (or a kubeconfig outside a cluster). Needs `list` and `watch` on
`discovery.k8s.io` `endpointslices` in the namespace.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .pool import Pool

log = logging.getLogger("kubellama.router")

SERVICE_LABEL = "kubernetes.io/service-name"


def slice_urls(eps: dict[str, Any], port_name: str) -> list[str]:
    """The base URLs of one EndpointSlice's ready endpoints on the named port."""
    ports = eps.get("ports") or []
    port = next((p.get("port") for p in ports if p.get("name") == port_name), None)
    if port is None and len(ports) == 1 and not ports[0].get("name"):  # a Service with one unnamed port
        port = ports[0].get("port")
    if port is None:
        return []
    v6 = eps.get("addressType") == "IPv6"
    urls = []
    for ep in eps.get("endpoints") or []:
        cond = ep.get("conditions") or {}
        # `ready` unset means unknown, to be read as ready (EndpointConditions); terminating pods are not ready
        if cond.get("ready") is False or cond.get("terminating") is True and cond.get("ready") is not True:
            continue
        for addr in (ep.get("addresses") or [])[:1]:
            urls.append(f"http://[{addr}]:{port}" if v6 else f"http://{addr}:{port}")
    return urls


def ready_urls(slices: dict[str, dict[str, Any]], port_name: str) -> list[str]:
    return sorted({u for eps in slices.values() for u in slice_urls(eps, port_name)})


def login() -> Any:
    import kopf

    settings, logger = kopf.OperatorSettings(), log
    return (kopf.login_with_service_account(settings=settings, logger=logger)
            or kopf.login_with_kubeconfig(settings=settings, logger=logger))


async def watch_endpoints(pool: Pool, namespace: str, service: str, port_name: str = "http",
                          client: Any = None) -> None:
    """Keep `pool`'s replicas equal to the Service's ready endpoints until cancelled."""
    from kubellama_operator.kube import KubeClient

    own = client is None
    client = client or KubeClient(login)
    params = {"labelSelector": f"{SERVICE_LABEL}={service}"}
    path = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
    backoff = 1.0
    try:
        while True:
            try:
                listing = await client.request("GET", path, params=params)
                slices = {i["metadata"]["name"]: i for i in listing.get("items", [])
                          if (i["metadata"].get("labels") or {}).get(SERVICE_LABEL) == service}
                pool.set_replicas(ready_urls(slices, port_name))
                version = listing.get("metadata", {}).get("resourceVersion", "")
                log.info("endpoints of %s/%s: %s", namespace, service, ready_urls(slices, port_name))
                async for event in client.watch(path, {**params, "resourceVersion": version}):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        break  # e.g. 410 Gone: list again
                    name = (obj.get("metadata") or {}).get("name")
                    if (obj.get("metadata", {}).get("labels") or {}).get(SERVICE_LABEL) != service or not name:
                        continue
                    if kind == "DELETED":
                        slices.pop(name, None)
                    elif kind in ("ADDED", "MODIFIED"):
                        slices[name] = obj
                    pool.set_replicas(ready_urls(slices, port_name))
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep following; the last set stays meanwhile
                log.warning("watching endpoints of %s/%s: %s (again in %.0fs)", namespace, service, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
    finally:
        if own:
            await client.close()
