"""CORS on every response and answers to pre-flight requests, as today's llama-server.

`--cors-origins`: `*` (the default) echoes the request's Origin, with credentials allowed
(llama.cpp's default); `localhost` echoes only origins on localhost, 127.0.0.1 or ::1; a
comma-separated list echoes the origins in it. Every `OPTIONS` request is answered 200 with
the allowed methods and headers, before the API key check (browsers send no key there).
"""

from __future__ import annotations

from urllib.parse import urlsplit

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def allowed_origin(origin: str, origins: str, credentials: bool) -> str | None:
    """The Access-Control-Allow-Origin value for a request from `origin` (None: no header)."""
    setting = origins.strip()
    if setting == "*":
        return origin if (credentials and origin) else "*"
    if setting == "localhost":
        try:
            host = urlsplit(origin).hostname
        except ValueError:
            return None
        return origin if origin and host in LOCAL_HOSTS else None
    listed = [o.strip().rstrip("/") for o in setting.split(",") if o.strip()]
    return origin if origin and origin.rstrip("/") in listed else None


class CORSMiddleware:
    def __init__(self, app, origins: str = "*", methods: str = "GET, POST, DELETE, OPTIONS", headers: str = "*",
                 credentials: bool = True):
        self.app = app
        self.origins = origins
        self.methods = methods.encode()
        self.headers = headers.encode()
        self.credentials = credentials

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        origin = headers.get(b"origin", b"").decode("latin-1")
        allow = allowed_origin(origin, self.origins, self.credentials)
        cors = []
        if allow is not None:
            cors.append((b"access-control-allow-origin", allow.encode("latin-1")))
            if allow != "*":
                cors.append((b"vary", b"Origin"))
                if self.credentials:
                    cors.append((b"access-control-allow-credentials", b"true"))
        if scope["method"] == "OPTIONS":
            await send({"type": "http.response.start", "status": 200, "headers": [h for h in cors if h[0] != b"access-control-allow-credentials"] + [
                (b"access-control-allow-credentials", b"true" if self.credentials else b"false"),
                (b"access-control-allow-methods", self.methods),
                # "*" echoes the requested headers: with credentials a browser takes "*" literally
                (b"access-control-allow-headers", headers.get(b"access-control-request-headers") or self.headers
                 if self.headers == b"*" else self.headers),
                (b"access-control-max-age", b"86400"),
                (b"content-length", b"0"),
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
