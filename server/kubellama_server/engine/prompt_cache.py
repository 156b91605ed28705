"""--cache-ram: slots' prompt caches kept in host memory after they leave their slot (pure: no llama.cpp call).

As llama.cpp's `server_prompt_cache`: when a slot is about to lose most of its cache (a new task keeps
less than half of it: `should_save`), its tokens and KV state (`llama_state_seq_get_data`) become an
`Entry` here; a task that starts in a slot looks for the entry sharing the longest prefix with its
prompt (`PromptCache.best`) and, when that beats what the slot or a copy from another slot gives
(`should_load`), the entry's state is loaded into the slot (`llama_state_seq_set_data`). The store
is bounded in bytes (state plus tokens): the oldest entries go first, and an entry larger than the
bound is not stored. The llama.cpp calls are `host_cache.py`'s.

Differences from llama.cpp: a loaded entry stays here (llama.cpp moves it into the slot), so a slot
that keeps only part of it loses nothing; it counts as used (evicted last) and goes when the same
conversation is saved again with more tokens (an entry whose tokens are a prefix of a new one is
dropped, as in llama.cpp). Entries are keyed on what a slot's KV depends on besides the tokens: the
LoRA scales it was computed with (image positions hold a key of the image's bytes, as slot caches
do). At most `MAX_ENTRIES` entries keep the lookup cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

MIB = 1 << 20
MAX_ENTRIES = 256  # entries kept at most, whatever their size (each lookup compares the prompt with all)
KEEP_FRACTION = 0.5  # llama.cpp's f_keep: a slot keeping less than this of its cache saves it first
LOAD_GAIN = 4  # tokens a load must reuse beyond the slot's own prefix or a copy (a state copy costs too)


def as_tokens(tokens: Sequence[int]) -> np.ndarray:
    return np.asarray(tokens, dtype=np.int32)


def lcp(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two int32 token arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


@dataclass(eq=False)
class Entry:
    tokens: np.ndarray  # int32: the tokens whose KV `state` holds (image positions: the image's key)
    lora: tuple[float, ...]  # the LoRA scales the KV was computed with
    state: Any  # the llama_state_seq_get_data bytes (anything with len() and a buffer)
    n_state: int = field(default=-1)  # len(state), counted once

    def __post_init__(self) -> None:
        if self.n_state < 0:
            self.n_state = len(self.state)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def size(self) -> int:
        """Bytes it holds: its state and its token list."""
        return self.n_state + self.tokens.nbytes


def limit_bytes(cache_ram_mib: int) -> int | None:
    """--cache-ram in bytes: None = no limit (-1), 0 = disabled."""
    return None if cache_ram_mib < 0 else cache_ram_mib * MIB


def should_save(n_cache: int, n_keep: int) -> bool:
    """Whether a slot holding `n_cache` tokens, of which a new task keeps `n_keep`, saves its
    cache first (llama.cpp: f_keep < 0.5; an empty slot has nothing to save)."""
    return n_cache > 0 and n_keep < KEEP_FRACTION * n_cache


def should_load(n_hit: int, n_slot: int, n_copy: int = 0) -> bool:
    """Whether an entry sharing `n_hit` prompt tokens is loaded instead of keeping the slot's own
    `n_slot` common tokens or copying `n_copy` from another slot."""
    return n_hit > max(n_slot, n_copy) + LOAD_GAIN


def evictions(sizes: Sequence[int], new_size: int, limit: int | None, protect: int = -1,
              max_entries: int = MAX_ENTRIES) -> list[int] | None:
    """Indexes (oldest first) of the entries (`sizes`, oldest first) to drop so that one of
    `new_size` bytes fits within `limit` bytes and `max_entries`; `protect` is never dropped.
    None when it cannot fit (larger than the limit with the protected entry)."""
    if limit is not None and new_size + (sizes[protect] if 0 <= protect < len(sizes) else 0) > limit:
        return None
    total, count, out = sum(sizes), len(sizes), []
    for i, size in enumerate(sizes):
        if (limit is None or total + new_size <= limit) and count < max_entries:
            break
        if i == protect:
            continue
        out.append(i)
        total -= size
        count -= 1
    if (limit is not None and total + new_size > limit) or count >= max_entries:
        return None
    return out


class PromptCache:
    """The entries, oldest first, within `limit` bytes (None: no limit). Scheduler thread only;
    `n_entries`/`n_bytes` may be read from any thread (a scrape)."""

    def __init__(self, limit: int | None, max_entries: int = MAX_ENTRIES):
        self.limit = limit
        self.max_entries = max_entries
        self.entries: list[Entry] = []
        self.n_bytes = 0
        self.n_saved = self.n_loaded = self.n_evicted = 0  # counters (metrics)
        self.n_tokens_loaded = 0

    @property
    def n_entries(self) -> int:
        return len(self.entries)

    def contains(self, tokens: np.ndarray, lora: tuple[float, ...]) -> bool:
        """Whether an entry already holds `tokens` (as a prefix of its own, same scales)."""
        return any(e.lora == lora and e.n_tokens >= len(tokens) and lcp(e.tokens, tokens) == len(tokens)
                   for e in self.entries)

    def best(self, tokens: np.ndarray, lora: tuple[float, ...]) -> tuple[Entry | None, int]:
        """The entry sharing the longest prefix with `tokens` (same scales) and that length;
        the most recent one on ties."""
        best, n_best = None, 0
        for e in self.entries:
            if e.lora != lora:
                continue
            n = lcp(e.tokens, tokens)
            if n >= n_best and n > 0:
                best, n_best = e, n
        return best, n_best

    def fits(self, size: int, protect: Entry | None = None) -> bool:
        """Whether an entry of `size` bytes can be stored (after evicting all but `protect`)."""
        return self.limit is None or size + (protect.size if protect is not None else 0) <= self.limit

    def add(self, entry: Entry, protect: Entry | None = None) -> list[Entry] | None:
        """Store `entry` (newest), dropping the entries it contains (a prefix of it, same scales)
        and then the oldest ones until it fits; `protect` stays. Returns the entries dropped to
        make room, or None when it was not stored (it does not fit)."""
        contained = [e for e in self.entries
                     if e is not protect and e.lora == entry.lora and e.n_tokens <= entry.n_tokens
                     and lcp(e.tokens, entry.tokens) == e.n_tokens]
        keep = [e for e in self.entries if not any(e is c for c in contained)]
        drop = evictions([e.size for e in keep], entry.size, self.limit,
                         next((i for i, e in enumerate(keep) if e is protect), -1), self.max_entries)
        if drop is None:
            return None
        gone = [keep[i] for i in drop]
        dropped = set(drop)
        self.entries = [e for i, e in enumerate(keep) if i not in dropped] + [entry]
        self.n_bytes = sum(e.size for e in self.entries)
        self.n_saved += 1
        self.n_evicted += len(gone)
        return gone

    def touch(self, entry: Entry, n_tokens: int = 0) -> None:
        """`entry` was loaded into a slot (reusing `n_tokens`): it becomes the newest."""
        self.entries = [e for e in self.entries if e is not entry] + [entry]
        self.n_loaded += 1
        self.n_tokens_loaded += n_tokens

    def shrink(self) -> list[Entry]:
        """Host memory ran out while saving: as llama.cpp, lower the bound to 40% of what is held
        (at least 1 byte) and drop the oldest entries down to it; returns them."""
        self.limit = max(1, int(0.4 * self.n_bytes))
        gone = []
        while self.entries and self.n_bytes > self.limit:
            gone.append(self.entries.pop(0))
            self.n_bytes -= gone[-1].size
        self.n_evicted += len(gone)
        return gone
