"""Build a llama_sampler chain from `SlotParams` (llama.cpp's common_sampler order).

Chain: logit_bias -> [grammar] -> (mirostat | samplers in the requested order -> dist(seed)),
the samplers being llama.cpp's own (penalties, DRY, top-n-sigma, top-k, typical, top-p,
min-p, XTC, temperature); penalties not named in `samplers` go right after the grammar
(the seed's order); temperature <= 0 means greedy (after penalties and DRY). Every stage
after the grammar only sees tokens the grammar allows (a bias adds to logits and the
grammar masks them: the two commute). The grammar is guarded: when it and the biases
leave no token (a finished grammar with `ignore_eos`, or `logit_bias` false on every
allowed token), llama.cpp's grammar would abort the process on the next accept; the guard
skips that accept and marks the chain `dead`, and the scheduler ends the request.
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


# llama_token_data: {int32 id; float logit; float p}
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class SamplerChain:
    """Owns one llama_sampler chain (and any Python-side sampler objects it uses)."""

    def __init__(self, model: LlamaModel, params: SlotParams, n_ctx: int, bias: list[tuple[int, float]]):
        self._keep: list[object] = []
        self.penalties = None  # the penalties sampler (inside the chain), primed with history
        self.grammar: _GuardedGrammar | None = None
        self.history_samplers: list = []  # other samplers primed with the prompt (DRY)
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
        pen = self._penalties(model, p, n_ctx)
        if pen is not None and ("penalties" not in p.samplers or p.temperature <= 0 or p.mirostat):
            self._add(pen)  # the seed's place, before every sampler (and always with greedy or mirostat)
            pen = None
        if p.temperature <= 0:  # greedy; DRY still applies, as in llama.cpp's chain
            if "dry" in p.samplers and p.dry_multiplier > 0:
                self._add_dry(model, p, n_ctx)
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
        for name in p.samplers:  # llama.cpp's names (sampler_names canonicalises requests and flags)
            if name == "penalties" and pen is not None:
                self._add(pen)
                pen = None  # one sampler object: placed once (llama.cpp would add a second one)
            elif name == "dry" and p.dry_multiplier > 0:
                self._add_dry(model, p, n_ctx)
            elif name == "top_n_sigma" and p.top_n_sigma > 0:
                self._add(lc.llama_sampler_init_top_n_sigma(p.top_n_sigma))
            elif name == "top_k" and p.top_k > 0:
                self._add(lc.llama_sampler_init_top_k(p.top_k))
            elif name == "typ_p" and p.typical_p < 1.0:
                self._add(lc.llama_sampler_init_typical(p.typical_p, min_keep))
            elif name == "top_p" and p.top_p < 1.0:
                self._add(lc.llama_sampler_init_top_p(p.top_p, min_keep))
            elif name == "min_p" and p.min_p > 0.0:
                self._add(lc.llama_sampler_init_min_p(p.min_p, min_keep))
            elif name == "xtc" and p.xtc_probability > 0 and p.xtc_threshold <= 0.5:
                self._add(lc.llama_sampler_init_xtc(p.xtc_probability, p.xtc_threshold, min_keep, self.seed))
            elif name == "temperature":
                if p.dynatemp_range > 0:
                    self._add(lc.llama_sampler_init_temp_ext(p.temperature, p.dynatemp_range, p.dynatemp_exponent))
                else:
                    self._add(lc.llama_sampler_init_temp(p.temperature))
            # "tfs_z": only 1.0 (disabled) is accepted by params parsing
        self._add(lc.llama_sampler_init_dist(self.seed))

    def _penalties(self, model: LlamaModel, p: SlotParams, n_ctx: int):
        """The penalties sampler (repeat, frequency, presence), or None when they are off."""
        last_n = n_ctx if p.repeat_last_n == -1 else p.repeat_last_n
        if last_n == 0 or (p.repeat_penalty == 1.0 and p.frequency_penalty == 0.0 and p.presence_penalty == 0.0):
            return None
        pen = lc.llama_sampler_init_penalties(model.n_vocab, last_n, p.repeat_penalty, p.frequency_penalty,
                                              p.presence_penalty)
        if not p.penalize_nl and model.nl >= 0:
            wrapper = _NlPreservingPenalties(pen, model.nl)
            self._keep.append(wrapper)
            pen = wrapper.ptr
        self.penalties = pen
        return pen

    def _add_dry(self, model: LlamaModel, p: SlotParams, n_ctx: int) -> None:
        """llama.cpp's DRY sampler; primed with the prompt like the penalties (-1 = the slot's context)."""
        last_n = n_ctx if p.dry_penalty_last_n == -1 else p.dry_penalty_last_n
        breakers = [b.encode() for b in p.dry_sequence_breakers]
        arr = (ctypes.c_char_p * max(1, len(breakers)))(*breakers)
        dry = lc.llama_sampler_init_dry(model.vocab, p.dry_multiplier, p.dry_base, p.dry_allowed_length, last_n,
                                        arr, len(breakers))
        self._add(dry)
        self.history_samplers.append(dry)

    def prime(self, history: list[int]) -> None:
        """Feed prompt tokens to the penalties and DRY only (the grammar must not see them)."""
        for smpl in ([self.penalties] if self.penalties is not None else []) + self.history_samplers:
            for tok in history:
                lc.llama_sampler_accept(smpl, tok)

    def sample(self, ctx_ptr, idx: int) -> int:
        """Sample from output `idx` of the last decode (llama_sampler_sample also accepts it)."""
        return lc.llama_sampler_sample(self.chain, ctx_ptr, idx)

    @property
    def dead(self) -> bool:
        """The grammar allowed no token at the last sample: the request cannot go on."""
        return self.grammar is not None and self.grammar.dead

    def sample_post(self, logits: np.ndarray, n_probs: int) -> tuple[int, list[tuple[int, float]]]:
        """Sample as `sample` does (apply the chain to every token, accept the pick) and return the
        `n_probs` most likely candidates left after the chain: llama.cpp's `post_sampling_probs`."""
        n = logits.shape[0]
        cand = np.empty(n, dtype=_TOKEN_DATA)
        cand["id"] = np.arange(n, dtype=np.int32)
        cand["logit"] = logits
        cand["p"] = 0.0
        arr = lc.llama_token_data_array(
            data=cand.ctypes.data_as(ctypes.POINTER(lc.llama_token_data)), size=n, selected=-1, sorted=False)
        lc.llama_sampler_apply(self.chain, ctypes.byref(arr))
        left = np.frombuffer((ctypes.c_char * (arr.size * _TOKEN_DATA.itemsize)).from_address(
            ctypes.addressof(arr.data.contents)), dtype=_TOKEN_DATA).copy()
        token = int(left["id"][arr.selected]) if 0 <= arr.selected < arr.size else int(left["id"][0])
        lc.llama_sampler_accept(self.chain, token)  # the guarded grammar skips it when `dead`
        keep = left[np.isfinite(left["logit"])]
        if keep.size == 0:
            return token, [(token, 1.0)]
        z = keep["logit"].astype(np.float64)
        e = np.exp(z - z.max())
        probs = e / e.sum()
        order = np.argsort(-probs, kind="stable")[:n_probs]
        return token, [(int(keep["id"][k]), float(probs[k])) for k in order]

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
