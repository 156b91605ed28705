"""Embedding routes: POST /embedding (native), POST /v1/embeddings (OpenAI); 501 without --embedding."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..serving import embeddings
from .body import json_body
from .routes_openai import engine_of
from .streaming import run_tasks

router = APIRouter()


@router.post("/embedding")
@router.post("/embeddings")
async def embedding(request: Request):
    engine = engine_of(request)
    body = await json_body(request)
    tasks, single = embeddings.native_tasks(engine, body)
    engine.require_ready()
    results = await run_tasks(engine, request, tasks)
    return JSONResponse(embeddings.native_response(results, single))


@router.post("/v1/embeddings")
async def v1_embeddings(request: Request):
    engine = engine_of(request)
    body = await json_body(request)
    req, tasks = embeddings.openai_tasks(engine, body)
    engine.require_ready()
    results = await run_tasks(engine, request, tasks)
    return embeddings.openai_response(engine, req, results)
