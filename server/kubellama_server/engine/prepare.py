"""Prompt preparation and request validation, before a task is submitted.

Runs on the request's own worker thread (`Engine.prepare`, from `serving.limits.admit`):
a client mistake is a 4xx raised there, and tokenizing, building the sampler chain (grammar
parsing) and priming its penalties never hold up the scheduler thread. llama.cpp's
vocabulary is read-only: `llama_tokenize`, `llama_token_to_piece` and libmtmd's tokenizer
take only the vocabulary or the projector, as llama.cpp's own server calls them from its
HTTP threads. What depends on the slot (KV prefix reuse, the server's default LoRA scales)
is left to the launch (`launcher.py`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import llama_cpp as lc

from ..errors import APIError, invalid
from ..llama.mtmd import MediaError
from .params import SlotParams
from .planner import POOLED_KINDS
from .sampling import SamplerChain
from .task import Task

log = logging.getLogger("kubellama.scheduler")


def truncate_prompt(tokens: list[int], n_ctx: int, n_keep: int) -> list[int]:
    """llama.cpp's prompt truncation: keep n_keep tokens (-1: all), drop whole blocks after them."""
    n_keep = len(tokens) if n_keep < 0 else n_keep
    n_keep = min(n_keep, n_ctx - 4)
    n_left = n_ctx - n_keep
    n_block = max(1, n_left // 2)
    erased = (len(tokens) - n_keep - n_block) // n_block
    out = tokens[:n_keep] + tokens[n_keep + erased * n_block:]
    if len(out) >= n_ctx:  # degenerate settings: keep the tail
        out = tokens[-(n_ctx // 2):]
    return out


def as_api_error(task: Task, exc: BaseException) -> APIError:
    """A task's error as answered to its client: a 500 unless it is an APIError."""
    if isinstance(exc, APIError):
        return exc
    log.error("task %d failed: %s: %s", task.id, type(exc).__name__, exc, exc_info=exc)
    return APIError(f"internal error while serving this request ({type(exc).__name__}; see the server log)",
                    "server_error")


class Preparer:
    """Tokenizes and validates tasks for one loaded model and context (any thread)."""

    def __init__(self, sched: Any):
        self.sched = sched  # reads model, ctx, multimodal, self_extend, context_shift, system_tokens
        self._eog_tokens: list[int] | None = None

    def prepare(self, task: Task) -> None:
        """Set `task.tokens` (and its images, LoRA scales, launch tokens and sampler), or raise
        the APIError its client gets. Idempotent: a prepared task is left alone."""
        if task.tokens is not None:
            return
        try:
            tokens = self.prompt_tokens(task)
            task.tokens = tokens
            if task.params.lora is not None:
                task.lora = self.own_lora(task)
            if task.kind in POOLED_KINDS:
                self._check_pooled(task, tokens)
                task.launch_tokens = tokens
                return
            self._prepare_completion(task, tokens)
        except BaseException:
            task.discard()
            raise

    # -- prompts -----------------------------------------------------------------
    def prompt_tokens(self, task: Task) -> list[int]:
        """Tokenize a prompt with the reference's BOS rule (sets `task.n_system`, `task.media`)."""
        model = self.sched.model
        if task.build_prompt is not None:
            return task.build_prompt(model)
        prompt = task.prompt
        system = self.sched.system_tokens if task.kind == "completion" and task.use_system_prompt else []
        if task.system_prompt is not None and task.kind == "completion":  # this request's own
            system = model.tokenize(task.system_prompt, add_special=model.add_bos, parse_special=True) \
                if task.system_prompt else []
        first_is_text = isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], str))
        add_bos = first_is_text and model.add_bos and not system
        tokens: list[int] = []
        if task.images:
            tokens = self._media_tokens(task, add_bos, len(system))
        elif isinstance(prompt, str):
            tokens = model.tokenize(prompt, add_special=add_bos, parse_special=True)
        else:
            for k, piece in enumerate(prompt):
                if isinstance(piece, str):
                    tokens += model.tokenize(piece, add_special=add_bos and k == 0, parse_special=True)
                else:
                    tokens.append(piece)
        bad = [t for t in tokens if not model.valid_token(t)] if task.media is None else []
        if bad:
            raise invalid(f"'prompt' contains token ids outside the vocabulary (0..{model.n_vocab - 1}): {bad[:5]}")
        task.n_system = len(system)
        return list(system) + tokens

    def _media_tokens(self, task: Task, add_bos: bool, offset: int) -> list[int]:
        """Tokenize a prompt with images; `task.media` keeps the image chunks until they are evaluated."""
        multimodal = self.sched.multimodal
        if multimodal is None:
            raise invalid("images need a multimodal model: start the server with --mmproj")
        if not isinstance(task.prompt, str):
            raise invalid("a prompt with images must be a string")
        try:
            media = multimodal.tokenize(task.prompt, task.images, add_special=add_bos,
                                        max_image_tokens=self.sched.ctx.n_ubatch)
        except MediaError as exc:
            raise invalid(str(exc)) from None
        ends_with_image = bool(media.tokens) and media.tokens[-1] < -1  # an image key (text tokens are >= 0)
        if ends_with_image and task.kind == "completion":
            media.close()
            raise invalid("the prompt ends with an image: put text after it (an image yields no logits to sample from)")
        media.shift(offset)
        task.media = media
        return media.tokens

    def own_lora(self, task: Task) -> tuple[float, ...]:
        """A request's own `lora` as one scale per adapter (adapters it leaves out are off)."""
        n = len(self.sched.ctx.lora_paths)
        if not n:
            raise invalid("'lora' needs LoRA adapters: start the server with --lora FILE")
        if task.kind != "completion":
            raise invalid("'lora' is only supported for completions")
        scales = [0.0] * n
        for i, scale in task.params.lora:
            if i >= n:
                raise invalid(f"'lora' names adapter {i}, but this server has adapters 0..{n - 1} (GET /lora-adapters)")
            scales[i] = scale
        return tuple(scales)

    # -- embeddings and rerank ------------------------------------------------------
    def _check_pooled(self, task: Task, tokens: list[int]) -> None:
        ctx = self.sched.ctx
        n_ctx = ctx.n_ctx_seq
        if task.kind == "rerank" and not (ctx.embeddings and ctx.pooling_type == lc.LLAMA_POOLING_TYPE_RANK):
            raise APIError("This server does not support reranking. Start it with `--reranking`", "not_supported_error")
        if not ctx.embeddings:
            raise APIError("This server does not support embeddings. Start it with `--embedding`", "not_supported_error")
        if task.media is not None and ctx.pooling_type != lc.LLAMA_POOLING_TYPE_MEAN:
            raise invalid("an input with images can only be embedded with mean pooling (--pooling mean)")
        # one ubatch holds a whole input (pooling is per ubatch); inputs with images are
        # decoded piece by piece instead, each piece in one ubatch (executor.embed_with_images)
        limit = n_ctx if task.media is not None else min(ctx.n_ubatch, n_ctx)
        big = [c.n_tokens for c in task.media.images.values() if c.n_tokens > ctx.n_ubatch] if task.media else []
        if big:
            raise APIError(f"an image takes {big[0]} tokens; for embeddings it must fit --ubatch-size "
                           f"({ctx.n_ubatch})", "exceed_context_size_error", n_prompt_tokens=len(tokens), n_ctx=n_ctx)
        if len(tokens) > limit:
            raise APIError(f"input is too large to process: {len(tokens)} tokens, the limit is "
                           f"{limit} (increase --ubatch-size / --ctx-size)", "exceed_context_size_error",
                           n_prompt_tokens=len(tokens), n_ctx=n_ctx)
        if not tokens:
            raise invalid("input is empty")

    # -- completions ------------------------------------------------------------------
    def _prepare_completion(self, task: Task, tokens: list[int]) -> None:
        sched, model, params = self.sched, self.sched.model, task.params
        n_ctx = sched.ctx.n_ctx_seq
        if not tokens:
            tokens = [model.bos] if model.bos >= 0 else []
            if not tokens:
                raise invalid("'prompt' is empty")
        if len(tokens) >= n_ctx:
            se = sched.self_extend
            if not task.allow_truncate or not sched.context_shift or se or task.media is not None:
                raise APIError(
                    f"the request exceeds the available context size ({len(tokens)} prompt tokens, "
                    f"{n_ctx} per slot); shorten the prompt or start the server with a larger --ctx-size"
                    + ("" if sched.context_shift or not task.allow_truncate else " (or --context-shift to cut it)")
                    + (" (self-extend keeps every token in the KV cache)" if se else "")
                    + (" (a prompt with images is never truncated)" if task.media is not None else ""),
                    "exceed_context_size_error",
                    n_prompt_tokens=len(tokens),
                    n_ctx=n_ctx,
                )
            tokens = truncate_prompt(tokens, n_ctx, params.n_keep)
            task.truncated = True
        sampler = SamplerChain(model, params, n_ctx, self.resolve_bias(params))
        try:
            # prime the penalties with the prompt (or penalty_prompt) history
            history = tokens
            if isinstance(params.penalty_prompt, str):
                history = model.tokenize(params.penalty_prompt, add_special=False)
            elif isinstance(params.penalty_prompt, list):
                history = [t for t in params.penalty_prompt if isinstance(t, int) and model.valid_token(t)]
            sampler.prime([t for t in history if t >= 0] if task.media is not None else history)
        except BaseException:
            sampler.free()
            raise
        task.launch_tokens = tokens
        if task.build_prompt is not None or not isinstance(task.prompt, str):  # token ids or infill: the reply
            # shows the prompt as text, detokenized here (a worker thread), not on the event loop
            task.prompt_text = model.detokenize(tokens)
        task.sampler = sampler

    def eog_tokens(self) -> list[int]:
        if self._eog_tokens is None:
            model = self.sched.model
            self._eog_tokens = [t for t in range(model.n_vocab) if model.is_eog(t)]
        return self._eog_tokens

    def resolve_bias(self, params: SlotParams) -> list[tuple[int, float]]:
        model = self.sched.model
        out: list[tuple[int, float]] = []
        for tok, b in params.logit_bias:
            value = -math.inf if b is False else float(b)
            if isinstance(tok, str):
                for t in model.tokenize(tok, add_special=False, parse_special=False):
                    out.append((t, value))
            else:
                if not model.valid_token(tok):
                    raise invalid(f"'logit_bias' token {tok} is outside the vocabulary (0..{model.n_vocab - 1})")
                out.append((tok, value))
        if params.ignore_eos:
            out += [(t, -math.inf) for t in self.eog_tokens()]
        return out
