"""Reranking routes: POST /rerank, /reranking, /v1/rerank, /v1/reranking; 501 without --reranking."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..serving import rerank
from .body import json_body
from .routes_openai import engine_of
from .streaming import run_tasks

router = APIRouter()


@router.post("/rerank")
@router.post("/reranking")
@router.post("/v1/rerank")
@router.post("/v1/reranking")
async def rerank_documents(request: Request):
    engine = engine_of(request)
    body = await json_body(request)
    req, tasks = rerank.tasks(engine, body)
    engine.require_ready()
    results = await run_tasks(engine, request, tasks)
    return JSONResponse(rerank.response(engine, body, req, results))
