"""A conversation keeps the replica that holds its cache when the endpoints flap: a pod whose
readiness blinks (or a slice replaced by another) comes back with its KV cache, and the router
must still know what it holds. The Kubernetes API is a stand-in over real HTTP (EndpointSlices
list/watch); the replicas are real kubellama-servers on the tiny model."""

from __future__ import annotations

import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import httpx

from kubellama_operator.kube import KubeClient
from kubellama_router.testing import LoginInfo, LiveRouter

SLICES = "/apis/discovery.k8s.io/v1/namespaces/ml/endpointslices"
SYSTEM = "You answer questions about the solar system, briefly and with care. " * 3


def eps(name: str, port: int, ready: bool) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "chat"}},
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}}]}


class SliceAPI:
    """EndpointSlices of Service `chat`: one slice per replica; events pushed to the watchers."""

    def __init__(self, ports: list[int]):
        self.items = [eps(f"chat-{i}", p, True) for i, p in enumerate(ports)]
        self.watchers: list[queue.Queue] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                assert url.path == SLICES, url.path
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if parse_qs(url.query).get("watch") != ["true"]:
                    data = json.dumps({"metadata": {"resourceVersion": "1"}, "items": outer.items}).encode()
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.end_headers()
                events: queue.Queue = queue.Queue()
                outer.watchers.append(events)
                while (event := events.get()) is not None:
                    self.wfile.write(json.dumps(event).encode() + b"\n")
                    self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def push(self, kind: str, obj: dict) -> None:
        for w in self.watchers:
            w.put({"type": kind, "object": obj})

    def close(self) -> None:
        for w in self.watchers:
            w.put(None)
        self.httpd.shutdown()


def _ready(router) -> list[str]:
    """Replicas ready, with their slot counts scraped."""
    return sorted(r["url"] for r in httpx.get(router.url + "/router/replicas").json()["replicas"]
                  if r["ready"] and r["slots"])


def _wait(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _chat(url: str, messages) -> dict:
    r = httpx.post(url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 4, "temperature": 0},
                   timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_conversations_keep_their_replica_through_an_endpoints_flap(fresh_replicas, router):
    a, b = fresh_replicas(2)
    ports = [int(s.url.rsplit(":", 1)[1]) for s in (a, b)]
    api = SliceAPI(ports)
    try:
        r = LiveRouter(["--service", "chat", "--namespace", "ml", "--strategy", "prefix", "--seed", "1"],
                       kube_factory=lambda: KubeClient(lambda: LoginInfo(api.url))).start()
        try:
            _wait(lambda: _ready(r) == sorted([a.url, b.url]) and api.watchers)
            convs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Hello from {k}"}]
                     for k in range(4)]
            previous = []
            for msgs in convs:
                d = _chat(r.url, msgs)
                previous.append(d["usage"]["prompt_tokens"])
                msgs += [d["choices"][0]["message"], {"role": "user", "content": "and then?"}]
            # each replica's readiness blinks (a slow probe), one after the other, between two turns
            for i, port in enumerate(ports):
                other = [u for u in (a.url, b.url) if not u.endswith(f":{port}")]
                api.push("MODIFIED", eps(f"chat-{i}", port, False))
                _wait(lambda: _ready(r) == other)
                api.push("MODIFIED", eps(f"chat-{i}", port, True))
                _wait(lambda: _ready(r) == sorted([a.url, b.url]))
            for k, msgs in enumerate(convs):
                usage = _chat(r.url, msgs)["usage"]
                assert usage["prompt_tokens_details"]["cached_tokens"] >= previous[k] - 1, (k, usage)
        finally:
            r.stop()
    finally:
        api.close()
