"""Helpers every test suite shares (server, router, operator, chart, control plane, e2e, bench): a free
loopback port, and polling until a condition holds (sync and async), failing with what was awaited and the
last value or error seen. Standard library only."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Awaitable, Callable

#: What a probe may raise while the thing it watches is not there yet (a refused connection, a missing key).
TRANSIENT: tuple[type[BaseException], ...] = (AssertionError, KeyError, TypeError, LookupError, OSError)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed_out(what: str, timeout: float, last: Any, detail: Callable[[], str] | None) -> TimeoutError:
    extra = detail() if detail is not None else ""
    return TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}"
                        + (f"\n{extra}" if extra else ""))


def wait_until(probe: Callable[[], Any], what: str, timeout: float = 60.0, *, interval: float = 0.25,
               transient: tuple[type[BaseException], ...] = TRANSIENT,
               alive: Callable[[], None] | None = None, detail: Callable[[], str] | None = None) -> Any:
    """Poll until `probe()` returns something truthy, and return it.

    `transient`: exceptions that mean "not yet" (kept as the last value); `alive()` runs before each probe
    and raises when what is awaited died (a process that exited); `detail()` adds to the timeout message
    (logs, diagnostics). Raises TimeoutError naming `what` and the last value or error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        if alive is not None:
            alive()
        try:
            last = probe()
            if last:
                return last
        except transient as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last, detail)
        time.sleep(interval)


async def eventually(probe: Callable[[], Any | Awaitable[Any]], timeout: float = 15.0, *,
                     what: str = "the condition", interval: float = 0.1, transient: tuple[type[BaseException], ...] = TRANSIENT) -> Any:
    """`wait_until` for async tests: `probe` may be sync or async; the event loop runs meanwhile."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
            if asyncio.iscoroutine(last):
                last = await last
            if last:
                return last
        except transient as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last, None)
        await asyncio.sleep(interval)
