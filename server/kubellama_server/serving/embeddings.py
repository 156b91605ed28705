"""Embeddings: POST /embedding (native) and POST /v1/embeddings (OpenAI).

Each input is one `Task(kind="embedding")`; the scheduler decodes the inputs that
fit together in one batch and returns mean-pooled, L2-normalised vectors.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from ..engine.params import SlotParams, parse_prompt
from ..engine.task import EmbeddingResult, Task, TaskSink
from ..errors import APIError, invalid
from .limits import check_task_count
from .media import completion_images, require_multimodal
from .. import protocol as P
from .chat_service import served_model


def require_enabled(engine) -> None:
    if not engine.settings.embeddings_enabled:
        raise APIError("This server does not support embeddings. Start it with `--embedding`", "not_supported_error")


def _task(prompt: Any, images: list[bytes] | None = None) -> Task:
    return Task(kind="embedding", prompt=prompt, params=SlotParams(), sink=TaskSink(), use_system_prompt=False,
                images=images or [])


def inputs_of(value: Any, key: str) -> list[Any]:
    """A string, a token list, or a list of either -> one prompt per embedding."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(x, str) for x in value):
            return list(value)
        if all(isinstance(x, list) for x in value):
            return [parse_prompt(x, key) for x in value]
        return [parse_prompt(value, key)]
    raise invalid(f"'{key}' must be a non-empty string, token list, or a list of strings or token lists")


def native_tasks(engine, body: dict) -> tuple[list[Task], bool]:
    """(tasks, single): `content` is a string or token list (single) or a list of them."""
    require_enabled(engine)
    if "content" not in body:
        raise invalid("'content' is required")
    content = body["content"]
    if body.get("image_data"):  # one text with [img-ID] places
        require_multimodal(engine, "'image_data'")
        text, images = completion_images(content, body["image_data"], "content")
        return [_task(text, images)], True
    single = isinstance(content, str) or (isinstance(content, list) and content and not any(isinstance(x, (str, list)) for x in content))
    inputs = inputs_of(content, "content")
    check_task_count(engine.settings, len(inputs))
    return [_task(p) for p in inputs], bool(single)


def native_response(results: list[EmbeddingResult], single: bool) -> Any:
    if single:
        return {"embedding": results[0].embedding}
    return [{"index": i, "embedding": r.embedding} for i, r in enumerate(results)]


def openai_tasks(engine, body: dict) -> tuple[P.EmbeddingRequest, list[Task]]:
    require_enabled(engine)
    if engine.settings.pooling_name == "none":  # one vector per token: /embedding only (llama.cpp)
        raise invalid("Pooling type 'none' is not OAI compatible. Please use a different pooling type")
    req = P.parse_request(P.EmbeddingRequest, body)
    if isinstance(req.input, list) and not req.input:
        raise invalid("'input' must not be empty")
    if isinstance(req.input, str) and not req.input:
        raise invalid("'input' must not be an empty string")
    inputs = inputs_of(req.input, "input")
    check_task_count(engine.settings, len(inputs))
    return req, [_task(p) for p in inputs]


def _encode(vec: list[float], fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
    return vec


def openai_response(engine, req: P.EmbeddingRequest, results: list[EmbeddingResult]) -> dict:
    n = sum(r.n_tokens for r in results)
    data = [P.EmbeddingData(index=i, embedding=_encode(r.embedding, req.encoding_format)) for i, r in enumerate(results)]
    return P.dump(P.EmbeddingResponse(data=data, model=served_model(engine), usage=P.Usage(prompt_tokens=n, completion_tokens=0, total_tokens=n)))
