"""The multimodal projector (`--mmproj`, libmtmd): images into prompt chunks, chunks into the KV cache.

A prompt with images becomes a `MediaPrompt`: its token list holds the text tokens
and, at every position an image occupies, that image's *key* (a negative number
derived from the image's bytes). Token-list arithmetic (prefix reuse, slot files)
keeps working: the same image in the same place gives the same key, so its KV is
reused like text; a cut inside an image is moved back to the image's start.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
from dataclasses import dataclass, field

import llama_cpp as lc
import llama_cpp.mtmd_cpp as mt

from .model import LlamaModel

log = logging.getLogger("kubellama.mtmd")

_log_callback = None  # keep a reference: libmtmd calls it from C
MEDIA_MARKER = mt.mtmd_default_marker().decode()  # where an image goes in a prompt's text


class MediaError(ValueError):
    """The client's media cannot be used (not an image, wrong count, too large)."""


def image_key(data: bytes) -> int:
    """A negative int32 standing for every token of this image (-1 is llama.cpp's null token)."""
    return -2 - (int.from_bytes(hashlib.sha256(data).digest()[:4], "little") & 0x3FFFFFFF)


@dataclass
class ImageChunk:
    ptr: int  # mtmd_input_chunk*, owned by the MediaPrompt's chunk list
    start: int  # index of its first token in the prompt
    n_tokens: int


@dataclass
class MediaPrompt:
    """Tokens of a prompt with images (image positions hold the image key) and its image chunks."""

    tokens: list[int]
    images: dict[int, ImageChunk] = field(default_factory=dict)  # first token index -> chunk
    _chunks: int | None = None  # mtmd_input_chunks*

    def shift(self, offset: int) -> None:
        """Tokens were put in front of this prompt (the system prompt)."""
        self.images = {k + offset: ImageChunk(c.ptr, c.start + offset, c.n_tokens) for k, c in self.images.items()}

    def boundary(self, n: int) -> int:
        """The largest prefix length <= n that does not end inside an image."""
        for c in self.images.values():
            if c.start < n < c.start + c.n_tokens:
                return c.start
        return n

    def text_run(self, start: int, end: int) -> int:
        """How many tokens from `start` (< end) precede the next image."""
        nxt = min((k for k in self.images if k >= start), default=end)
        return min(nxt, end) - start

    @property
    def n_image_tokens(self) -> int:
        return sum(c.n_tokens for c in self.images.values())

    def close(self) -> None:
        if self._chunks:
            mt.mtmd_input_chunks_free(self._chunks)
            self._chunks = None
            self.images = {}

    def __del__(self) -> None:  # a safety net; the scheduler closes prompts when their task ends
        self.close()


class Multimodal:
    """One libmtmd context for the loaded text model. Only the scheduler thread uses it."""

    def __init__(self, path: str, model: LlamaModel, *, n_threads: int, use_gpu: bool, verbose: bool = False):
        _route_logs(verbose)
        params = mt.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.print_timings = False
        params.n_threads = n_threads
        self.ptr = mt.mtmd_init_from_file(path.encode(), model.ptr, params)
        if not self.ptr:
            raise RuntimeError(
                f"failed to load the multimodal projector {path}: not an mmproj GGUF, or one made for "
                "another model (its embedding size must match the text model's)")
        self.path = path
        self.vision = bool(mt.mtmd_support_vision(self.ptr))
        self.audio = bool(mt.mtmd_support_audio(self.ptr))
        self.mrope = bool(mt.mtmd_decode_use_mrope(self.ptr))
        self.marker = MEDIA_MARKER

    def tokenize(self, text: str, images: list[bytes], *, add_special: bool, max_image_tokens: int) -> MediaPrompt:
        """Split `text` at each media marker and put the images there, in order."""
        if not self.vision:
            raise MediaError("this server's projector has no vision encoder: images cannot be used")
        if text.count(self.marker) != len(images):
            raise MediaError(f"the prompt has {text.count(self.marker)} image places for {len(images)} images")
        bitmaps = []
        chunks = mt.mtmd_input_chunks_init()
        try:
            for k, data in enumerate(images):
                buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                bitmap = mt.mtmd_helper_bitmap_init_from_buf(self.ptr, buf, len(data), False)
                if not bitmap:
                    raise MediaError(f"image {k} could not be decoded: send a JPEG, PNG, BMP, GIF, TGA or PSD file")
                bitmaps.append(bitmap)
            raw = text.encode("utf-8", "replace")
            inp = mt.mtmd_input_text(text=raw, text_len=len(raw), add_special=add_special, parse_special=True)
            arr = (mt.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            ret = mt.mtmd_tokenize(self.ptr, chunks, ctypes.byref(inp), arr, len(bitmaps))
            if ret != 0:
                raise MediaError(f"the prompt and its images could not be tokenized (libmtmd error {ret})")
            prompt = MediaPrompt(tokens=[], _chunks=chunks)
            chunks = None
            keys = iter(image_key(d) for d in images)
            for i in range(mt.mtmd_input_chunks_size(prompt._chunks)):
                chunk = mt.mtmd_input_chunks_get(prompt._chunks, i)
                kind = mt.mtmd_input_chunk_get_type(chunk)
                if kind == mt.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t(0)
                    toks = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    prompt.tokens.extend(toks[k] for k in range(n.value))
                elif kind == mt.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    n_tokens = mt.mtmd_input_chunk_get_n_tokens(chunk)
                    if n_tokens > max_image_tokens and mt.mtmd_decode_use_non_causal(self.ptr, chunk):
                        prompt.close()
                        raise MediaError(
                            f"an image takes {n_tokens} tokens, more than --ubatch-size ({max_image_tokens}); "
                            "this projector needs a whole image in one micro-batch: raise --ubatch-size")
                    start = len(prompt.tokens)
                    prompt.images[start] = ImageChunk(chunk, start, n_tokens)
                    prompt.tokens.extend([next(keys)] * n_tokens)
                else:
                    prompt.close()
                    raise MediaError("audio input is not supported")
            return prompt
        finally:
            for bitmap in bitmaps:
                mt.mtmd_bitmap_free(bitmap)
            if chunks:
                mt.mtmd_input_chunks_free(chunks)

    def eval_image(self, ctx_ptr, image: ImageChunk, n_past: int, seq_id: int, n_batch: int) -> None:
        """Encode the image and decode its embeddings into `seq_id` at positions n_past.. (own decodes)."""
        new_n_past = lc.llama_pos(n_past)  # the helper overwrites it for images, adds for text
        ret = mt.mtmd_helper_eval_chunk_single(self.ptr, ctx_ptr, image.ptr, n_past, seq_id, n_batch, False,
                                               ctypes.byref(new_n_past))
        if ret != 0:
            raise RuntimeError(f"libmtmd failed to evaluate an image ({ret})")
        if new_n_past.value != n_past + image.n_tokens:
            raise RuntimeError(f"an image moved the position by {new_n_past.value - n_past}, not {image.n_tokens}")

    def close(self) -> None:
        if self.ptr:
            mt.mtmd_free(self.ptr)
            self.ptr = None


def _route_logs(verbose: bool) -> None:
    """libmtmd logs to stderr on its own; send it to Python logging like llama.cpp's log."""
    global _log_callback
    if _log_callback is not None:
        return
    level = logging.INFO if verbose else logging.DEBUG

    @lc.llama_log_callback
    def _cb(_level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        if verbose:
            msg = text.decode("utf-8", "replace").rstrip()
            if msg:
                log.log(level, msg)

    _log_callback = _cb
    mt.mtmd_helper_log_set(_cb, ctypes.c_void_p(0))
