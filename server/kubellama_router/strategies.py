"""Routing strategies: pure choices of one replica among candidates, given the request's keys.

Every strategy sees the candidates that may take a request now (ready, not yet tried for it,
under the saturation bound) and the load of all replicas, and returns a `Decision`. Outcomes,
counted by the router's metrics: `hit` (the replica that holds the request's cache or key),
`spill` (that replica was over the load bound, another took it), `miss` (nothing to stick to;
chosen by load), `pick` (strategies without affinity).
"""

from __future__ import annotations

import random as _random
from collections.abc import Sequence
from dataclasses import dataclass, field

from .chwbl import HashRing, load_ok
from .hashing import PromptHashes
from .keys import RouteKeys
from .prefix_index import PrefixIndex

NAMES = ("random", "round-robin", "least-load", "prefix", "session", "kubeai-prefixhash")


@dataclass(frozen=True)
class Candidate:
    name: str
    inflight: int = 0  # requests this router has in flight on the replica
    queued: float = 0.0  # the replica's llamacpp:requests_deferred (scraped)
    processing: float = 0.0  # the replica's llamacpp:requests_processing (scraped)
    slots: int = 0  # the replica's slots (scraped from /health; 0: unknown)
    ram: int = 0  # prompts its host-memory prompt cache keeps beyond its slots (scrape.ram_prompts; 0: none)

    @property
    def load(self) -> float:
        """Requests on the replica: ours, or what it reports when other routers add to it."""
        return max(float(self.inflight), self.queued + self.processing)


@dataclass(frozen=True)
class Load:
    """Load over all ready replicas (not only the candidates), for the bounded-load rule."""

    total_inflight: int
    n_replicas: int


@dataclass(frozen=True)
class Decision:
    name: str
    outcome: str  # hit | spill | miss | pick
    matched: int = 0  # prefix blocks the chosen replica already holds
    prompt: PromptHashes | None = field(default=None, compare=False, repr=False)  # what `prefix` recorded


class Strategy:
    name = ""

    def pick(self, keys: RouteKeys, cands: Sequence[Candidate], load: Load) -> Decision:
        raise NotImplementedError

    def members(self, names: Sequence[str]) -> None:
        """The set of ready replicas changed."""

    def refused(self, decision: Decision) -> None:
        """The chosen replica did not take the request (it goes to another)."""


class Random(Strategy):
    name = "random"

    def __init__(self, rng: _random.Random | None = None):
        self.rng = rng or _random.Random()

    def pick(self, keys, cands, load):
        return Decision(self.rng.choice(list(cands)).name, "pick")


class RoundRobin(Strategy):
    name = "round-robin"

    def __init__(self):
        self.next = 0

    def pick(self, keys, cands, load):
        ordered = sorted(cands, key=lambda c: c.name)
        choice = ordered[self.next % len(ordered)]
        self.next += 1
        return Decision(choice.name, "pick")


def least_loaded(cands: Sequence[Candidate], rng: _random.Random) -> Candidate:
    """Fewest requests (ours or reported), then fewest of ours; ties at random."""
    best = min((c.load, c.inflight) for c in cands)
    return rng.choice([c for c in cands if (c.load, c.inflight) == best])


class LeastLoad(Strategy):
    name = "least-load"

    def __init__(self, rng: _random.Random | None = None):
        self.rng = rng or _random.Random()

    def pick(self, keys, cands, load):
        return Decision(least_loaded(cands, self.rng).name, "pick")


class Prefix(Strategy):
    """Longest cached prompt prefix wins, under KubeAI's bounded-load rule, knowing llama.cpp's slots.

    The prompt (chat: the conversation as text, so a next turn extends the previous one) is cut
    into `block_chars`-character blocks with chained hashes, plus the hash of the whole prompt
    (conversations that differ only in a short last message are different conversations); the
    index models what each replica's slots hold, and its host-memory prompt cache (`--cache-ram`: a
    conversation evicted from its slot is loaded back from RAM, a memory copy, where another replica
    would evaluate its whole history) (`PrefixIndex`, `slots + ram` prompts per replica). Among the
    candidates with an idle slot or whose load passes the bound:
    - a replica holding this conversation (the prompt extends a prompt it holds) takes it: `hit`;
    - otherwise the request starts a new slot's worth of cache: replicas with a slot idle now come
      first (it starts at once rather than queue for a shared system prompt), among them those with
      a slot to spare (so it does not evict another conversation's cache; with slot counts unknown,
      those holding the fewest prompts), else those with room in RAM (the slot's prompt moves there,
      a copy), then the most matching blocks (a shared system prompt), then the least load.
    `spill`: a replica held more of the prompt but was over the bound or full; `miss`: none held any."""

    name = "prefix"

    def __init__(self, *, block_chars: int = 64, max_blocks: int = 2048, capacity: int = 31250,
                 load_factor: float = 1.25, rng: _random.Random | None = None):
        self.block_chars, self.max_blocks, self.load_factor = block_chars, max_blocks, load_factor
        self.index = PrefixIndex(capacity)
        self.rng = rng or _random.Random()

    def members(self, names):
        self.index.retain(names)

    def refused(self, decision):
        """The replica never got the prompt: it must not be taken for its holder (the retry's
        replica is recorded by its own pick)."""
        if decision.prompt is not None:
            self.index.forget(decision.name, decision.prompt)

    def _best(self, cands: Sequence[Candidate], matched: dict[str, int]) -> Candidate:
        top = max(matched.get(c.name, 0) for c in cands)
        return least_loaded([c for c in cands if matched.get(c.name, 0) == top], self.rng)

    def _room(self, c: Candidate, load: Load) -> bool:
        """Whether `c` may take one more: a slot of its own is idle (the request starts at once; a
        conversation moved elsewhere would evaluate its whole history again), else KubeAI's bound
        (which alone, at low load, sends a turn away from its cache as soon as its replica has one
        request in flight)."""
        if c.slots and c.load + 1 <= c.slots:
            return True
        return load_ok(c.inflight, load.total_inflight, load.n_replicas, self.load_factor)

    @staticmethod
    def _capacity(c: Candidate) -> int:
        """Prompts `c` holds: one per slot, plus what its RAM cache keeps (0: slots unknown)."""
        return c.slots + c.ram if c.slots else 0

    def _spare(self, cands: Sequence[Candidate]) -> list[Candidate]:
        """Replicas where a new conversation evicts nobody from a slot: a slot free by the index
        (the most recent `slots` prompts are in slots); of those whose slot count is unknown (not
        scraped yet, or not reported), the ones holding fewest. Else those where it evicts nobody
        at all: the least recent slot's prompt moves to RAM (a copy), room for it there."""
        known = [c for c in cands if c.slots and self.index.chains(c.name) < c.slots]
        unknown = [c for c in cands if not c.slots]
        if unknown:
            fewest = min(self.index.chains(c.name) for c in unknown)
            known += [c for c in unknown if self.index.chains(c.name) == fewest]
        return known or [c for c in cands if self.index.chains(c.name) < self._capacity(c)]

    def pick(self, keys, cands, load):
        p = PromptHashes(keys.prompt, self.block_chars, self.max_blocks)
        matched = {c.name: self.index.matched(c.name, p) for c in cands}
        best = max(matched.values(), default=0)
        under = [c for c in cands if self._room(c, load)]
        pool = under or list(cands)
        holders = {c.name for c in cands if self.index.extends(c.name, p)} if p.n_chars else set()
        own = [c for c in pool if c.name in holders]
        if own:
            choice, outcome = self._best(own, matched), "hit"
        else:  # a new slot's worth of cache: where a slot is idle now (a shared prefix is not worth a
            # queue), then where it evicts nobody, then the shared prefix, then load
            free = [c for c in pool if c.slots and c.load + 1 <= c.slots] or pool
            choice = self._best(self._spare(free) or free, matched)
            outcome = ("spill" if holders or matched.get(choice.name, 0) < best else "miss" if best == 0 else "hit")
        self.index.record(choice.name, p, self._capacity(choice))
        return Decision(choice.name, outcome, matched.get(choice.name, 0), p)


class _Ring(Strategy):
    """CHWBL over a key; requests without a key go to the least loaded replica."""

    def __init__(self, *, load_factor: float = 1.25, replication: int = 256, rng: _random.Random | None = None):
        self.ring = HashRing(replication)
        self.load_factor = load_factor
        self.rng = rng or _random.Random()

    def key(self, keys: RouteKeys) -> str:
        raise NotImplementedError

    def members(self, names):
        self.ring.set_members(names)

    def pick(self, keys, cands, load):
        key = self.key(keys)
        if not key:
            return Decision(least_loaded(cands, self.rng).name, "miss")
        if set(c.name for c in cands) - self.ring.members:
            self.ring.set_members(self.ring.members | {c.name for c in cands})
        by_name = {c.name: c for c in cands}
        name, rank = self.ring.lookup(
            key, eligible=lambda n: n in by_name,
            accept=lambda n: load_ok(by_name[n].inflight, load.total_inflight, load.n_replicas, self.load_factor))
        if name is None:
            return Decision(least_loaded(cands, self.rng).name, "miss")
        return Decision(name, "hit" if rank == 0 else "spill")


class Session(_Ring):
    """Requests of one session (header or OpenAI `user`) stick to one replica (bounded load)."""

    name = "session"

    def key(self, keys):
        return keys.session


class KubeAIPrefixHash(_Ring):
    """KubeAI's PrefixHash: CHWBL on the first `prefix_chars` characters of the first user message
    (load factor 1.25, 256 ring points per endpoint by default)."""

    name = "kubeai-prefixhash"

    def __init__(self, *, prefix_chars: int = 100, **kw):
        super().__init__(**kw)
        self.prefix_chars = prefix_chars

    def key(self, keys):
        return keys.first_user[: self.prefix_chars]


def make(name: str, *, load_factor: float = 1.25, block_chars: int = 64, index_capacity: int = 31250,
         seed: int | None = None) -> Strategy:
    rng = _random.Random(seed)
    if name == "random":
        return Random(rng)
    if name == "round-robin":
        return RoundRobin()
    if name == "least-load":
        return LeastLoad(rng)
    if name == "prefix":
        return Prefix(block_chars=block_chars, capacity=index_capacity, load_factor=load_factor, rng=rng)
    if name == "session":
        return Session(load_factor=load_factor, rng=rng)
    if name == "kubeai-prefixhash":
        return KubeAIPrefixHash(load_factor=load_factor, rng=rng)
    raise ValueError(f"unknown strategy {name!r} (one of {', '.join(NAMES)})")
