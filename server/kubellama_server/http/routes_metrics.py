"""GET /metrics: Prometheus text format, with --metrics (else 501, as llama.cpp)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..errors import APIError

router = APIRouter()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    settings = request.app.state.settings
    if not settings.metrics:
        raise APIError("This server does not support metrics endpoint.", "not_supported_error")
    server_metrics = request.app.state.metrics
    body, content_type = server_metrics.render()
    return Response(body, media_type=content_type, headers={"Process-Start-Time-Unix": str(server_metrics.t_start)})
