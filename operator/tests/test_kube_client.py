"""The operator's API client over real HTTP: credentials refresh after a 401, apply falls back to
create, errors keep the API server's message."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest
import pytest_asyncio
from aiohttp import web

from kubellama_operator.kube import ApiError, KubeClient

pytestmark = pytest.mark.asyncio


@dataclass
class Info:
    server: str
    token: str
    scheme: str = "Bearer"
    insecure: bool = False
    ca_path: str | None = None
    ca_data: str | None = None


@pytest_asyncio.fixture
async def fake_api():
    """A tiny API server: accepts only the token 't2'; PATCH (apply) answers 404, POST creates."""
    seen: list[tuple[str, str, str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, request.headers.get("Authorization", ""),
                     request.headers.get("Content-Type", "")))
        if request.headers.get("Authorization") != "Bearer t2":
            return web.json_response({"kind": "Status", "code": 401, "message": "Unauthorized"}, status=401)
        if request.method == "PATCH":
            return web.json_response({"kind": "Status", "code": 404, "message": "not found"}, status=404)
        if request.query.get("watch") == "true":  # two events and a bookmark, then the server ends the watch
            events = [{"type": t, "object": {"metadata": {"name": "s", "resourceVersion": rv}}}
                      for t, rv in (("ADDED", "2"), ("BOOKMARK", "3"), ("MODIFIED", "4"))]
            return web.Response(text="".join(json.dumps(e) + "\n" for e in events), content_type="application/json")
        if request.method == "POST":
            return web.json_response(json.loads(await request.text()), status=201)
        if request.path.endswith("/forbidden"):
            return web.json_response({"kind": "Status", "code": 403,
                                      "message": 'secrets "x" is forbidden: User "sa" cannot get'}, status=403)
        return web.json_response({"kind": "Status", "code": 404, "message": "nope"}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_relogin_after_401_and_apply_falls_back_to_create(fake_api):
    url, seen = fake_api
    tokens = iter(["t1", "t2"])  # the first token has expired (rotated service-account token)
    logins = []

    def login():
        logins.append(1)
        return Info(server=url, token=next(tokens))

    client = KubeClient(login)
    try:
        obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}}
        created = await client.apply(obj)
        assert created == obj
        assert len(logins) == 2
        methods = [(m, p, ct) for m, p, _, ct in seen]
        assert ("PATCH", "/api/v1/namespaces/ns/configmaps/c", "application/apply-patch+yaml") in methods
        assert methods[-1][:2] == ("POST", "/api/v1/namespaces/ns/configmaps")
        assert await client.get("v1", "Secret", "ns", "missing") is None
        with pytest.raises(ApiError) as err:
            await client.get("v1", "Secret", "ns", "forbidden")
        assert err.value.status == 403 and "cannot get" in str(err.value)
    finally:
        await client.close()


async def test_no_credentials_is_a_clear_error():
    client = KubeClient(lambda: None)
    with pytest.raises(RuntimeError, match="no Kubernetes credentials"):
        await client.get("v1", "Pod", "ns", "p")


async def test_the_sync_client_is_the_same_client_for_the_test_harnesses(fake_api):
    """`SyncKubeClient` (the control-plane harness's and the e2e support's) makes the operator client's calls,
    from a plain thread: the same re-login, apply fallback, 404 as None and error messages."""
    from kubellama_operator.kubesync import SyncKubeClient

    url, seen = fake_api
    tokens = iter(["t1", "t2"])
    sync = SyncKubeClient(lambda: Info(server=url, token=next(tokens)), user_agent="kubellama-tests")

    def calls() -> tuple:
        obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}}
        created = sync.apply(obj)
        missing = sync.get("v1", "Secret", "ns", "missing")
        with pytest.raises(ApiError) as err:
            sync.get("v1", "Secret", "ns", "forbidden")
        return created, missing, err.value

    def watched() -> tuple:
        events: list[dict] = []
        sync.watch("/apis/discovery.k8s.io/v1/endpointslices", {"resourceVersion": "1"}, events.append).result(10)

        def refuse(event: dict) -> None:
            raise RuntimeError(f"refused {event['type']}")

        broken = sync.watch("/apis/discovery.k8s.io/v1/endpointslices", None, refuse)
        with pytest.raises(RuntimeError, match="refused ADDED"):
            broken.result(10)
        return events

    try:
        created, missing, error = await asyncio.to_thread(calls)
        events = await asyncio.to_thread(watched)
    finally:
        await asyncio.to_thread(sync.close)
    assert created["metadata"]["name"] == "c" and missing is None
    assert error.status == 403 and "cannot get" in error.message
    assert [m for m, *_ in seen][3:5] == ["GET", "GET"] and seen[0][2] == "Bearer t1"
    # A watch runs in the background (on the client's thread) until the API server ends it; bookmarks are skipped.
    assert [(e["type"], e["object"]["metadata"]["resourceVersion"]) for e in events] == [("ADDED", "2"),
                                                                                       ("MODIFIED", "4")]
    with pytest.raises(AttributeError):
        sync._ensure  # the client's private coroutines are not offered
