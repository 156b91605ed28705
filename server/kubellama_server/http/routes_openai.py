"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models, /apply-template."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..engine.engine import Engine
from ..serving import openai_chat, openai_completions, responses, system_prompt
from .body import json_body
from .streaming import run_tasks, stream_tasks

router = APIRouter()


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


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
    results = await run_tasks(engine, request, tasks)
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
    req._tool_plan = openai_chat.tools.plan(req, openai_chat.formatter(engine).template.source)
    images = [] if engine.multimodal_enabled else None  # image parts render as the media marker
    return {"prompt": openai_chat.chat_prompt(engine, req, images, raw=True)}


@router.post("/v1/responses")
@router.post("/responses")
async def responses_route(request: Request):
    """OpenAI's Responses API (stateless), on the chat pipeline."""
    engine = engine_of(request)
    body = await json_body(request)
    engine.require_ready()
    rreq, tasks = responses.build(engine, body)
    if rreq.stream:
        stream = responses.ResponsesStream(engine, rreq, tasks)
        return await stream_tasks(engine, tasks, stream.render, stream.tail, done_marker=False, frame=responses.event_frame)
    results = await run_tasks(engine, request, tasks)
    return responses.response(engine, rreq, tasks, results)
