"""Consistent hashing with bounded loads (CHWBL), as KubeAI's load balancer does it.

Each endpoint owns `replication` points on a ring; a key goes to the first endpoint at or after
its hash whose load passes `load_ok`, walking the ring; if none passes, to the first one met.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

from .hashing import hash64


def load_ok(load: int, total: int, n: int, factor: float) -> bool:
    """KubeAI's bound: accept while load + 1 <= (total + 1) / n * factor (the +1s are the new request)."""
    if total == 0:
        return True
    return load + 1 <= (total + 1) / n * factor


class HashRing:
    def __init__(self, replication: int = 256):
        self.replication = replication
        self._owner: dict[int, str] = {}
        self._sorted: list[int] = []
        self._members: set[str] = set()

    @property
    def members(self) -> frozenset[str]:
        return frozenset(self._members)

    def set_members(self, names: Iterable[str]) -> None:
        names = set(names)
        if names == self._members:
            return
        self._members = names
        self._owner = {hash64(f"{name}{i}"): name for name in sorted(names) for i in range(self.replication)}
        self._sorted = sorted(self._owner)

    def walk(self, key: str) -> list[str]:
        """Distinct endpoints in ring order starting at `key`'s position."""
        if not self._sorted:
            return []
        i0 = bisect.bisect_left(self._sorted, hash64(key)) % len(self._sorted)
        seen: list[str] = []
        for k in range(len(self._sorted)):
            name = self._owner[self._sorted[(i0 + k) % len(self._sorted)]]
            if name not in seen:
                seen.append(name)
                if len(seen) == len(self._members):
                    break
        return seen

    def lookup(self, key: str, eligible: Callable[[str], bool], accept: Callable[[str], bool]) -> tuple[str | None, int]:
        """The endpoint for `key` and its rank on the walk (0 = the key's own endpoint).

        `eligible` filters endpoints (e.g. not saturated); `accept` is the load bound. Without an
        accepted one, the first eligible endpoint met (KubeAI's default endpoint)."""
        first: tuple[str | None, int] = (None, -1)
        for rank, name in enumerate(self.walk(key)):
            if not eligible(name):
                continue
            if first[0] is None:
                first = (name, rank)
            if accept(name):
                return name, rank
        return first
