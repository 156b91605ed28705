"""GET /health: public (no key), and never a view of slot contents.

200 while the scheduler turns; 503 in the error shape while the model loads, when the
scheduler thread has died, or when it has had work and not stepped for
`--health-stall-timeout` seconds (a stuck decode): the pod's liveness probe restarts it.
`include_slots` lists each slot's id and state only (prompts are for GET /slots, with the key).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..engine.engine import Engine, EngineState
from ..errors import APIError
from .errors import error_response

router = APIRouter()


def scheduler_problem(engine: Engine) -> str | None:
    """Why the scheduler cannot serve (None when it can)."""
    sched = engine.scheduler
    if sched is None or not sched.running:
        return "the scheduler thread has stopped"
    stalled = sched.stalled_for()
    if stalled > engine.settings.health_stall_timeout:
        return (f"the scheduler has not stepped for {stalled:.0f} s while it has work "
                f"(--health-stall-timeout {engine.settings.health_stall_timeout:g})")
    return None


@router.get("/health")
@router.get("/v1/health")
async def health(request: Request) -> JSONResponse:
    engine: Engine = request.app.state.engine
    if engine.state == EngineState.LOADING:
        return JSONResponse({"status": "loading model"}, status_code=503)
    if engine.state == EngineState.ERROR:
        return JSONResponse({"status": "error", "error": engine.error}, status_code=500)
    problem = scheduler_problem(engine)
    if problem is not None:
        return error_response(APIError(f"unhealthy: {problem}", "unavailable_error"))
    idle, processing = engine.slot_counts()
    body: dict = {"status": "ok", "slots_idle": idle, "slots_processing": processing}
    status = 200
    if idle == 0:
        body["status"] = "no slot available"
        if "fail_on_no_slot" in request.query_params:
            status = 503
    if "include_slots" in request.query_params and not engine.settings.slots_endpoint_disable:
        body["slots"] = [{"id": s.id, "state": int(s.state), "is_processing": s.is_processing}
                         for s in engine.scheduler.slots]
    return JSONResponse(body, status_code=status)
