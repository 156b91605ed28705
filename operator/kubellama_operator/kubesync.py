"""`KubeClient` for synchronous callers (the control-plane harness, the e2e tests' support code, scripts): the
same requests, errors and credential handling as the operator's, driven on an event loop of its own thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from types import SimpleNamespace
from typing import Any, Callable

from .kube import KubeClient


def token_login(server: str, token: str, ca_path: str | None = None) -> Callable[[], Any]:
    """A `login` for a bearer token (and the CA that signed the API server's certificate)."""
    return lambda: SimpleNamespace(server=server, token=token, scheme="Bearer", ca_path=ca_path, insecure=False)


def kubeconfig_login() -> Any:
    """A `login` from $KUBECONFIG (or ~/.kube/config), as the operator logs in outside a cluster (kopf)."""
    import logging

    import kopf

    return kopf.login_with_kubeconfig(settings=kopf.OperatorSettings(), logger=logging.getLogger(__name__))


class SyncKubeClient:
    """Every coroutine method of `KubeClient` (request, get, list, apply, delete, patch_status, pod_log,
    has_resource) as a plain call that returns its result, `watch` in the background; `close()` (or `with`)
    ends the thread."""

    def __init__(self, login: Callable[[], Any], *, timeout: float = 120.0, user_agent: str = "kubellama-tests"):
        self.client = KubeClient(login, user_agent=user_agent)
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kube-sync", daemon=True)
        self._thread.start()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self._timeout)

    def __getattr__(self, name: str) -> Any:
        method = getattr(KubeClient, name, None)
        if method is None or not asyncio.iscoroutinefunction(method) or name.startswith("_"):
            raise AttributeError(name)
        bound = getattr(self.client, name)
        return lambda *args, **kwargs: self._run(bound(*args, **kwargs))

    def watch(self, path: str, params: dict[str, str] | None, on_event: Callable[[dict[str, Any]], None], *,
              timeout_seconds: int = 300) -> concurrent.futures.Future:
        """Follow `KubeClient.watch` in the background: `on_event` gets each event (on the client's thread) until
        the API server ends the watch or the returned future is cancelled; what `on_event` raises ends it too."""
        async def follow() -> None:
            async for event in self.client.watch(path, params, timeout_seconds=timeout_seconds):
                on_event(event)

        return asyncio.run_coroutine_threadsafe(follow(), self._loop)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> "SyncKubeClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
