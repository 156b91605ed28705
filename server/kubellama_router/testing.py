"""Run the router for tests and benchmarks: in-process (uvicorn on a thread) on a free loopback port."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import httpx

from kubellama_server.promtext import read_samples
from kubellama_server.testing.live import free_port, serve_in_thread, stop_thread_server

from .cli import parse


@dataclass
class LoginInfo:
    """A login for `KubeClient` with the fields of kopf's ConnectionInfo that it reads: a
    service-account token for a stand-in API server on loopback."""

    server: str
    token: str = "sa-token"
    scheme: str = "Bearer"
    insecure: bool = False
    ca_path: str | None = None
    ca_data: str | None = None


class LiveRouter:
    def __init__(self, argv: list[str], *, kube_factory=None):
        self.port = free_port()
        self.settings = parse(argv + ["--host", "127.0.0.1", "--port", str(self.port)], environ={})
        self.url = f"http://127.0.0.1:{self.port}"
        self.kube_factory = kube_factory  # -> a KubeClient instead of the pod's service account
        self.app = None
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def pool(self):
        return self.app.state.pool

    def start(self) -> "LiveRouter":
        from .app import create_app

        self.app = create_app(self.settings, kube=self.kube_factory() if self.kube_factory else None)
        self._server, self._thread = serve_in_thread(self.app, self.port, "router")
        httpx.get(self.url + "/health", timeout=5).raise_for_status()
        return self

    def stop(self) -> None:
        stop_thread_server(self._server, self._thread)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the router's /metrics samples `name` with these labels (0 when absent)."""
        samples = read_samples(httpx.get(self.url + "/metrics", timeout=5).content, (name,), limit=None)
        assert samples is not None, "the router's /metrics is not a Prometheus text page"
        return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))
