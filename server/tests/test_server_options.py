"""Server-wide options: LoRA adapters, TLS, environment-only configuration (subprocess)."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from kubellama_server.promtext import read_samples
from kubellama_server.testing.live import ServerProcess
from kubellama_server.testing.tiny_gguf import build_tiny_lora


def _greedy(srv, verify=True):
    r = httpx.post(srv.url + "/completion", json={"prompt": "hello world", "n_predict": 16, "temperature": 0}, timeout=60, verify=verify)
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def test_lora_adapter_changes_the_model(live_server, tmp_path):
    lora = build_tiny_lora(tmp_path / "lora.gguf")
    plain = _greedy(live_server())
    adapted = _greedy(live_server("--lora", str(lora)))
    assert adapted != plain


def _probs(srv, **body) -> list:
    r = httpx.post(srv.url + "/completion", json={"prompt": "hello world", "n_predict": 1, "n_probs": 5,
                                                   "temperature": 0, "cache_prompt": True, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return [(p["id"], round(p["logprob"], 5)) for p in r.json()["completion_probabilities"][0]["top_logprobs"]]


def test_lora_scales_change_at_run_time(live_server, tmp_path):
    lora = build_tiny_lora(tmp_path / "lora.gguf")
    plain = _probs(live_server())
    srv = live_server("--lora", str(lora), "-np", "1")
    assert httpx.get(srv.url + "/lora-adapters").json() == [{"id": 0, "path": str(lora), "scale": 1.0}]
    adapted = _probs(srv)
    assert adapted != plain
    # scale 0 (or leaving the adapter out) switches it off: the base model's output, not a reused cache
    assert httpx.post(srv.url + "/lora-adapters", json=[{"id": 0, "scale": 0}]).json() == {"success": True}
    assert httpx.get(srv.url + "/lora-adapters").json()[0]["scale"] == 0.0
    off = httpx.post(srv.url + "/completion", json={"prompt": "hello world", "n_predict": 1, "cache_prompt": True})
    assert off.json()["tokens_cached"] == 0  # the cache was computed with the adapter on
    assert _probs(srv) == plain
    assert httpx.post(srv.url + "/lora-adapters", json=[{"id": 0, "scale": 1.0}]).status_code == 200
    assert _probs(srv) == adapted
    half = httpx.post(srv.url + "/lora-adapters", json=[{"id": 0, "scale": 0.5}])
    assert half.status_code == 200 and _probs(srv) not in (plain, adapted)
    assert httpx.post(srv.url + "/lora-adapters", json=[]).status_code == 200  # every adapter off
    assert _probs(srv) == plain
    for bad, needle in (([{"id": 3, "scale": 1}], "id of a loaded adapter"), ([{"id": 0, "scale": "x"}], "finite number"),
                        ({"id": 0}, "must be an array")):
        r = httpx.post(srv.url + "/lora-adapters", json=bad)
        assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


def test_lora_scaled_sets_the_default_scale_at_start_up(live_server, tmp_path):
    """--lora-scaled FNAME SCALE (llama.cpp's flag): the adapter starts at that scale, after the --lora ones."""
    a, b = build_tiny_lora(tmp_path / "a.gguf"), build_tiny_lora(tmp_path / "b.gguf", seed=7)
    srv = live_server("--lora", str(a), "--lora-scaled", str(b), "0.5", "-np", "1")
    assert httpx.get(srv.url + "/lora-adapters").json() == [{"id": 0, "path": str(a), "scale": 1.0},
                                                             {"id": 1, "path": str(b), "scale": 0.5}]
    started = _probs(srv)
    # The same scales set at run time give the same output: the start-up scales are applied, not just listed.
    plain = live_server("--lora", str(a), "--lora", str(b), "-np", "1")
    assert httpx.post(plain.url + "/lora-adapters", json=[{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.5}]).status_code == 200
    assert _probs(plain) == started


def _lora_gauges(srv) -> dict[str, float]:
    samples = read_samples(httpx.get(srv.url + "/metrics").content, ("kubellama_lora_adapter_scale",))
    return {s.labels["adapter"]: s.value for s in samples}


def test_metrics_export_the_lora_scales(live_server, tmp_path):
    """/metrics shows each adapter's default scale and follows POST /lora-adapters (the operator compares replicas)."""
    a, b = build_tiny_lora(tmp_path / "a.gguf"), build_tiny_lora(tmp_path / "b.gguf", seed=7)
    srv = live_server("--metrics", "--lora", str(a), "--lora-scaled", str(b), "0.5", "-np", "1")
    assert _lora_gauges(srv) == {"0": 1.0, "1": 0.5}
    assert httpx.post(srv.url + "/lora-adapters", json=[{"id": 1, "scale": 2.0}]).status_code == 200
    assert _lora_gauges(srv) == {"0": 0.0, "1": 2.0}
    assert _lora_gauges(live_server("--metrics")) == {}  # no adapters, no series


@pytest.mark.parametrize("args, needle", [
    (["--lora-scaled", "a.gguf"], "expected 2 arguments"),
    (["--lora-scaled", "a.gguf", "x"], "FNAME SCALE"),
    (["--lora-scaled", "a.gguf", "nan"], "finite number"),
])
def test_lora_scaled_refuses_bad_values(args, needle, capsys):
    from kubellama_server.cli import parse_settings

    with pytest.raises(SystemExit):
        parse_settings(["-m", "m.gguf", *args], environ={})
    assert needle in capsys.readouterr().err


def test_lora_scaled_from_the_environment():
    from kubellama_server.cli import parse_settings

    settings, given = parse_settings(["-m", "m.gguf"], environ={"LLAMA_ARG_LORA_SCALED": "/a.gguf:0.25,/b.gguf:2"})
    assert settings.lora_scaled == [("/a.gguf", 0.25), ("/b.gguf", 2.0)] and "lora_scaled" in given


def test_bad_lora_fails_the_load_with_a_message(tmp_path, tiny_model):
    bogus = tmp_path / "not-a-lora.gguf"
    bogus.write_bytes(b"nope")
    srv = ServerProcess(["-m", str(tiny_model), "--lora", str(bogus)])
    srv.start(wait=False)
    try:
        deadline_ok = False
        for _ in range(200):
            try:
                r = httpx.get(srv.url + "/health", timeout=1)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if r.status_code == 500:
                assert "LoRA" in r.json()["error"]
                deadline_ok = True
                break
        assert deadline_ok
    finally:
        srv.stop()


def test_tls_and_environment_configuration(tmp_path, tiny_model):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True,
    )
    env = {"LLAMA_ARG_MODEL": str(tiny_model), "LLAMA_ARG_N_PARALLEL": "2", "LLAMA_ARG_CTX_SIZE": "1024",
           "LLAMA_ARG_SSL_KEY_FILE": str(key), "LLAMA_ARG_SSL_CERT_FILE": str(cert), "LLAMA_ARG_THREADS": "1"}
    srv = ServerProcess([], env=env)
    srv.url = srv.url.replace("http://", "https://")
    srv.start(wait=False)
    try:
        for _ in range(300):
            try:
                if httpx.get(srv.url + "/health", verify=False, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        props = httpx.get(srv.url + "/props", verify=False).json()
        assert props["total_slots"] == 2 and props["default_generation_settings"]["n_ctx"] == 512
        assert len(_greedy(srv, verify=False)) == 16
        with pytest.raises(httpx.TransportError):
            httpx.get(srv.url.replace("https://", "http://") + "/health", timeout=2)
    finally:
        srv.stop()


def test_slot_files_record_the_lora_scales(live_server, tmp_path):
    lora = build_tiny_lora(tmp_path / "lora.gguf")
    srv = live_server("--lora", str(lora), "-np", "1", "--slot-save-path", str(tmp_path))
    adapted = _probs(srv)
    assert httpx.post(srv.url + "/slots/0?action=save", json={"filename": "a.bin"}).status_code == 200
    assert httpx.post(srv.url + "/lora-adapters", json=[{"id": 0, "scale": 0.25}]).status_code == 200
    assert httpx.post(srv.url + "/slots/0?action=restore", json={"filename": "a.bin"}).status_code == 200
    # the restored cache was computed at scale 1: a request at the new default scale does not reuse it ...
    other = httpx.post(srv.url + "/completion", json={"prompt": "hello world", "n_predict": 1, "cache_prompt": True})
    assert other.json()["tokens_cached"] == 0
    assert httpx.post(srv.url + "/slots/0?action=restore", json={"filename": "a.bin"}).status_code == 200
    # ... one that asks for scale 1 does, and gets the same result as before the save
    same = httpx.post(srv.url + "/completion", json={"prompt": "hello world", "n_predict": 1, "cache_prompt": True,
                                                      "n_probs": 5, "temperature": 0, "lora": [{"id": 0, "scale": 1}]}).json()
    assert same["tokens_cached"] > 0
    assert [(p["id"], round(p["logprob"], 5)) for p in same["completion_probabilities"][0]["top_logprobs"]] == adapted
    srv2 = live_server("-np", "1", "--slot-save-path", str(tmp_path))  # no adapters at all: refused
    r = httpx.post(srv2.url + "/slots/0?action=restore", json={"filename": "a.bin"})
    assert r.status_code == 400 and "lora_adapters" in r.json()["error"]["message"], r.text


def test_a_running_request_keeps_its_lora_scales(live_server, tmp_path):
    lora = build_tiny_lora(tmp_path / "lora.gguf")
    srv = live_server("--lora", str(lora), "-np", "1", "--slot-save-path", str(tmp_path), "--context-shift")
    # n_keep -1: a context shift (the request runs until the client leaves) keeps the prompt's KV
    body = {"prompt": "hello world", "n_predict": 100000, "ignore_eos": True, "cache_prompt": True, "stream": True,
            "n_keep": -1}
    with httpx.stream("POST", srv.url + "/completion", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        # the default changes while the request runs; the request goes on at scale 1
        assert httpx.post(srv.url + "/lora-adapters", json=[{"id": 0, "scale": 0}]).status_code == 200
        for _ in range(5):
            next(lines)
    deadline = time.monotonic() + 30
    while httpx.get(srv.url + "/slots").json()[0]["is_processing"]:  # the disconnect frees the slot
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # its cache is all scale 1: saved as such, reused only by a request at scale 1
    assert httpx.post(srv.url + "/slots/0?action=save", json={"filename": "run.bin"}).status_code == 200
    assert json.loads((tmp_path / ".run.bin.meta.json").read_text())["lora_scales"] == [1.0]
    at_one = httpx.post(srv.url + "/completion", json={"prompt": "hello world", "n_predict": 1, "cache_prompt": True,
                                                        "lora": [{"id": 0, "scale": 1}]}).json()
    assert at_one["tokens_cached"] > 0
    default = httpx.post(srv.url + "/completion", json={"prompt": "hello world", "n_predict": 1, "cache_prompt": True}).json()
    assert default["tokens_cached"] == 0


def test_requests_with_different_lora_scales_in_parallel(live_server, tmp_path):
    import concurrent.futures as cf

    lora = build_tiny_lora(tmp_path / "lora.gguf")
    srv = live_server("--lora", str(lora), "-np", "4")
    scales = [0.0, 1.0, 0.5, 1.0]

    def run(scale):
        r = httpx.post(srv.url + "/completion", json={"prompt": "hello world", "n_predict": 24, "temperature": 0,
                                                       "ignore_eos": True, "lora": [{"id": 0, "scale": scale}]}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["tokens"]

    alone = {s: run(s) for s in set(scales)}
    assert alone[0.0] != alone[1.0]
    with cf.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, scales))
    assert together == [alone[s] for s in scales]  # each request decoded with its own scales
    slots = httpx.get(srv.url + "/slots").json()
    assert any(s.get("lora") == [{"id": 0, "scale": 0.5}] for s in slots)
    for bad, needle in (({"lora": [{"id": 5, "scale": 1}]}, "adapters 0..0"), ({"lora": {"id": 0}}, "'lora' must be"),
                        ({"lora": [{"id": 0, "scale": "x"}]}, "finite number")):
        r = httpx.post(srv.url + "/completion", json={"prompt": "x", "n_predict": 1, **bad})
        assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
    plain = live_server()
    r = httpx.post(plain.url + "/completion", json={"prompt": "x", "n_predict": 1, "lora": [{"id": 0, "scale": 1}]})
    assert r.status_code == 400 and "--lora" in r.json()["error"]["message"]


def test_lora_configs_take_turns_while_a_long_prompt_is_read(live_server, tmp_path):
    import threading

    lora = build_tiny_lora(tmp_path / "lora.gguf")
    srv = live_server("--lora", str(lora), "-np", "3", "-c", "6144", "-b", "8", "-ub", "8", "--context-shift")
    arrivals: list[float] = []
    body = {"prompt": "hi", "n_predict": 100000, "ignore_eos": True, "stream": True, "lora": [{"id": 0, "scale": 0.5}]}
    window: dict = {}

    def long_prompts():  # two at the same scale: the one with room must not keep the turn forever
        window["start"] = time.monotonic()
        both = [threading.Thread(target=lambda: httpx.post(srv.url + "/completion", json={
            "prompt": "hello world " * 150, "n_predict": 1, "lora": [{"id": 0, "scale": 1.0}]}, timeout=60))
            for _ in range(2)]
        for t in both:
            t.start()
            time.sleep(0.05)
        for t in both:
            t.join(60)
        window["end"] = time.monotonic()

    with httpx.stream("POST", srv.url + "/completion", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        t = threading.Thread(target=long_prompts)
        t.start()
        for line in lines:
            arrivals.append(time.monotonic())
            if "end" in window:
                break
        t.join(60)
    during = [a for a in arrivals if window["start"] < a < window["end"]]
    # the 8-token decodes of the long prompts alternate with the other scales' decodes: the stream
    # never waits for a whole prompt
    span = window["end"] - window["start"]
    gaps = [b - a for a, b in zip([window["start"], *during], [*during, window["end"]])]
    assert len(during) >= 40 and max(gaps) < span / 4, (len(during), max(gaps), span)


def test_embeddings_on_a_lora_server(live_server, tmp_path):
    import concurrent.futures as cf

    lora = build_tiny_lora(tmp_path / "lora.gguf")
    srv = live_server("--lora", str(lora), "-np", "4", "--embedding")

    def embed(i):
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": f"text {i % 2}"}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["data"][0]["embedding"]

    with cf.ThreadPoolExecutor(4) as pool:  # several inputs per pooled decode, adapters on
        got = list(pool.map(embed, range(8)))
    assert all(v == pytest.approx(got[i % 2], abs=1e-5) for i, v in enumerate(got))
    assert _probs(srv)  # completions still run beside them