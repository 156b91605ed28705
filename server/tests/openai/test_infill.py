"""POST /infill from the model's FIM tokens."""

from __future__ import annotations

import json

import httpx


def tok(srv, text):
    return httpx.post(srv.url + "/tokenize", json={"content": text}).json()["tokens"]


def test_infill_prompt_layout(oai_server):
    url = oai_server.url
    body = {"input_prefix": "def add(a, b):\n    return ", "input_suffix": "\n\nprint(add(1, 2))\n", "n_predict": 6, "temperature": 0}
    r = httpx.post(url + "/infill", json=body, timeout=60)
    assert r.status_code == 200, r.text
    d = r.json()
    m = oai_server.engine.model
    expected = [m.bos, m.fim_pre] + tok(oai_server, body["input_prefix"]) + [m.fim_suf] + tok(oai_server, body["input_suffix"]) + [m.fim_mid]
    assert d["tokens_evaluated"] == len(expected)
    raw = httpx.post(url + "/completion", json={"prompt": expected, "n_predict": 6, "temperature": 0}, timeout=60).json()
    assert d["content"] == raw["content"] and d["tokens"] == raw["tokens"]
    # an extra prompt goes after the middle token
    d2 = httpx.post(url + "/infill", json={**body, "prompt": "a"}, timeout=60).json()
    assert d2["tokens_evaluated"] == len(expected) + len(tok(oai_server, "a"))


def test_infill_streams_like_completion(oai_server):
    body = {"input_prefix": "x = ", "input_suffix": "\n", "n_predict": 5, "temperature": 0}
    full = httpx.post(oai_server.url + "/infill", json=body, timeout=60).json()
    chunks = []
    with httpx.stream("POST", oai_server.url + "/infill", json={**body, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(json.loads(line[6:]))
    assert "".join(c["content"] for c in chunks) == full["content"] and chunks[-1]["stop"] is True


def test_infill_errors(oai_server, live_server, gemma_model):
    r = httpx.post(oai_server.url + "/infill", json={"input_prefix": 3})
    assert r.status_code == 400 and "'input_prefix' must be a string" in r.json()["error"]["message"]
    r = httpx.post(oai_server.url + "/infill", json={"n_predict": 2})
    assert r.status_code == 400 and "'input_prefix' or 'input_suffix'" in r.json()["error"]["message"]
    srv = live_server(model=gemma_model)  # Gemma 3 has no FIM tokens
    r = httpx.post(srv.url + "/infill", json={"input_prefix": "a", "input_suffix": "b"})
    e = r.json()["error"]
    assert r.status_code == 400 and e["type"] == "invalid_request_error"
    assert "fim_pre, fim_suf, fim_mid" in e["message"]


def _same_as_tokens(srv, body: dict, expected: list[int]) -> None:
    """The infill evaluates exactly `expected`: same count, and the same greedy tokens as /completion on it."""
    d = httpx.post(srv.url + "/infill", json={**body, "n_predict": 6, "temperature": 0}, timeout=60).json()
    assert d["tokens_evaluated"] == len(expected), d
    raw = httpx.post(srv.url + "/completion", json={"prompt": expected, "n_predict": 6, "temperature": 0}, timeout=60).json()
    assert d["tokens"] == raw["tokens"]


EXTRA = [{"filename": "util.py", "text": "def sub(a, b):\n    return a - b\n"}, {"filename": "b.py", "text": "x = 1\n"}]
BODY = {"input_prefix": "def add(a, b):\n    return ", "input_suffix": "\n"}


def test_input_extra_with_repo_level_fim_tokens(live_server, tmp_path):
    from kubellama_server.testing.tiny_gguf import build_tiny_gguf

    srv = live_server(model=build_tiny_gguf(tmp_path / "repo.gguf", fim_repo=True))
    m = srv.engine.model
    assert m.fim_rep >= 0 and m.fim_sep >= 0
    t = lambda s: tok(srv, s)  # noqa: E731
    fim = [m.fim_pre] + t(BODY["input_prefix"]) + [m.fim_suf] + t(BODY["input_suffix"]) + [m.fim_mid]
    project = ([m.fim_rep] + t("myproject\n") + [m.fim_sep] + t("util.py\n") + t(EXTRA[0]["text"])
               + [m.fim_sep] + t("b.py\n") + t(EXTRA[1]["text"]) + [m.fim_sep] + t("filename\n"))
    _same_as_tokens(srv, {**BODY, "input_extra": EXTRA}, [m.bos] + project + fim)
    _same_as_tokens(srv, BODY, [m.bos] + fim)  # without input_extra: the reference layout


def test_input_extra_without_repo_tokens_and_spm_order(live_server):
    srv = live_server("--spm-infill")
    m = srv.engine.model
    assert m.fim_rep < 0 and m.fim_sep < 0
    t = lambda s: tok(srv, s)  # noqa: E731
    snippet = "\n\n--- snippet ---\n\n"
    project = t(snippet) + t(EXTRA[0]["text"]) + t(snippet) + t(EXTRA[1]["text"])
    spm = [m.fim_suf] + t(BODY["input_suffix"]) + [m.fim_pre] + t(BODY["input_prefix"]) + [m.fim_mid]
    _same_as_tokens(srv, {**BODY, "input_extra": EXTRA}, [m.bos] + project + spm)
    for bad in ({"input_extra": {"text": "x"}}, {"input_extra": [{"text": 3}]}, {"input_extra": ["x"]}):
        r = httpx.post(srv.url + "/infill", json={**BODY, **bad})
        assert r.status_code == 400 and "input_extra" in r.json()["error"]["message"], r.text
