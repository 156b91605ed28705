"""Self-extend (group attention): llama.cpp's `--grp-attn-n` / `--grp-attn-w`.

A slot's tokens are read in windows of `w` tokens. A window is decoded with its
ordinary positions, then compressed at once: its positions are divided by the
group factor `n` (`llama_memory_seq_add` + `llama_memory_seq_div`), so each full
window occupies only `w / n` positions. The positions a sequence uses grow `n`
times slower than its tokens, which lets a model read more tokens than it was
trained for (the KV cache still holds every token: `--ctx-size` must fit them).

Because a window is compressed as soon as it is full, where every token sits is a
function of the number of tokens in the sequence alone; these functions are pure
the planner schedules them (`planner.plan_step`) and the executor applies them.
"""

from __future__ import annotations

from dataclasses import dataclass


class SelfExtendError(ValueError):
    """Settings that cannot work (start-up error)."""


@dataclass(frozen=True)
class SelfExtend:
    n: int  # group factor
    w: int  # window width in tokens (a multiple of n)

    @classmethod
    def from_settings(cls, grp_attn_n: int, grp_attn_w: int) -> "SelfExtend | None":
        """None when self-extend is off (`--grp-attn-n 1`); raises SelfExtendError for bad values."""
        if grp_attn_n == 1:
            return None
        if grp_attn_n < 1:
            raise SelfExtendError(f"--grp-attn-n must be 1 (off) or more, got {grp_attn_n}")
        if grp_attn_w <= 0 or grp_attn_w % grp_attn_n:
            raise SelfExtendError(
                f"--grp-attn-w ({grp_attn_w}) must be a positive multiple of --grp-attn-n ({grp_attn_n})")
        return cls(grp_attn_n, grp_attn_w)

    @property
    def g(self) -> int:
        """Positions one compressed window occupies."""
        return self.w // self.n

    def windows(self, n_tokens: int) -> int:
        """Compressed windows of a sequence of `n_tokens` tokens."""
        return n_tokens // self.w

    def position(self, index: int, n_tokens: int) -> int:
        """The position of token `index` in a sequence of `n_tokens` tokens (index
        `n_tokens` is the position the next token gets)."""
        c = self.windows(n_tokens)
        if index < c * self.w:
            return (index // self.w) * self.g + (index % self.w) // self.n
        return c * self.g + index - c * self.w

    def room(self, n_tokens: int) -> int:
        """Tokens that can join the sequence before its open window is full (one batch
        must not cross a window boundary: the window is compressed after the decode)."""
        return self.w - n_tokens % self.w

    def keepable(self, n_keep: int, n_tokens: int) -> int:
        """How many of the first `n_keep` tokens of an `n_tokens` sequence can be kept
        when the rest is dropped: a compressed window is kept whole or not at all."""
        if n_keep >= self.windows(n_tokens) * self.w:
            return n_keep
        return (n_keep // self.w) * self.w

    def compression(self, window: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """The (p0, p1, delta) of `seq_add` and the (p0, p1, divisor) of `seq_div` that
        compress full window `window` (whose tokens sit at positions `window * g ...`)."""
        start = window * self.g
        shift = window * self.w - start  # to positions window*w ..., which divide down to window*g ...
        return (start, start + self.w, shift), (window * self.w, (window + 1) * self.w, self.n)
