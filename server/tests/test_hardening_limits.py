"""Limits with clear 4xx errors (README "Limits and security"), each through real HTTP on the
tiny model, the server serving a normal request afterwards."""

from __future__ import annotations

import base64
import socket
import struct
import threading
import time
import zlib

import httpx
import pytest

from kubellama_server.testing.tiny_mmproj import build_tiny_mmproj, tiny_png

TIMEOUT = 30


def post(srv, path, body, **kw) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, timeout=TIMEOUT, **kw)


def assert_error(r: httpx.Response, status: int, fragment: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and fragment in err["message"], err


def assert_serving(srv) -> None:
    r = post(srv, "/completion", {"prompt": "Hello", "n_predict": 2, "temperature": 0})
    assert r.status_code == 200 and r.json()["tokens_predicted"] == 2


@pytest.fixture(scope="module")
def small(tiny_model):
    """One server with small limits for most tests here."""
    from kubellama_server.testing.live import LiveServer

    srv = LiveServer(["-m", str(tiny_model), "-t", "1", "-c", "256", "-np", "2", "--max-body-bytes", "20000",
                      "--max-prompt-bytes", "4000", "--max-stop-strings", "4", "--max-stop-length", "16",
                      "--max-logit-bias", "8", "--max-request-tasks", "4"])
    srv.start()
    yield srv
    srv.stop()


def test_body_size(small):
    assert_error(post(small, "/completion", {"prompt": "x" * 30000}), 413, "--max-body-bytes")

    def chunks():  # no content-length: counted while it is read
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"}'

    r = httpx.post(small.url + "/completion", content=chunks(), timeout=TIMEOUT)
    assert_error(r, 413, "--max-body-bytes")
    assert_serving(small)


def test_prompt_bytes(small):
    assert_error(post(small, "/completion", {"prompt": "é" * 2500, "n_predict": 1}), 413, "--max-prompt-bytes")
    msgs = [{"role": "user", "content": "word " * 900}]
    assert_error(post(small, "/v1/chat/completions", {"messages": msgs, "max_tokens": 1}), 413, "--max-prompt-bytes")
    assert_error(post(small, "/v1/messages/count_tokens", {"model": "m", "messages": msgs}), 413, "--max-prompt-bytes")
    assert_error(post(small, "/apply-template", {"messages": msgs}), 413, "--max-prompt-bytes")
    assert_error(post(small, "/tokenize", {"content": "x" * 5000}), 413, "--max-prompt-bytes")
    assert post(small, "/tokenize", {"content": "x" * 100}).status_code == 200
    assert_error(post(small, "/completion", {"prompt": "x", "penalty_prompt": "y" * 5000}), 413, "'penalty_prompt'")
    assert_error(post(small, "/completion", {"prompt": "x", "logit_bias": [["z" * 5000, 1]]}), 413, "'logit_bias' strings")
    assert_serving(small)


def test_stop_strings(small):
    assert_error(post(small, "/completion", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}), 400, "--max-stop-strings")
    assert_error(post(small, "/completion", {"prompt": "x", "stop": ["y" * 17]}), 400, "--max-stop-length")
    assert post(small, "/completion", {"prompt": "x", "n_predict": 2, "stop": ["a", "b"]}).status_code == 200
    # DRY's sequence breakers are strings the sampler keeps and matches too: the same limits
    dry = {"prompt": "x", "n_predict": 2, "dry_multiplier": 0.8}
    assert_error(post(small, "/completion", {**dry, "dry_sequence_breakers": list("abcde")}), 400, "--max-stop-strings")
    assert_error(post(small, "/completion", {**dry, "dry_sequence_breakers": ["y" * 17]}), 400, "--max-stop-length")
    assert_error(post(small, "/v1/completions", {**dry, "dry_sequence_breakers": list("abcde")}), 400,
                 "'dry_sequence_breakers'")
    assert post(small, "/completion", {**dry, "dry_sequence_breakers": ["a", "b"]}).status_code == 200


def test_logit_bias_entries(small):
    bias = [[t, -1.0] for t in range(9)]
    assert_error(post(small, "/completion", {"prompt": "x", "logit_bias": bias}), 400, "--max-logit-bias")
    assert_error(post(small, "/v1/completions", {"prompt": "x", "logit_bias": {str(t): -1 for t in range(9)}}),
                 400, "--max-logit-bias")
    assert_serving(small)


def test_tasks_per_request(small):
    r = post(small, "/v1/completions", {"prompt": ["a", "b", "c"], "n": 2, "max_tokens": 1})
    assert_error(r, 400, "--max-request-tasks")
    assert post(small, "/v1/completions", {"prompt": ["a", "b"], "n": 2, "max_tokens": 1}).status_code == 200
    t0 = time.monotonic()  # refused before a task is built: a body of 3,000 prompts x 16 is no work
    assert_error(post(small, "/v1/completions", {"prompt": [[1]] * 3000, "n": 16}), 400, "48000 tasks")
    assert time.monotonic() - t0 < 2


def test_repeat_last_n_is_clamped_to_the_slot_context(small):
    t0 = time.monotonic()
    r = post(small, "/completion", {"prompt": "x", "n_predict": 1, "repeat_last_n": 2**31 - 1})
    assert r.status_code == 200 and r.json()["generation_settings"]["repeat_last_n"] == small.engine.n_ctx_slot()
    r = post(small, "/completion", {"prompt": "x", "n_predict": 1, "dry_multiplier": 0.8, "dry_penalty_last_n": 2**31 - 1})
    assert r.status_code == 200 and r.json()["generation_settings"]["dry_penalty_last_n"] == small.engine.n_ctx_slot()
    assert time.monotonic() - t0 < 5  # was a multi-GiB allocation


def test_n_predict_is_capped_by_the_server(live_server):
    # no -n: at most 4 slot contexts per request (context shifts let it run past one)
    srv = live_server("-c", "64", "-np", "1", "--context-shift")
    r = post(srv, "/completion", {"prompt": "x", "n_predict": 10**9, "ignore_eos": True, "temperature": 0})
    assert r.status_code == 200 and r.json()["tokens_predicted"] == 4 * srv.engine.n_ctx_slot()
    srv = live_server("-c", "64", "-np", "1", "-n", "5")
    r = post(srv, "/completion", {"prompt": "x", "n_predict": 50, "ignore_eos": True})
    assert r.json()["tokens_predicted"] == 5 and r.json()["generation_settings"]["n_predict"] == 5
    assert post(srv, "/completion", {"prompt": "x", "ignore_eos": True}).json()["tokens_predicted"] == 5


def test_queue_full_is_a_503_with_retry_after(live_server):
    srv = live_server("-np", "1", "--max-queued-tasks", "2")
    gate = threading.Event()
    srv.engine.call(lambda s: gate.wait(TIMEOUT))  # nothing leaves the queue meanwhile
    results = []
    threads = [threading.Thread(target=lambda: results.append(post(srv, "/completion", {"prompt": "x", "n_predict": 1})))
               for _ in range(2)]
    for t in threads:
        t.start()
    sched = srv.engine.scheduler
    deadline = time.monotonic() + TIMEOUT
    while sched.queued() < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    r = post(srv, "/completion", {"prompt": "x", "n_predict": 1})
    assert_error(r, 503, "--max-queued-tasks")
    assert r.headers["retry-after"] == "2"
    gate.set()
    for t in threads:
        t.join(TIMEOUT)
    assert [x.status_code for x in results] == [200, 200]
    assert_serving(srv)


def test_header_and_body_read_timeouts(live_server):
    srv = live_server("--header-timeout", "1", "--timeout", "1")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        assert s.recv(100) == b""  # closed by the server
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pro")
        reply = s.recv(1000)
        assert reply.startswith(b"HTTP/1.1 408") and b"--timeout" in reply
    assert_serving(srv)


def test_connection_limit(live_server):
    srv = live_server("--max-connections", "2")
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(2)]
    try:
        time.sleep(0.2)
        r = httpx.get(srv.url + "/health", timeout=10)
        assert r.status_code == 503
    finally:
        for s in socks:
            s.close()
    time.sleep(0.2)
    assert httpx.get(srv.url + "/health", timeout=10).status_code == 200


# -- images --------------------------------------------------------------------

def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_header(width: int, height: int) -> bytes:
    """A small PNG file whose header declares a huge image (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")


def test_image_limits(live_server, tmp_path):
    mmproj = build_tiny_mmproj(tmp_path / "mmproj.gguf")
    srv = live_server("--mmproj", str(mmproj), "-c", "1024", "--max-images", "2", "--max-image-bytes", "4000",
                      "--max-image-pixels", "10000")
    red = tiny_png(20, 12, seed=1)

    def images(*datas):
        prompt = " ".join(f"[img-{k}]" for k in range(len(datas))) + " what?"
        return post(srv, "/completion", {"prompt": prompt, "n_predict": 1,
                                         "image_data": [{"id": k, "data": b64(d)} for k, d in enumerate(datas)]})

    assert images(red).status_code == 200
    assert_error(images(red, red, red), 400, "--max-images")
    assert_error(images(tiny_png(40, 40, seed=3)), 413, "--max-image-bytes")  # 4.8 kB of random pixels
    assert_error(images(png_header(50000, 50000)), 400, "--max-image-pixels")
    url = "data:image/png;base64," + b64(png_header(50000, 50000))
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]}]
    assert_error(post(srv, "/v1/chat/completions", {"messages": msgs, "max_tokens": 1}), 400, "--max-image-pixels")
    assert_serving(srv)
