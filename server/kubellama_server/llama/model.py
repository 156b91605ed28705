"""A loaded GGUF model: vocabulary, tokenizer and metadata."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import llama_cpp as lc


class ModelLoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelLoadParams:
    path: str
    n_gpu_layers: int = 0
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()
    use_mmap: bool = True
    use_mlock: bool = False


class LlamaModel:
    def __init__(self, params: ModelLoadParams):
        if not os.path.isfile(params.path):
            raise ModelLoadError(
                f"model file not found: {params.path} (pass an existing GGUF file with -m, "
                "or use -mu URL / -hfr REPO -hff FILE to download one)"
            )
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = params.n_gpu_layers
        mp.main_gpu = params.main_gpu
        if params.use_mmap:
            mp.load_mode = lc.LLAMA_LOAD_MODE_MMAP_MLOCK if params.use_mlock else lc.LLAMA_LOAD_MODE_MMAP
        else:
            mp.load_mode = lc.LLAMA_LOAD_MODE_MLOCK if params.use_mlock else lc.LLAMA_LOAD_MODE_NONE
        self._tensor_split = None
        if params.tensor_split:
            n = max(lc.LLAMA_MAX_DEVICES, len(params.tensor_split))
            arr = (ctypes.c_float * n)(*params.tensor_split)
            self._tensor_split = arr  # keep alive for the load call
            mp.tensor_split = arr
        model = lc.llama_model_load_from_file(params.path.encode(), mp)
        if not model:
            raise ModelLoadError(
                f"failed to load model {params.path}: not a valid GGUF file or unsupported "
                "architecture (run with --verbose for llama.cpp's log)"
            )
        self.ptr = model
        self.path = params.path
        self.vocab = lc.llama_model_get_vocab(model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = lc.llama_model_n_ctx_train(model)
        self.n_embd = lc.llama_model_n_embd(model)
        self.n_layer = lc.llama_model_n_layer(model)
        self.n_params = lc.llama_model_n_params(model)
        self.size = lc.llama_model_size(model)
        self.bos = lc.llama_vocab_bos(self.vocab)
        self.eos = lc.llama_vocab_eos(self.vocab)
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
        self.sep = lc.llama_vocab_sep(self.vocab)
        self.add_eos = bool(lc.llama_vocab_get_add_eos(self.vocab))
        self.add_sep = bool(lc.llama_vocab_get_add_sep(self.vocab))
        self.n_cls_out = lc.llama_model_n_cls_out(model)  # a reranker's outputs per sequence
        self.fim_pre = lc.llama_vocab_fim_pre(self.vocab)
        self.fim_suf = lc.llama_vocab_fim_suf(self.vocab)
        self.fim_mid = lc.llama_vocab_fim_mid(self.vocab)
        self.fim_rep = lc.llama_vocab_fim_rep(self.vocab)  # repo-level FIM (Qwen2.5-Coder): -1 when absent
        self.fim_sep = lc.llama_vocab_fim_sep(self.vocab)
        nl = self.tokenize("\n", add_special=False, parse_special=False)
        self.nl = nl[-1] if nl else -1
        self._piece_cache: dict[int, bytes] = {}

    # -- metadata -------------------------------------------------------
    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in range(lc.llama_model_meta_count(self.ptr)):
            kbuf = ctypes.create_string_buffer(256)
            lc.llama_model_meta_key_by_index(self.ptr, i, kbuf, len(kbuf))
            vbuf = ctypes.create_string_buffer(4096)
            lc.llama_model_meta_val_str_by_index(self.ptr, i, vbuf, len(vbuf))
            out[kbuf.value.decode("utf-8", "replace")] = vbuf.value.decode("utf-8", "replace")
        return out

    @property
    def chat_template(self) -> str | None:
        return self.meta("tokenizer.chat_template")

    @property
    def rerank_template(self) -> str | None:
        """The reranker's prompt (`tokenizer.chat_template.rerank`, with {query} and {document})."""
        raw = lc.llama_model_chat_template(self.ptr, b"rerank")
        return raw.decode("utf-8", "replace") if raw else None

    @property
    def description(self) -> str:
        buf = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self.ptr, buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    # -- tokens ---------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8", "replace")
        cap = len(data) + 16
        arr = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            arr = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, parse_special)
        return list(arr[:n])

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """The raw bytes of one token (may be part of a multi-byte UTF-8 character)."""
        key = token if not special else ~token
        cached = self._piece_cache.get(key)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        piece = buf.raw[:n]
        self._piece_cache[key] = piece
        return piece

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        data = b"".join(self.token_bytes(t, special) for t in tokens if 0 <= t < self.n_vocab)
        return data.decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(lc.llama_vocab_is_eog(self.vocab, token))

    def valid_token(self, token: int) -> bool:
        return 0 <= token < self.n_vocab

    def close(self) -> None:
        if self.ptr:
            lc.llama_model_free(self.ptr)
            self.ptr = None

