"""CORS on every response and answers to preflight requests, as the reference server.

The request's Origin is echoed (with credentials allowed), else `*`.
"""

from __future__ import annotations

ALLOW_METHODS = b"GET, POST, PUT, DELETE, OPTIONS"


class CORSMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        cors = [(b"access-control-allow-origin", origin or b"*")]
        if origin:
            cors += [(b"access-control-allow-credentials", b"true"), (b"vary", b"Origin")]
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            allow_headers = headers.get(b"access-control-request-headers") or b"*"
            await send({"type": "http.response.start", "status": 204, "headers": cors + [
                (b"access-control-allow-methods", ALLOW_METHODS),
                (b"access-control-allow-headers", allow_headers),
                (b"access-control-max-age", b"86400"),
            ]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                existing = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in cors if h[0] not in existing]
            await send(message)

        return await self.app(scope, receive, send_with_cors)
