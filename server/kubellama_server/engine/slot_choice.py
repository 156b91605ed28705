"""Which idle slot takes a new prompt: one that loses nothing of another conversation if there is
one, else the least recently used, seeded with a copy of the longest matching prefix any slot holds.

llama.cpp (and this server before) took the idle slot sharing the longest prefix with the prompt.
With a shared system prompt that is any slot holding another conversation: a new conversation
overwrote it while a slot sat empty, and a cache-aware router's next turn then found nothing.
Here each option is valued in tokens, `reused - lost`:
- keep a slot's cache: reused = its common prefix with the prompt, lost = the rest of its cache
  (another conversation's tokens, or the unmatched tail of this one's);
- copy the longest matching prefix any slot holds into a slot (cheap next to evaluating it):
  reused = that prefix, lost = the target's own tokens, less `COPY_COST` (so a conversation
  stays in its slot when only the few tokens of its tail that a re-rendered reply does not match
  would go; another conversation's own part, its user messages, is longer than that).
Among the options losing at most `COPY_COST` tokens (this conversation's slot, an empty slot) the
best value wins, ties to the least recently used slot, then to not copying. When every option
would destroy another conversation, the least recently used slot goes (llama.cpp's fallback, and
what a router modelling the slots, like kubellama-router's prefix index, expects), with the
longest matching prefix copied in when another slot holds more of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: what a copy costs, in tokens of value (a whole-sequence KV copy, then a trim)
COPY_COST = 4


@dataclass(frozen=True)
class IdleSlot:
    common: int  # leading tokens of the prompt its cache holds (0 when unusable, e.g. other LoRA scales)
    cached: int  # tokens in its cache
    last_used: float


def choose(idle: Sequence[IdleSlot], donor: int = 0) -> tuple[int, bool]:
    """(index into `idle`, whether to copy the donor's prefix into it first); `donor` is the
    longest common prefix any slot (idle or busy) could lend, 0 for none."""
    best: tuple[float, float, int] | None = None
    pick = (-1, False)
    for i, s in enumerate(idle):
        lost = s.cached - s.common
        if lost > COPY_COST:
            continue  # another conversation's tokens
        options = [(s.common - lost, False)]
        if donor > s.common:
            options.append((donor - lost - COPY_COST, True))
        for value, copy in options:
            key = (value, -s.last_used, 0 if copy else 1)
            if best is None or key > best:
                best, pick = key, (i, copy)
    if pick[0] >= 0:
        return pick
    lru = min(range(len(idle)), key=lambda i: idle[i].last_used)
    return lru, donor > idle[lru].common
