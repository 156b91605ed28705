"""Which prompt prefixes each replica probably holds in its KV cache, modelled on llama.cpp's slots.

A replica keeps one prompt per slot. The index keeps, per replica, the chains of block hashes
(`hashing.block_hashes`) of the prompts it was sent: a request that extends a chain (the next turn
of a conversation) replaces it, as the replica reuses that slot; a new chain beyond the replica's
slot count evicts the least recently used one. A block is held while any chain holds it (a shared
system prompt stays while one conversation using it does). Bounded: at most `max_chains` chains
and `max_blocks` blocks per replica, whatever the traffic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence


class _Replica:
    def __init__(self):
        self.chains: OrderedDict[int, tuple[int, ...]] = OrderedDict()  # last block -> blocks, LRU first
        self.refs: dict[int, int] = {}
        self.blocks = 0

    def drop(self, key: int) -> None:
        for h in self.chains.pop(key):
            n = self.refs[h] - 1
            if n:
                self.refs[h] = n
            else:
                del self.refs[h]
        self.blocks = sum(len(c) for c in self.chains.values())


class PrefixIndex:
    def __init__(self, max_blocks: int = 31250, max_chains: int = 1024):
        self.max_blocks, self.max_chains = max_blocks, max_chains
        self._r: dict[str, _Replica] = {}

    def record(self, replica: str, blocks: Sequence[int], slots: int = 0) -> None:
        """The replica was sent a prompt of these blocks; it holds at most `slots` prompts (0: unknown)."""
        if not blocks:
            return
        r = self._r.setdefault(replica, _Replica())
        present = set(blocks)
        # the slot that held a previous turn (a chain this prompt extends), or this same prompt again
        for key in [k for k, c in r.chains.items() if k in present or blocks[-1] in c]:
            r.drop(key)
        r.chains[blocks[-1]] = tuple(blocks)
        for h in blocks:
            r.refs[h] = r.refs.get(h, 0) + 1
        r.blocks += len(blocks)
        cap = min(slots or self.max_chains, self.max_chains)
        while len(r.chains) > cap or (r.blocks > self.max_blocks and len(r.chains) > 1):
            r.drop(next(iter(r.chains)))

    def matched(self, replica: str, blocks: Sequence[int]) -> int:
        """How many leading blocks of `blocks` the replica holds."""
        r = self._r.get(replica)
        if r is None:
            return 0
        n = 0
        for h in blocks:
            if h not in r.refs:
                break
            n += 1
        return n

    def extends(self, replica: str, blocks: Sequence[int]) -> bool:
        """Whether the prompt continues one the replica holds (the same conversation's slot)."""
        r = self._r.get(replica)
        return r is not None and any(h in r.chains for h in blocks)

    def chains(self, replica: str) -> int:
        r = self._r.get(replica)
        return len(r.chains) if r else 0

    def retain(self, replicas: Iterable[str]) -> None:
        """Forget replicas that are gone."""
        keep = set(replicas)
        for name in list(self._r):
            if name not in keep:
                del self._r[name]

    def size(self, replica: str) -> int:
        r = self._r.get(replica)
        return len(r.refs) if r else 0
