"""Per-replica index of the prompt-prefix blocks each replica has been sent (LRU-bounded)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence


class PrefixIndex:
    """Which replica probably holds which prompt prefix in its KV cache.

    A replica's entry is an LRU set of chained block hashes (`hashing.block_hashes`), at most
    `capacity` per replica, so memory is bounded whatever the traffic."""

    def __init__(self, capacity: int = 31250):
        self.capacity = capacity
        self._blocks: dict[str, OrderedDict[int, None]] = {}

    def record(self, replica: str, blocks: Sequence[int]) -> None:
        lru = self._blocks.setdefault(replica, OrderedDict())
        for h in blocks:
            lru[h] = None
            lru.move_to_end(h)
        while len(lru) > self.capacity:
            lru.popitem(last=False)

    def matched(self, replica: str, blocks: Sequence[int]) -> int:
        """How many leading blocks of `blocks` the replica holds (`record` refreshes them)."""
        lru = self._blocks.get(replica)
        if not lru:
            return 0
        n = 0
        for h in blocks:
            if h not in lru:
                break
            n += 1
        return n

    def retain(self, replicas: Iterable[str]) -> None:
        """Forget replicas that are gone."""
        keep = set(replicas)
        for name in list(self._blocks):
            if name not in keep:
                del self._blocks[name]

    def size(self, replica: str) -> int:
        return len(self._blocks.get(replica, ()))
