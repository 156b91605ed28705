"""The replicas and their load: who is ready, what each has in flight, what each reports.

`Pool.pick` turns the state into candidates for a strategy and counts the request in flight;
`Pool.acquire` waits (bounded queue, timeout) while every replica is saturated or none is ready.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .keys import RouteKeys
from .strategies import Candidate, Decision, Load, Strategy


@dataclass
class Replica:
    url: str
    inflight: int = 0
    queued: float = 0.0  # scraped llamacpp:requests_deferred
    processing: float = 0.0  # scraped llamacpp:requests_processing
    slots: int = 0  # scraped from /health (slots_idle + slots_processing); 0: unknown
    ram: int = 0  # prompts its --cache-ram keeps beyond its slots (scrape.ram_prompts); 0: none
    down_until: float = 0.0  # after a connection error, skipped until then
    served: int = 0  # requests sent to it (for /health and the bench)

    def candidate(self) -> Candidate:
        return Candidate(self.url, self.inflight, self.queued, self.processing, self.slots, self.ram)


class Rejected(Exception):
    """No replica can take the request: 503 with Retry-After."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # queue_full | timeout | no_replicas | exhausted


@dataclass
class Pool:
    strategy: Strategy
    max_inflight: int = 32  # per replica: above it a replica is saturated
    max_queue: int = 256  # requests waiting for a replica
    queue_timeout: float = 30.0
    down_seconds: float = 2.0
    replicas: dict[str, Replica] = field(default_factory=dict)
    waiting: int = 0

    def __post_init__(self):
        self._changed = asyncio.Event()
        self._members: list[str] = []  # the ready set as last given (replicas may outlive it while draining)

    # --- membership -----------------------------------------------------------------------------

    def set_replicas(self, urls: Iterable[str]) -> None:
        urls = list(dict.fromkeys(u.rstrip("/") for u in urls))
        for url in urls:
            self.replicas.setdefault(url, Replica(url))
        for url in list(self.replicas):
            if url not in urls and self.replicas[url].inflight == 0:
                del self.replicas[url]
        self._members = urls
        self.strategy.members(urls)
        self.notify()

    def ready(self, now: float | None = None) -> list[Replica]:
        now = time.monotonic() if now is None else now
        members = self._members
        return [self.replicas[u] for u in members if u in self.replicas and self.replicas[u].down_until <= now]

    def mark_down(self, url: str) -> None:
        if url in self.replicas:
            self.replicas[url].down_until = time.monotonic() + self.down_seconds
            self.notify()

    def mark_up(self, url: str) -> None:
        if url in self.replicas and self.replicas[url].down_until:
            self.replicas[url].down_until = 0.0
            self.notify()

    # --- choosing -------------------------------------------------------------------------------

    def pick(self, keys: RouteKeys, exclude: frozenset[str] = frozenset()) -> Decision | str:
        """A decision (the replica's in-flight count taken), or why not: `wait` (none ready or
        all saturated) or `exhausted` (every ready replica was tried for this request)."""
        ready = self.ready()
        fresh = [r for r in ready if r.url not in exclude]
        if not fresh:
            return "exhausted" if ready and exclude else "wait"
        cands = [r.candidate() for r in fresh if r.inflight < self.max_inflight]
        if not cands:
            return "wait"
        load = Load(sum(r.inflight for r in ready), len(ready))
        decision = self.strategy.pick(keys, cands, load)
        rep = self.replicas[decision.name]
        rep.inflight += 1
        rep.served += 1
        return decision

    def release(self, url: str) -> None:
        rep = self.replicas.get(url)
        if rep is not None:
            rep.inflight -= 1
            if rep.inflight == 0 and url not in self._members:
                del self.replicas[url]
        self.notify()

    def notify(self) -> None:
        self._changed.set()

    async def acquire(self, keys: RouteKeys, exclude: frozenset[str] = frozenset()) -> Decision:
        """`pick`, waiting in the bounded queue while it says `wait`. Raises `Rejected`."""
        got = self.pick(keys, exclude)
        if isinstance(got, Decision):
            return got
        if got == "exhausted":
            raise Rejected("exhausted", "every replica refused the request")
        if self.waiting >= self.max_queue:
            raise Rejected("queue_full", f"all replicas are busy and {self.waiting} requests are queued")
        self.waiting += 1
        deadline = time.monotonic() + self.queue_timeout
        try:
            while True:
                self._changed.clear()
                got = self.pick(keys, exclude)
                if isinstance(got, Decision):
                    return got
                if got == "exhausted":
                    raise Rejected("exhausted", "every replica refused the request")
                left = deadline - time.monotonic()
                if left <= 0:
                    reason = "timeout" if self.ready() else "no_replicas"
                    raise Rejected(reason, "no ready replica" if reason == "no_replicas"
                                   else f"all replicas stayed busy for {self.queue_timeout:g}s")
                try:  # wake on any change; poll too, for replicas coming back after `down_seconds`
                    await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
                except asyncio.TimeoutError:
                    pass
        finally:
            self.waiting -= 1
