"""Drop-in behaviour the tiny model cannot show: word-level logit bias and DRY on Gemma 3 270M."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma(gemma_model):
    from kubellama_server.testing.live import LiveServer

    srv = LiveServer(["-m", str(gemma_model), "-c", "1024", "-np", "1", "-t", "2", "--temp", "0"])
    srv.start()
    yield srv
    srv.stop()


def complete(srv, **body) -> dict:
    r = httpx.post(srv.url + "/completion", json={"n_predict": 12, **body}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def test_logit_bias_on_words_suppresses_them(gemma):
    prompt = "1, 2, 3, 4, 5,"
    plain = complete(gemma, prompt=prompt)["content"]  # --temp 0: greedy by default
    assert plain.startswith(" 6, 7, 8")
    for bias in ([[" 6", -100], [" 7", False]], [["6", -100], ["7", -100]]):
        out = complete(gemma, prompt=prompt, logit_bias=bias)["content"]
        assert "6" not in out and "7" not in out, (bias, out)
    text = complete(gemma, prompt="The capital of France is")["content"]
    word = next(w for w in text.split() if w.isalpha() and len(w) > 3)
    # OpenAI's object form: a key that is not a number is text (" 6" would be token 6, as in llama.cpp)
    out = complete(gemma, prompt="The capital of France is", logit_bias={" " + word: -100, word: -100})["content"]
    assert word not in out, (word, text, out)
    chat = httpx.post(gemma.url + "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Count from 1 to 9, separated by commas."}], "max_tokens": 24,
        "temperature": 0, "logit_bias": {str(t): -100 for t in httpx.post(
            gemma.url + "/tokenize", json={"content": "5"}).json()["tokens"]}}, timeout=300).json()
    assert "5" not in chat["choices"][0]["message"]["content"]


def test_dry_breaks_a_repetition(gemma):
    prompt = "1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3,"
    plain = complete(gemma, prompt=prompt, n_predict=16)["content"]
    assert plain.startswith(" 1, 2, 3")
    dry = complete(gemma, prompt=prompt, n_predict=16, dry_multiplier=1.5, dry_allowed_length=2)["content"]
    assert not dry.startswith(" 1, 2, 3"), dry
