"""POST /infill: code infill with the model's FIM tokens; the options and answers of /completion."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..serving import infill, native
from .body import json_body
from .routes_openai import engine_of
from .streaming import run_to_completion, stream_task

router = APIRouter()


@router.post("/infill")
async def infill_route(request: Request):
    engine = engine_of(request)
    body = await json_body(request)
    task = infill.build_task(engine, body)
    if task.params.stream:
        def render(kind, payload):
            if kind == "partial":
                return [native.partial_json(payload, task.slot.id if task.slot else -1, engine.settings.probs_format)]
            if kind == "progress":
                return [native.progress_json(payload, task.slot.id if task.slot else -1)]
            return [native.final_json(engine, payload, [], streamed=True)]

        return await stream_task(engine, task, render)
    result = await run_to_completion(engine, request, task)
    return native.final_json(engine, result, [], streamed=False)
