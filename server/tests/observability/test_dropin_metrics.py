"""Metrics and progress as today's llama-server reports them (issue 16)."""

from __future__ import annotations

import json

import httpx

from kubellama_server.promtext import read_samples


def metric(srv, name: str) -> float:
    samples = read_samples(httpx.get(srv.url + "/metrics").content, (name,))
    assert samples, f"{name} not exported"
    return samples[0].value


def test_cached_requests_count_processed_and_cached_prompt_tokens(live_server):
    srv = live_server("--metrics", "-np", "1")
    body = {"prompt": "the model server token slot cache prompt " * 3, "n_predict": 4, "cache_prompt": True}
    first = httpx.post(srv.url + "/completion", json=body, timeout=60).json()
    second = httpx.post(srv.url + "/completion", json=body, timeout=60).json()
    assert second["tokens_cached"] == first["tokens_evaluated"] - 1
    assert metric(srv, "llamacpp:prompt_tokens_total") == first["timings"]["prompt_n"] + second["timings"]["prompt_n"]
    assert metric(srv, "llamacpp:prompt_tokens_cached_total") == second["tokens_cached"]
    assert metric(srv, "llamacpp:tokens_predicted_total") == 8


def test_generation_rate_excludes_each_first_token(tiny_server):
    t = httpx.post(tiny_server.url + "/completion", json={"prompt": "hello", "n_predict": 5, "ignore_eos": True},
                   timeout=60).json()["timings"]
    assert t["predicted_n"] == 5
    assert abs(t["predicted_per_token_ms"] - t["predicted_ms"] / 4) < 1e-6
    assert abs(t["predicted_per_second"] - 4e3 / t["predicted_ms"]) < 1e-3
    one = httpx.post(tiny_server.url + "/completion", json={"prompt": "hello", "n_predict": 1}, timeout=60).json()["timings"]
    assert one["predicted_per_second"] == 0.0 and one["predicted_per_token_ms"] == 0.0


def test_return_progress_streams_prompt_progress(live_server):
    srv = live_server("-b", "16", "-ub", "16")  # a 40-token prompt in three chunks
    prompt = "the model server token slot cache prompt " * 5
    with httpx.stream("POST", srv.url + "/completion", json={"prompt": prompt, "n_predict": 2, "stream": True,
                                                             "return_progress": True}, timeout=60) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    progress = [c["prompt_progress"] for c in chunks if "prompt_progress" in c]
    assert len(progress) >= 3, progress
    total = progress[0]["total"]
    assert progress[0]["processed"] == 0 and progress[-1]["processed"] == total
    assert [p["processed"] for p in progress] == sorted(p["processed"] for p in progress)
    assert all(p["cache"] == 0 and p["time_ms"] >= 0 for p in progress)
    assert chunks[-1]["stop"] is True and "prompt_progress" not in chunks[-1]


def test_idle_slot_after_a_completion(live_server):
    srv = live_server("-np", "1")
    done = httpx.post(srv.url + "/completion", json={"prompt": "hello world", "n_predict": 3, "ignore_eos": True}).json()
    slot = httpx.get(srv.url + "/slots").json()[0]
    assert slot["is_processing"] is False and slot["id_task"] == slot["task_id"] >= 0
    assert slot["n_prompt_tokens"] == done["tokens_evaluated"] and slot["n_prompt_tokens_processed"] == done["tokens_evaluated"]
    assert slot["params"]["n_predict"] == 3 and slot["params"]["samplers"][0] == "penalties"
    assert slot["next_token"]["has_next_token"] is False and slot["next_token"]["n_remain"] == 0
    assert slot["next_token"]["n_decoded"] == 3
