"""Run the router for tests and benchmarks: in-process (uvicorn on a thread) on a free loopback port."""

from __future__ import annotations

import threading
import time

import httpx

from .cli import parse


class LiveRouter:
    def __init__(self, argv: list[str], *, kube_factory=None):
        from kubellama_server.testing.live import free_port

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
        import uvicorn

        from .app import create_app

        self.app = create_app(self.settings, kube=self.kube_factory() if self.kube_factory else None)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("router did not start")
            time.sleep(0.01)
        httpx.get(self.url + "/health", timeout=5).raise_for_status()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the router's /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics", timeout=5).text
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total
