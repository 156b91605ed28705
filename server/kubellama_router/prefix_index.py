"""Which prompt prefixes each replica probably holds in its KV cache, modelled on llama.cpp's slots.

A replica keeps one prompt per slot, and with a host-memory prompt cache (`--cache-ram`) some more
that other conversations evicted from their slots (loaded back when their conversation returns).
The index keeps, per replica, the prompts it was sent (as `hashing.PromptHashes`: block hashes and
the hash of the whole prompt): a request that extends a prompt held (the next turn of a
conversation, or the same prompt again) replaces it, as the replica reuses that slot (or loads it
from RAM); a new prompt beyond the replica's capacity (its slots, plus what its RAM cache keeps)
evicts the least recently used one (the most recent `slots` prompts are the ones in slots). A
block is held while any prompt holds it (a shared system prompt stays while one conversation using
it does). Bounded: at most `max_chains` prompts and `max_blocks` blocks per
replica, whatever the traffic.

A replica that leaves the ready set is remembered for `forget_after` seconds (at most
`max_departed` of them): a pod whose readiness flaps, or an EndpointSlice replaced by another,
comes back with its KV cache, and its conversations must still find it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from .hashing import PromptHashes


@dataclass(frozen=True)
class _Chain:
    blocks: tuple[int, ...]
    n_chars: int
    full: int


class _Replica:
    def __init__(self):
        self.chains: OrderedDict[int, _Chain] = OrderedDict()  # whole-prompt hash -> chain, LRU first
        self.refs: dict[int, int] = {}
        self.blocks = 0

    def drop(self, key: int) -> None:
        chain = self.chains.pop(key)
        for h in chain.blocks:
            n = self.refs[h] - 1
            if n:
                self.refs[h] = n
            else:
                del self.refs[h]
        self.blocks -= len(chain.blocks)

    def extended_by(self, p: PromptHashes) -> list[int]:
        """Keys of the prompts held that `p` extends (or repeats)."""
        return [k for k, c in self.chains.items() if p.prefix(c.n_chars) == c.full]


class PrefixIndex:
    def __init__(self, max_blocks: int = 31250, max_chains: int = 1024, forget_after: float = 300.0,
                 max_departed: int = 16):
        self.max_blocks, self.max_chains = max_blocks, max_chains
        self.forget_after, self.max_departed = forget_after, max_departed
        self._r: dict[str, _Replica] = {}
        self._gone: OrderedDict[str, float] = OrderedDict()  # departed replica -> since when, oldest first

    def record(self, replica: str, p: PromptHashes, capacity: int = 0) -> None:
        """The replica was sent prompt `p`; it holds at most `capacity` prompts (0: unknown)."""
        if not p.n_chars:
            return
        r = self._r.setdefault(replica, _Replica())
        for key in r.extended_by(p):  # the slot that held a previous turn, or this same prompt
            r.drop(key)
        r.chains[p.full] = _Chain(tuple(p.blocks), p.n_chars, p.full)
        for h in p.blocks:
            r.refs[h] = r.refs.get(h, 0) + 1
        r.blocks += len(p.blocks)
        cap = min(capacity or self.max_chains, self.max_chains)
        while len(r.chains) > cap or (r.blocks > self.max_blocks and len(r.chains) > 1):
            r.drop(next(iter(r.chains)))

    def forget(self, replica: str, p: PromptHashes) -> None:
        """The replica was not sent `p` after all (it refused the request)."""
        r = self._r.get(replica)
        if r is not None and p.full in r.chains:
            r.drop(p.full)

    def matched(self, replica: str, p: PromptHashes) -> int:
        """How many leading whole blocks of `p` the replica holds."""
        r = self._r.get(replica)
        if r is None:
            return 0
        n = 0
        for h in p.blocks:
            if h not in r.refs:
                break
            n += 1
        return n

    def extends(self, replica: str, p: PromptHashes) -> bool:
        """Whether `p` continues (or repeats) a prompt the replica holds: that conversation's slot."""
        r = self._r.get(replica)
        return r is not None and bool(r.extended_by(p))

    def chains(self, replica: str) -> int:
        r = self._r.get(replica)
        return len(r.chains) if r else 0

    def retain(self, replicas: Iterable[str], now: float | None = None) -> None:
        """The ready set is `replicas`: forget replicas gone for `forget_after` seconds (or beyond
        `max_departed` of them); one that comes back in time keeps what it held."""
        now = time.monotonic() if now is None else now
        keep = set(replicas)
        for name in keep:
            self._gone.pop(name, None)
        for name in self._r:
            if name not in keep and name not in self._gone:
                self._gone[name] = now
        while self._gone:
            name, since = next(iter(self._gone.items()))
            if now - since < self.forget_after and len(self._gone) <= self.max_departed:
                break
            del self._gone[name]
            self._r.pop(name, None)

    def size(self, replica: str) -> int:
        r = self._r.get(replica)
        return len(r.refs) if r else 0
