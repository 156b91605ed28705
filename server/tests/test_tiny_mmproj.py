"""The tiny projector fixture loads in libmtmd and feeds images through the tiny text model."""

from __future__ import annotations

import ctypes
import math

import llama_cpp as lc
import llama_cpp.mtmd_cpp as mt
import numpy as np
import pytest

from kubellama_server.llama.backend import init_backend
from kubellama_server.testing.tiny_gguf import build_tiny_gguf
from kubellama_server.testing.tiny_mmproj import build_tiny_mmproj, tiny_png

# image_size 32 / patch_size 8 -> a 4x4 patch grid; the `mlp` projector emits one token per patch
N_IMAGE_TOKENS = (32 // 8) ** 2
N_EMBD = 64  # build_tiny_gguf's n_embd == build_tiny_mmproj's n_embd_text


@lc.llama_log_callback
def _quiet(_level: int, _text: bytes, _user: ctypes.c_void_p) -> None:
    pass


@pytest.fixture(scope="module")
def mm(tmp_path_factory):
    """(model, llama context, mtmd context) on the tiny model and projector, one thread."""
    init_backend(verbose=False)  # llama.cpp's log -> Python logging
    mt.mtmd_helper_log_set(_quiet, None)  # clip/mtmd log to stderr on their own
    folder = tmp_path_factory.mktemp("mmproj")
    model = lc.llama_model_load_from_file(str(build_tiny_gguf(folder / "tiny.gguf")).encode(), lc.llama_model_default_params())
    assert model
    cp = lc.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = 512
    cp.n_threads = cp.n_threads_batch = 1
    ctx = lc.llama_init_from_model(model, cp)
    assert ctx
    mp = mt.mtmd_context_params_default()
    mp.use_gpu, mp.print_timings, mp.n_threads = False, False, 1
    mctx = mt.mtmd_init_from_file(str(build_tiny_mmproj(folder / "mmproj.gguf")).encode(), model, mp)
    assert mctx
    yield model, ctx, mctx
    mt.mtmd_free(mctx)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    mt.mtmd_helper_log_set(lc.llama_log_callback(), None)  # NULL: back to stderr


def _bitmap(mctx, png: bytes):
    buf = (ctypes.c_uint8 * len(png)).from_buffer_copy(png)
    bitmap = mt.mtmd_helper_bitmap_init_from_buf(mctx, buf, len(png), False)
    assert bitmap
    return bitmap


def _tokenize(mctx, text: bytes, bitmaps: list):
    chunks = mt.mtmd_input_chunks_init()
    inp = mt.mtmd_input_text(text=text, text_len=len(text), add_special=True, parse_special=True)
    arr = (mt.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
    assert mt.mtmd_tokenize(mctx, chunks, ctypes.byref(inp), arr, len(bitmaps)) == 0
    return chunks


def _image_embd(mctx, png: bytes) -> np.ndarray:
    bitmap = _bitmap(mctx, png)
    chunks = _tokenize(mctx, mt.mtmd_default_marker(), [bitmap])
    try:
        image = next(
            c
            for c in (mt.mtmd_input_chunks_get(chunks, i) for i in range(mt.mtmd_input_chunks_size(chunks)))
            if mt.mtmd_input_chunk_get_type(c) == mt.MTMD_INPUT_CHUNK_TYPE_IMAGE
        )
        assert mt.mtmd_encode_chunk(mctx, image) == 0
        n = mt.mtmd_input_chunk_get_n_tokens(image) * N_EMBD
        return np.ctypeslib.as_array(mt.mtmd_get_output_embd(mctx), shape=(n,)).copy()
    finally:
        mt.mtmd_input_chunks_free(chunks)
        mt.mtmd_bitmap_free(bitmap)


def test_image_prompt_evaluates(mm):
    model, ctx, mctx = mm
    assert mt.mtmd_support_vision(mctx)
    assert not mt.mtmd_decode_use_non_causal(mctx, None)  # llava-style: image tokens decode causally
    bitmap = _bitmap(mctx, tiny_png(20, 12, seed=1))  # any size: resized to 32x32
    assert (mt.mtmd_bitmap_get_nx(bitmap), mt.mtmd_bitmap_get_ny(bitmap)) == (20, 12)
    chunks = _tokenize(mctx, b"describe " + mt.mtmd_default_marker() + b" please", [bitmap])
    try:
        got = [mt.mtmd_input_chunks_get(chunks, i) for i in range(mt.mtmd_input_chunks_size(chunks))]
        assert [mt.mtmd_input_chunk_get_type(c) for c in got] == [
            mt.MTMD_INPUT_CHUNK_TYPE_TEXT,
            mt.MTMD_INPUT_CHUNK_TYPE_IMAGE,
            mt.MTMD_INPUT_CHUNK_TYPE_TEXT,
        ]
        assert mt.mtmd_input_chunk_get_n_tokens(got[1]) == N_IMAGE_TOKENS
        total = mt.mtmd_helper_get_n_tokens(chunks)
        assert total == sum(mt.mtmd_input_chunk_get_n_tokens(c) for c in got) > N_IMAGE_TOKENS

        new_n_past = lc.llama_pos(0)
        assert mt.mtmd_helper_eval_chunks(mctx, ctx, chunks, 0, 0, 512, True, ctypes.byref(new_n_past)) == 0
        assert new_n_past.value == total
        logits = lc.llama_get_logits_ith(ctx, -1)
        n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
        assert all(math.isfinite(logits[i]) for i in range(n_vocab))
    finally:
        mt.mtmd_input_chunks_free(chunks)
        mt.mtmd_bitmap_free(bitmap)


def test_encoder_sees_the_image(mm):
    _, _, mctx = mm
    a, b = _image_embd(mctx, tiny_png(32, 32, seed=1)), _image_embd(mctx, tiny_png(32, 32, seed=2))
    assert a.shape == (N_IMAGE_TOKENS * N_EMBD,) and np.isfinite(a).all()
    assert not np.allclose(a[:8], b[:8])
    assert np.array_equal(a, _image_embd(mctx, tiny_png(32, 32, seed=1)))  # deterministic


def test_tiny_png_is_valid():
    png = tiny_png(3, 2, seed=7)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png.endswith(b"IEND\xaeB`\x82")
    assert png == tiny_png(3, 2, seed=7) != tiny_png(3, 2, seed=8)
