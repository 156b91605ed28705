"""64-bit string hashes for the hash ring and the prefix index (stable across processes)."""

from __future__ import annotations

import hashlib


def hash64(data: str | bytes) -> int:
    """An unsigned 64-bit hash (blake2b; KubeAI uses xxhash64: the ring's shape is the same)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


def block_hashes(text: str, block_chars: int, max_blocks: int) -> list[int]:
    """Chained hashes of the whole `block_chars`-character blocks of `text` (the trailing partial
    block is left out): block i's hash covers blocks 0..i, so equal hashes mean equal prefixes."""
    out: list[int] = []
    prev = b""
    for start in range(0, min(len(text) // block_chars, max_blocks) * block_chars, block_chars):
        h = hashlib.blake2b(prev + text[start:start + block_chars].encode("utf-8", "surrogatepass"),
                            digest_size=8).digest()
        out.append(int.from_bytes(h, "big"))
        prev = h
    return out
