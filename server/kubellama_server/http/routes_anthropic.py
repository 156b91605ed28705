"""Anthropic-compatible routes: POST /v1/messages and /v1/messages/count_tokens."""

from __future__ import annotations


from fastapi import APIRouter, Request

from ..serving import anthropic
from ..serving.limits import Limits, check_prompt_bytes, off_loop, prompt_bytes
from .body import json_body
from .routes_openai import chat_of, engine_of, serve_generation

router = APIRouter()


@router.post("/v1/messages")
async def messages(request: Request):
    return await serve_generation(request, anthropic, chat_of(request), system_prompt_field=False)


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request):
    engine = engine_of(request)
    body = await json_body(request)
    engine.require_ready()
    prompt = await off_loop(anthropic.count_tokens_prompt, chat_of(request), body)
    check_prompt_bytes(prompt_bytes(prompt), Limits.from_settings(engine.settings))

    model = engine.vocab()

    def count() -> int:
        return len(model.tokenize(prompt, add_special=model.add_bos, parse_special=True))

    return {"input_tokens": await engine.off_thread(count)}
