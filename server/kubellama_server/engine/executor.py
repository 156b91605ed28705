"""The executor: fills one batch from a `StepPlan` and calls `llama_decode` once for it.

Before the decode it ends the slots the plan stops, applies its context shifts, evaluates
the images it names (libmtmd's own decodes into the slot's sequence) and selects its LoRA
scales; after it, self-extend's compressions; then `Output.update_from_output` samples.
A full unified KV pool (--kv-unified) is retried once after dropping idle slots' caches.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from .planner import GENERATE, POOLED, StepPlan

log = logging.getLogger("kubellama.scheduler")


class Executor:
    def __init__(self, sched: Any):
        self.sched = sched  # model, ctx, batch, slots, output, stats, multimodal, lora_default, kv_unified
        self.last_batch_slots = 0  # slots that had tokens in the last decode (for tests/metrics)
        self.max_batch_slots = 0
        self.max_pooled_slots = 0  # the most embedding/rerank inputs decoded together (for tests)

    def execute(self, plan: StepPlan) -> None:
        if plan.kind == GENERATE:
            self.generate(plan)
        elif plan.kind == POOLED:
            self.pooled(plan)
        else:
            for c in plan.chunks:
                self.embed_with_images(c.slot)

    def use_lora(self, scales: tuple[float, ...]) -> None:
        ctx = self.sched.ctx
        if scales != ctx.lora_scales:
            ctx.set_lora_scales(list(scales))

    # -- generation ------------------------------------------------------------------
    def generate(self, plan: StepPlan) -> None:
        sched = self.sched
        ctx, output = sched.ctx, sched.output
        for slot in plan.stops:
            output.stop_full(slot)
        for slot, n_keep, n_discard in plan.shifts:
            n_past = slot.n_past
            ctx.seq_rm(slot.id, n_keep, n_keep + n_discard)
            ctx.seq_add(slot.id, n_keep + n_discard, n_past, -n_discard)
            slot.cache_tokens = slot.cache_tokens[:n_keep] + slot.cache_tokens[n_keep + n_discard:]
            slot.run.truncated = True
            log.debug("slot %d: context shift, kept %d, discarded %d", slot.id, n_keep, n_discard)
        batch = sched.batch
        batch.clear()
        active = []
        for c in plan.chunks:
            slot, run = c.slot, c.run
            if c.start < 0:  # the pending generated token
                token = run.pending_token
                run.i_batch = batch.add(token, c.pos, slot.id, True)
                slot.cache_tokens.append(token)
                run.pending_token = -1
                active.append(c)
                continue
            if c.image is not None and not self.eval_image(slot, run, c.image):
                continue
            if c.n == 0:
                continue
            start, end, seq, prompt = c.start, c.start + c.n, slot.id, run.prompt_tokens
            shift = c.pos - start
            add = batch.add
            for k in range(start, end):
                add(prompt[k], shift + k, seq, False)
            if c.logits:
                run.i_batch = batch.n - 1
                batch.set_logits(run.i_batch, True)
            slot.cache_tokens.extend(prompt[start:end])
            run.n_prompt_done = end
            active.append(c)
        if batch.n == 0:
            return
        if plan.lora is not None:
            self.use_lora(plan.lora)
            now = time.perf_counter()
            for slot in sched.slots:  # this scale set had its turn (also its slots that found no room)
                if slot.run is not None and slot.cache_lora == plan.lora:
                    slot.run.t_served = now
        ret = ctx.decode(batch)
        if ret == 1 and sched.kv_unified and sched.launcher.free_idle_caches():  # the shared pool is full
            ret = ctx.decode(batch)
        if ret != 0:
            output.decode_failed([c.slot for c in active], ret)
            return
        for slot, window, (a0, a1, delta), (d0, d1, divisor) in plan.compress:
            if slot.run is not None:
                if delta:
                    ctx.seq_add(slot.id, a0, a1, delta)
                ctx.seq_div(slot.id, d0, d1, divisor)
                log.debug("slot %d: self-extend compressed window %d", slot.id, window)
        for c in active:  # still reading their prompt
            if c.run.t_prompt_done == 0.0:
                output.send_progress(c.run)
        self.last_batch_slots = len(active)
        self.max_batch_slots = max(self.max_batch_slots, len(active))
        sched.stats.on_decode(sum(1 for s in sched.slots if s.run is not None), max(c.slot.n_past for c in active))
        output.update_from_output(active, time.perf_counter())

    def eval_image(self, slot, run, image) -> bool:
        """Encode an image and decode it into the slot's sequence (libmtmd's own decodes, before
        this step's batch: the batch's tokens for this slot come after the image)."""
        sched = self.sched
        t0 = time.perf_counter()
        self.use_lora(slot.cache_lora)
        try:
            sched.multimodal.eval_image(sched.ctx.ptr, image, slot.n_past, slot.id, sched.ctx.n_batch)
        except RuntimeError as exc:
            log.error("slot %d: %s", slot.id, exc)
            sched.output.decode_failed([slot], -1, str(exc))
            return False
        sched.stats.observe("image", time.perf_counter() - t0)
        end = image.start + image.n_tokens
        slot.cache_tokens.extend(run.prompt_tokens[image.start:end])
        run.n_prompt_done = end
        if run.n_prompt_done == len(run.prompt_tokens) or not any(k >= end for k in run.task.media.images):
            run.task.drop_media()  # every image is in the KV cache now
        if not run.in_prompt:  # never: such prompts are refused; the slot must not hang
            sched.output.decode_failed([slot], -1, "the prompt ended with an image: nothing to sample from")
            return False
        return True

    # -- embeddings and rerank ---------------------------------------------------------
    def pooled(self, plan: StepPlan) -> None:
        sched = self.sched
        ctx, batch = sched.ctx, sched.batch
        batch.clear()
        slots = [c.slot for c in plan.chunks]
        for slot in slots:
            for k, tok in enumerate(slot.run.prompt_tokens):
                batch.add(tok, k, slot.id, True)
        if not slots:
            return
        self.use_lora(sched.lora_default)
        ctx.set_embeddings(True)
        try:
            ret = ctx.decode(batch)
        finally:
            ctx.set_embeddings(False)
        if ret != 0:
            sched.output.decode_failed(slots, ret)
            return
        sched.stats.on_decode(len(slots), max(len(s.run.prompt_tokens) for s in slots))
        self.max_pooled_slots = max(self.max_pooled_slots, len(slots))
        sched.output.pooled_results(slots)

    def embed_with_images(self, slot) -> None:
        """Mean-pool an input with images: text runs and images are decoded one after the other
        into the slot's sequence, each in one ubatch; the mean of the pieces' pooled means,
        weighted by their lengths, is the mean over every token."""
        sched = self.sched
        ctx, batch, run = sched.ctx, sched.batch, slot.run
        tokens, media = run.prompt_tokens, run.task.media
        ctx.seq_rm(slot.id, 0, -1)
        total, k = np.zeros(sched.model.n_embd), 0
        self.use_lora(sched.lora_default)
        ctx.set_embeddings(True)
        try:
            while k < len(tokens):
                image = media.images.get(k)
                if image is not None:
                    sched.multimodal.eval_image(ctx.ptr, image, k, slot.id, ctx.n_ubatch)
                    n = image.n_tokens
                else:
                    n = media.text_run(k, min(len(tokens), k + ctx.n_ubatch))
                    batch.clear()
                    for j in range(k, k + n):
                        batch.add(tokens[j], j, slot.id, True)
                    ret = ctx.decode(batch)
                    if ret != 0:
                        raise RuntimeError(f"llama_decode failed ({ret})")
                vec = ctx.embedding_seq(slot.id)
                if vec is None:
                    raise RuntimeError("no pooled embedding for an input with images (the model has no pooling)")
                total += vec * n
                k += n
        except RuntimeError as exc:
            log.error("slot %d: %s", slot.id, exc)
            sched.output.decode_failed([slot], -1, str(exc))
            return
        finally:
            ctx.set_embeddings(False)
        sched.stats.on_decode(1, len(tokens))
        sched.output.deliver_embedding(slot, total / len(tokens))
