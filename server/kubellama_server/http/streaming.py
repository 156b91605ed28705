"""Bridge engine tasks to HTTP: wait for a final result, or stream server-sent events.

A client that disconnects cancels its task (its slot is freed at the next step).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..engine.engine import Engine
from ..engine.task import Task
from ..errors import APIError


class ClientGone(Exception):
    pass


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_to_completion(engine: Engine, request: Request, task: Task) -> Any:
    """Submit `task` and return its final result; raises APIError or ClientGone."""
    engine.submit(task)
    disconnect = asyncio.ensure_future(_wait_disconnect(request))
    try:
        while True:
            get = asyncio.ensure_future(task.sink.get())
            done, _ = await asyncio.wait({get, disconnect}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                engine.cancel(task)
                raise ClientGone()
            kind, payload = get.result()
            if kind == "error":
                raise payload
            if kind == "final":
                return payload
    except asyncio.CancelledError:
        engine.cancel(task)
        raise
    finally:
        disconnect.cancel()
        task.sink.closed = True


def sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def stream_task(
    engine: Engine,
    task: Task,
    render: Callable[[str, Any], list[Any]],
    *,
    done_marker: bool = False,
    headers: dict[str, str] | None = None,
) -> StreamingResponse:
    """Submit `task` and stream its events as SSE.

    `render(kind, payload)` turns an event ("partial" or "final") into zero or more JSON
    objects. The first event is awaited before the response starts, so an error at
    launch (bad grammar, context exceeded) is still a proper 4xx.
    """
    engine.submit(task)
    try:
        first = await task.sink.get()
    except asyncio.CancelledError:
        engine.cancel(task)
        raise
    if first[0] == "error":
        task.sink.closed = True
        raise first[1]

    async def events() -> AsyncIterator[bytes]:
        finished = False
        event = first
        try:
            while True:
                kind, payload = event
                if kind == "error":
                    err: APIError = payload
                    yield sse(err.to_dict())
                    finished = True
                    return
                for obj in render(kind, payload):
                    yield sse(obj)
                if kind == "final":
                    finished = True
                    if done_marker:
                        yield b"data: [DONE]\n\n"
                    return
                event = await task.sink.get()
        finally:
            task.sink.closed = True
            if not finished:
                engine.cancel(task)

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
