"""`kubellama-server -mu URL` / `-hfr REPO -hff FILE`: download at start-up, /health 503 meanwhile, then serve."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from kubellama_server.testing.live import ServerProcess


@pytest.fixture(autouse=True)
def _needs_server_downloads():
    from kubellama_server import cli

    if "model_url" in getattr(cli, "NOT_IMPLEMENTED", {}):
        pytest.skip("kubellama-server does not implement -mu/-hfr model downloads yet "
                    "(model_url is still listed in kubellama_server.cli.NOT_IMPLEMENTED)")


def _watch_until_healthy(url: str, proc, on_poll=None, timeout: float = 90.0) -> list[tuple[int, dict]]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            r = httpx.get(url + "/health", timeout=2)
        except httpx.TransportError:
            time.sleep(0.02)
            continue
        seen.append((r.status_code, r.json(), on_poll() if on_poll else None))
        if r.status_code == 200:
            return seen
        assert r.status_code == 503, r.text
        time.sleep(0.05)
    raise TimeoutError(f"server not healthy after {timeout}s: {seen[-3:]}")


def _health_once_loaded(srv, timeout: float = 60.0) -> httpx.Response:
    """The first /health answer that is not 503 "loading model" (the server must stay up)."""
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline and srv.proc.poll() is None, srv.log()
        try:
            r = httpx.get(srv.url + "/health", timeout=2)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        if r.status_code != 503:
            return r
        time.sleep(0.05)


def _complete(url: str) -> dict:
    r = httpx.post(url + "/completion", json={"prompt": "hello world", "n_predict": 4, "seed": 1}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_server_downloads_model_url_and_answers_503_meanwhile(model_server, tiny_bytes, tmp_path):
    url = model_server.add("/tiny.gguf", tiny_bytes, rate=300_000)  # ~2 s download
    cache = tmp_path / "cache"
    srv = ServerProcess(["-mu", url, "-t", "1", "-c", "512", "-np", "1"], env={"LLAMA_CACHE": str(cache)})
    srv.start(wait=False, log_path=tmp_path / "server.log")
    try:
        def in_flight():
            return [r.sent for r in model_server.requests_for("/tiny.gguf", "GET")]

        seen = _watch_until_healthy(srv.url, srv.proc, on_poll=in_flight)
        during = [body for status, body, sent in seen if status == 503 and sent and 0 < sent[-1] < len(tiny_bytes)]
        assert during, f"no 503 observed while the download was in progress: {seen[:5]}"
        assert during[0]["status"] == "loading model"
        assert _complete(srv.url)["tokens_predicted"] >= 1
    finally:
        srv.stop()
    files = sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))
    name = f"127.0.0.1_{model_server.port}_tiny.gguf"
    assert files == [name, name + ".meta.json"], srv.log()
    assert (cache / name).read_bytes() == tiny_bytes

    # a second start uses the cache without any request, even offline
    n = len(model_server.requests)
    srv = ServerProcess(["-mu", url, "--offline", "-t", "1", "-c", "512", "-np", "1"],
                        env={"LLAMA_CACHE": str(cache)})
    srv.start(log_path=tmp_path / "server2.log")
    try:
        assert _complete(srv.url)["tokens_predicted"] >= 1
    finally:
        srv.stop()
    assert len(model_server.requests) == n


def test_server_downloads_from_the_hub(hf_hub, tiny_bytes, tiny_sha, tmp_path):
    hf_hub.add_hub_file("kubellama/tiny-GGUF", "tiny-Q8_0.gguf", tiny_bytes, gated=True, token="hf_x")
    cache = tmp_path / "cache"
    srv = ServerProcess(["-hfr", "kubellama/tiny-GGUF", "-hff", "tiny-Q8_0.gguf", "--model-sha256", tiny_sha,
                         "-t", "1", "-c", "512", "-np", "1"],
                        env={"LLAMA_CACHE": str(cache), "HF_TOKEN": "hf_x"})
    srv.start(log_path=tmp_path / "server.log")
    try:
        assert _complete(srv.url)["tokens_predicted"] >= 1
    finally:
        srv.stop()
    meta = json.loads((cache / "kubellama_tiny-GGUF_tiny-Q8_0.gguf.meta.json").read_text())
    assert meta["sha256"] == tiny_sha


def test_failed_download_is_reported_by_health(model_server, tmp_path):
    """The operator's "model download failing" alert relies on this: /health 500 with the fetch error."""
    url = model_server.url("/missing.gguf")
    srv = ServerProcess(["-mu", url, "-t", "1"], env={"LLAMA_CACHE": str(tmp_path / "cache")})
    srv.start(wait=False, log_path=tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, srv.log()
            try:
                r = httpx.get(srv.url + "/health", timeout=2)
            except httpx.TransportError:
                if srv.proc.poll() is not None:  # a server may also exit on a failed download
                    assert "not found (HTTP 404)" in srv.log()
                    return
                time.sleep(0.05)
                continue
            if r.status_code != 503:
                break
            time.sleep(0.05)
        assert r.status_code == 500 and "not found (HTTP 404)" in r.json()["error"], r.text
    finally:
        srv.stop()


def test_server_downloads_the_projector_of_mmproj_url(model_server, tiny_bytes, tmp_path):
    import base64

    from kubellama_server.testing.tiny_mmproj import build_tiny_mmproj, tiny_png

    projector = build_tiny_mmproj(tmp_path / "mmproj.gguf").read_bytes()
    model_url = model_server.add("/tiny.gguf", tiny_bytes)
    mmproj_url = model_server.add("/mmproj-tiny.gguf", projector)
    cache = tmp_path / "cache"
    srv = ServerProcess(["-mu", model_url, "-mmu", mmproj_url, "-t", "1", "-c", "512", "-np", "1"],
                        env={"LLAMA_CACHE": str(cache)})
    srv.start(log_path=tmp_path / "server.log")
    try:
        assert httpx.get(srv.url + "/props").json()["modalities"]["vision"] is True
        r = httpx.post(srv.url + "/completion", json={"prompt": "a [img-1] b", "n_predict": 2, "image_data": [
            {"id": 1, "data": base64.b64encode(tiny_png(8, 8)).decode()}]}, timeout=60)
        assert r.status_code == 200 and r.json()["tokens_predicted"] == 2, r.text
    finally:
        srv.stop()
    name = f"127.0.0.1_{model_server.port}_mmproj-tiny.gguf"
    assert (cache / name).read_bytes() == projector


def test_failed_projector_download_is_reported_by_health(model_server, tiny_bytes, tmp_path):
    srv = ServerProcess(["-mu", model_server.add("/tiny.gguf", tiny_bytes), "-mmu", model_server.url("/missing-mmproj.gguf"),
                         "-t", "1"], env={"LLAMA_CACHE": str(tmp_path / "cache")})
    srv.start(wait=False, log_path=tmp_path / "server.log")
    try:
        r = _health_once_loaded(srv)
        error = r.json()["error"]
        assert r.status_code == 500 and "multimodal projector download failed" in error and "HTTP 404" in error, r.text
    finally:
        srv.stop()


def test_hf_repo_with_a_quant_picks_the_file_and_the_projector(hf_hub, tiny_bytes, tmp_path):
    from kubellama_server.testing.tiny_mmproj import build_tiny_mmproj

    projector = build_tiny_mmproj(tmp_path / "p.gguf").read_bytes()
    hf_hub.add_hub_file("kubellama/tiny-GGUF", "tiny-Q4_K_M.gguf", tiny_bytes)
    hf_hub.add_hub_file("kubellama/tiny-GGUF", "tiny-Q8_0.gguf", tiny_bytes)
    hf_hub.add_hub_file("kubellama/tiny-GGUF", "mmproj-tiny-f16.gguf", projector)
    cache = tmp_path / "cache"
    env = {"LLAMA_CACHE": str(cache), "HF_ENDPOINT": hf_hub.base_url}
    srv = ServerProcess(["-hf", "kubellama/tiny-GGUF:q8_0", "-t", "1", "-c", "512"], env=env)
    srv.start(log_path=tmp_path / "a.log")
    try:
        assert httpx.get(srv.url + "/props").json()["modalities"]["vision"] is True
        assert httpx.get(srv.url + "/props").json()["model_path"].endswith("tiny-Q8_0.gguf")
        assert _complete(srv.url)["tokens_predicted"] >= 1
    finally:
        srv.stop()
    assert sorted(p.name for p in cache.iterdir() if p.suffix == ".gguf") == [
        "kubellama_tiny-GGUF_mmproj-tiny-f16.gguf", "kubellama_tiny-GGUF_tiny-Q8_0.gguf"]
    srv = ServerProcess(["-hf", "kubellama/tiny-GGUF", "--no-mmproj", "-t", "1", "-c", "512"], env=env)
    srv.start(log_path=tmp_path / "b.log")
    try:  # no quant: Q4_K_M; --no-mmproj: text only
        props = httpx.get(srv.url + "/props").json()
        assert props["model_path"].endswith("tiny-Q4_K_M.gguf") and props["modalities"]["vision"] is False
    finally:
        srv.stop()


def test_hf_repo_with_a_missing_quant_says_which_exist(hf_hub, tiny_bytes, tmp_path):
    hf_hub.add_hub_file("kubellama/tiny-GGUF", "tiny-Q8_0.gguf", tiny_bytes)
    srv = ServerProcess(["-hf", "kubellama/tiny-GGUF:Q5_K_M", "-t", "1"],
                        env={"LLAMA_CACHE": str(tmp_path / "cache"), "HF_ENDPOINT": hf_hub.base_url})
    srv.start(wait=False, log_path=tmp_path / "server.log")
    try:
        r = _health_once_loaded(srv)
        error = r.json()["error"]
        assert r.status_code == 500 and "has no Q5_K_M file; its GGUF files are: tiny-Q8_0.gguf" in error, r.text
    finally:
        srv.stop()


def test_hf_picks_survive_a_hub_outage_and_offline_starts(hf_hub, tiny_bytes, tmp_path):
    hf_hub.add_hub_file("kubellama/tiny-GGUF", "tiny-Q4_K_M.gguf", tiny_bytes)
    hf_hub.add_hub_file("kubellama/tiny-GGUF", "tiny-Q8_0.gguf", tiny_bytes)
    cache = tmp_path / "cache"
    args = ["-hf", "kubellama/tiny-GGUF:Q8_0", "-t", "1", "-c", "512"]
    srv = ServerProcess(args, env={"LLAMA_CACHE": str(cache), "HF_ENDPOINT": hf_hub.base_url})
    srv.start(log_path=tmp_path / "online.log")
    srv.stop()
    down = "http://127.0.0.1:9"  # nothing listens: the Hub is unreachable
    for extra, log in (([], "down.log"), (["--offline"], "offline.log")):
        srv = ServerProcess(args + extra, env={"LLAMA_CACHE": str(cache), "HF_ENDPOINT": down})
        srv.start(log_path=tmp_path / log)
        try:
            assert httpx.get(srv.url + "/props").json()["model_path"].endswith("tiny-Q8_0.gguf")
        finally:
            srv.stop()


def test_hf_skips_a_projector_it_cannot_use(hf_hub, tiny_bytes, tmp_path):
    from kubellama_server.testing.tiny_mmproj import build_tiny_mmproj

    wrong = build_tiny_mmproj(tmp_path / "w.gguf", n_embd_text=32).read_bytes()  # made for another model
    hf_hub.add_hub_file("kubellama/tiny-GGUF", "tiny-Q4_K_M.gguf", tiny_bytes)
    hf_hub.add_hub_file("kubellama/tiny-GGUF", "mmproj-tiny-f16.gguf", wrong)
    env = {"LLAMA_CACHE": str(tmp_path / "cache"), "HF_ENDPOINT": hf_hub.base_url}
    srv = ServerProcess(["-hf", "kubellama/tiny-GGUF", "-t", "1", "-c", "512"], env=env)
    srv.start(log_path=tmp_path / "a.log")
    try:  # the text model serves; the log says why images are off
        assert httpx.get(srv.url + "/props").json()["modalities"]["vision"] is False
        assert _complete(srv.url)["tokens_predicted"] >= 1
        assert "serving text only" in srv.log()
    finally:
        srv.stop()
    # with self-extend the projector is not even fetched (the two cannot go together)
    srv = ServerProcess(["-hf", "kubellama/tiny-GGUF", "-t", "1", "-c", "512", "--grp-attn-n", "2", "--grp-attn-w", "64"], env=env)
    srv.start(log_path=tmp_path / "b.log")
    try:
        assert httpx.get(srv.url + "/props").json()["modalities"]["vision"] is False
    finally:
        srv.stop()
