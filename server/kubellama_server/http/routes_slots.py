"""GET /slots and POST /slots/{id}?action=save|restore|erase.

GET needs the slots endpoint (off with --slots-endpoint-disable: 501). The actions need
--slot-save-path (without it: 501, as llama.cpp); they run on the scheduler thread
between two steps. A slot that is processing a request answers 409 (no waiting).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from ..engine import slot_files
from ..errors import APIError, invalid
from .body import json_body

router = APIRouter()


@router.get("/slots")
async def get_slots(request: Request):
    engine = request.app.state.engine
    if engine.settings.slots_endpoint_disable:
        raise APIError("This server does not support slots endpoint.", "not_supported_error")
    engine.require_ready()
    slots = await engine.off_thread(engine.slots_json)  # detokenizes prompts given as token ids
    if "fail_on_no_slot" in request.query_params and all(s["is_processing"] for s in slots):
        raise APIError("no slot available", "unavailable_error")  # as today's llama.cpp
    return slots


def _count(request: Request, action: str, result: str) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.count_slot_action(action, result)


@router.post("/slots/{id_slot}")
async def slot_action(request: Request, id_slot: str):
    engine = request.app.state.engine
    settings = engine.settings
    action = request.query_params.get("action", "")
    if not settings.slot_save_path:
        raise APIError(
            "This server does not support slots action. Start it with --slot-save-path DIR", "not_supported_error"
        )
    if action not in ("save", "restore", "erase"):
        raise invalid(f"invalid action {action!r}: use ?action=save, ?action=restore or ?action=erase")
    try:
        slot_id = int(id_slot)
    except ValueError:
        _count(request, action, "invalid")
        raise invalid(f"invalid slot id {id_slot!r}: expected an integer 0..{engine.n_slots - 1}") from None
    if not 0 <= slot_id < engine.n_slots:
        _count(request, action, "invalid")
        raise invalid(f"invalid slot id {slot_id}: this server has slots 0..{engine.n_slots - 1}")
    engine.require_ready()
    folder = settings.slot_save_path
    try:
        if action == "erase":
            work = lambda sched: slot_files.erase_slot(sched, slot_id)  # noqa: E731
        else:
            body = await json_body(request)
            filename = slot_files.validate_filename(body.get("filename"))
            if action == "save":
                work = lambda sched: slot_files.save_slot(sched, slot_id, folder, filename,  # noqa: E731
                                                          max_files=settings.slot_save_max_files)
            else:
                work = lambda sched: slot_files.restore_slot(sched, slot_id, folder, filename)  # noqa: E731
        result = await asyncio.wrap_future(engine.call(work))
    except slot_files.SlotFileError as exc:
        _count(request, action, exc.result)
        raise
    except APIError:
        _count(request, action, "invalid")
        raise
    except Exception:
        _count(request, action, "error")
        raise
    _count(request, action, "ok")
    return result
