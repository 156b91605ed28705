"""Which idle slot takes a new prompt: the one that reuses the most of its cache and destroys the
least of another conversation's, optionally seeded with a copy of another slot's prefix.

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
The best value wins; ties go to the least recently used slot, then to not copying.
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
    pick = (0, False)
    for i, s in enumerate(idle):
        options = [(s.common - (s.cached - s.common), False)]
        if donor > s.common:
            options.append((donor - (s.cached - s.common) - COPY_COST, True))
        for value, copy in options:
            key = (value, -s.last_used, 0 if copy else 1)
            if best is None or key > best:
                best, pick = key, (i, copy)
    return pick
