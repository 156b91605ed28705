"""Today's llama.cpp samplers and fields per request: DRY, XTC, top-n-sigma, n_indent, t_max_predict_ms."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

BASE = {"prompt": "the model server token slot cache prompt", "n_predict": 48, "seed": 11, "temperature": 1.0}


def gen(srv, **over):
    r = httpx.post(srv.url + "/completion", json={**BASE, **over}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def repeated_ngrams(tokens: list[int], n: int = 3) -> int:
    grams = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    return sum(c - 1 for c in grams.values() if c > 1)


def test_dry_penalises_repeated_sequences(tiny_server):
    plain = gen(tiny_server, temperature=0, repeat_penalty=1.0, n_predict=64)["tokens"]
    assert repeated_ngrams(plain) > 0  # the tiny model loops at temperature 0
    dry = gen(tiny_server, temperature=0, repeat_penalty=1.0, n_predict=64, dry_multiplier=2.0, dry_allowed_length=1,
              dry_penalty_last_n=-1)
    assert repeated_ngrams(dry["tokens"]) < repeated_ngrams(plain)
    s = dry["generation_settings"]
    assert (s["dry_multiplier"], s["dry_allowed_length"], s["dry_penalty_last_n"]) == (2.0, 1, -1)
    # DRY is a sampler of the chain: left out of `samplers`, it does nothing
    assert gen(tiny_server, repeat_penalty=1.0, dry_multiplier=2.0, samplers=["top_k", "temperature"])["tokens"] == \
        gen(tiny_server, repeat_penalty=1.0, samplers=["top_k", "temperature"])["tokens"]


def test_xtc_and_top_n_sigma_change_sampling_as_in_the_chain(tiny_server):
    base = gen(tiny_server)["tokens"]
    xtc = gen(tiny_server, xtc_probability=1.0, xtc_threshold=0.01, min_p=0.0, top_p=1.0)["tokens"]
    assert xtc != gen(tiny_server, min_p=0.0, top_p=1.0)["tokens"]
    assert xtc == gen(tiny_server, xtc_probability=1.0, xtc_threshold=0.01, min_p=0.0, top_p=1.0)["tokens"]  # seeded
    # a threshold above 0.5 disables XTC (llama.cpp)
    assert gen(tiny_server, xtc_probability=1.0, xtc_threshold=0.6)["tokens"] == base
    # top-n-sigma with a tiny n keeps only the most likely token: greedy
    assert gen(tiny_server, top_n_sigma=0.0001)["tokens"] == gen(tiny_server, temperature=0)["tokens"]
    assert gen(tiny_server, top_n_sigma=0.0001, samplers="kt")["tokens"] == gen(tiny_server, samplers="kt")["tokens"]
    for bad, needle in (({"xtc_probability": 2}, "'xtc_probability'"), ({"dry_sequence_breakers": "x"}, "'dry_sequence_breakers'"),
                        ({"samplers": ["dry", "nope"]}, "unknown sampler name 'nope'"), ({"samplers": "kz"}, "letter 'z'"),
                        ({"dry_allowed_length": -1}, "'dry_allowed_length'")):
        r = httpx.post(tiny_server.url + "/completion", json={**BASE, **bad})
        assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


def test_sampler_names_are_todays(tiny_server):
    s = gen(tiny_server, n_predict=1)["generation_settings"]
    assert s["samplers"] == ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]
    assert s["top_n_sigma"] == -1.0 and s["xtc_threshold"] == pytest.approx(0.1)
    assert s["dry_sequence_breakers"] == ["\n", ":", "\"", "*"]
    seed_names = gen(tiny_server, n_predict=1, samplers=["top_k", "tfs_z", "typical_p", "top_p", "min_p", "temperature"])
    assert seed_names["generation_settings"]["samplers"] == ["top_k", "tfs_z", "typ_p", "top_p", "min_p", "temperature"]


def test_n_indent_cuts_the_first_line_indented_less(tiny_server):
    grammar = 'root ::= "x\\n    y\\n  z\\nw"'
    out = gen(tiny_server, grammar=grammar, n_indent=3, n_predict=32)
    assert out["content"] == "x\n    y\n  " and out["stop_type"] == "limit"
    assert gen(tiny_server, grammar=grammar, n_predict=32)["content"] == "x\n    y\n  z\nw"


def test_t_max_predict_ms_stops_at_a_new_line_after_the_limit(tiny_server):
    grammar = 'root ::= ("abcdefghijklmnop" "\\n")+'
    out = gen(tiny_server, grammar=grammar, n_predict=200, t_max_predict_ms=1, ignore_eos=True)
    assert out["stop_type"] == "limit" and out["tokens_predicted"] < 200 and out["content"].endswith("\n")
    assert gen(tiny_server, grammar=grammar, n_predict=60, ignore_eos=True)["tokens_predicted"] == 60


def test_return_tokens(tiny_server):
    out = gen(tiny_server, n_predict=4, return_tokens=True)
    assert len(out["tokens"]) == 4 and out["generation_settings"]["return_tokens"] is True


def test_post_sampling_probs_are_the_chains(tiny_server):
    out = gen(tiny_server, n_predict=6, n_probs=5, top_k=2, post_sampling_probs=True)
    for entry, tok in zip(out["completion_probabilities"], out["tokens"]):
        assert set(entry) == {"id", "token", "bytes", "prob", "top_probs"} and entry["id"] == tok
        top = entry["top_probs"]
        assert 1 <= len(top) <= 2  # what top_k left, fewer than n_probs
        assert sum(p["prob"] for p in top) == pytest.approx(1.0, abs=1e-4)
        assert tok in [p["id"] for p in top] and all(set(p) == {"id", "token", "bytes", "prob"} for p in top)
    # the same seed and settings pick the same tokens with or without post-sampling probabilities
    assert out["tokens"] == gen(tiny_server, n_predict=6, top_k=2)["tokens"]


def test_streamed_probs_have_todays_shape(tiny_server):
    with httpx.stream("POST", tiny_server.url + "/completion", json={**BASE, "n_predict": 3, "n_probs": 2, "stream": True}) as r:
        chunks = [__import__("json").loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    probs = [p for c in chunks for p in c.get("completion_probabilities", [])]
    assert len(probs) == 3 and all(len(p["top_logprobs"]) == 2 and p["logprob"] <= 0 for p in probs)


def test_probs_format_seed_keeps_the_seed_shape(live_server):
    srv = live_server("--probs-format", "seed")
    out = gen(srv, n_predict=2, n_probs=3)
    entry = out["completion_probabilities"][0]
    assert set(entry) == {"content", "id", "prob", "probs"} and len(entry["probs"]) == 3
    assert set(entry["probs"][0]) == {"tok_str", "id", "prob"}


def test_timings_per_token(tiny_server):
    body = {**BASE, "n_predict": 4, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", tiny_server.url + "/completion", json={**body, "timings_per_token": True}) as r:
        chunks = [__import__("json").loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    partial = [c for c in chunks if not c["stop"]]
    assert partial and all(c["timings"]["predicted_n"] == c["tokens_predicted"] for c in partial)
    with httpx.stream("POST", tiny_server.url + "/completion", json=body) as r:
        plain = [__import__("json").loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert not any("timings" in c for c in plain if not c["stop"])
