"""Prompts in every form llama-server takes, and logit_bias in llama.cpp's and OpenAI's forms."""

from __future__ import annotations

import json
from collections import Counter

import httpx

from kubellama_server.serving.native import split_prompts


def post(srv, path="/completion", **body):
    return httpx.post(srv.url + path, json=body, timeout=60)


def tokens_of(srv, text: str) -> list[int]:
    return post(srv, "/tokenize", content=text).json()["tokens"]


def test_split_prompts_follows_llama_cpp():
    assert split_prompts("a") == ["a"]
    assert split_prompts([1, 2, 3]) == [[1, 2, 3]]
    assert split_prompts([1, "a", 2]) == [[1, "a", 2]]
    assert split_prompts(["a", "b"]) == ["a", "b"]
    assert split_prompts([[1, 2], "b", [3, "c"], {"prompt_string": "x"}]) == [[1, 2], "b", [3, "c"], {"prompt_string": "x"}]


def test_prompt_forms(tiny_server):
    ids = tokens_of(tiny_server, "hello world")
    base = {"n_predict": 6, "temperature": 0}
    text = post(tiny_server, prompt="hello world", **base).json()
    # token ids (no BOS added, as llama.cpp: the first element is not a string)
    as_ids = post(tiny_server, prompt=ids, **base).json()
    assert as_ids["tokens_evaluated"] == len(ids)
    head = tokens_of(tiny_server, "hello")
    assert ids[:len(head)] == head
    mixed = post(tiny_server, prompt=["hello", *ids[len(head):]], **base).json()
    assert mixed["content"] == text["content"]  # a leading string gets the BOS, like the text prompt
    several = post(tiny_server, prompt=["hello world", ids, ["hello", *ids[len(head):]]], **base)
    assert several.status_code == 200, several.text
    results = several.json()
    assert isinstance(results, list) and [r["index"] for r in results] == [0, 1, 2]
    assert results[0]["content"] == text["content"] and results[1]["content"] == as_ids["content"]
    assert results[2]["content"] == mixed["content"]
    single = post(tiny_server, prompt=[ids], **base).json()  # one prompt in an array: one object
    assert isinstance(single, dict) and single["content"] == as_ids["content"]
    # streamed: every prompt's chunks carry its index, each ends with stop: true
    with httpx.stream("POST", tiny_server.url + "/completion", json={"prompt": ["hello", "world"], "stream": True, **base}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert {c["index"] for c in chunks} == {0, 1} and sum(c["stop"] for c in chunks) == 2
    for bad, needle in (([1, [2]], "mixes token ids"), (["x"] * 65, "at most 64"), ([1, -5], "invalid token id")):
        r = post(tiny_server, prompt=bad, **base)
        assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


def test_logit_bias_suppresses_words_in_every_form(tiny_server):
    prompt = "the model server token slot cache prompt"
    plain = post(tiny_server, prompt=prompt, n_predict=48, temperature=0, repeat_penalty=1.0).json()
    common = [t for t, _ in Counter(plain["tokens"]).most_common(3)]
    words = [post(tiny_server, "/detokenize", tokens=[t]).json()["content"] for t in common]
    forms = [
        [[t, -100] for t in common],  # llama.cpp: token ids
        [[t, False] for t in common],
        {str(t): -100 for t in common},  # OpenAI: {"token id": bias}
    ]
    for bias in forms:
        out = post(tiny_server, prompt=prompt, n_predict=48, temperature=0, repeat_penalty=1.0, logit_bias=bias).json()
        assert not set(out["tokens"]) & set(common), (bias, out["tokens"])
    # strings: every token the string tokenizes to (as llama.cpp: with the tokenizer's space prefix)
    string_tokens = {t for w in words for t in tokens_of(tiny_server, w)} - {tokens_of(tiny_server, " x")[0]}
    for bias in ([[w, -100] for w in words], {w: -100 for w in words}, [[w, False] for w in words]):
        out = post(tiny_server, prompt=prompt, n_predict=48, temperature=0, repeat_penalty=1.0, logit_bias=bias).json()
        assert not set(out["tokens"]) & string_tokens, (bias, out["tokens"])
    chat = post(tiny_server, "/v1/chat/completions", messages=[{"role": "user", "content": prompt}], max_tokens=32,
                temperature=0, logit_bias={str(t): -100 for t in common}, logprobs=True, top_logprobs=1)
    assert chat.status_code == 200, chat.text
    picked = [c["token"] for c in chat.json()["choices"][0]["logprobs"]["content"]]
    assert not set(picked) & set(words)


def test_n_cmpl(tiny_server):
    r = post(tiny_server, prompt=["hello", "world"], n_cmpl=2, n_predict=6, seed=3, temperature=1.0)
    assert r.status_code == 200, r.text
    out = r.json()
    assert [o["index"] for o in out] == [0, 1, 2, 3]
    assert out[0]["content"] != out[1]["content"]  # seed + k: different but reproducible
    again = post(tiny_server, prompt="hello", n_cmpl=2, n_predict=6, seed=3, temperature=1.0).json()
    assert [a["content"] for a in again] == [out[0]["content"], out[1]["content"]]
    for bad in (0, 17, "2"):
        assert post(tiny_server, prompt="x", n_cmpl=bad).status_code == 400
