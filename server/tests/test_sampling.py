"""Each sampling option changes what it should (tiny model, fixed seeds, real HTTP)."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

BASE = {"prompt": "the model server token slot cache prompt", "n_predict": 48, "seed": 11, "temperature": 1.0}


def gen(srv, **over):
    r = httpx.post(srv.url + "/completion", json={**BASE, **over}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_top_k_one_is_greedy(tiny_server):
    assert gen(tiny_server, top_k=1)["tokens"] == gen(tiny_server, temperature=0)["tokens"]


def test_min_p_one_keeps_only_the_best_token(tiny_server):
    assert gen(tiny_server, min_p=1.0, samplers=["min_p", "temperature"])["tokens"] == gen(tiny_server, temperature=0)["tokens"]


@pytest.mark.parametrize(
    "option",
    [
        {"top_p": 0.3},
        {"typical_p": 0.3},
        {"min_p": 0.2},
        {"temperature": 0.3},
        {"dynatemp_range": 0.7},
        {"mirostat": 1, "mirostat_tau": 2.0},
        {"mirostat": 2, "mirostat_tau": 2.0},
        {"presence_penalty": 1.5, "repeat_penalty": 1.0},
        {"frequency_penalty": 1.5, "repeat_penalty": 1.0},
        {"repeat_penalty": 2.0},
        {"samplers": ["temperature"]},
    ],
)
def test_option_changes_the_output(tiny_server, option):
    base = gen(tiny_server)["tokens"]
    assert gen(tiny_server, **option)["tokens"] != base
    assert gen(tiny_server, **option)["tokens"] == gen(tiny_server, **option)["tokens"]  # still seeded


def test_repeat_penalty_reduces_repetition(tiny_server):
    def max_repeat(tokens):
        return max(Counter(tokens).values())

    plain = gen(tiny_server, temperature=0, repeat_penalty=1.0, n_predict=64)["tokens"]
    penalised = gen(tiny_server, temperature=0, repeat_penalty=3.0, repeat_last_n=64, n_predict=64)["tokens"]
    assert max_repeat(penalised) < max_repeat(plain)
    off = gen(tiny_server, temperature=0, repeat_penalty=3.0, repeat_last_n=0, n_predict=64)["tokens"]
    assert off == plain  # repeat_last_n 0 disables the penalty


def test_penalize_nl_false_leaves_newlines_alone(tiny_server):
    nl = httpx.post(tiny_server.url + "/tokenize", json={"content": "\n"}).json()["tokens"][-1]
    body = dict(temperature=0, repeat_penalty=50.0, logit_bias=[[nl, 8.0]], n_predict=12)
    penalised = gen(tiny_server, **body)["tokens"]
    kept = gen(tiny_server, penalize_nl=False, **body)["tokens"]
    assert kept.count(nl) > penalised.count(nl)


def test_penalty_prompt_replaces_the_prompt_history(tiny_server):
    a = gen(tiny_server, temperature=0, repeat_penalty=3.0)["tokens"]
    b = gen(tiny_server, temperature=0, repeat_penalty=3.0, penalty_prompt=a[:4])["tokens"]
    assert b[0] != a[0]  # the first greedy token is now in the penalty history


def test_seed_minus_one_is_random(tiny_server):
    outs = {tuple(gen(tiny_server, seed=-1)["tokens"]) for _ in range(3)}
    assert len(outs) > 1


def test_a_json_schema_with_a_remote_ref_is_refused_without_fetching_it(live_server):
    """The grammar converter would GET a remote $ref from the server (with no timeout): refuse it."""
    import httpx

    srv = live_server()
    for body in ({"prompt": "x", "json_schema": {"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}}},
                 {"prompt": "x", "json_schema": {"$ref": "http://169.254.169.254/latest/meta-data"}}):
        r = httpx.post(srv.url + "/completion", json=body, timeout=30)
        assert r.status_code == 400 and "only references inside the schema" in r.json()["error"]["message"], r.text
