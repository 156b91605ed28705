"""Forwards one request to a replica and streams the answer back chunk by chunk.

The body is read first (bounded), so a replica that refuses (connection error, 503) can be
replaced by another before any byte has gone to the client; after that the answer is passed
through as it comes. A client that goes away closes the upstream request, which stops the
replica's generation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .keys import extract
from .metrics import RouterMetrics
from .pool import Pool, Rejected

log = logging.getLogger("kubellama.router")

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length"})
#: uvicorn writes its own
RESPONSE_DROP = HOP_BY_HOP - {"content-length"} | {"date", "server"}


def error(status: int, message: str, type_: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message, "type": type_}}, status_code=status,
                        headers=headers)


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Proxy:
    pool: Pool
    client: httpx.AsyncClient
    metrics: RouterMetrics
    max_body: int = 64 * 1024 * 1024
    retries: int = 2
    session_header: str = "x-session-id"
    retry_after: int = 1

    async def handle(self, request: Request) -> Response:
        try:
            body = await read_body(request, self.max_body)
        except BodyTooLarge:
            return error(413, f"request body larger than {self.max_body} bytes", "invalid_request_error")
        parsed: Any = None
        if body and "json" in request.headers.get("content-type", "json"):
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None  # the replica answers the 400
        path = request.url.path
        keys = extract(path, {k.lower(): v for k, v in request.headers.items()}, parsed, self.session_header)
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in HOP_BY_HOP]
        if request.client:
            headers.append((b"x-forwarded-for", request.client.host.encode()))
        target = path + (("?" + request.url.query) if request.url.query else "")
        tried: set[str] = set()
        last = "no replica answered"
        for attempt in range(self.retries + 1):
            t0 = time.monotonic()
            try:
                decision = await self.pool.acquire(keys, frozenset(tried))
            except Rejected as exc:
                self.metrics.rejected.labels(exc.reason).inc()
                msg = str(exc) if exc.reason != "exhausted" else f"{exc}: {last}"
                return error(503, msg, "unavailable_error", {"Retry-After": str(self.retry_after)})
            self.metrics.queue_wait.observe(time.monotonic() - t0)
            self.metrics.decision(decision.outcome)
            url = decision.name
            if attempt:
                self.metrics.retries.inc()
            try:
                upstream = await self.client.send(
                    self.client.build_request(request.method, url + target, headers=headers, content=body),
                    stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                # no answer at all (RemoteProtocolError/ReadError: closed before the status line)
                self.pool.release(url)
                self.pool.mark_down(url)
                self.pool.strategy.refused(decision)
                self.metrics.upstream_errors.labels(url, "connect").inc()
                tried.add(url)
                last = f"{url}: {type(exc).__name__}"
                log.warning("replica %s did not take %s %s (%s): set aside for a while", url, request.method, path,
                            type(exc).__name__)
                continue
            except httpx.TimeoutException:
                self.pool.release(url)
                self.metrics.upstream_errors.labels(url, "timeout").inc()
                return error(504, f"the replica did not answer in time ({url})", "server_error")
            except httpx.HTTPError as exc:
                self.pool.release(url)
                self.metrics.upstream_errors.labels(url, "broken").inc()
                return error(502, f"the replica failed: {type(exc).__name__}", "server_error")
            except BaseException:
                self.pool.release(url)
                raise
            if upstream.status_code == 503 and attempt < self.retries:
                await upstream.aclose()
                self.pool.release(url)
                self.pool.mark_down(url)  # loading or shutting down: others first for a while
                self.pool.strategy.refused(decision)
                self.metrics.upstream_errors.labels(url, "unavailable").inc()
                tried.add(url)
                last = f"{url}: HTTP 503"
                log.warning("replica %s answered 503 to %s %s: set aside for a while", url, request.method, path)
                continue
            return UpstreamResponse(upstream, lambda u=url: self.pool.release(u), self.metrics, url)
        self.metrics.rejected.labels("exhausted").inc()
        return error(503, f"no replica took the request ({last})", "unavailable_error",
                     {"Retry-After": str(self.retry_after)})


class UpstreamResponse(Response):
    """ASGI response that relays an httpx streaming response and closes it however it ends."""

    def __init__(self, upstream: httpx.Response, release, metrics: RouterMetrics, url: str):
        self.upstream, self.release, self.metrics, self.url = upstream, release, metrics, url
        self.status_code = upstream.status_code
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        headers = [(k, v) for k, v in self.upstream.headers.raw if k.decode("latin-1").lower() not in RESPONSE_DROP]
        relay = asyncio.ensure_future(self._relay(send, headers))
        gone = asyncio.ensure_future(self._client_gone(receive))
        try:
            await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relay, gone):
                task.cancel()
            await asyncio.gather(relay, gone, return_exceptions=True)
            await self.upstream.aclose()
            self.release()
        if relay.done() and not relay.cancelled() and relay.exception() is not None:
            raise relay.exception()

    async def _relay(self, send, headers) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        try:
            async for chunk in self.upstream.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as exc:  # the replica failed mid-answer: nothing to retry now
            self.metrics.upstream_errors.labels(self.url, "broken").inc()
            log.warning("replica %s failed mid-response: %s", self.url, exc)
            return  # the client sees a truncated body and a closed connection
        except OSError:
            return  # the client went away
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _client_gone(receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
