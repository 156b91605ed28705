"""Routes of the llama.cpp-native API: /health, /completion, /tokenize, /detokenize, /props."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..engine.engine import Engine
from ..errors import APIError, invalid
from ..serving import lora, native, system_prompt
from ..serving.limits import Limits, check_prompt_bytes, prompt_bytes
from .body import json_body
from .streaming import run_tasks, run_to_completion, stream_task, stream_tasks

router = APIRouter()


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


@router.post("/completion")
@router.post("/completions")
async def completion(request: Request):
    engine = engine_of(request)
    body = await json_body(request)
    engine.require_ready()
    own_system = system_prompt.from_body(body)
    tasks = native.completion_tasks(engine, body)
    system_prompt.apply_to(tasks, own_system)
    if len(tasks) > 1:  # several prompts: one result each, in an array
        return await _several(engine, request, body, tasks)
    task = tasks[0]
    prompt = body["prompt"] if not isinstance(body["prompt"], list) or len(body["prompt"]) != 1 else task.prompt
    fmt = engine.settings.probs_format
    if task.params.stream:
        def render(kind, payload):
            if kind == "partial":
                return [native.partial_json(payload, task.slot.id if task.slot else -1, fmt)]
            if kind == "progress":
                return [native.progress_json(payload, task.slot.id if task.slot else -1)]
            return [native.final_json(engine, payload, prompt, streamed=True)]

        return await stream_task(engine, task, render)
    result = await run_to_completion(engine, request, task)
    return native.final_json(engine, result, prompt, streamed=False)


async def _several(engine: Engine, request: Request, body: dict, tasks: list):
    fmt = engine.settings.probs_format
    if tasks[0].params.stream:
        def render(i, kind, payload):
            task = tasks[i]
            if kind == "partial":
                return [native.partial_json(payload, task.slot.id if task.slot else -1, fmt, index=i)]
            if kind == "progress":
                return [native.progress_json(payload, task.slot.id if task.slot else -1, index=i)]
            return [native.final_json(engine, payload, task.prompt, streamed=True, index=i)]

        return await stream_tasks(engine, tasks, render, done_marker=False)
    results = await run_tasks(engine, request, tasks)
    return [native.final_json(engine, r, t.prompt, streamed=False, index=i) for i, (t, r) in enumerate(zip(tasks, results))]


@router.post("/tokenize")
async def tokenize(request: Request):
    engine = engine_of(request)
    body = await json_body(request)
    content = body.get("content", "")
    if not isinstance(content, str):
        raise invalid("'content' must be a string")
    check_prompt_bytes(prompt_bytes(content), Limits.from_settings(engine.settings), "'content'")
    add_special = body.get("add_special", False)
    with_pieces = body.get("with_pieces", False)
    if not isinstance(add_special, bool) or not isinstance(with_pieces, bool):
        raise invalid("'add_special' and 'with_pieces' must be booleans")

    model = engine.vocab()

    def work():
        tokens = model.tokenize(content, add_special=add_special, parse_special=True)
        if not with_pieces:
            return {"tokens": tokens}
        out = []
        for t in tokens:
            raw = model.token_bytes(t)
            try:
                piece = raw.decode("utf-8")
            except UnicodeDecodeError:
                piece = list(raw)
            out.append({"id": t, "piece": piece})
        return {"tokens": out}

    return await engine.off_thread(work)  # the vocabulary only: never behind a decode, never on the event loop


@router.post("/detokenize")
async def detokenize(request: Request):
    engine = engine_of(request)
    body = await json_body(request)
    tokens = body.get("tokens", [])
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise invalid("'tokens' must be an array of token ids")
    model = engine.vocab()
    return await engine.off_thread(lambda: {"content": model.detokenize(tokens)})


@router.get("/lora-adapters")
async def lora_adapters(request: Request):
    engine = engine_of(request)
    engine.require_ready()
    return lora.adapters_json(engine)


@router.post("/lora-adapters")
async def set_lora_adapters(request: Request):
    engine = engine_of(request)
    body = await json_body(request, require_object=False)
    engine.require_ready()
    scales = lora.parse_scales(engine, body)
    return await _on_scheduler(engine, lambda sched: lora.apply_scales(sched, scales))


@router.get("/props")
async def props(request: Request):
    engine = engine_of(request)
    engine.require_ready()
    return native.props_json(engine, request.app.state.system_prompt)


async def _on_scheduler(engine: Engine, fn):
    import asyncio

    fut = engine.call(fn)
    try:
        return await asyncio.wrap_future(fut)
    except APIError:
        raise
