"""Reranking: POST /rerank, /reranking, /v1/rerank, /v1/reranking (llama.cpp's handler).

Each (query, document) pair is one `Task(kind="rerank")` whose prompt is llama.cpp's
`format_prompt_rerank`: the model's rerank template (`tokenizer.chat_template.rerank`,
with {query} and {document}) when it has one, else BOS query EOS SEP document EOS
(each special token as the vocabulary asks). With pooling RANK the scheduler's
embedding step reads the score from the pooled output.

Two request shapes, as llama.cpp: Jina/Cohere (`documents`, answered with
`{"model", "object", "usage", "results": [{"index", "relevance_score"}]}`) and
TEI (`texts`, answered with a bare list of `{"index", "score"}`, plus `"text"` with
`return_text`). Results are sorted by score, best first, and cut to `top_n`.
"""

from __future__ import annotations

from typing import Any

from ..engine.params import SlotParams
from ..engine.task import RerankResult, Task, TaskSink
from ..errors import APIError, invalid
from .chat_service import served_model
from .limits import check_task_count


def require_enabled(engine) -> None:
    if not engine.reranking:
        raise APIError("This server does not support reranking. Start it with `--reranking`", "not_supported_error")


def prompt_tokens(model, query: str, document: str) -> list[int]:
    """llama.cpp's format_prompt_rerank."""
    template = model.rerank_template
    if template is not None:
        text = template.replace("{query}", query).replace("{document}", document)
        return model.tokenize(text, add_special=False, parse_special=True)
    q = model.tokenize(query, add_special=False, parse_special=False)
    d = model.tokenize(document, add_special=False, parse_special=False)
    eos = model.eos if model.eos >= 0 else model.sep  # SEP when the vocabulary has no EOS
    tokens: list[int] = []
    if model.add_bos:
        tokens.append(model.bos)
    tokens += q
    if model.add_eos:
        tokens.append(eos)
    if model.add_sep:
        tokens.append(model.sep)
    tokens += d
    if model.add_eos:
        tokens.append(eos)
    return tokens


def _task(query: str, document: str) -> Task:
    return Task(kind="rerank", prompt=document, params=SlotParams(), sink=TaskSink(), use_system_prompt=False,
                build_prompt=lambda model: prompt_tokens(model, query, document),
                prompt_bytes=len(query.encode("utf-8", "surrogatepass")) + len(document.encode("utf-8", "surrogatepass")))


def parse(body: dict) -> dict[str, Any]:
    """The request's fields, checked; raises a 400 APIError."""
    if "query" not in body:
        raise invalid('"query" must be provided')
    query = body["query"]
    if not isinstance(query, str):
        raise invalid('"query" must be a string')
    tei = "texts" in body  # llama.cpp: TEI format whenever "texts" is there
    key = "documents" if body.get("documents") is not None else "texts"
    documents = body.get(key)
    if documents is None:
        documents = []
    if not isinstance(documents, list) or not documents or not all(isinstance(d, str) for d in documents):
        raise invalid('"documents" must be a non-empty string array')
    top_n = body.get("top_n")
    if top_n is None:
        top_n = len(documents)
    elif isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0:
        raise invalid('"top_n" must be a non-negative integer')
    return_text = body.get("return_text", False)
    if return_text is None:
        return_text = False
    if not isinstance(return_text, bool):
        raise invalid('"return_text" must be a boolean')
    return {"query": query, "documents": documents, "top_n": top_n, "tei": tei, "return_text": tei and return_text}


def tasks(engine, body: dict) -> tuple[dict[str, Any], list[Task]]:
    require_enabled(engine)
    req = parse(body)
    check_task_count(engine.settings, len(req["documents"]))
    return req, [_task(req["query"], d) for d in req["documents"]]


def response(engine, body: dict, req: dict[str, Any], results: list[RerankResult]) -> Any:
    """llama.cpp's format_response_rerank."""
    label = "score" if req["tei"] else "relevance_score"
    elements = []
    for i, r in enumerate(results):
        elem: dict[str, Any] = {"index": i, label: r.score}
        if req["return_text"]:
            elem["text"] = req["documents"][i]
        elements.append(elem)
    elements.sort(key=lambda e: e[label], reverse=True)  # stable: ties keep the input order
    elements = elements[: req["top_n"]]
    if req["tei"]:
        return elements
    n = sum(r.n_tokens for r in results)
    model = body.get("model")
    return {
        "model": model if isinstance(model, str) else served_model(engine),
        "object": "list",
        "usage": {"prompt_tokens": n, "total_tokens": n},
        "results": elements,
    }
