"""The continuous-batching scheduler: one thread owns every llama.cpp call.

Each step builds ONE batch holding the pending generated token of every
generating slot plus prompt chunks of slots still reading their prompt (up to
`n_batch` tokens), calls `llama_decode` once, then samples for every slot that
has an output in the batch. New tasks, cancellations and control calls arrive
through a thread-safe command queue and are handled between steps.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

import llama_cpp as lc
import numpy as np

from ..errors import APIError, invalid
from ..llama.context import Batch, LlamaContext
from ..llama.model import LlamaModel
from ..llama.mtmd import MediaError, Multimodal
from .params import SlotParams
from .sampling import SamplerChain, token_prob, top_probs
from .self_extend import SelfExtend
from .slot import Slot
from .slot_choice import IdleSlot, choose
from .text import indent_cut
from .stats import EngineStats
from .task import (
    CompletionResult,
    Outbox,
    EmbeddingResult,
    PartialResult,
    RerankResult,
    Task,
    Timings,
    TokenInfo,
    TokenProb,
)

log = logging.getLogger("kubellama.scheduler")

# task kinds decoded by the embedding step: one pooled output per input, no generation
POOLED_KINDS = ("embedding", "rerank")
# the scheduler thread's stack: llama.cpp's grammar code recurses (bounded by --max-grammar-depth,
# with this margin whatever `ulimit -s` the container has)
STACK_BYTES = 256 << 20


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Scheduler:
    def __init__(
        self,
        model: LlamaModel,
        ctx: LlamaContext,
        *,
        n_slots: int,
        n_predict_limit: int = -1,
        cont_batching: bool = True,
        model_name: str = "",
        stats: EngineStats | None = None,
        self_extend: SelfExtend | None = None,
        multimodal: Multimodal | None = None,
        context_shift: bool = True,
        kv_unified: bool = False,
    ):
        self.model = model
        self.ctx = ctx
        self.n_predict_limit = n_predict_limit
        self.context_shift = context_shift  # --context-shift: cut long prompts, shift a full context
        self.kv_unified = kv_unified  # one KV pool shared by the slots (each may use all of n_ctx)
        self.cont_batching = cont_batching
        self.model_name = model_name
        self.stats = stats or EngineStats()
        self.self_extend = self_extend
        self.multimodal = multimodal
        self.slots = [Slot(id=i, n_ctx=ctx.n_ctx_seq) for i in range(n_slots)]
        self.batch = Batch(ctx.n_batch, 1)
        self.waiting: deque[Task] = deque()
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.outbox = Outbox()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.t_alive = time.monotonic()  # the loop's last turn (GET /health: stuck or dead)
        self._eog_tokens: list[int] | None = None
        self.system_tokens: list[int] = []  # shared prefix of every slot (system prompt)
        self.system_prompt: str = ""
        self.last_batch_slots = 0  # slots that had tokens in the last decode (for tests/metrics)
        self.max_batch_slots = 0
        self.max_pooled_slots = 0  # the most embedding/rerank inputs decoded together (for tests)
        # LoRA: the scales of requests that name none (POST /lora-adapters), one per adapter
        self.lora_default: tuple[float, ...] = ctx.lora_scales
        for slot in self.slots:
            slot.cache_lora = ctx.lora_scales

    # -- thread-safe API ----------------------------------------------------
    def start(self) -> None:
        old = threading.stack_size()
        try:
            threading.stack_size(STACK_BYTES)
        except (ValueError, RuntimeError):  # pragma: no cover - platform without it
            old = None
        try:
            self._thread = threading.Thread(target=self._run, name="kubellama-scheduler", daemon=True)
            self._thread.start()
        finally:
            if old is not None:
                threading.stack_size(old)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.commands.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, task: Task) -> None:
        self.commands.put(("task", task))

    def queued(self) -> int:
        """Tasks submitted and not in a slot yet (read from any thread: approximate)."""
        return len(self.waiting) + self.commands.qsize()

    def has_work(self) -> bool:
        return bool(self.waiting) or not self.commands.empty() or any(s.is_processing for s in self.slots)

    def stalled_for(self) -> float:
        """Seconds the loop has not turned while it has work (0 when idle or turning)."""
        return time.monotonic() - self.t_alive if self.has_work() else 0.0

    def cancel(self, task: Task) -> None:
        task.cancelled = True
        self.commands.put(("cancel", task))

    def call(self, fn: Callable[["Scheduler"], Any]) -> Future:
        """Run `fn(scheduler)` on the scheduler thread between two steps."""
        fut: Future = Future()
        self.commands.put(("call", fn, fut))
        return fut

    def set_system_prompt(self, text: str) -> None:
        """Set the shared system prompt (scheduler thread or before start).

        Tasks tokenized from now on get it in front; running and already-tokenized
        tasks keep theirs. Its KV is computed once and copied into other slots.
        """
        self.system_prompt = text
        self.system_tokens = self.model.tokenize(text, add_special=self.model.add_bos, parse_special=True) if text else []

    # -- the loop -------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self.t_alive = time.monotonic()
            # sleep on the command queue only when there is nothing to do: a deferred task
            # must start in the step right after a slot frees up
            idle = not self.waiting and not any(s.is_processing for s in self.slots)
            try:
                self._drain_commands(block=idle)
                self._launch_waiting()
                if any(s.is_processing for s in self.slots):
                    self._step()
            except Exception:  # never let the loop die: fail active tasks instead
                log.exception("scheduler step failed")
                self._fail_all(APIError("internal error in the scheduler (see server log)", "server_error"))
            finally:
                self.outbox.flush()

    def _drain_commands(self, block: bool) -> None:
        try:
            cmd = self.commands.get(timeout=0.5) if block else self.commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(cmd)
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                return

    def _handle(self, cmd: tuple) -> None:
        kind = cmd[0]
        if kind == "task":
            self.waiting.append(cmd[1])
        elif kind == "cancel":
            self._cancel(cmd[1])
        elif kind == "call":
            fn, fut = cmd[1], cmd[2]
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(self))
                except BaseException as exc:  # delivered to the caller
                    fut.set_exception(exc)

    def _cancel(self, task: Task) -> None:
        if task.slot is None:  # queued (or not even queued yet): the launch loop skips it, O(1) here
            if not task.done:
                task.done = True
                task.drop_media()
                self.stats.on_cancel()
            return
        for slot in self.slots:
            if slot.task is task:
                log.debug("slot %d: task %d cancelled", slot.id, task.id)
                self._finish_timings(slot)
                slot.release()
                self.stats.on_cancel()
                return

    def _fail_task(self, task: Task, exc: BaseException) -> None:
        """Answer one task with an error (a 500 unless it is an APIError) and free what it holds."""
        if not isinstance(exc, APIError):
            log.error("task %d failed: %s: %s", task.id, type(exc).__name__, exc, exc_info=exc)
            exc = APIError(f"internal error while serving this request ({type(exc).__name__}; see the server log)",
                           "server_error")
        slot = task.slot
        if slot is not None and slot.task is task:
            try:
                self.ctx.seq_rm(slot.id, 0, -1)  # its KV may be half written
            finally:
                slot.cache_tokens = []
                slot.release()
        task.drop_media()
        task.done = True
        self.outbox.put(task.sink, ("error", exc))

    def _fail_all(self, exc: APIError) -> None:
        """A step failed as a whole (the batch, not one slot): fail the running tasks and drop
        their KV, whose state is unknown; queued tasks stay queued."""
        for slot in self.slots:
            if slot.task is not None:
                try:
                    self._fail_task(slot.task, exc)
                except Exception:  # noqa: BLE001 - never stop failing the others
                    log.exception("slot %d: could not be reset", slot.id)
                    slot.release()

    # -- slot assignment --------------------------------------------------------
    def _launch_waiting(self) -> None:
        if not self.waiting:
            return
        still: deque[Task] = deque()
        try:
            while self.waiting:
                task = self.waiting.popleft()
                if task.cancelled:
                    task.drop_media()
                    continue
                try:
                    if task.tokens is None:
                        task.tokens = self._prompt_tokens(task)
                    if task.lora is None:
                        task.lora = self._effective_lora(task)
                    slot = self._pick_slot(task)
                    if slot is None:
                        still.append(task)
                        continue
                    self._launch(slot, task)
                except Exception as exc:  # this task only: the others stay queued or running
                    if task.slot is not None and task.slot.task is not task:  # picked, not started: stays free
                        if task.slot.sampler is not None:
                            task.slot.sampler.free()
                            task.slot.sampler = None
                        task.slot = None
                    self._fail_task(task, exc)
        finally:  # tasks taken from the queue in this pass go back in front, in order
            still.extend(self.waiting)
            self.waiting = still

    def _pick_slot(self, task: Task) -> Slot | None:
        """The requested slot; else the idle slot `slot_choice.choose` values most (it may be
        seeded with a copy of the longest matching prefix another slot holds)."""
        if task.params.id_slot >= 0:
            slot = self.slots[task.params.id_slot]
            return None if slot.is_processing else slot
        idle = [s for s in self.slots if not s.is_processing]
        if not idle:
            return None
        if not (task.kind == "completion" and task.params.cache_prompt):
            return min(idle, key=lambda s: s.t_last_used)

        def common(s: Slot) -> int:
            return common_prefix(s.cache_tokens, task.tokens) if s.cache_lora == task.lora else 0

        views = [IdleSlot(common(s), len(s.cache_tokens), s.t_last_used) for s in idle]
        donor, lend = None, 0
        if not self.self_extend and task.media is None:  # positions compressed / images: never copied
            for s in self.slots:
                n = common(s)
                if n > lend:
                    donor, lend = s, n
        i, copy = choose(views, lend)
        slot = idle[i]
        if copy and donor is not None and donor is not slot:
            self.ctx.seq_rm(slot.id, 0, -1)
            self.ctx.seq_cp(donor.id, slot.id)  # a whole-sequence copy (one KV stream per slot), then trimmed
            self.ctx.seq_rm(slot.id, lend, -1)
            slot.cache_tokens, slot.cache_lora = donor.cache_tokens[:lend], donor.cache_lora
            log.debug("slot %d: %d prompt tokens copied from slot %d", slot.id, lend, donor.id)
        return slot

    def _prompt_tokens(self, task: Task) -> list[int]:
        """Tokenize a prompt with the reference's BOS rule."""
        if task.build_prompt is not None:
            return task.build_prompt(self.model)
        prompt = task.prompt
        system = self.system_tokens if task.kind == "completion" and task.use_system_prompt else []
        if task.system_prompt is not None and task.kind == "completion":  # this request's own
            system = self.model.tokenize(task.system_prompt, add_special=self.model.add_bos, parse_special=True) \
                if task.system_prompt else []
        first_is_text = isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], str))
        add_bos = first_is_text and self.model.add_bos and not system
        tokens: list[int] = []
        if task.images:
            tokens = self._media_tokens(task, add_bos, len(system))
        elif isinstance(prompt, str):
            tokens = self.model.tokenize(prompt, add_special=add_bos, parse_special=True)
        else:
            for k, piece in enumerate(prompt):
                if isinstance(piece, str):
                    tokens += self.model.tokenize(piece, add_special=add_bos and k == 0, parse_special=True)
                else:
                    tokens.append(piece)
        bad = [t for t in tokens if not self.model.valid_token(t)] if task.media is None else []
        if bad:
            raise invalid(f"'prompt' contains token ids outside the vocabulary (0..{self.model.n_vocab - 1}): {bad[:5]}")
        task.n_system = len(system)
        return list(system) + tokens

    def _media_tokens(self, task: Task, add_bos: bool, offset: int) -> list[int]:
        """Tokenize a prompt with images; `task.media` keeps the image chunks until they are evaluated."""
        if self.multimodal is None:
            raise invalid("images need a multimodal model: start the server with --mmproj")
        if not isinstance(task.prompt, str):
            raise invalid("a prompt with images must be a string")
        try:
            media = self.multimodal.tokenize(task.prompt, task.images, add_special=add_bos,
                                             max_image_tokens=self.ctx.n_ubatch)
        except MediaError as exc:
            raise invalid(str(exc)) from None
        ends_with_image = bool(media.tokens) and media.tokens[-1] < -1  # an image key (text tokens are >= 0)
        if ends_with_image and task.kind == "completion":
            media.close()
            raise invalid("the prompt ends with an image: put text after it (an image yields no logits to sample from)")
        media.shift(offset)
        task.media = media
        return media.tokens

    def _effective_lora(self, task: Task) -> tuple[float, ...]:
        """The task's LoRA scales: its own `lora` (adapters it leaves out are off), else the default."""
        lora = task.params.lora
        if lora is None:
            return self.lora_default
        n = len(self.ctx.lora_paths)
        if not n:
            raise invalid("'lora' needs LoRA adapters: start the server with --lora FILE")
        if task.kind != "completion":
            raise invalid("'lora' is only supported for completions")
        scales = [0.0] * n
        for i, scale in lora:
            if i >= n:
                raise invalid(f"'lora' names adapter {i}, but this server has adapters 0..{n - 1} (GET /lora-adapters)")
            scales[i] = scale
        return tuple(scales)

    def _use_lora(self, scales: tuple[float, ...]) -> None:
        if scales != self.ctx.lora_scales:
            self.ctx.set_lora_scales(list(scales))

    def eog_tokens(self) -> list[int]:
        if self._eog_tokens is None:
            self._eog_tokens = [t for t in range(self.model.n_vocab) if self.model.is_eog(t)]
        return self._eog_tokens

    def _resolve_bias(self, params: SlotParams) -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        for tok, b in params.logit_bias:
            value = -math.inf if b is False else float(b)
            if isinstance(tok, str):
                for t in self.model.tokenize(tok, add_special=False, parse_special=False):
                    out.append((t, value))
            else:
                if not self.model.valid_token(tok):
                    raise invalid(f"'logit_bias' token {tok} is outside the vocabulary (0..{self.model.n_vocab - 1})")
                out.append((tok, value))
        if params.ignore_eos:
            out += [(t, -math.inf) for t in self.eog_tokens()]
        return out

    def _truncate_prompt(self, slot: Slot, tokens: list[int], params: SlotParams) -> list[int]:
        """llama.cpp's prompt truncation: keep n_keep tokens, drop whole blocks after them."""
        n_ctx = slot.n_ctx
        n_keep = len(tokens) if params.n_keep < 0 else params.n_keep
        n_keep = min(n_keep, n_ctx - 4)
        n_left = n_ctx - n_keep
        n_block = max(1, n_left // 2)
        erased = (len(tokens) - n_keep - n_block) // n_block
        out = tokens[:n_keep] + tokens[n_keep + erased * n_block:]
        if len(out) >= n_ctx:  # degenerate settings: keep the tail
            out = tokens[-(n_ctx // 2):]
        return out

    def _launch(self, slot: Slot, task: Task) -> None:
        params = task.params
        tokens = task.tokens
        task.slot = slot
        if task.kind in POOLED_KINDS:
            if task.kind == "rerank" and not (self.ctx.embeddings and self.ctx.pooling_type == lc.LLAMA_POOLING_TYPE_RANK):
                raise APIError("This server does not support reranking. Start it with `--reranking`", "not_supported_error")
            if not self.ctx.embeddings:
                raise APIError("This server does not support embeddings. Start it with `--embedding`", "not_supported_error")
            if task.media is not None and self.ctx.pooling_type != lc.LLAMA_POOLING_TYPE_MEAN:
                raise invalid("an input with images can only be embedded with mean pooling (--pooling mean)")
            # one ubatch holds a whole input (pooling is per ubatch); inputs with images are
            # decoded piece by piece instead, each piece in one ubatch (see _embed_with_images)
            limit = slot.n_ctx if task.media is not None else min(self.ctx.n_ubatch, slot.n_ctx)
            big = [c.n_tokens for c in task.media.images.values() if c.n_tokens > self.ctx.n_ubatch] if task.media else []
            if big:
                raise APIError(f"an image takes {big[0]} tokens; for embeddings it must fit --ubatch-size "
                               f"({self.ctx.n_ubatch})", "exceed_context_size_error",
                               n_prompt_tokens=len(tokens), n_ctx=slot.n_ctx)
            if len(tokens) > limit:
                raise APIError(
                    f"input is too large to process: {len(tokens)} tokens, the limit is "
                    f"{limit} (increase --ubatch-size / --ctx-size)",
                    "exceed_context_size_error",
                    n_prompt_tokens=len(tokens),
                    n_ctx=slot.n_ctx,
                )
            if not tokens:
                raise invalid("input is empty")
            self.ctx.seq_rm(slot.id, 0, -1)
            slot.cache_tokens = []
            slot.start(task, params, tokens, 0)
            return
        if not tokens:
            tokens = [self.model.bos] if self.model.bos >= 0 else []
            if not tokens:
                raise invalid("'prompt' is empty")
        truncated = False
        if len(tokens) >= slot.n_ctx:
            if not task.allow_truncate or not self.context_shift or self.self_extend or task.media is not None:
                raise APIError(
                    f"the request exceeds the available context size ({len(tokens)} prompt tokens, "
                    f"{slot.n_ctx} per slot); shorten the prompt or start the server with a larger --ctx-size"
                    + ("" if self.context_shift or not task.allow_truncate else " (or --context-shift to cut it)")
                    + (" (self-extend keeps every token in the KV cache)" if self.self_extend else "")
                    + (" (a prompt with images is never truncated)" if task.media is not None else ""),
                    "exceed_context_size_error",
                    n_prompt_tokens=len(tokens),
                    n_ctx=slot.n_ctx,
                )
            tokens = self._truncate_prompt(slot, tokens, params)
            truncated = True
        if slot.cache_lora != task.lora:  # its cache was computed with other LoRA scales
            self.ctx.seq_rm(slot.id, 0, -1)
            slot.cache_tokens, slot.cache_lora = [], task.lora
        bias = self._resolve_bias(params)
        slot.sampler = SamplerChain(self.model, params, slot.n_ctx, bias)
        # reuse the cached prefix (always keep >= 1 token to evaluate for logits)
        n_cached = common_prefix(slot.cache_tokens, tokens) if params.cache_prompt else 0
        if task.n_system:
            n_cached = max(n_cached, self._share_prefix(slot, tokens[:task.n_system]))
        n_cached = min(n_cached, len(tokens) - 1)
        if task.media is not None:  # an image is evaluated whole: never keep part of one
            n_cached = task.media.boundary(n_cached)
        p_cut = n_cached
        if self.self_extend:  # positions are compressed: cut at a window boundary or in the open window
            n_cached = self.self_extend.keepable(n_cached, slot.n_past)
            p_cut = self.self_extend.position(n_cached, slot.n_past)
        if not self.ctx.seq_rm(slot.id, p_cut, -1):
            self.ctx.seq_rm(slot.id, 0, -1)
            n_cached = 0
        slot.cache_tokens = tokens[:n_cached]
        task.n_cached = n_cached
        if self.kv_unified:
            self._make_pool_room(slot, len(tokens) - n_cached)
        slot.start(task, params, tokens, n_cached)
        slot.truncated = truncated
        # prime the penalties with the prompt (or penalty_prompt) history
        history = tokens
        if isinstance(params.penalty_prompt, str):
            history = self.model.tokenize(params.penalty_prompt, add_special=False)
        elif isinstance(params.penalty_prompt, list):
            history = [t for t in params.penalty_prompt if isinstance(t, int) and self.model.valid_token(t)]
        slot.sampler.prime([t for t in history if t >= 0] if task.media is not None else history)
        self._send_progress(slot)  # 0%: the request has started (return_progress)
        log.debug("slot %d: task %d, %d prompt tokens, %d cached", slot.id, task.id, len(tokens), n_cached)

    def _make_pool_room(self, slot: Slot, need: int) -> None:
        """--kv-unified: drop idle slots' caches, least recently used first, until the shared
        pool has room for `need` more tokens (llama.cpp clears idle slots with a unified KV)."""
        def used() -> int:
            return sum(len(s.cache_tokens) for s in self.slots)

        for other in sorted((s for s in self.slots if s is not slot and not s.is_processing and s.cache_tokens),
                            key=lambda s: s.t_last_used):
            if used() + need <= self.ctx.n_ctx:
                return
            self.ctx.seq_rm(other.id, 0, -1)
            other.cache_tokens = []
            log.debug("slot %d: cache dropped to make room in the unified KV pool", other.id)

    def _free_idle_caches(self) -> bool:
        """--kv-unified: drop every idle slot's cache; whether there was any."""
        idle = [s for s in self.slots if not s.is_processing and s.cache_tokens]
        for s in idle:
            self.ctx.seq_rm(s.id, 0, -1)
            s.cache_tokens = []
        if idle:
            log.debug("unified KV pool full: dropped the caches of %d idle slots", len(idle))
        return bool(idle)

    def _send_progress(self, slot: Slot) -> None:
        """llama.cpp's `return_progress`: where a streamed request's prompt evaluation is."""
        p = slot.params
        if p is None or not (p.stream and p.return_progress) or slot.task is None or slot.task.kind != "completion":
            return
        self.outbox.put(slot.task.sink, ("progress", {
            "total": len(slot.prompt_tokens), "cache": slot.n_cached, "processed": slot.n_prompt_done,
            "time_ms": int((time.perf_counter() - slot.t_start) * 1e3)}))

    def _share_prefix(self, slot: Slot, prefix: list[int]) -> int:
        """Give `slot` the KV of `prefix` (the system prompt) without evaluating it again.

        Returns len(prefix) when the slot holds it afterwards, else 0 (the slot
        evaluates it itself and later slots copy it from there).
        """
        n = len(prefix)
        if slot.cache_tokens[:n] == prefix:
            return n
        if self.self_extend:  # the other slot's positions may be compressed past the prefix
            return 0
        for other in self.slots:
            if (other is not slot and other.cache_lora == slot.cache_lora and len(other.cache_tokens) >= n
                    and other.cache_tokens[:n] == prefix):
                self.ctx.seq_cp(other.id, slot.id)  # a whole-sequence copy (one KV stream per slot)
                self.ctx.seq_rm(slot.id, n, -1)
                slot.cache_tokens = list(prefix)
                log.debug("slot %d: system prompt copied from slot %d (%d tokens)", slot.id, other.id, n)
                return n
        return 0

    # -- one step ---------------------------------------------------------------
    def _step(self) -> None:
        embedding_slots = [s for s in self.slots if s.is_processing and s.task.kind in POOLED_KINDS]
        if embedding_slots:
            self._embedding_step(embedding_slots)
            if not any(s.is_processing for s in self.slots):
                return
        batch = self.batch
        batch.clear()
        active: list[Slot] = []
        lora = self._batch_lora() if self.ctx.lora_paths else None  # one set of adapter scales per decode
        # 1. one pending generated token from every generating slot
        for slot in self.slots:
            if not slot.is_processing or slot.task.kind != "completion" or slot.pending_token < 0:
                continue
            if lora is not None and slot.cache_lora != lora:  # other LoRA scales: a later step
                continue
            if slot.n_past + 1 > slot.n_ctx and not self._make_room(slot):
                continue
            slot.i_batch = batch.add(slot.pending_token, self._next_pos(slot), slot.id, True)
            slot.cache_tokens.append(slot.pending_token)
            slot.pending_token = -1
            active.append(slot)
        # 2. prompt chunks (continuous batching: alongside generation)
        if self.cont_batching or batch.n == 0:
            prompt_slots = sorted(
                (s for s in self.slots if s.is_processing and s.task.kind == "completion" and s.in_prompt),
                key=lambda s: s.task.id,
            )
            for slot in prompt_slots:
                if batch.free == 0:
                    break
                if lora is not None and slot.cache_lora != lora:
                    continue
                media = slot.media
                if media is not None and slot.n_prompt_done in media.images:
                    if not self._eval_image(slot, media.images[slot.n_prompt_done]):
                        continue
                    if not slot.in_prompt:  # never: such prompts are refused; the slot must not hang
                        self._decode_failed([slot], -1, "the prompt ended with an image: nothing to sample from")
                        continue
                start = slot.n_prompt_done
                take = min(len(slot.prompt_tokens) - start, batch.free)
                if media is not None:
                    take = media.text_run(start, start + take)
                    if take == 0:  # another image next: the next step evaluates it
                        continue
                if self.self_extend:
                    take = min(take, self.self_extend.room(slot.n_past))
                pos0 = self._next_pos(slot)
                for k in range(start, start + take):
                    is_last = k == len(slot.prompt_tokens) - 1
                    i = batch.add(slot.prompt_tokens[k], pos0 + k - start, slot.id, is_last)
                    if is_last:
                        slot.i_batch = i
                slot.cache_tokens.extend(slot.prompt_tokens[start:start + take])
                slot.n_prompt_done += take
                active.append(slot)
        if batch.n == 0:
            return
        if lora is not None:
            self._use_lora(lora)
            now = time.perf_counter()
            for slot in self.slots:  # this scale set had its turn (also its slots that found no room)
                if slot.is_processing and slot.cache_lora == lora:
                    slot.t_served = now
        ret = self.ctx.decode(batch)
        if ret == 1 and self.kv_unified and self._free_idle_caches():  # the shared pool is full: make room, retry
            ret = self.ctx.decode(batch)
        if ret != 0:
            self._decode_failed(active, ret)
            return
        if self.self_extend:
            for slot in {s.id: s for s in active}.values():
                if slot.n_past % self.self_extend.w == 0:
                    self._compress_window(slot)
        for slot in {s.id: s for s in active if s.t_prompt_done == 0.0}.values():  # still reading their prompt
            self._send_progress(slot)
        n_slots = len({s.id for s in active})
        self.last_batch_slots = n_slots
        self.max_batch_slots = max(self.max_batch_slots, n_slots)
        self.stats.on_decode(sum(1 for s in self.slots if s.is_processing), max(s.n_past for s in active))
        now = time.perf_counter()
        for slot in active:
            if slot.i_batch < 0 or not slot.is_processing:
                continue
            try:
                self._after_decode(slot, now)
            except Exception as exc:  # this slot's request only; the others keep generating
                slot.i_batch = -1
                if slot.task is not None:
                    self._fail_task(slot.task, exc)

    def _after_decode(self, slot: Slot, now: float) -> None:
        """Sample the slot's next token from this step's decode (or finish a prompt-only request)."""
        i, slot.i_batch = slot.i_batch, -1
        if slot.t_prompt_done == 0.0:
            slot.t_prompt_done = now
            slot.t_last_token = now
            n_eval = len(slot.prompt_tokens) - slot.n_cached
            self.stats.on_prompt_done(n_eval, now - slot.t_start, slot.n_cached)
            if slot.params.n_predict == 0:
                self._finish(slot)
                return
        self._sample(slot, i, now)

    def _eval_image(self, slot: Slot, image) -> bool:
        """Encode an image and decode it into the slot's sequence (libmtmd's own decodes, before
        this step's batch: the batch's tokens for this slot come after the image)."""
        t0 = time.perf_counter()
        self._use_lora(slot.cache_lora)
        try:
            self.multimodal.eval_image(self.ctx.ptr, image, slot.n_past, slot.id, self.ctx.n_batch)
        except RuntimeError as exc:
            log.error("slot %d: %s", slot.id, exc)
            self._decode_failed([slot], -1, str(exc))
            return False
        self.stats.observe("image", time.perf_counter() - t0)
        end = image.start + image.n_tokens
        slot.cache_tokens.extend(slot.prompt_tokens[image.start:end])
        slot.n_prompt_done = end
        if slot.n_prompt_done == len(slot.prompt_tokens) or not any(k >= end for k in slot.media.images):
            slot.task.drop_media()  # every image is in the KV cache now
        return True

    def _batch_lora(self) -> tuple[float, ...] | None:
        """The LoRA scales of this step's decode: those of the slot that has waited longest.

        llama.cpp applies one set of adapter scales per decode, so slots whose requests use
        other scales wait for a later step (as in llama.cpp's server); with a single set,
        every slot is in every decode.
        """
        generating = [s for s in self.slots if s.is_processing and s.task.kind == "completion" and s.pending_token >= 0]
        prompting = [s for s in self.slots if s.is_processing and s.task.kind == "completion" and s.in_prompt]
        # without continuous batching a prompt joins only a decode that has no generated tokens
        waiting = generating + prompting if self.cont_batching or not generating else generating
        if not waiting:
            return None
        return min(waiting, key=lambda s: s.t_served).cache_lora

    def _next_pos(self, slot: Slot) -> int:
        """The position of the slot's next token."""
        if self.self_extend:
            return self.self_extend.position(slot.n_past, slot.n_past)
        return slot.n_past

    def _compress_window(self, slot: Slot) -> None:
        """Self-extend: the slot's last window just filled up; divide its positions."""
        window = self.self_extend.windows(slot.n_past) - 1
        (a0, a1, delta), (d0, d1, divisor) = self.self_extend.compression(window)
        if delta:
            self.ctx.seq_add(slot.id, a0, a1, delta)
        self.ctx.seq_div(slot.id, d0, d1, divisor)
        log.debug("slot %d: self-extend compressed window %d", slot.id, window)

    def _make_room(self, slot: Slot) -> bool:
        """Context full: shift (keep n_keep, drop half the rest) or stop the slot."""
        params = slot.params
        unlimited = params.n_predict == -1 and self.n_predict_limit == -1
        # no context shift with self-extend, nor across an image (its tokens are evaluated whole)
        if unlimited or not self.context_shift or not self.ctx.can_shift or self.self_extend or any(t < 0 for t in slot.cache_tokens):
            slot.stopped_limit = True
            slot.truncated = slot.truncated or not self.context_shift  # the context ran out (llama.cpp)
            self._finish(slot)
            return False
        n_keep = len(slot.prompt_tokens) if params.n_keep < 0 else params.n_keep
        n_keep = min(n_keep, slot.n_ctx - 4)
        n_left = slot.n_past - n_keep
        n_discard = max(1, n_left // 2)
        self.ctx.seq_rm(slot.id, n_keep, n_keep + n_discard)
        self.ctx.seq_add(slot.id, n_keep + n_discard, slot.n_past, -n_discard)
        slot.cache_tokens = slot.cache_tokens[:n_keep] + slot.cache_tokens[n_keep + n_discard:]
        slot.truncated = True
        log.debug("slot %d: context shift, kept %d, discarded %d", slot.id, n_keep, n_discard)
        return True

    def _decode_failed(self, active: list[Slot], ret: int, msg: str = "") -> None:
        if not msg:
            log.error("llama_decode failed (%d) for a batch of %d tokens", ret, self.batch.n)
            msg = "llama_decode failed: no KV cache space left" if ret == 1 else f"llama_decode failed ({ret})"
        for slot in {s.id: s for s in active}.values():
            if slot.task is not None:
                self.outbox.put(slot.task.sink, ("error", APIError(msg, "server_error")))
            self.ctx.seq_rm(slot.id, 0, -1)
            slot.cache_tokens = []
            slot.release()

    # -- sampling and stopping ---------------------------------------------------
    def _sample(self, slot: Slot, i: int, now: float) -> None:
        params = slot.params
        info = None
        post = params.n_probs > 0 and params.post_sampling_probs
        if post:
            token, top = slot.sampler.sample_post(self.ctx.logits(i), params.n_probs)
        else:
            token = slot.sampler.sample(self.ctx.ptr, i)
        if slot.sampler.dead:  # the grammar (with the biases) allows nothing more: it is complete
            slot.stopped_eos = True
            self._finish(slot)
            return
        if post:
            prob = next((p for t, p in top if t == token), 0.0)
        else:
            if params.n_probs > 0:
                logits = self.ctx.logits(i)
                top = top_probs(logits, params.n_probs)
                prob = next((p for t, p in top if t == token), None)
                if prob is None:
                    prob = token_prob(logits, token)
        if params.n_probs > 0:
            tb = self.model.token_bytes
            info = TokenInfo(
                id=token,
                text=self.model.detokenize([token]),
                prob=prob,
                top=[TokenProb(t, self.model.detokenize([t]), p, tb(t)) for t, p in top],
                raw=tb(token),
                post_sampling=params.post_sampling_probs,
            )
        if slot.n_decoded == 0:
            self.stats.observe("first_token", now - slot.task.t_created)
        else:
            self.stats.observe("token", now - slot.t_last_token)
        slot.t_last_token = now
        slot.n_decoded += 1
        if self.model.is_eog(token) and not params.ignore_eos:
            slot.stopped_eos = True
            self._finish(slot)
            return
        slot.generated.append(token)
        if info is not None:
            slot.probs.append(info)
        piece = self.model.token_bytes(token)
        n_before = len(slot.text.text)
        stop_hit = slot.text.push(piece)
        cut = -1
        if not stop_hit and params.n_indent > 0:
            cut = indent_cut(slot.text.text, params.n_indent, slot.text.text.rfind("\n", 0, n_before))
        if stop_hit:
            slot.stopped_word = True
        elif cut >= 0:  # a line indented less than n_indent: cut it and stop (llama.cpp's n_indent)
            slot.text.cut(cut)
            slot.stopped_limit = True
        elif params.t_max_predict_ms > 0 and b"\n" in piece and (now - slot.t_prompt_done) * 1e3 > params.t_max_predict_ms:
            slot.stopped_limit = True  # past the time limit, at a new line (llama.cpp's t_max_predict_ms)
        elif params.n_predict != -1 and slot.n_decoded >= params.n_predict:
            slot.stopped_limit = True
        elif self.n_predict_limit != -1 and slot.n_decoded >= self.n_predict_limit:
            slot.stopped_limit = True
        if slot.stopped_word or slot.stopped_limit:
            self._finish(slot)
            return
        slot.pending_token = token
        if params.stream:
            self._send_partial(slot)

    def _send_partial(self, slot: Slot, final: bool = False) -> None:
        content = slot.text.take_sendable(final)
        probs = slot.probs[slot.streamed_probs:]
        if not content and not probs:
            return
        tokens = slot.generated[slot.streamed_tokens:]
        slot.streamed_probs = len(slot.probs)
        slot.streamed_tokens = len(slot.generated)
        timings = None
        if slot.params.timings_per_token and slot.t_prompt_done:  # llama.cpp's timings in every chunk
            timings = Timings(cache_n=slot.n_cached, prompt_n=len(slot.prompt_tokens) - slot.n_cached,
                              prompt_ms=(slot.t_prompt_done - slot.t_start) * 1e3, predicted_n=slot.n_decoded,
                              predicted_ms=(slot.t_last_token - slot.t_prompt_done) * 1e3).to_json()
        self.outbox.put(slot.task.sink, ("partial", PartialResult(content, tokens, probs, slot.n_decoded, timings)))

    def _finish_timings(self, slot: Slot) -> Timings:
        now = time.perf_counter()
        t_prompt_done = slot.t_prompt_done or now
        n_gen = slot.n_decoded
        predicted_s = (slot.t_last_token - t_prompt_done) if n_gen > 1 else 0.0
        if n_gen:
            self.stats.on_prediction_done(n_gen, max(predicted_s, 0.0))
        self.stats.observe("request_done", now - slot.task.t_created)
        self.stats.observe("queue_wait", slot.queue_wait)
        return Timings(
            cache_n=slot.n_cached,
            prompt_n=len(slot.prompt_tokens) - slot.n_cached,
            prompt_ms=(t_prompt_done - slot.t_start) * 1e3,
            predicted_n=n_gen,
            predicted_ms=max(predicted_s, 0.0) * 1e3 if n_gen > 1 else 0.0,
            queue_ms=slot.queue_wait * 1e3,
            ttft_ms=(t_prompt_done - slot.task.t_created) * 1e3,
            t_created_ns=(wall := time.time_ns()) - int((now - slot.task.t_created) * 1e9),
            t_start_ns=wall - int((now - slot.t_start) * 1e9),
            t_prompt_done_ns=wall - int((now - t_prompt_done) * 1e9),
            t_end_ns=wall,
        )

    def _finish(self, slot: Slot) -> None:
        slot.text.flush()
        if slot.params.stream:
            self._send_partial(slot, final=True)  # what was held back (possible stop string, bytes)
        timings = self._finish_timings(slot)
        settings = slot.params.settings()
        settings["n_ctx"] = slot.n_ctx
        settings["model"] = self.model_name
        result = CompletionResult(
            content=slot.text.text,
            tokens=list(slot.generated),
            id_slot=slot.id,
            prompt_tokens=slot.prompt_tokens,
            tokens_predicted=slot.n_decoded,
            tokens_evaluated=len(slot.prompt_tokens),
            tokens_cached=slot.n_cached,
            truncated=slot.truncated,
            stopped_eos=slot.stopped_eos,
            stopped_limit=slot.stopped_limit,
            stopped_word=slot.stopped_word,
            stopping_word=slot.text.stopping_word,
            probs=list(slot.probs),
            timings=timings,
            settings=settings,
        )
        self.outbox.put(slot.task.sink, ("final", result))
        slot.release()

    # -- embeddings -------------------------------------------------------------
    def _embedding_step(self, slots: list[Slot]) -> None:
        for slot in [s for s in slots if s.media is not None]:
            self._embed_with_images(slot)
        slots = [s for s in slots if s.is_processing]
        if not slots:
            return
        batch = self.batch
        batch.clear()
        taken: list[Slot] = []
        # One ubatch of equal-length sequences: with one KV stream per slot llama.cpp splits
        # a batch evenly across sequences, and a sequence pooled over two ubatches gets the
        # mean of its last part only. The other inputs wait for the next step.
        length = len(slots[0].prompt_tokens)
        limit = min(batch.free, self.ctx.n_ubatch)
        for slot in slots:
            if len(slot.prompt_tokens) != length or batch.n + length > limit:
                continue
            for k, tok in enumerate(slot.prompt_tokens):
                batch.add(tok, k, slot.id, True)
            taken.append(slot)
        if not taken:
            return
        self._use_lora(self.lora_default)
        self.ctx.set_embeddings(True)
        try:
            ret = self.ctx.decode(batch)
        finally:
            self.ctx.set_embeddings(False)
        if ret != 0:
            self._decode_failed(taken, ret)
            return
        self.stats.on_decode(len(taken), max(len(s.prompt_tokens) for s in taken))
        self.max_pooled_slots = max(self.max_pooled_slots, len(taken))
        offset = 0
        for slot in taken:
            n = len(slot.prompt_tokens)
            if self.ctx.pooling_type == lc.LLAMA_POOLING_TYPE_NONE:  # llama.cpp: one raw vector per token
                rows = [self.ctx.embedding_ith(offset + k) for k in range(n)]
                zero = np.zeros(self.model.n_embd)
                self._deliver_pooled(slot, EmbeddingResult(
                    [[float(x) for x in (r if r is not None else zero)] for r in rows], n, slot.id))
            elif slot.task.kind == "rerank":
                self._deliver_rerank(slot, self.ctx.embedding_seq(slot.id))
            else:
                vec = self.ctx.embedding_seq(slot.id)
                if vec is None:  # never with pooling: average the token embeddings
                    rows = [self.ctx.embedding_ith(offset + k) for k in range(n)]
                    vec = np.mean([r for r in rows if r is not None], axis=0)
                self._deliver_embedding(slot, vec)
            offset += n

    def _embed_with_images(self, slot: Slot) -> None:
        """Mean-pool an input with images: text runs and images are decoded one after the other
        into the slot's sequence, each in one ubatch; the mean of the pieces' pooled means,
        weighted by their lengths, is the mean over every token."""
        tokens, media, batch = slot.prompt_tokens, slot.media, self.batch
        self.ctx.seq_rm(slot.id, 0, -1)
        total, k = np.zeros(self.model.n_embd), 0
        self._use_lora(self.lora_default)
        self.ctx.set_embeddings(True)
        try:
            while k < len(tokens):
                image = media.images.get(k)
                if image is not None:
                    self.multimodal.eval_image(self.ctx.ptr, image, k, slot.id, self.ctx.n_ubatch)
                    n = image.n_tokens
                else:
                    n = media.text_run(k, min(len(tokens), k + self.ctx.n_ubatch))
                    batch.clear()
                    for j in range(k, k + n):
                        batch.add(tokens[j], j, slot.id, True)
                    ret = self.ctx.decode(batch)
                    if ret != 0:
                        raise RuntimeError(f"llama_decode failed ({ret})")
                vec = self.ctx.embedding_seq(slot.id)
                if vec is None:
                    raise RuntimeError("no pooled embedding for an input with images (the model has no pooling)")
                total += vec * n
                k += n
        except RuntimeError as exc:
            log.error("slot %d: %s", slot.id, exc)
            self._decode_failed([slot], -1, str(exc))
            return
        finally:
            self.ctx.set_embeddings(False)
        self.stats.on_decode(1, len(tokens))
        self._deliver_embedding(slot, total / len(tokens))

    def _deliver_embedding(self, slot: Slot, vec: np.ndarray) -> None:
        norm = float(np.linalg.norm(vec))
        if norm > 0:
            vec = vec / norm
        self._deliver_pooled(slot, EmbeddingResult([float(x) for x in vec], len(slot.prompt_tokens), slot.id))

    def _deliver_rerank(self, slot: Slot, scores: np.ndarray | None) -> None:
        """The reranker's first output is the score (llama.cpp's send_rerank; -1e6 when missing)."""
        if scores is None or len(scores) == 0:
            log.error("slot %d: no rerank score for task %d", slot.id, slot.task.id)
            score = -1e6
        else:
            score = float(scores[0])
        self._deliver_pooled(slot, RerankResult(score, len(slot.prompt_tokens), slot.id))

    def _deliver_pooled(self, slot: Slot, result: EmbeddingResult | RerankResult) -> None:
        now = time.perf_counter()
        self.stats.on_prompt_done(len(slot.prompt_tokens), now - slot.t_start, 0)
        self.stats.observe("request_done", now - slot.task.t_created)
        self.outbox.put(slot.task.sink, ("final", result))
        self.ctx.seq_rm(slot.id, 0, -1)
        slot.cache_tokens = []
        slot.release()
