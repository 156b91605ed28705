"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models, /apply-template."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..engine.engine import Engine
from ..serving import chat_prompt, native, openai_chat, openai_completions, responses, system_prompt
from ..serving.chat_service import ChatService
from ..serving.limits import Limits, check_prompt_bytes, off_loop, prompt_bytes
from .body import json_body
from .streaming import run_tasks, stream_tasks

router = APIRouter()


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


def chat_of(request: Request) -> ChatService:
    return request.app.state.chat


async def serve_generation(request: Request, family, owner, *, system_prompt_field: bool = True) -> Any:
    """One generation request of an API family (`openai_chat`, `openai_completions`, `responses`,
    `anthropic`: each has `build`, `Stream` and `response`, which take `owner` first: the
    engine, or the chat service for the chat families). A family with its own SSE framing
    (`event_frame`: named events) ends its stream without `data: [DONE]`. `system_prompt_field`:
    the body's llama.cpp `system_prompt` option applies (OpenAI chat and completions)."""
    engine = engine_of(request)
    body = await json_body(request)
    engine.require_ready()
    own_system = system_prompt.from_body(body) if system_prompt_field else None
    req, tasks = await off_loop(family.build, owner, body)  # templates render off the event loop
    system_prompt.apply_to(tasks, own_system)
    if req.stream:
        stream = family.Stream(owner, req, tasks)
        frame = getattr(family, "event_frame", None)
        if frame is None:
            return await stream_tasks(engine, tasks, stream.render, stream.tail)
        return await stream_tasks(engine, tasks, stream.render, stream.tail, done_marker=False, frame=frame)
    results = await run_tasks(engine, request, tasks)
    out = family.response(owner, req, tasks, results)
    if family in (openai_chat, openai_completions):
        debug(engine, body, tasks, results, out)
    return out


def debug(engine: Engine, body: dict, tasks: list, results: list, out: dict) -> None:
    """llama.cpp's extras on OpenAI responses: `timings`; `__verbose` (the native result) with
    --verbose or the request's `verbose`."""
    out["timings"] = results[0].timings.to_json()
    if engine.settings.verbose or body.get("verbose") is True:
        out["__verbose"] = native.final_json(engine, results[0], tasks[0].prompt, streamed=False)


async def count_input_tokens(engine: Engine, tasks: list) -> dict:
    """{"object": "response.input_tokens", "input_tokens": N}: the prompt of the request's first
    task as the scheduler would evaluate it (the server's system prompt not counted)."""
    task = tasks[0]

    preparer = engine.require_ready().preparer

    def count() -> int:
        try:
            return len(preparer.prompt_tokens(task)) - task.n_system
        finally:
            task.drop_media()

    return {"object": "response.input_tokens", "input_tokens": await engine.off_thread(count)}


@router.post("/v1/chat/completions/input_tokens")
@router.post("/chat/completions/input_tokens")
async def chat_input_tokens(request: Request):
    engine = engine_of(request)
    body = await json_body(request)
    engine.require_ready()
    return await count_input_tokens(engine, openai_chat.build(chat_of(request), {**body, "stream": False, "n": 1})[1])


@router.post("/v1/responses/input_tokens")
@router.post("/responses/input_tokens")
async def responses_input_tokens(request: Request):
    engine = engine_of(request)
    body = await json_body(request)
    engine.require_ready()
    return await count_input_tokens(engine, responses.build(chat_of(request), {**body, "stream": False})[1])


@router.post("/v1/chat/completions")
@router.post("/chat/completions")
async def chat_completions(request: Request):
    return await serve_generation(request, openai_chat, chat_of(request))


@router.post("/v1/completions")
async def completions(request: Request):
    return await serve_generation(request, openai_completions, engine_of(request))


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
    _, prompt, _ = await off_loop(chat_prompt.parse_and_render, chat_of(request), {**body, "stream": False}, raw=True)
    check_prompt_bytes(prompt_bytes(prompt), Limits.from_settings(engine.settings))
    return {"prompt": prompt}


@router.post("/v1/responses")
@router.post("/responses")
async def responses_route(request: Request):
    """OpenAI's Responses API (stateless), on the chat pipeline."""
    return await serve_generation(request, responses, chat_of(request), system_prompt_field=False)
