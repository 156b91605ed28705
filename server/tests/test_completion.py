"""POST /completion on the tiny model over real HTTP: options, streaming, caching, errors."""

from __future__ import annotations

import math

import json

import httpx
import pytest


def post(srv, body, path="/completion", timeout=60):
    return httpx.post(srv.url + path, json=body, timeout=timeout)


def complete(srv, **body):
    body.setdefault("prompt", "Hello world, the llama server")
    r = post(srv, body)
    assert r.status_code == 200, r.text
    return r.json()


def stream(srv, **body):
    body.setdefault("prompt", "Hello world, the llama server")
    body["stream"] = True
    chunks = []
    with httpx.stream("POST", srv.url + "/completion", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        buf = ""
        for text in r.iter_text():
            buf += text
            while "\n\n" in buf:
                frame, buf = buf.split("\n\n", 1)
                assert frame.startswith("data: "), frame
                chunks.append(json.loads(frame[6:]))
        assert buf == ""
    return chunks


def test_result_shape(tiny_server):
    d = complete(tiny_server, n_predict=8, seed=3)
    for key in ("content", "stop", "generation_settings", "model", "prompt", "stopped_eos", "stopped_limit",
                "stopped_word", "stopping_word", "timings", "tokens_cached", "tokens_evaluated", "truncated", "id_slot"):
        assert key in d, key
    assert d["stop"] is True and d["stopped_limit"] is True and d["tokens_predicted"] == 8
    assert d["generation_settings"]["n_ctx"] == 512 and d["generation_settings"]["seed"] == 3
    t = d["timings"]
    assert t["predicted_n"] == 8 and t["prompt_n"] == d["tokens_evaluated"] and t["prompt_per_second"] > 0


def test_seed_reproducible_at_temperature(tiny_server):
    a = complete(tiny_server, n_predict=24, seed=42, temperature=1.5)
    b = complete(tiny_server, n_predict=24, seed=42, temperature=1.5)
    c = complete(tiny_server, n_predict=24, seed=43, temperature=1.5)
    assert a["tokens"] == b["tokens"]
    assert a["tokens"] != c["tokens"]


def test_greedy_is_deterministic_without_seed(tiny_server):
    a = complete(tiny_server, n_predict=16, temperature=0)
    b = complete(tiny_server, n_predict=16, temperature=0)
    assert a["content"] == b["content"]


def test_logit_bias_false_bans_a_token(tiny_server):
    greedy = complete(tiny_server, n_predict=12, temperature=0)
    banned = greedy["tokens"][0]
    d = complete(tiny_server, n_predict=12, temperature=0, logit_bias=[[banned, False]])
    assert banned not in d["tokens"]
    forced = complete(tiny_server, n_predict=5, temperature=0, logit_bias=[[banned, 1000.0]], repeat_penalty=1.0)
    assert forced["tokens"] == [banned] * 5


def test_logit_bias_string_form(tiny_server):
    d = complete(tiny_server, n_predict=6, temperature=0, logit_bias=[["world", 1000]], repeat_penalty=1.0)
    tokens = httpx.post(tiny_server.url + "/tokenize", json={"content": "world"}).json()["tokens"]
    assert set(d["tokens"]) <= set(tokens)


def test_n_probs(tiny_server):
    """Today's llama.cpp shape: id, token, bytes, logprob and top_logprobs (the default)."""
    d = complete(tiny_server, n_predict=5, n_probs=4, seed=1)
    probs = d["completion_probabilities"]
    assert len(probs) == 5
    for entry, tok in zip(probs, d["tokens"]):
        assert len(entry["top_logprobs"]) == 4 and entry["id"] == tok
        ps = [math.exp(p["logprob"]) for p in entry["top_logprobs"]]
        assert ps == sorted(ps, reverse=True) and 0 < sum(ps) <= 1.0 + 1e-6
        assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
        assert all(set(p) == {"id", "token", "bytes", "logprob"} for p in entry["top_logprobs"])


def test_grammar_output_always_parses(tiny_server):
    for seed in range(5):
        d = complete(tiny_server, n_predict=10, seed=seed, temperature=1.0, grammar='root ::= ("yes" | "no") "!"')
        assert d["content"] in ("yes!", "no!")
        assert d["stopped_eos"] is True


def test_json_schema_output_parses_and_validates(tiny_server):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}}, "required": ["n", "ok"]}
    for seed in range(3):
        d = complete(tiny_server, n_predict=200, seed=seed, json_schema=schema, temperature=0.7)
        obj = json.loads(d["content"])
        assert isinstance(obj["n"], int) and isinstance(obj["ok"], bool)


def test_invalid_grammar_is_400(tiny_server):
    r = post(tiny_server, {"prompt": "x", "grammar": "root ::= ("})
    assert r.status_code == 400
    assert r.json()["error"] == {"code": 400, "message": "Failed to parse grammar", "type": "invalid_request_error"}
    # the slot was not left stuck
    assert complete(tiny_server, n_predict=2)["stop"]


def test_stop_string_split_across_tokens(tiny_server):
    base = complete(tiny_server, n_predict=40, seed=7, temperature=1.0)
    text = base["content"]
    stop = text[10:14]
    assert len(stop) == 4
    d = complete(tiny_server, n_predict=40, seed=7, temperature=1.0, stop=[stop])
    assert d["stopped_word"] and d["stopping_word"] == stop
    assert d["content"] == text[: text.index(stop)]
    chunks = stream(tiny_server, n_predict=40, seed=7, temperature=1.0, stop=[stop])
    assert "".join(c["content"] for c in chunks) == d["content"]


def test_streaming_framing(tiny_server):
    chunks = stream(tiny_server, n_predict=10, seed=5)
    assert all(c["stop"] is False for c in chunks[:-1])
    final = chunks[-1]
    assert final["stop"] is True and final["content"] == "" and final["tokens_predicted"] == 10
    streamed = "".join(c["content"] for c in chunks)
    assert streamed == complete(tiny_server, n_predict=10, seed=5)["content"]


def test_multibyte_characters_never_split_in_stream(tiny_server):
    chunks = stream(tiny_server, n_predict=12, grammar='root ::= "€ñ€"', seed=1)
    texts = [c["content"] for c in chunks]
    assert "".join(texts) == "€ñ€"
    assert not any("\ufffd" in t for t in texts)


def test_invalid_utf8_bytes_are_replaced(tiny_server):
    ff = 8 + 0xFF  # the <0xFF> byte token of the tiny vocabulary
    d = complete(tiny_server, n_predict=3, temperature=0, logit_bias=[[ff, 1000]], repeat_penalty=1.0)
    assert d["content"] == "\ufffd\ufffd\ufffd"


def test_n_predict_zero_only_fills_the_cache(tiny_server):
    d = complete(tiny_server, n_predict=0, cache_prompt=True, id_slot=2, prompt="the cache of slot two")
    assert d["content"] == "" and d["tokens_predicted"] == 0
    again = complete(tiny_server, n_predict=1, cache_prompt=True, id_slot=2, prompt="the cache of slot two, reused")
    assert again["tokens_cached"] >= d["tokens_evaluated"] - 1


def test_cache_prompt_reuses_the_prefix(tiny_server):
    prompt = "the model server token slot cache prompt " * 8
    first = complete(tiny_server, prompt=prompt, n_predict=4, cache_prompt=True, seed=1)
    second = complete(tiny_server, prompt=prompt + "and more", n_predict=4, cache_prompt=True, seed=1)
    assert second["tokens_cached"] >= first["tokens_evaluated"] - 1 and second["id_slot"] == first["id_slot"]
    assert second["timings"]["prompt_n"] == second["tokens_evaluated"] - second["tokens_cached"]
    cold = complete(tiny_server, prompt=prompt + "and more", n_predict=4, cache_prompt=False, id_slot=first["id_slot"])
    assert cold["tokens_cached"] == 0


def test_token_and_mixed_prompts_and_bos(tiny_server):
    toks = httpx.post(tiny_server.url + "/tokenize", json={"content": "hello world"}).json()["tokens"]
    assert toks[0] != 1  # /tokenize never adds BOS
    with_bos = httpx.post(tiny_server.url + "/tokenize", json={"content": "hello world", "add_special": True}).json()["tokens"]
    assert with_bos[0] == 1
    a = complete(tiny_server, prompt=toks, n_predict=4, temperature=0)
    assert a["tokens_evaluated"] == len(toks)  # token prompts get no BOS
    b = complete(tiny_server, prompt="hello world", n_predict=4, temperature=0)
    assert b["tokens_evaluated"] == len(toks) + 1  # a string prompt gets BOS (add_bos_token is true)
    c = complete(tiny_server, prompt=["hello", 3], n_predict=2, temperature=0)
    assert c["tokens_evaluated"] == len(httpx.post(tiny_server.url + "/tokenize", json={"content": "hello"}).json()["tokens"]) + 2


def test_tokenize_detokenize_round_trip(tiny_server):
    text = "Hello world, llama! €"
    toks = httpx.post(tiny_server.url + "/tokenize", json={"content": text}).json()["tokens"]
    out = httpx.post(tiny_server.url + "/detokenize", json={"tokens": toks}).json()["content"]
    assert out.strip() == text
    pieces = httpx.post(tiny_server.url + "/tokenize", json={"content": "€", "with_pieces": True}).json()["tokens"]
    assert all("id" in p and "piece" in p for p in pieces)


def test_props(tiny_server):
    p = httpx.get(tiny_server.url + "/props").json()
    assert p["total_slots"] == 4 and p["default_generation_settings"]["n_ctx"] == 512
    assert p["assistant_name"] == "" and p["user_name"] == ""
    assert "im_start" in p["chat_template"]


def test_health_ok(tiny_server):
    h = httpx.get(tiny_server.url + "/health").json()
    assert h == {"status": "ok", "slots_idle": 4, "slots_processing": 0}
    with_slots = httpx.get(tiny_server.url + "/health?include_slots").json()
    assert len(with_slots["slots"]) == 4 and with_slots["slots"][0]["id"] == 0


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"prompt": "x", "temperature": "hot"}, "'temperature' must be a number"),
        ({"prompt": "x", "n_predict": 1.5}, "'n_predict' must be an integer"),
        ({"prompt": "x", "top_p": 2}, "'top_p' must be between"),
        ({"prompt": "x", "id_slot": 9}, "'id_slot' 9 does not exist"),
        ({"prompt": "x", "tfs_z": 0.5}, "'tfs_z'"),
        ({"prompt": "x", "samplers": ["top_k", "nope"]}, "unknown sampler name"),
        ({"prompt": "x", "logit_bias": [[1]]}, "'logit_bias'"),
        ({"prompt": "x", "logit_bias": [[99999, 1]]}, "outside the vocabulary"),
        ({"prompt": [99999]}, "outside the vocabulary"),
        ({"prompt": {"a": 1}}, "'prompt' must be"),
        ({"n_predict": 3}, "'prompt' is required"),
        ({"prompt": "x", "stop": [1]}, "'stop' must be"),
        ({"prompt": "x", "stream": "yes"}, "'stream' must be a boolean"),
        ({"prompt": "x", "json_schema": {"type": "nonsense-type"}}, "'json_schema'"),
        ({"prompt": "x", "image_data": [{"data": "AAAA", "id": 1}]}, "--mmproj"),
    ],
)
def test_client_mistakes_are_400_in_error_shape(tiny_server, body, fragment):
    r = post(tiny_server, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == 400 and err["type"] == "invalid_request_error" and fragment in err["message"]


def test_malformed_json_and_unknown_route(tiny_server):
    r = httpx.post(tiny_server.url + "/completion", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(tiny_server.url + "/completion", content=b"[1,2]")
    assert r.status_code == 400
    r = httpx.get(tiny_server.url + "/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
