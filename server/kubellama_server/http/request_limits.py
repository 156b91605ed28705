"""ASGI middleware: the request body's size (`--max-body-bytes`, 413) and read time (`--timeout`, 408).

A body announced too large is refused before it is read; a chunked one is cut off when it
crosses the limit. Only the body is timed: once it is read, `receive` waits freely again
(a streaming handler listens on it for the client's disconnect).
"""

from __future__ import annotations

import asyncio
import json
import time

from ..errors import APIError


def too_large(limit: int) -> APIError:
    return APIError(f"request body is larger than {limit} bytes (--max-body-bytes)", "invalid_request_error", code=413)


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int, read_timeout: float):
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _answer(send, too_large(self.max_bytes))
        seen = 0
        done = False
        deadline = time.monotonic() + self.read_timeout

        async def limited_receive():
            nonlocal seen, done
            if done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise APIError(f"the request body was not received within {self.read_timeout:g} s (--timeout)",
                               "invalid_request_error", code=408) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large(self.max_bytes)
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        return await self.app(scope, limited_receive, send)


async def _answer(send, exc: APIError) -> None:
    body = json.dumps(exc.to_dict()).encode()
    await send({"type": "http.response.start", "status": exc.code, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
