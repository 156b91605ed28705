"""The router follows a Service's EndpointSlices through the operator's Kubernetes client:
list, then watch; ready endpoints only; an ERROR event (410 Gone) lists again."""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio
from aiohttp import web

from kubellama_operator.kube import KubeClient
from kubellama_router import strategies
from kubellama_router.testing import LoginInfo
from kubellama_router.endpoints import watch_endpoints
from kubellama_router.pool import Pool

pytestmark = pytest.mark.asyncio


def eps(name: str, *endpoints: tuple[str, bool], service: str = "chat") -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in endpoints]}


@pytest_asyncio.fixture
async def api():
    """An API server stand-in over real HTTP: the listing, and watch streams fed from a queue."""
    state = {"items": [eps("chat-a", ("10.0.0.1", True), ("10.0.0.2", False))], "lists": 0, "auth": set()}
    events: asyncio.Queue = asyncio.Queue()

    async def handle(request: web.Request) -> web.StreamResponse:
        state["auth"].add(request.headers.get("Authorization"))
        assert request.path == "/apis/discovery.k8s.io/v1/namespaces/ml/endpointslices"
        assert request.query["labelSelector"] == "kubernetes.io/service-name=chat"
        if request.query.get("watch") != "true":
            state["lists"] += 1
            return web.json_response({"kind": "EndpointSliceList", "metadata": {"resourceVersion": "7"},
                                      "items": state["items"]})
        assert request.query["resourceVersion"] == "7"
        resp = web.StreamResponse()
        await resp.prepare(request)
        while True:
            event = await events.get()
            if event is None:
                return resp
            await resp.write(json.dumps(event).encode() + b"\n")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", state, events
    await runner.cleanup()


async def _until(cond, timeout=5.0):
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_router_follows_ready_endpoints(api):
    url, state, events = api
    pool = Pool(strategies.make("round-robin"))
    ready = lambda: sorted(r.url for r in pool.ready())  # noqa: E731
    task = asyncio.create_task(watch_endpoints(pool, "ml", "chat", client=KubeClient(lambda: LoginInfo(url))))
    try:
        await _until(lambda: ready() == ["http://10.0.0.1:8080"])
        # a pod turns ready, a second slice appears, a slice of another Service is ignored
        events.put_nowait({"type": "MODIFIED", "object": eps("chat-a", ("10.0.0.1", True), ("10.0.0.2", True))})
        events.put_nowait({"type": "ADDED", "object": eps("chat-b", ("10.0.0.3", True))})
        events.put_nowait({"type": "ADDED", "object": eps("other", ("10.9.9.9", True), service="other")})
        events.put_nowait({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})
        await _until(lambda: ready() == ["http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080"])
        # a pod goes away (not ready while terminating), a slice is deleted
        events.put_nowait({"type": "MODIFIED", "object": eps("chat-a", ("10.0.0.1", False), ("10.0.0.2", True))})
        events.put_nowait({"type": "DELETED", "object": eps("chat-b")})
        await _until(lambda: ready() == ["http://10.0.0.2:8080"])
        # 410 Gone: list again (the listing is now the truth)
        state["items"] = [eps("chat-a", ("10.0.0.4", True))]
        events.put_nowait({"type": "ERROR", "object": {"kind": "Status", "code": 410}})
        await _until(lambda: ready() == ["http://10.0.0.4:8080"])
        assert state["lists"] == 2 and state["auth"] == {"Bearer sa-token"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for _ in range(2):  # end both watch streams (before and after the relist)
            events.put_nowait(None)
