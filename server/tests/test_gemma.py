"""Integration on the real default model (Gemma 3 270M): generation, caching, batching."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma_server(gemma_model):
    from kubellama_server.testing.live import LiveServer

    srv = LiveServer(["-m", str(gemma_model), "-c", "4096", "-np", "4", "-t", "2"])
    srv.start()
    yield srv
    srv.stop()


def _complete(srv, **body):
    r = httpx.post(srv.url + "/completion", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def test_gemma_continues_a_sequence(gemma_server):
    d = _complete(gemma_server, prompt="1, 2, 3, 4, 5,", n_predict=12, temperature=0)
    assert d["content"].startswith(" 6, 7, 8")
    assert d["generation_settings"]["n_ctx"] == 1024
    n_prompt = len(httpx.post(gemma_server.url + "/tokenize", json={"content": "1, 2, 3, 4, 5,"}).json()["tokens"])
    assert d["tokens_evaluated"] == n_prompt + 1  # BOS added to a text prompt


def test_gemma_stop_word(gemma_server):
    d = _complete(gemma_server, prompt="1, 2, 3, 4, 5,", n_predict=32, temperature=0, stop=[" 9"])
    assert d["stopped_word"] and d["content"] == " 6, 7, 8,"


def test_gemma_prompt_cache_and_parallel_slots(gemma_server):
    shared = "You are a helpful assistant. " * 40
    first = _complete(gemma_server, prompt=shared + "Question: 1+1=", n_predict=4, cache_prompt=True, temperature=0)
    second = _complete(gemma_server, prompt=shared + "Question: 2+2=", n_predict=4, cache_prompt=True, temperature=0)
    assert second["tokens_cached"] >= first["tokens_evaluated"] - 8
    assert second["timings"]["prompt_n"] < first["timings"]["prompt_n"] / 4
    with cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: _complete(gemma_server, prompt=f"Count from {i}:", n_predict=16, ignore_eos=True, seed=i), range(4)))
    assert all(r["tokens_predicted"] == 16 for r in results)
    assert gemma_server.engine.scheduler.max_batch_slots >= 2


def test_gemma_calls_a_tool_with_the_users_argument(gemma_server):
    import json

    import openai

    client = openai.OpenAI(base_url=gemma_server.url + "/v1", api_key="x", max_retries=0, timeout=300)
    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    r = client.chat.completions.create(model="gemma", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                                       tools=[weather], tool_choice="required", parallel_tool_calls=False,
                                       temperature=0, max_tokens=100)
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
