"""One llama context (KV cache for every slot) and the batch fed to llama_decode."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
import llama_cpp as lc

from .model import LlamaModel


class ContextError(RuntimeError):
    pass


@dataclass(frozen=True)
class ContextParams:
    n_ctx: int = 512
    n_batch: int = 2048
    n_ubatch: int = 512
    n_seq_max: int = 1
    n_threads: int = 1
    n_threads_batch: int = 1
    embeddings: bool = False
    pooling_type: int = lc.LLAMA_POOLING_TYPE_UNSPECIFIED
    kv_unified: bool = False  # one KV pool for every sequence (--kv-unified)
    flash_attn: str = "auto"  # on | off | auto (-fa)


class Batch:
    """A reusable llama_batch with Python-side bookkeeping."""

    def __init__(self, capacity: int, n_seq_max: int = 1):
        self.capacity = capacity
        self.raw = lc.llama_batch_init(capacity, 0, n_seq_max)
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        i = self.n
        raw = self.raw
        raw.token[i] = token
        raw.pos[i] = pos
        raw.n_seq_id[i] = 1
        raw.seq_id[i][0] = seq_id
        raw.logits[i] = logits
        self.n = i + 1
        return i

    def set_logits(self, i: int, logits: bool) -> None:
        self.raw.logits[i] = logits

    @property
    def free(self) -> int:
        return self.capacity - self.n

    def close(self) -> None:
        if self.raw is not None:
            lc.llama_batch_free(self.raw)
            self.raw = None


class LlamaContext:
    def __init__(self, model: LlamaModel, params: ContextParams):
        cp = lc.llama_context_default_params()
        cp.n_ctx = params.n_ctx
        cp.n_batch = params.n_batch
        cp.n_ubatch = min(params.n_ubatch, params.n_batch)
        cp.n_seq_max = params.n_seq_max
        cp.n_threads = params.n_threads
        cp.n_threads_batch = params.n_threads_batch
        cp.embeddings = params.embeddings
        cp.pooling_type = params.pooling_type
        cp.flash_attn_type = {"on": lc.LLAMA_FLASH_ATTN_TYPE_ENABLED, "off": lc.LLAMA_FLASH_ATTN_TYPE_DISABLED,
                              "auto": lc.LLAMA_FLASH_ATTN_TYPE_AUTO}[params.flash_attn]
        cp.kv_unified = params.kv_unified  # off: each slot gets n_ctx / n_seq_max, as llama.cpp's server
        ctx = lc.llama_init_from_model(model.ptr, cp)
        if not ctx:
            raise ContextError(
                f"failed to create a llama context (n_ctx={params.n_ctx}, parallel={params.n_seq_max}); "
                "try a smaller --ctx-size or --parallel"
            )
        self.ptr = ctx
        self.model = model
        self.mem = lc.llama_get_memory(ctx)
        self.n_ctx = lc.llama_n_ctx(ctx)
        self.n_ctx_seq = lc.llama_n_ctx_seq(ctx)
        self.n_batch = lc.llama_n_batch(ctx)
        self.n_ubatch = lc.llama_n_ubatch(ctx)
        self.n_seq_max = lc.llama_n_seq_max(ctx)
        self.embeddings = params.embeddings
        self.pooling_type = lc.llama_pooling_type(ctx) if hasattr(lc, "llama_pooling_type") else params.pooling_type
        # a sequence's pooled output: with pooling RANK the reranker's n_cls_out scores
        self.n_seq_out = model.n_cls_out if self.pooling_type == lc.LLAMA_POOLING_TYPE_RANK else model.n_embd
        self.can_shift = bool(lc.llama_memory_can_shift(self.mem))
        self.lora_paths: list[str] = []
        self.lora_scales: tuple[float, ...] = ()  # as applied to the context now

    # -- decode ---------------------------------------------------------
    def decode(self, batch: Batch) -> int:
        """0 ok, 1 no KV space for the batch, 2 aborted, <0 error."""
        batch.raw.n_tokens = batch.n
        return lc.llama_decode(self.ptr, batch.raw)

    def logits(self, i: int) -> np.ndarray:
        ptr = lc.llama_get_logits_ith(self.ptr, i)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def embedding_seq(self, seq_id: int) -> np.ndarray | None:
        ptr = lc.llama_get_embeddings_seq(self.ptr, seq_id)
        if not ptr:
            return None
        return np.ctypeslib.as_array(ptr, shape=(self.n_seq_out,)).copy()

    def embedding_ith(self, i: int) -> np.ndarray | None:
        ptr = lc.llama_get_embeddings_ith(self.ptr, i)
        if not ptr:
            return None
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_embd,)).copy()

    def set_embeddings(self, on: bool) -> None:
        lc.llama_set_embeddings(self.ptr, on)

    def apply_loras(self, paths: list[str], scale: float = 1.0) -> None:
        """Load LoRA adapters (GGUF) and apply them to this context."""
        adapters = []
        for path in paths:
            adapter = lc.llama_adapter_lora_init(self.model.ptr, path.encode())
            if not adapter:
                raise ContextError(f"failed to load LoRA adapter {path}: not a LoRA GGUF for this model")
            adapters.append(adapter)
        self._loras = adapters  # owned by the model; freed with it
        self.lora_paths = list(paths)
        if adapters:
            self.set_lora_scales([scale] * len(adapters))

    def set_lora_scales(self, scales: list[float]) -> None:
        """Scale each loaded adapter (0 leaves it out) for the decodes from now on."""
        loras = getattr(self, "_loras", [])
        active = [(a, float(s)) for a, s in zip(loras, scales) if s != 0.0]
        arr = (lc.llama_adapter_lora_p_ctypes * max(1, len(active)))(*[a for a, _ in active])
        values = (ctypes.c_float * max(1, len(active)))(*[s for _, s in active])
        if lc.llama_set_adapters_lora(self.ptr, arr, len(active), values) != 0:
            raise ContextError("failed to apply the LoRA adapters")
        self.lora_scales = tuple(float(s) for s in scales)

    # -- memory (KV cache) ----------------------------------------------
    def seq_rm(self, seq: int, p0: int, p1: int = -1) -> bool:
        return bool(lc.llama_memory_seq_rm(self.mem, seq, p0, p1))

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        lc.llama_memory_seq_add(self.mem, seq, p0, p1, delta)

    def seq_div(self, seq: int, p0: int, p1: int, d: int) -> None:
        lc.llama_memory_seq_div(self.mem, seq, p0, p1, d)

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        lc.llama_memory_seq_cp(self.mem, src, dst, p0, p1)

    def seq_pos_max(self, seq: int) -> int:
        return lc.llama_memory_seq_pos_max(self.mem, seq)

    def clear(self) -> None:
        lc.llama_memory_clear(self.mem, True)

    # -- state files ----------------------------------------------------
    def state_seq_save_file(self, path: str, seq: int, tokens: list[int]) -> int:
        arr = (lc.llama_token * max(1, len(tokens)))(*tokens)
        return lc.llama_state_seq_save_file(self.ptr, path.encode(), seq, arr, len(tokens))

    def state_seq_load_file(self, path: str, seq: int, capacity: int) -> tuple[int, list[int]]:
        """Returns (bytes read, tokens); bytes read 0 means the file was refused."""
        arr = (lc.llama_token * max(1, capacity))()
        n_out = ctypes.c_size_t(0)
        n_read = lc.llama_state_seq_load_file(self.ptr, path.encode(), seq, arr, capacity, ctypes.byref(n_out))
        return n_read, list(arr[: n_out.value])

    # -- sequence state in memory (--cache-ram) -------------------------
    def state_seq_size(self, seq: int) -> int:
        """Bytes `state_seq_get` would return (llama.cpp measures without copying)."""
        return lc.llama_state_seq_get_size(self.ptr, seq)

    def state_seq_get(self, seq: int, size: int = -1):
        """The KV state of sequence `seq` (llama_state_seq_get_data) as a ctypes byte array of
        `size` bytes (`state_seq_size`); None when llama.cpp wrote another amount."""
        if size < 0:
            size = self.state_seq_size(seq)
        buf = (ctypes.c_uint8 * max(1, size))()
        n = lc.llama_state_seq_get_data(self.ptr, buf, size, seq)
        return buf if n == size and size > 0 else None

    def state_seq_set(self, seq: int, data) -> bool:
        """Load a state from `state_seq_get` into sequence `seq` (its cells are replaced);
        False when llama.cpp refused it (no room in the KV cache, another shape)."""
        size = ctypes.sizeof(data)
        return lc.llama_state_seq_set_data(self.ptr, data, size, seq) == size

    def close(self) -> None:
        if self.ptr:
            lc.llama_free(self.ptr)
            self.ptr = None
