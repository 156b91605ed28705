"""Build a llama_sampler chain from `SlotParams` (llama.cpp's common_sampler order).

Chain: logit_bias -> [grammar] -> penalties -> (mirostat | samplers in the requested
order -> dist(seed)); temperature <= 0 means greedy. Every stage after the grammar only
sees tokens the grammar allows (a bias adds to logits and the grammar masks them: the
two commute). The grammar is guarded: when it and the biases leave no token (a finished
grammar with `ignore_eos`, or `logit_bias` false on every allowed token), llama.cpp's
grammar would abort the process on the next accept; the guard skips that accept and
marks the chain `dead`, and the scheduler ends the request.
"""

from __future__ import annotations

import ctypes
import json
import random

import numpy as np
import llama_cpp as lc

from ..errors import invalid
from ..llama.model import LlamaModel
from .params import SlotParams


def grammar_for(params: SlotParams) -> str:
    """The GBNF grammar of a request: `json_schema` wins over `grammar`."""
    if params.json_schema is not None:
        return schema_gbnf(params.json_schema)
    return params.grammar


def schema_gbnf(schema, what: str = "'json_schema'") -> str:
    """A JSON schema as a GBNF grammar whose start rule is `root` (a 400 if it cannot be converted)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    if schema is True or schema == {}:
        schema = {}
    remote = _remote_ref(schema)
    if remote is not None:  # the converter would fetch it (a request from the server, unbounded)
        raise invalid(f"{what} refers to {remote!r}: only references inside the schema (#/...) are supported")
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:
        raise invalid(f"{what} cannot be converted to a grammar: {exc}") from exc
    # llama-cpp-python's string `char` rule lets raw control characters into JSON strings
    # (invalid JSON); exclude them as llama.cpp's own converter does.
    return gbnf.replace('char ::= [^"\\\\]', 'char ::= [^"\\\\\\x7F\\x00-\\x1F]')


def _remote_ref(node) -> str | None:
    """The first `$ref` that does not point inside the schema, if any."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return ref
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            found = _remote_ref(item)
            if found is not None:
                return found
    return None


class _NlPreservingPenalties:
    """Penalties that leave the newline logit alone (`penalize_nl: false`).

    llama.cpp dropped `penalize_nl`; this wraps its penalties sampler in a custom
    sampler that restores the newline token's logit after the penalties ran.
    """

    def __init__(self, inner, nl: int):
        self.inner = inner
        self.nl = nl
        i = lc.llama_sampler_i()
        i.name = lc.llama_sampler_i_name(lambda _s: b"penalties-keep-nl")
        i.accept = lc.llama_sampler_i_accept(lambda _s, tok: lc.llama_sampler_accept(self.inner, tok))
        i.apply = lc.llama_sampler_i_apply(self._apply)
        i.reset = lc.llama_sampler_i_reset(lambda _s: lc.llama_sampler_reset(self.inner))
        i.free = lc.llama_sampler_i_free(lambda _s: lc.llama_sampler_free(self.inner))
        self.iface = i
        self.ptr = lc.llama_sampler_init(ctypes.byref(i), None)

    def _apply(self, _smpl, cur_p) -> None:
        arr = cur_p.contents
        data = arr.data
        nl = self.nl
        idx = nl if 0 <= nl < arr.size and data[nl].id == nl else next(
            (k for k in range(arr.size) if data[k].id == nl), -1
        )
        saved = data[idx].logit if idx >= 0 else None
        lc.llama_sampler_apply(self.inner, cur_p)
        if saved is not None:
            data[idx].logit = saved


class _GuardedGrammar:
    """llama.cpp's grammar sampler, which never accepts a token it had ruled out."""

    def __init__(self, inner):
        self.inner = inner
        self.dead = False
        i = lc.llama_sampler_i()
        i.name = lc.llama_sampler_i_name(lambda _s: b"grammar-guarded")
        i.accept = lc.llama_sampler_i_accept(self._accept)
        i.apply = lc.llama_sampler_i_apply(self._apply)
        i.reset = lc.llama_sampler_i_reset(lambda _s: lc.llama_sampler_reset(self.inner))
        i.free = lc.llama_sampler_i_free(lambda _s: lc.llama_sampler_free(self.inner))
        self.iface = i
        self.ptr = lc.llama_sampler_init(ctypes.byref(i), None)

    def _apply(self, _smpl, cur_p) -> None:
        lc.llama_sampler_apply(self.inner, cur_p)
        arr = cur_p.contents
        logits = np.ctypeslib.as_array(arr.data, shape=(arr.size,))["logit"] if arr.size else np.empty(0)
        self.dead = not np.isfinite(logits).any()

    def _accept(self, _smpl, token) -> None:
        if not self.dead:
            lc.llama_sampler_accept(self.inner, token)


class SamplerChain:
    """Owns one llama_sampler chain (and any Python-side sampler objects it uses)."""

    def __init__(self, model: LlamaModel, params: SlotParams, n_ctx: int, bias: list[tuple[int, float]]):
        self._keep: list[object] = []
        self.penalties = None  # the penalties sampler (inside the chain), primed with history
        self.grammar: _GuardedGrammar | None = None
        self.chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        self.seed = params.seed if params.seed >= 0 else random.randint(0, 2**32 - 2)
        try:
            self._build(model, params, n_ctx, bias)
        except BaseException:
            self.free()
            raise

    def _add(self, smpl) -> None:
        lc.llama_sampler_chain_add(self.chain, smpl)

    def _build(self, model: LlamaModel, p: SlotParams, n_ctx: int, bias: list[tuple[int, float]]) -> None:
        if bias:
            arr = (lc.llama_logit_bias * len(bias))()
            for k, (tok, b) in enumerate(bias):
                arr[k].token = tok
                arr[k].bias = b
            self._add(lc.llama_sampler_init_logit_bias(model.n_vocab, len(bias), arr))
        grammar = grammar_for(p)
        if grammar:
            g = lc.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
            if not g:
                raise invalid("Failed to parse grammar")
            self.grammar = _GuardedGrammar(g)
            self._keep.append(self.grammar)
            self._add(self.grammar.ptr)
        last_n = n_ctx if p.repeat_last_n == -1 else p.repeat_last_n
        if last_n != 0 and (p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0):
            pen = lc.llama_sampler_init_penalties(
                model.n_vocab, last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
            )
            if not p.penalize_nl and model.nl >= 0:
                wrapper = _NlPreservingPenalties(pen, model.nl)
                self._keep.append(wrapper)
                pen = wrapper.ptr
            self._add(pen)
            self.penalties = pen
        if p.temperature <= 0:
            self._add(lc.llama_sampler_init_greedy())
            return
        if p.mirostat == 1:
            self._add(lc.llama_sampler_init_temp(p.temperature))
            self._add(lc.llama_sampler_init_mirostat(model.n_vocab, self.seed, p.mirostat_tau, p.mirostat_eta, 100))
            return
        if p.mirostat == 2:
            self._add(lc.llama_sampler_init_temp(p.temperature))
            self._add(lc.llama_sampler_init_mirostat_v2(self.seed, p.mirostat_tau, p.mirostat_eta))
            return
        min_keep = max(1, p.min_keep)
        for name in p.samplers:
            if name == "top_k" and p.top_k > 0:
                self._add(lc.llama_sampler_init_top_k(p.top_k))
            elif name == "typical_p" and p.typical_p < 1.0:
                self._add(lc.llama_sampler_init_typical(p.typical_p, min_keep))
            elif name == "top_p" and p.top_p < 1.0:
                self._add(lc.llama_sampler_init_top_p(p.top_p, min_keep))
            elif name == "min_p" and p.min_p > 0.0:
                self._add(lc.llama_sampler_init_min_p(p.min_p, min_keep))
            elif name == "temperature":
                if p.dynatemp_range > 0:
                    self._add(lc.llama_sampler_init_temp_ext(p.temperature, p.dynatemp_range, p.dynatemp_exponent))
                else:
                    self._add(lc.llama_sampler_init_temp(p.temperature))
            # "tfs_z": only 1.0 (disabled) is accepted by params parsing
        self._add(lc.llama_sampler_init_dist(self.seed))

    def prime(self, history: list[int]) -> None:
        """Feed prompt tokens to the penalties only (the grammar must not see them)."""
        if self.penalties is not None:
            for tok in history:
                lc.llama_sampler_accept(self.penalties, tok)

    def sample(self, ctx_ptr, idx: int) -> int:
        """Sample from output `idx` of the last decode (llama_sampler_sample also accepts it)."""
        return lc.llama_sampler_sample(self.chain, ctx_ptr, idx)

    @property
    def dead(self) -> bool:
        """The grammar allowed no token at the last sample: the request cannot go on."""
        return self.grammar is not None and self.grammar.dead

    def free(self) -> None:
        if self.chain:
            lc.llama_sampler_free(self.chain)
            self.chain = None
        self._keep.clear()


def top_probs(logits: np.ndarray, n: int) -> list[tuple[int, float]]:
    """Softmax over raw logits; the `n` most likely (token, prob) pairs, best first."""
    n = min(n, logits.shape[0])
    m = float(logits.max())
    e = np.exp(logits - m, dtype=np.float64)
    total = float(e.sum())
    idx = np.argpartition(-logits, n - 1)[:n]
    idx = idx[np.argsort(-logits[idx])]
    return [(int(i), float(e[i] / total)) for i in idx]


def token_prob(logits: np.ndarray, token: int) -> float:
    m = float(logits.max())
    e = np.exp(logits - m, dtype=np.float64)
    return float(e[token] / e.sum())
