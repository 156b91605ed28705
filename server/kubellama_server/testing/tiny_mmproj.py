"""Build a tiny random multimodal projector ("mmproj") GGUF for `build_tiny_gguf`.

A LLaVA-1.5 style vision projector (clip.cpp projector type ``mlp``): a CLIP-like
ViT (conv patch embedding, learned position embeddings, pre-layernorm, pre-norm
transformer blocks) followed by a 2-layer GELU MLP (``mm.0``, ``mm.2``) that maps
each patch to the text model's embedding size. libmtmd (``mtmd_init_from_file``)
loads it next to the tiny text model, so tests can exercise image input without a
download. Every image is resized to ``image_size`` x ``image_size`` and becomes
``(image_size // patch_size) ** 2`` image tokens (16 by default). Like LLaVA, clip.cpp
takes the features of the second-to-last block, so of the ``n_layer`` blocks only
the first ``n_layer - 1`` run. Random weights: the embeddings are meaningless but
deterministic for a fixed seed, and encoding an image takes about a millisecond.

    python -m kubellama_server.testing.tiny_mmproj OUT.gguf
"""

from __future__ import annotations

import os
import random
import struct
import sys
import zlib
from pathlib import Path

import numpy as np


def build_tiny_mmproj(
    path: str | os.PathLike,
    *,
    n_embd_text: int = 64,
    image_size: int = 32,
    patch_size: int = 8,
    n_embd: int = 32,
    n_head: int = 4,
    n_ff: int = 64,
    n_layer: int = 2,
    seed: int = 1234,
    name: str = "kubellama-tiny-mmproj",
) -> Path:
    """Write a tiny random `mlp` (LLaVA-1.5 style) projector GGUF to `path`; its output
    embedding size is `n_embd_text`, which must equal the text model's n_embd."""
    import gguf

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    if n_ff == n_embd:
        raise ValueError("n_ff must differ from n_embd (clip.cpp would swap ffn up/down)")
    path = Path(path)
    n_pos = (image_size // patch_size) ** 2  # no class embedding: one position per patch
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "clip")
    writer.add_name(name)
    writer.add_file_type(0)  # all F32
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type("mlp")
    writer.add_vision_image_size(image_size)
    writer.add_vision_patch_size(patch_size)
    writer.add_vision_embedding_length(n_embd)
    writer.add_vision_feed_forward_length(n_ff)
    writer.add_vision_block_count(n_layer)
    writer.add_vision_head_count(n_head)
    writer.add_vision_projection_dim(n_embd_text)
    writer.add_vision_attention_layernorm_eps(1e-5)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    writer.add_vision_use_gelu(True)

    # numpy shapes are ggml's ne reversed: a (n_out, n_in) weight maps n_in -> n_out
    writer.add_tensor("v.patch_embd.weight", w(n_embd, 3, patch_size, patch_size, scale=0.2))
    writer.add_tensor("v.patch_embd.bias", zeros(n_embd))
    writer.add_tensor("v.position_embd.weight", w(n_pos, n_embd, scale=0.02))
    writer.add_tensor("v.pre_ln.weight", ones(n_embd))
    writer.add_tensor("v.pre_ln.bias", zeros(n_embd))
    for i in range(n_layer):
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"v.blk.{i}.{part}.weight", w(n_embd, n_embd))
            writer.add_tensor(f"v.blk.{i}.{part}.bias", zeros(n_embd))
        for norm in ("ln1", "ln2"):
            writer.add_tensor(f"v.blk.{i}.{norm}.weight", ones(n_embd))
            writer.add_tensor(f"v.blk.{i}.{norm}.bias", zeros(n_embd))
        writer.add_tensor(f"v.blk.{i}.ffn_up.weight", w(n_ff, n_embd))
        writer.add_tensor(f"v.blk.{i}.ffn_up.bias", zeros(n_ff))
        writer.add_tensor(f"v.blk.{i}.ffn_down.weight", w(n_embd, n_ff))
        writer.add_tensor(f"v.blk.{i}.ffn_down.bias", zeros(n_embd))
    writer.add_tensor("mm.0.weight", w(n_embd_text, n_embd, scale=0.2))
    writer.add_tensor("mm.0.bias", zeros(n_embd_text))
    writer.add_tensor("mm.2.weight", w(n_embd_text, n_embd_text, scale=0.2))
    writer.add_tensor("mm.2.bias", zeros(n_embd_text))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path


def tiny_png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid 8-bit RGB PNG of random pixels (standard library only, deterministic per seed)."""
    rnd = random.Random(seed)
    row_len = width * 3
    raw = b"".join(b"\x00" + rnd.randbytes(row_len) for _ in range(height))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, truecolour, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m kubellama_server.testing.tiny_mmproj OUT.gguf")
    print(build_tiny_mmproj(argv[0]))


if __name__ == "__main__":
    main()
