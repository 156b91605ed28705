"""Anthropic-compatible routes: POST /v1/messages and /v1/messages/count_tokens."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from ..engine.engine import Engine
from ..serving import anthropic
from .body import json_body
from .streaming import run_tasks, stream_tasks

router = APIRouter()


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


@router.post("/v1/messages")
async def messages(request: Request):
    engine = engine_of(request)
    body = await json_body(request)
    engine.require_ready()
    areq, tasks = anthropic.build(engine, body)
    if areq.stream:
        stream = anthropic.MessagesStream(engine, areq, tasks)
        return await stream_tasks(engine, tasks, stream.render, stream.tail, done_marker=False,
                                  frame=anthropic.event_frame)
    results = await run_tasks(engine, request, tasks)
    return anthropic.response(engine, areq, tasks, results)


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request):
    engine = engine_of(request)
    body = await json_body(request)
    engine.require_ready()
    prompt = anthropic.count_tokens_prompt(engine, body)

    def count(sched) -> int:
        return len(sched.model.tokenize(prompt, add_special=sched.model.add_bos, parse_special=True))

    return {"input_tokens": await asyncio.wrap_future(engine.call(count))}
