"""The load generator against a real (tiny, scripted) SSE server on loopback."""
import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import api
from bench.api import Sampling
from bench.loadgen import ClientPlan, RequestSpec, Workload, api_for, run_workload
from bench.stats import summarize_run

DELAY = 0.05  # seconds between streamed tokens


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.bodies.append((self.path, body))
        if self.path not in ("/completion", "/v1/chat/completions"):
            msg = b'{"error": {"message": "not found"}}'
            self.send_response(404)
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        n = body.get("n_predict") or body.get("max_tokens")
        time.sleep(DELAY * 2)  # "prompt processing"
        for i in range(n):
            if self.path == "/completion":
                ev = {"content": f"t{i}", "stop": False}
            else:
                ev = {"choices": [{"delta": {"content": f"t{i}"}}]}
            self.wfile.write(f"data: {json.dumps(ev)}\n\n".encode())
            self.wfile.flush()
            time.sleep(DELAY)
        if self.path == "/completion":
            final = {"content": "", "stop": True, "tokens_predicted": n, "tokens_evaluated": 11}
            self.wfile.write(f"data: {json.dumps(final)}\n\n".encode())
        else:
            usage = {"choices": [], "usage": {"completion_tokens": n, "prompt_tokens": 12}}
            self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture(scope="module")
def base_url():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def workload(clients, n=5, reqs=1):
    plans = [ClientPlan([RequestSpec(prompt="p", n_predict=n, seed=c * 10 + i) for i in range(reqs)])
             for c in range(clients)]
    return Workload("w", "completion", plans)


@pytest.mark.parametrize("flavour", [api.NATIVE, api.CHAT])
def test_records_tokens_ttft_and_itl(base_url, flavour):
    recs = asyncio.run(run_workload(base_url, flavour, workload(1, n=6), Sampling(), [1]))
    (r,) = recs
    assert r.ok, r.error
    assert r.n_generated == 6 and len(r.chunk_times) == 6
    assert r.n_prompt == (11 if flavour == api.NATIVE else 12)
    # generous upper bounds: CI machines are shared and busy
    assert 2 * DELAY * 0.8 <= r.ttft < 2 * DELAY + 2.0
    itls = r.inter_token_latencies()
    assert len(itls) == 5 and all(DELAY * 0.8 <= g < DELAY + 1.0 for g in itls)


def test_clients_run_concurrently(base_url):
    n, clients = 20, 4
    recs = asyncio.run(run_workload(base_url, api.NATIVE, workload(clients, n=n), Sampling(), []))
    s = summarize_run(recs)
    one_request = DELAY * (n + 2)
    assert s["generated_tokens"] == n * clients and s["errors"] == 0
    assert s["wall_s"] < one_request * clients * 0.6  # overlapped, not serial
    assert s["gen_tok_s"] > clients * n / (one_request * clients * 0.6)


def test_sequential_requests_per_client_and_seeds_sent(base_url):
    Handler.bodies.clear()
    asyncio.run(run_workload(base_url, api.NATIVE, workload(2, n=2, reqs=2), Sampling(), [106]))
    assert sorted(b["seed"] for _, b in Handler.bodies) == [0, 1, 10, 11]
    assert all(b["logit_bias"] == [[106, False]] for _, b in Handler.bodies)


def test_http_error_is_recorded_not_raised(base_url):
    recs = asyncio.run(run_workload(base_url, api.COMPLETIONS, workload(1), Sampling(), []))
    assert recs[0].error.startswith("ValueError: HTTP 404")
    assert summarize_run(recs)["errors"] == 1


def test_local_token_count_fallback(base_url):
    # the chat stream reports prompt tokens; a peer that does not is counted locally
    recs = asyncio.run(run_workload(base_url, api.NATIVE, workload(1, n=1), Sampling(), [],
                                    count_tokens=lambda text: 99))
    assert recs[0].n_prompt == 11  # server-reported wins
    assert api_for("completion", frozenset({api.COMPLETIONS})) == api.COMPLETIONS
    assert api_for("completion", frozenset({api.NATIVE, api.COMPLETIONS})) == api.NATIVE
    assert api_for("chat", frozenset({api.NATIVE})) is None
