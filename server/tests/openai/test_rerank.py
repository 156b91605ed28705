"""Reranking (llama.cpp's /rerank, /reranking, /v1/rerank, /v1/reranking) on a tiny qwen3 reranker.

The model is `build_tiny_gguf(reranker=True)`: random weights, a two-label classifier
head ("yes", "no") that llama.cpp softmaxes under pooling RANK, and a rerank prompt
template. Everything goes over real HTTP (httpx, loopback).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import httpx
import pytest

from kubellama_server.cli import parse_settings
from kubellama_server.llama.backend import init_backend
from kubellama_server.llama.model import LlamaModel, ModelLoadParams
from kubellama_server.serving import rerank
from kubellama_server.testing.live import LiveServer
from kubellama_server.testing.tiny_gguf import RERANK_TEMPLATE, build_tiny_gguf

PATHS = ["/rerank", "/reranking", "/v1/rerank", "/v1/reranking"]
DOCS = ["hello world", "cats and dogs", "the model is a llama", "json true false null", "a b c d e f g"]
SAME_LENGTH = ["a b", "c d", "e f", "g h", "i j", "k l"]  # two tokens each: decoded together


@pytest.fixture(scope="module")
def reranker_model(tmp_path_factory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("rerank") / "tiny-reranker.gguf", reranker=True)


@pytest.fixture(scope="module")
def plain_reranker_model(tmp_path_factory) -> Path:
    """A reranker without a rerank template: llama.cpp's BOS query EOS SEP document EOS."""
    return build_tiny_gguf(tmp_path_factory.mktemp("rerank") / "tiny-reranker-plain.gguf", reranker=True,
                           rerank_template=None)


@pytest.fixture(scope="module")
def rr_server(reranker_model):
    srv = LiveServer(["-m", str(reranker_model), "-t", "1", "-c", "2048", "-np", "4", "--reranking", "--alias", "tiny-rr"])
    srv.start()
    yield srv
    srv.stop()


def post(srv, body, path="/v1/rerank") -> httpx.Response:
    return httpx.post(srv.url + path, json=body, timeout=60)


def scores_by_index(results: list[dict], label: str = "relevance_score") -> dict[int, float]:
    return {r["index"]: r[label] for r in results}


def err(r: httpx.Response, status: int, type_: str, fragment: str = "") -> dict:
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert e["code"] == status and e["type"] == type_, e
    assert fragment in e["message"], e["message"]
    return e


# -- the tiny reranker itself ---------------------------------------------------


def test_tiny_reranker_scores_in_llama_cpp(reranker_model, tmp_path):
    """llama.cpp loads the GGUF and pooling RANK yields a finite score per sequence (in a subprocess:
    a crash there must not take the test run down)."""
    import subprocess
    import sys

    script = tmp_path / "check.py"
    script.write_text(f"""
import math, llama_cpp as lc
lc.llama_backend_init()
m = lc.llama_model_load_from_file({str(reranker_model)!r}.encode(), lc.llama_model_default_params())
assert m and lc.llama_model_n_cls_out(m) == 2 and lc.llama_model_cls_label(m, 0) == b"yes"
cp = lc.llama_context_default_params()
cp.n_ctx = 256; cp.n_batch = 256; cp.n_ubatch = 256; cp.embeddings = True; cp.n_threads = 1; cp.n_threads_batch = 1
cp.pooling_type = lc.LLAMA_POOLING_TYPE_RANK
ctx = lc.llama_init_from_model(m, cp)
assert lc.llama_pooling_type(ctx) == lc.LLAMA_POOLING_TYPE_RANK
b = lc.llama_batch_init(8, 0, 1)
for i, t in enumerate([1, 300, 301, 302]):
    b.token[i] = t; b.pos[i] = i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = True
b.n_tokens = 4
assert lc.llama_decode(ctx, b) == 0
e = lc.llama_get_embeddings_seq(ctx, 0)
yes, no = e[0], e[1]
assert math.isfinite(yes) and 0 < yes < 1 and abs(yes + no - 1) < 1e-5, (yes, no)
print("score", yes)
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "score" in out.stdout


def _load(path: Path) -> LlamaModel:
    init_backend(verbose=False)
    return LlamaModel(ModelLoadParams(path=str(path)))


def test_prompt_uses_the_rerank_template(reranker_model):
    model = _load(reranker_model)
    try:
        assert model.rerank_template == RERANK_TEMPLATE and model.n_cls_out == 2
        text = RERANK_TEMPLATE.replace("{query}", "hello").replace("{document}", "cats and dogs")
        assert rerank.prompt_tokens(model, "hello", "cats and dogs") == model.tokenize(text, add_special=False, parse_special=True)
    finally:
        model.close()


def test_prompt_without_template_is_bos_query_doc(plain_reranker_model):
    """No template: [BOS] query [EOS] [SEP] doc [EOS], each special as the vocabulary asks (here: BOS only)."""
    model = _load(plain_reranker_model)
    try:
        assert model.rerank_template is None and model.add_bos and not model.add_eos and not model.add_sep
        q = model.tokenize("hello", add_special=False, parse_special=False)
        d = model.tokenize("<|im_end|> dogs", add_special=False, parse_special=False)  # special text stays text
        assert rerank.prompt_tokens(model, "hello", "<|im_end|> dogs") == [model.bos] + q + d
        assert model.tokenize("<|im_end|>", add_special=False, parse_special=True) != model.tokenize(
            "<|im_end|>", add_special=False, parse_special=False)
    finally:
        model.close()


# -- responses ------------------------------------------------------------------


def test_scores_sorted_indexed_and_usage(rr_server):
    r = post(rr_server, {"query": "hello", "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-rr" and body["object"] == "list"
    results = body["results"]
    assert sorted(x["index"] for x in results) == list(range(len(DOCS)))
    assert all(set(x) == {"index", "relevance_score"} for x in results)
    scores = [x["relevance_score"] for x in results]
    assert all(math.isfinite(s) and 0 < s < 1 for s in scores)
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) > 1  # the documents are told apart
    # usage: every pair's prompt, counted once each (whatever top_n keeps)
    singles = [post(rr_server, {"query": "hello", "documents": [d], "top_n": 0}).json()["usage"] for d in DOCS]
    n = sum(u["prompt_tokens"] for u in singles)
    assert body["usage"] == {"prompt_tokens": n, "total_tokens": n} and n > 0


def test_index_maps_back_to_the_input(rr_server):
    """A document's score does not depend on its place: reversing the input reverses the indexes."""
    fwd = scores_by_index(post(rr_server, {"query": "llama", "documents": DOCS}).json()["results"])
    rev = scores_by_index(post(rr_server, {"query": "llama", "documents": DOCS[::-1]}).json()["results"])
    n = len(DOCS)
    assert all(fwd[i] == pytest.approx(rev[n - 1 - i], rel=1e-5, abs=1e-7) for i in range(n))


@pytest.mark.parametrize("path", PATHS)
def test_every_path_answers_the_same(rr_server, path):
    ref = post(rr_server, {"query": "hello", "documents": DOCS}).json()["results"]
    got = post(rr_server, {"query": "hello", "documents": DOCS}, path).json()["results"]
    assert got == ref


def test_deterministic(rr_server):
    a = post(rr_server, {"query": "the cats", "documents": DOCS}).json()
    b = post(rr_server, {"query": "the cats", "documents": DOCS}).json()
    assert a == b


def test_batching_does_not_change_scores(rr_server):
    """Each document alone scores what it scores among others decoded in the same batch."""
    sched = rr_server.engine.scheduler
    sched.max_pooled_slots = 0
    together = scores_by_index(post(rr_server, {"query": "hello", "documents": SAME_LENGTH}).json()["results"])
    assert sched.max_pooled_slots > 1  # equal lengths: several pairs shared one decode
    for i, doc in enumerate(SAME_LENGTH):
        alone = post(rr_server, {"query": "hello", "documents": [doc]}).json()["results"]
        assert alone[0]["index"] == 0
        assert alone[0]["relevance_score"] == pytest.approx(together[i], rel=1e-5, abs=1e-7)
    dup = post(rr_server, {"query": "hello", "documents": [SAME_LENGTH[0]] * 4}).json()["results"]
    assert [x["index"] for x in dup] == [0, 1, 2, 3]  # ties keep the input order
    assert all(x["relevance_score"] == pytest.approx(together[0], rel=1e-5, abs=1e-7) for x in dup)


def test_concurrent_requests(rr_server):
    async def run():
        async with httpx.AsyncClient(base_url=rr_server.url, timeout=60) as c:
            rs = await asyncio.gather(*(c.post("/rerank", json={"query": q, "documents": DOCS}) for q in ("hello", "llama") * 3))
        return [r.json()["results"] for r in rs]

    out = asyncio.run(run())
    assert out[0] == out[2] == out[4] and out[1] == out[3] == out[5]
    assert out[0] == post(rr_server, {"query": "hello", "documents": DOCS}).json()["results"]


def test_top_n(rr_server):
    full = post(rr_server, {"query": "hello", "documents": DOCS}).json()
    two = post(rr_server, {"query": "hello", "documents": DOCS, "top_n": 2}).json()
    assert two["results"] == full["results"][:2]
    assert two["usage"] == full["usage"]
    assert post(rr_server, {"query": "hello", "documents": DOCS, "top_n": 0}).json()["results"] == []
    assert post(rr_server, {"query": "hello", "documents": DOCS, "top_n": 99}).json()["results"] == full["results"]
    assert post(rr_server, {"query": "hello", "documents": DOCS, "top_n": None}).json()["results"] == full["results"]


def test_tei_texts_form(rr_server):
    jina = post(rr_server, {"query": "hello", "documents": DOCS}).json()["results"]
    tei = post(rr_server, {"query": "hello", "texts": DOCS}, "/rerank").json()
    assert isinstance(tei, list)  # TEI: a bare list, "score" instead of "relevance_score"
    assert [(x["index"], x["score"]) for x in tei] == [(x["index"], x["relevance_score"]) for x in jina]
    assert all(set(x) == {"index", "score"} for x in tei)
    with_text = post(rr_server, {"query": "hello", "texts": DOCS, "return_text": True, "top_n": 3}).json()
    assert len(with_text) == 3 and all(x["text"] == DOCS[x["index"]] for x in with_text)
    # return_text is TEI's: the Jina form ignores it
    assert post(rr_server, {"query": "hello", "documents": DOCS, "return_text": True}).json()["results"] == jina


def test_model_name_echoed(rr_server):
    assert post(rr_server, {"query": "q", "documents": ["d"], "model": "my-reranker"}).json()["model"] == "my-reranker"


def test_empty_query_and_document_are_allowed(rr_server):
    r = post(rr_server, {"query": "", "documents": ["", "hello"]})
    assert r.status_code == 200, r.text
    assert all(math.isfinite(x["relevance_score"]) for x in r.json()["results"])


def test_embeddings_and_completions_still_work(rr_server):
    """--reranking turns embeddings on (pooling rank: the normalised classifier outputs) and
    leaves generation alone."""
    e = httpx.post(rr_server.url + "/v1/embeddings", json={"input": "hello"}, timeout=60)
    assert e.status_code == 200, e.text
    vec = e.json()["data"][0]["embedding"]
    assert len(vec) == 2 and math.isclose(math.hypot(*vec), 1.0, rel_tol=1e-5)
    # ignore_eos: the tiny model samples its EOS within 4 tokens about once in 100 runs
    c = httpx.post(rr_server.url + "/completion", json={"prompt": "hello", "n_predict": 4, "ignore_eos": True},
                   timeout=60)
    assert c.status_code == 200 and c.json()["tokens_predicted"] == 4


# -- errors -----------------------------------------------------------------------


@pytest.mark.parametrize("body, fragment", [
    ({"documents": ["a"]}, '"query" must be provided'),
    ({"query": 5, "documents": ["a"]}, '"query" must be a string'),
    ({"query": None, "documents": ["a"]}, '"query" must be a string'),
    ({"query": "q"}, '"documents" must be a non-empty string array'),
    ({"query": "q", "documents": []}, '"documents" must be a non-empty string array'),
    ({"query": "q", "texts": []}, '"documents" must be a non-empty string array'),
    ({"query": "q", "documents": ["a", 3]}, '"documents" must be a non-empty string array'),
    ({"query": "q", "documents": "a"}, '"documents" must be a non-empty string array'),
    ({"query": "q", "documents": [["a"]]}, '"documents" must be a non-empty string array'),
    ({"query": "q", "documents": ["a"], "top_n": -1}, '"top_n"'),
    ({"query": "q", "documents": ["a"], "top_n": "2"}, '"top_n"'),
    ({"query": "q", "documents": ["a"], "top_n": 1.5}, '"top_n"'),
    ({"query": "q", "texts": ["a"], "return_text": "yes"}, '"return_text"'),
])
def test_bad_requests(rr_server, body, fragment):
    err(post(rr_server, body), 400, "invalid_request_error", fragment)


def test_bad_json(rr_server):
    err(httpx.post(rr_server.url + "/rerank", content=b"{nope", timeout=30), 400, "invalid_request_error", "not valid JSON")
    err(httpx.post(rr_server.url + "/rerank", json=["q"], timeout=30), 400, "invalid_request_error", "JSON object")


def test_document_too_long(rr_server):
    """As for embeddings, a whole pair is decoded in one ubatch."""
    r = post(rr_server, {"query": "q", "documents": ["short", "hello " * 600]})
    err(r, 400, "exceed_context_size_error", "too large")


def test_not_supported_without_reranking(oai_server, tiny_server):
    """--embedding alone (pooling mean) or no embeddings at all: 501, as llama.cpp."""
    for srv in (oai_server, tiny_server):
        for path in PATHS:
            err(post(srv, {"query": "q", "documents": ["a"]}, path), 501, "not_supported_error", "--reranking")


# -- flags ---------------------------------------------------------------------------


def test_flags_and_env():
    s, _ = parse_settings(["-m", "m.gguf", "--reranking"], environ={})
    assert s.reranking and s.embeddings_enabled and s.pooling_name == "rank" and not s.embedding
    s, _ = parse_settings(["-m", "m.gguf", "--rerank"], environ={})
    assert s.reranking
    for env in ("LLAMA_ARG_RERANKING", "LLAMA_ARG_RERANK"):
        s, _ = parse_settings(["-m", "m.gguf"], environ={env: "1"})
        assert s.reranking
    s, _ = parse_settings(["-m", "m.gguf", "--embedding"], environ={"LLAMA_ARG_POOLING": "cls"})
    assert s.pooling_name == "cls"
    s, _ = parse_settings(["-m", "m.gguf", "--embedding"], environ={})
    assert s.pooling == "" and s.pooling_name == "mean"
    s, _ = parse_settings(["-m", "m.gguf", "--reranking", "--pooling", "rank"], environ={})
    assert s.pooling_name == "rank"
    with pytest.raises(SystemExit):
        parse_settings(["-m", "m.gguf", "--pooling", "max"], environ={})
    with pytest.raises(SystemExit):
        parse_settings(["-m", "m.gguf", "--reranking", "--pooling", "mean"], environ={})


def test_embedding_with_pooling_rank_enables_rerank(live_server, reranker_model):
    srv = live_server("--embedding", "--pooling", "rank", model=reranker_model)
    r = post(srv, {"query": "hello", "documents": DOCS})
    assert r.status_code == 200 and len(r.json()["results"]) == len(DOCS)


def test_plain_reranker_over_http(live_server, plain_reranker_model):
    """No rerank template: BOS query doc, so usage is 1 + len(query) + len(doc) tokens."""
    srv = live_server("--reranking", model=plain_reranker_model)
    toks = lambda t: len(httpx.post(srv.url + "/tokenize", json={"content": t}, timeout=30).json()["tokens"])  # noqa: E731
    body = post(srv, {"query": "hello", "documents": ["cats and dogs", "json"]}).json()
    assert body["usage"]["prompt_tokens"] == 2 * (1 + toks("hello")) + toks("cats and dogs") + toks("json")
    assert all(math.isfinite(x["relevance_score"]) for x in body["results"])


def test_pooling_none_and_cls(live_server):
    """--pooling none: one raw vector per token on /embedding, and /v1/embeddings refuses (llama.cpp);
    --pooling cls: one normalised vector."""
    srv = live_server("--embedding", "--pooling", "none")
    n = len(httpx.post(srv.url + "/tokenize", json={"content": "hello world", "add_special": True}, timeout=30).json()["tokens"])
    one = httpx.post(srv.url + "/embedding", json={"content": "hello world"}, timeout=30).json()["embedding"]
    assert len(one) == n and all(len(v) == 64 for v in one)
    err(httpx.post(srv.url + "/v1/embeddings", json={"input": "hello"}, timeout=30), 400, "invalid_request_error",
        "not OAI compatible")
    srv = live_server("--embedding", "--pooling", "cls")
    v = httpx.post(srv.url + "/v1/embeddings", json={"input": "hello world"}, timeout=30).json()["data"][0]["embedding"]
    assert len(v) == 64 and math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-5)
    err(post(srv, {"query": "q", "documents": ["a"]}), 501, "not_supported_error")
