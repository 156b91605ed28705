"""Bridge engine tasks to HTTP: wait for final results, or stream server-sent events.

Several tasks of one request (`n` choices, several prompts or embedding inputs) are
submitted at once so they run in parallel slots. A client that disconnects cancels
its tasks (their slots are freed at the next step): `ClientGone` is answered with an
empty 499 by the app's exception handler.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..engine.engine import Engine
from ..engine.task import Task
from ..serving.limits import admit


class ClientGone(Exception):
    pass


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _cancel_all(engine: Engine, tasks: list[Task]) -> None:
    for t in tasks:
        t.sink.closed = True
        engine.cancel(t)


def _finished(engine: Engine, result: Any) -> None:
    """A final result was read: the engine's `on_result` hooks see it (in this request's context)."""
    for hook in engine.on_result:
        hook(result)


async def _final(engine: Engine, task: Task) -> Any:
    while True:
        kind, payload = await task.sink.get()
        if kind == "error":
            raise payload
        if kind == "final":
            _finished(engine, payload)
            return payload


async def run_tasks(engine: Engine, request: Request, tasks: list[Task]) -> list[Any]:
    """Submit every task and return their final results in order; raises APIError or ClientGone."""
    await admit(engine, tasks)
    for t in tasks:
        engine.submit(t)
    disconnect = asyncio.ensure_future(_wait_disconnect(request))
    gathered = asyncio.ensure_future(asyncio.gather(*(_final(engine, t) for t in tasks)))
    try:
        done, _ = await asyncio.wait({gathered, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        if gathered not in done:
            gathered.cancel()
            raise ClientGone()
        return gathered.result()
    except BaseException:
        _cancel_all(engine, tasks)
        raise
    finally:
        disconnect.cancel()
        for t in tasks:
            t.sink.closed = True


async def run_to_completion(engine: Engine, request: Request, task: Task) -> Any:
    """`run_tasks` for one task."""
    (result,) = await run_tasks(engine, request, [task])
    return result


def sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def stream_tasks(
    engine: Engine,
    tasks: list[Task],
    render: Callable[[int, str, Any], list[Any]],
    tail: Callable[[], list[Any]] = lambda: [],
    *,
    done_marker: bool = True,
    frame: Callable[[Any], bytes] = sse,
) -> StreamingResponse:
    """SSE over the merged events of `tasks`, ending with `tail()` objects (and `data: [DONE]`).

    `render(index, kind, payload)` turns a task's event ("partial" or "final") into JSON
    objects. Every task's first event is awaited before the response starts, so errors
    at launch (context exceeded, bad grammar) are a proper 4xx.
    """
    await admit(engine, tasks)
    for t in tasks:
        engine.submit(t)
    try:
        firsts = [await t.sink.get() for t in tasks]
    except asyncio.CancelledError:
        _cancel_all(engine, tasks)
        raise
    for ev in firsts:
        if ev[0] == "error":
            _cancel_all(engine, tasks)
            raise ev[1]
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, task: Task, first) -> None:
        event = first
        while True:
            await merged.put((i, event))
            if event[0] in ("final", "error"):
                return
            event = await task.sink.get()

    async def next_event(waiting: list) -> tuple[int, Any]:
        """The next (task index, event); one task (the common case) is read directly,
        without a pump task hop per token."""
        if len(tasks) > 1:
            return await merged.get()
        return 0, (waiting.pop() if waiting else await tasks[0].sink.get())

    async def events() -> AsyncIterator[bytes]:
        pumps = [asyncio.ensure_future(pump(i, t, f)) for i, (t, f) in enumerate(zip(tasks, firsts))] \
            if len(tasks) > 1 else []
        waiting = [firsts[0]] if len(tasks) == 1 else []
        finished = 0
        ok = False
        try:
            while finished < len(tasks):
                i, (kind, payload) = await next_event(waiting)
                if kind == "error":
                    yield frame(payload.to_dict())
                    return
                for obj in render(i, kind, payload):
                    yield frame(obj)
                if kind == "final":
                    finished += 1
                    _finished(engine, payload)
            for obj in tail():
                yield frame(obj)
            if done_marker:
                yield b"data: [DONE]\n\n"
            ok = True
        finally:
            for p in pumps:  # nothing here may await: a cancelled request must still cancel its tasks
                p.cancel()
            if not ok:
                _cancel_all(engine, tasks)
            for t in tasks:
                t.sink.closed = True

    return StreamingResponse(events(), media_type="text/event-stream")


async def stream_task(engine: Engine, task: Task, render: Callable[[str, Any], list[Any]]) -> StreamingResponse:
    """One task as SSE in the native format (no `[DONE]`, as llama.cpp's /completion)."""
    return await stream_tasks(engine, [task], lambda _i, kind, payload: render(kind, payload), done_marker=False)
