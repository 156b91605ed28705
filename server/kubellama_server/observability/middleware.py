"""A pure ASGI middleware: per request, a record, a span, a counter and a log line.

Pure ASGI (not BaseHTTPMiddleware) so streaming responses and client disconnects pass
through untouched; the log line, span end and `kubellama_requests_total` happen when
the response is complete (for SSE: after the last event).
"""

from __future__ import annotations

import logging

from .metrics import ServerMetrics
from .record import CURRENT, RequestRecord
from .request_log import RequestLogger
from .tracing import Tracing

log = logging.getLogger("kubellama.http")

MAX_BODY_CAPTURE = 64 * 1024


class ObservabilityMiddleware:
    def __init__(self, app, *, metrics: ServerMetrics, tracing: Tracing, request_log: RequestLogger):
        self.app = app
        self.metrics = metrics
        self.tracing = tracing
        self.request_log = request_log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rec = RequestRecord(method=scope.get("method", ""), path=scope.get("path", ""))
        client = scope.get("client")
        if client:
            rec.client = f"{client[0]}:{client[1]}"
        ctx_token = CURRENT.set(rec)
        span, span_token = self.tracing.start(scope)

        if self.request_log.wants_body:
            rec.body = bytearray()

            async def receive_wrapper():
                message = await receive()
                if message["type"] == "http.request" and len(rec.body) < MAX_BODY_CAPTURE:
                    rec.body.extend(message.get("body", b"")[: MAX_BODY_CAPTURE - len(rec.body)])
                return message

            inner_receive = receive_wrapper
        else:
            inner_receive = receive

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                rec.status = message["status"]
            await send(message)

        try:
            await self.app(scope, inner_receive, send_wrapper)
        except BaseException:
            if not rec.status:
                rec.status = 500
            raise
        finally:
            route = scope.get("route")
            rec.endpoint = getattr(route, "path", "") or "other"
            if not rec.status:
                rec.status = 499  # the client went away before any response
            try:
                self.metrics.count_request(rec.endpoint, rec.status)
                self.tracing.end(span, span_token, rec)
                self.request_log.emit(rec)
            except Exception:  # observability must never break a request
                log.exception("request observability failed")
            finally:
                CURRENT.reset(ctx_token)
