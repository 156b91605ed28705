"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models, /apply-template.

Also the helpers that run several tasks for one request (`n` choices, several
prompts or embedding inputs): all are submitted at once so they run in parallel
slots, and a disconnecting client cancels all of them.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..engine.engine import Engine
from ..engine.task import Task
from ..errors import APIError
from ..serving import openai_chat, openai_completions, system_prompt
from .body import json_body
from .streaming import ClientGone, _wait_disconnect, sse

router = APIRouter()


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


def _cancel_all(engine: Engine, tasks: list[Task]) -> None:
    for t in tasks:
        t.sink.closed = True
        engine.cancel(t)


async def _final(task: Task) -> Any:
    while True:
        kind, payload = await task.sink.get()
        if kind == "error":
            raise payload
        if kind == "final":
            return payload


async def run_tasks(engine: Engine, request: Request, tasks: list[Task]) -> list[Any]:
    """Submit every task and return their final results in order; raises APIError or ClientGone."""
    for t in tasks:
        engine.submit(t)
    disconnect = asyncio.ensure_future(_wait_disconnect(request))
    gathered = asyncio.ensure_future(asyncio.gather(*(_final(t) for t in tasks)))
    try:
        done, _ = await asyncio.wait({gathered, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        if gathered not in done:
            gathered.cancel()
            raise ClientGone()
        return gathered.result()
    except BaseException:
        _cancel_all(engine, tasks)
        raise
    finally:
        disconnect.cancel()
        for t in tasks:
            t.sink.closed = True


async def stream_tasks(
    engine: Engine,
    tasks: list[Task],
    render: Callable[[int, str, Any], list[Any]],
    tail: Callable[[], list[Any]] = lambda: [],
) -> StreamingResponse:
    """SSE over the merged events of `tasks`, ending with `tail()` objects and `data: [DONE]`.

    Every task's first event is awaited before the response starts, so errors at
    launch (context exceeded, bad grammar) are a proper 4xx.
    """
    for t in tasks:
        engine.submit(t)
    try:
        firsts = [await t.sink.get() for t in tasks]
    except asyncio.CancelledError:
        _cancel_all(engine, tasks)
        raise
    for ev in firsts:
        if ev[0] == "error":
            _cancel_all(engine, tasks)
            raise ev[1]
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, task: Task, first) -> None:
        event = first
        while True:
            await merged.put((i, event))
            if event[0] in ("final", "error"):
                return
            event = await task.sink.get()

    async def events() -> AsyncIterator[bytes]:
        pumps = [asyncio.ensure_future(pump(i, t, f)) for i, (t, f) in enumerate(zip(tasks, firsts))]
        finished = 0
        ok = False
        try:
            while finished < len(tasks):
                i, (kind, payload) = await merged.get()
                if kind == "error":
                    yield sse(payload.to_dict())
                    return
                for obj in render(i, kind, payload):
                    yield sse(obj)
                if kind == "final":
                    finished += 1
            for obj in tail():
                yield sse(obj)
            yield b"data: [DONE]\n\n"
            ok = True
        finally:
            for p in pumps:
                p.cancel()
            if not ok:
                _cancel_all(engine, tasks)
            for t in tasks:
                t.sink.closed = True

    return StreamingResponse(events(), media_type="text/event-stream")


async def _serve(request: Request, family) -> Any:
    """One OpenAI generation request: `family` is `openai_chat` or `openai_completions`
    (each has `build`, `Stream` and `response`)."""
    engine = engine_of(request)
    body = await json_body(request)
    engine.require_ready()
    await system_prompt.apply_from_body(engine, body)
    req, tasks = family.build(engine, body)
    if req.stream:
        stream = family.Stream(engine, req, tasks)
        return await stream_tasks(engine, tasks, stream.render, stream.tail)
    try:
        results = await run_tasks(engine, request, tasks)
    except ClientGone:
        return JSONResponse({}, status_code=499)
    return family.response(engine, req, tasks, results)


@router.post("/v1/chat/completions")
@router.post("/chat/completions")
async def chat_completions(request: Request):
    return await _serve(request, openai_chat)


@router.post("/v1/completions")
async def completions(request: Request):
    return await _serve(request, openai_completions)


@router.get("/v1/models")
@router.get("/models")
async def models(request: Request):
    return openai_completions.models(engine_of(request))


@router.post("/apply-template")
async def apply_template(request: Request):
    """The prompt the chat endpoints would evaluate for `messages` (llama.cpp's /apply-template)."""
    engine = engine_of(request)
    body = await json_body(request)
    engine.require_ready()
    from .. import protocol as P

    req = P.parse_request(P.ChatCompletionRequest, {**body, "stream": False})
    try:
        prompt = openai_chat.formatter(engine).render(openai_chat.messages_for_template(req.messages))
    except openai_chat.TemplateError as exc:
        raise APIError(f"the chat template could not format these messages: {exc}", "invalid_request_error") from None
    return {"prompt": prompt}
