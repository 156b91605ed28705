"""Scale from zero and back: the router holds a request while no replica exists, sets the
LlamaServer's scale to one, forwards the request once the replica's endpoint is ready, and scales
to zero when idle. The Kubernetes API is a stand-in over real HTTP (scale subresource and
EndpointSlices list/watch); the replica is a real kubellama-server on the tiny model."""

from __future__ import annotations

import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import httpx

from kubellama_operator.kube import KubeClient
from kubellama_server.testing.wait import wait_until
from kubellama_router.testing import LoginInfo, LiveRouter
from kubellama_server.testing.live import LiveServer

SCALE = "/apis/kubellama.dev/v1alpha1/namespaces/ml/llamaservers/chat/scale"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/ml/endpointslices"


class FakeCluster:
    """The LlamaServer's scale and its Service's EndpointSlice; scaling starts or stops the replica."""

    def __init__(self, tiny_model):
        self.model = tiny_model
        self.replicas = 0
        self.history: list[int] = []
        self.server: LiveServer | None = None
        self.watchers: list[queue.Queue] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def _json(self, obj, status=200):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urlparse(self.path)
                if url.path == SCALE:
                    return self._json({"kind": "Scale", "spec": {"replicas": outer.replicas}})
                assert url.path == SLICES, url.path
                if parse_qs(url.query).get("watch") != ["true"]:
                    return self._json({"metadata": {"resourceVersion": "1"}, "items": [outer.slice()]})
                events: queue.Queue = queue.Queue()
                outer.watchers.append(events)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                while True:
                    event = events.get()
                    if event is None:
                        return
                    self.wfile.write(json.dumps(event).encode() + b"\n")
                    self.wfile.flush()

            def do_PATCH(self):
                assert urlparse(self.path).path == SCALE
                assert self.headers["Content-Type"] == "application/merge-patch+json"
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.scale(int(body["spec"]["replicas"]))
                return self._json({"kind": "Scale", "spec": {"replicas": outer.replicas}})

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def slice(self) -> dict:
        eps = [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}] if self.server else []
        port = self.server.port if self.server else 1
        return {"metadata": {"name": "chat-x", "labels": {"kubernetes.io/service-name": "chat"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": port}], "endpoints": eps}

    def scale(self, n: int) -> None:
        with self.lock:
            self.replicas = n
            self.history.append(n)
        # what the StatefulSet controller and the kubelet would do, then the EndpointSlice controller
        threading.Thread(target=self._converge, args=(n,), daemon=True).start()

    def _converge(self, n: int) -> None:
        with self.lock:
            if n > 0 and self.server is None:
                self.server = LiveServer(["-m", str(self.model), "-t", "1", "-c", "512"]).start()
            elif n == 0 and self.server is not None:
                self.server.stop()
                self.server = None
            event = {"type": "MODIFIED", "object": self.slice()}
        for w in list(self.watchers):
            w.put(event)

    def close(self) -> None:
        for w in self.watchers:
            w.put(None)
        self.http.shutdown()
        if self.server:
            self.server.stop()


def test_scale_from_zero_holds_the_request_then_scales_back_to_zero(tiny_model):
    cluster = FakeCluster(tiny_model)
    router = LiveRouter(["--service", "chat", "--namespace", "ml", "--autoscale", "chat", "--min-replicas", "0",
                         "--max-replicas", "2", "--target-requests", "4", "--autoscale-window", "1",
                         "--scale-down-delay", "1", "--queue-timeout", "60"],
                        kube_factory=lambda: KubeClient(lambda: LoginInfo(cluster.url)))
    try:
        router.start()
        assert httpx.get(router.url + "/health").json()["ready_replicas"] == 0
        resp = httpx.post(router.url + "/v1/chat/completions", timeout=60,
                          json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert resp.status_code == 200, resp.text  # held until the replica was ready, then answered
        # Counted, not timed: one scale-up, one wait for a replica (no retry), nothing refused.
        assert cluster.history[0] == 1
        assert router.metric("kubellama_router_queue_wait_seconds_count") == 1
        assert router.metric("kubellama_router_queue_wait_seconds_sum") > 0
        assert router.metric("kubellama_router_rejected_total") == 0
        wait_until(lambda: cluster.history[-1] == 0, f"scale back to zero when idle (history {cluster.history})",
                   20, interval=0.1)
        assert cluster.history == [1, 0] and router.metric("kubellama_router_autoscale_replicas") == 0
    finally:
        router.stop()
        cluster.close()
