"""Worker threads for request preparation: tokenizing, building sampler chains.

llama.cpp's grammar parser recurses once per nested group, so these threads get the same
big stack as the scheduler thread (`scheduler.STACK_BYTES`) whatever `ulimit -s` the
container has; they are created once, at start-up.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable


def start_thread(target: Callable[[], None], name: str, stack_bytes: int) -> threading.Thread:
    """A daemon thread with a `stack_bytes` stack (the platform's default where it cannot be set)."""
    old = threading.stack_size()
    try:
        threading.stack_size(stack_bytes)
    except (ValueError, RuntimeError):  # pragma: no cover - platform without it
        old = None
    try:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        return t
    finally:
        if old is not None:
            threading.stack_size(old)


class Workers:
    def __init__(self, n: int, stack_bytes: int, name: str = "kubellama-prepare"):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [start_thread(self._work, f"{name}-{k}", stack_bytes) for k in range(n)]

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        fut: Future = Future()
        self._jobs.put((fut, fn, args))
        return fut

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on a worker, awaited from the event loop."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, fn, args = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:  # delivered to the caller
                    fut.set_exception(exc)

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the threads once their jobs are done; whether they all stopped in `timeout`."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)
