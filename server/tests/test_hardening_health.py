"""/health means healthy: a dead or stuck scheduler thread is a 503 in the error shape."""

from __future__ import annotations

import threading
import time

import httpx


def health(srv) -> httpx.Response:
    return httpx.get(srv.url + "/health", timeout=10)


def test_dead_scheduler_is_unhealthy(live_server):
    srv = live_server()
    assert health(srv).status_code == 200
    srv.engine.scheduler.stop()
    r = health(srv)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "unavailable_error" and "stopped" in r.json()["error"]["message"]


def test_stuck_scheduler_is_unhealthy_until_it_steps_again(live_server):
    srv = live_server("--health-stall-timeout", "1")
    gate = threading.Event()
    srv.engine.call(lambda s: gate.wait(30))  # a step that does not end (a stuck decode)
    time.sleep(1.5)
    assert health(srv).status_code == 200  # idle: nothing is waiting for it
    result = {}
    t = threading.Thread(target=lambda: result.update(r=httpx.post(srv.url + "/completion",
                                                                   json={"prompt": "x", "n_predict": 2}, timeout=30)))
    t.start()
    deadline = time.monotonic() + 10
    while (r := health(srv)).status_code == 200:
        assert time.monotonic() < deadline, "never reported unhealthy"
        time.sleep(0.1)
    assert r.status_code == 503 and "has not stepped" in r.json()["error"]["message"]
    gate.set()
    t.join(30)
    assert result["r"].status_code == 200
    assert health(srv).status_code == 200
