"""The official `openai` package against a running server: chat, completions, embeddings, models."""

from __future__ import annotations

import base64
import json

import httpx
import jsonschema
import numpy as np
import pytest

MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}]


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-test"]
    card = models.data[0]
    assert card.object == "model" and card.owned_by == "kubellama" and card.created > 0
    meta = card.model_extra["meta"]
    assert meta["n_ctx_train"] == 4096 and meta["n_params"] > 0 and meta["size"] > 0 and meta["n_vocab"] > 0


def test_chat_non_streaming(client):
    r = client.chat.completions.create(model="whatever", messages=MSGS, max_tokens=8, seed=1, temperature=0.7)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "tiny-test" and r.created > 0
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_length_finish_and_seed_reproducible(client):
    kw = dict(model="m", messages=MSGS, max_tokens=6, seed=7, temperature=1.0, logit_bias={"2": -100})
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].finish_reason == "length" and a.usage.completion_tokens == 6


def test_chat_streaming(client):
    stream = client.chat.completions.create(model="m", messages=MSGS, max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("stop", "length")
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens >= 1 and usage.prompt_tokens > 0
    # the same request without streaming gives the same text (greedy)
    full = client.chat.completions.create(model="m", messages=MSGS, max_tokens=10, temperature=0)
    assert full.choices[0].message.content == text
    assert full.usage.completion_tokens == usage.completion_tokens


def test_stream_ends_with_done(oai_server):
    body = {"messages": MSGS, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", oai_server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in r.read().decode().split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    assert all(f.startswith("data: {") for f in frames[:-1])
    assert "usage" not in json.loads(frames[-2][6:])  # no usage chunk unless asked


def test_n_choices_run_in_parallel_slots(client, oai_server):
    r = client.chat.completions.create(model="m", messages=MSGS, max_tokens=12, n=3, seed=5, temperature=1.5)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1  # different seeds per choice
    assert r.usage.completion_tokens == sum(12 if c.finish_reason == "length" else 0 for c in r.choices) or r.usage.completion_tokens <= 36
    assert oai_server.engine.scheduler.max_batch_slots >= 3
    # streaming: every choice gets its role chunk and one finish chunk
    chunks = list(client.chat.completions.create(model="m", messages=MSGS, max_tokens=4, n=2, stream=True))
    roles = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.role)
    finishes = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason)
    assert roles == [0, 1] and finishes == [0, 1]


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="m", messages=MSGS, max_tokens=5, logprobs=True, top_logprobs=3, temperature=0)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for tok in content:
        assert tok.logprob <= 0 and len(tok.top_logprobs) == 3
        assert tok.top_logprobs[0].logprob >= tok.top_logprobs[-1].logprob
        assert tok.token == tok.top_logprobs[0].token  # greedy picks the most likely token
    assert "".join(t.token for t in content) == r.choices[0].message.content
    r = client.chat.completions.create(model="m", messages=MSGS, max_tokens=3)
    assert r.choices[0].logprobs is None


def test_text_completion(client):
    r = client.completions.create(model="m", prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=2)
    assert r.object == "text_completion" and r.model == "tiny-test"
    (choice,) = r.choices
    assert choice.finish_reason in ("stop", "length") and choice.logprobs.tokens
    assert "".join(choice.logprobs.tokens) == choice.text
    assert all(len(t) <= 2 for t in choice.logprobs.top_logprobs)
    # streaming gives the same text
    chunks = list(client.completions.create(model="m", prompt="Once upon a time", max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason
    # several prompts: one choice each, in order
    r = client.completions.create(model="m", prompt=["a b c", "x y z"], max_tokens=3, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    echo = client.completions.create(model="m", prompt="Once upon a time", max_tokens=8, temperature=0, echo=True)
    assert echo.choices[0].text == "Once upon a time" + choice.text


def test_llama_cpp_fields_pass_through(oai_server):
    body = {"messages": MSGS, "max_tokens": 6, "top_k": 1, "min_p": 0.1, "repeat_penalty": 1.0, "cache_prompt": True,
            "grammar": 'root ::= "yes" | "no"'}
    r = httpx.post(oai_server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] in ("yes", "no")


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("fmt", [
    {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}},
    {"type": "json_object", "schema": SCHEMA},
])
def test_response_format_schema(client, fmt):
    for seed in (1, 2):
        r = client.chat.completions.create(model="m", messages=MSGS, max_tokens=200, seed=seed, temperature=0.8,
                                           response_format=fmt)
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)


def test_response_format_json_object(client):
    r = client.chat.completions.create(model="m", messages=MSGS, max_tokens=200, seed=3, response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    json.loads(r.choices[0].message.content)


def test_embeddings_float_and_base64(client):
    r = client.embeddings.create(model="m", input=["hello world", "hello world", "cats and dogs"])
    assert [d.index for d in r.data] == [0, 1, 2] and r.model == "tiny-test"
    vecs = np.array([d.embedding for d in r.data])
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vecs[0], vecs[1], atol=1e-5) and not np.allclose(vecs[0], vecs[2], atol=1e-3)
    assert r.usage.prompt_tokens == r.usage.total_tokens > 0
    b = client.embeddings.create(model="m", input="hello world", encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(b.data[0].embedding), dtype="<f4")
    assert np.allclose(decoded, vecs[0], atol=1e-6)


def test_embeddings_token_inputs_and_base64_wire(oai_server):
    url = oai_server.url
    toks = httpx.post(url + "/tokenize", json={"content": "hello world", "add_special": True}).json()["tokens"]
    a = httpx.post(url + "/v1/embeddings", json={"input": "hello world"}).json()["data"][0]["embedding"]
    b = httpx.post(url + "/v1/embeddings", json={"input": toks}).json()["data"][0]["embedding"]
    c = httpx.post(url + "/v1/embeddings", json={"input": [toks, toks]}).json()["data"]
    assert np.allclose(a, b, atol=1e-5) and len(c) == 2 and np.allclose(c[1]["embedding"], a, atol=1e-5)
    raw = httpx.post(url + "/v1/embeddings", json={"input": "hello world", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, a, atol=1e-6)


def test_native_embedding(oai_server):
    url = oai_server.url
    one = httpx.post(url + "/embedding", json={"content": "hello world"}).json()
    v1 = httpx.post(url + "/v1/embeddings", json={"input": "hello world"}).json()["data"][0]["embedding"]
    assert np.allclose(one["embedding"], v1, atol=1e-6)
    many = httpx.post(url + "/embedding", json={"content": ["a", "b"]}).json()
    assert [m["index"] for m in many] == [0, 1]


def test_embeddings_do_not_disturb_generation(oai_server, client):
    before = client.completions.create(model="m", prompt="The sky is", max_tokens=8, temperature=0).choices[0].text
    client.embeddings.create(model="m", input=["x"] * 6)
    after = client.completions.create(model="m", prompt="The sky is", max_tokens=8, temperature=0).choices[0].text
    assert before == after


def test_embedding_batches_of_different_lengths(client):
    texts = ["a", "a somewhat longer sentence", "the longest sentence of them all, by a few words", "mid length"]
    batch = np.array([d.embedding for d in client.embeddings.create(model="m", input=texts).data])
    alone = np.array([client.embeddings.create(model="m", input=t).data[0].embedding for t in texts])
    assert np.allclose(batch, alone, atol=1e-4)


def test_stream_chunk_shapes(oai_server):
    body = {"messages": MSGS, "max_tokens": 3, "stream": True, "logprobs": True, "top_logprobs": 1}
    with httpx.stream("POST", oai_server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        chunks = [json.loads(f[6:]) for f in r.read().decode().split("\n\n") if f.startswith("data: {")]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}  # as llama.cpp
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] == "length"
    middle = [c["choices"][0] for c in chunks[1:-1]]
    assert middle and all(set(c["delta"]) == {"content"} for c in middle)
    assert sum(len(c["logprobs"]["content"]) for c in middle) == 3


def test_chat_reuses_the_prompt_cache_by_default(client):
    """A follow-up turn evaluates only its new tokens (cache_prompt defaults to true on the OpenAI routes)."""
    history = MSGS + [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "and again"}]
    first = client.chat.completions.create(model="m", messages=history, max_tokens=4, seed=1)
    second = client.chat.completions.create(model="m", messages=history + [{"role": "assistant", "content": "ok"},
                                                                         {"role": "user", "content": "bye"}],
                                            max_tokens=4, seed=1)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 2
    cold = client.chat.completions.create(model="m", messages=history, max_tokens=4, seed=1,
                                          extra_body={"cache_prompt": False})
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
