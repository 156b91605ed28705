"""64-bit string hashes for the hash ring and the prefix index (stable across processes)."""

from __future__ import annotations

import hashlib


def hash64(data: str | bytes) -> int:
    """An unsigned 64-bit hash (blake2b; KubeAI uses xxhash64: the ring's shape is the same)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


def _h(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


class PromptHashes:
    """A prompt's chained hashes: one per whole `block_chars`-character block (block i's covers
    blocks 0..i, so equal hashes mean equal prefixes), and `prefix(n)`, the hash of its first `n`
    characters (whole blocks plus a partial one), so that two prompts differing only after the
    last whole block (a short user message after a shared system prompt) are told apart.
    At most `max_blocks` blocks are read: the rest of a longer prompt is not looked at."""

    def __init__(self, text: str, block_chars: int, max_blocks: int):
        self.text, self.block_chars = text, block_chars
        self.n_chars = min(len(text), max_blocks * block_chars)
        self.digests: list[bytes] = []
        prev = b""
        for start in range(0, self.n_chars // block_chars * block_chars, block_chars):
            prev = _h(prev + text[start:start + block_chars].encode("utf-8", "surrogatepass"))
            self.digests.append(prev)
        self.blocks = [int.from_bytes(d, "big") for d in self.digests]
        self._memo: dict[int, int] = {}

    def prefix(self, n_chars: int) -> int | None:
        """The hash of the first `n_chars` characters (None beyond what was read)."""
        if n_chars > self.n_chars or n_chars < 0:
            return None
        if n_chars not in self._memo:
            nb = n_chars // self.block_chars
            prev = self.digests[nb - 1] if nb else b""
            tail = self.text[nb * self.block_chars:n_chars].encode("utf-8", "surrogatepass")
            self._memo[n_chars] = int.from_bytes(_h(prev + b"\x00tail" + tail), "big")
        return self._memo[n_chars]

    @property
    def full(self) -> int:
        return self.prefix(self.n_chars)  # type: ignore[return-value]


def block_hashes(text: str, block_chars: int, max_blocks: int) -> list[int]:
    """Chained hashes of the whole `block_chars`-character blocks of `text` (the trailing partial
    block is left out)."""
    return PromptHashes(text, block_chars, max_blocks).blocks
