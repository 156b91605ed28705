"""Result handling after a decode (vLLM's `update_from_output`): sampling, stop conditions,
streamed chunks and final results to the tasks, pooled embeddings and rerank scores, and
errors. Runs on the scheduler thread; events go through the scheduler's `Outbox`, which
wakes each event loop once per step.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import llama_cpp as lc
import numpy as np

from ..errors import APIError
from .prepare import as_api_error
from .sampling import token_prob, top_probs
from .slot import Slot
from .task import CompletionResult, EmbeddingResult, PartialResult, RerankResult, Task, Timings, TokenInfo, TokenProb
from .text import indent_cut

log = logging.getLogger("kubellama.scheduler")


class Output:
    def __init__(self, sched: Any):
        self.sched = sched  # reads model, ctx, stats, outbox, slots, n_predict_limit, model_name

    # -- generation ------------------------------------------------------------------
    def update_from_output(self, chunks: list, now: float) -> None:
        """Sample the next token of every run with an output in this step's decode."""
        for c in chunks:
            slot, run = c.slot, c.run
            if run.i_batch < 0 or slot.run is not run:
                continue
            try:
                i, run.i_batch = run.i_batch, -1
                if run.t_prompt_done == 0.0:  # its prompt is read: a prompt-only request ends here
                    run.t_prompt_done = run.t_last_token = now
                    self.sched.stats.on_prompt_done(len(run.prompt_tokens) - run.n_cached, now - run.t_start, run.n_cached)
                    if run.params.n_predict == 0:
                        self.finish(slot)
                        continue
                self.sample(slot, run, i, now)
            except Exception as exc:  # this slot's request only; the others keep generating
                run.i_batch = -1
                if slot.run is run:
                    self.fail_task(run.task, exc)

    def sample(self, slot: Slot, run, i: int, now: float) -> None:
        sched = self.sched
        model, params = sched.model, run.params
        info = None
        post = params.n_probs > 0 and params.post_sampling_probs
        if post:
            token, top = run.sampler.sample_post(sched.ctx.logits(i), params.n_probs)
        else:
            token = run.sampler.sample(sched.ctx.ptr, i)
        if run.sampler.dead:  # the grammar (with the biases) allows nothing more: it is complete
            run.stopped_eos = True
            self.finish(slot)
            return
        if post:
            prob = next((p for t, p in top if t == token), 0.0)
        elif params.n_probs > 0:
            logits = sched.ctx.logits(i)
            top = top_probs(logits, params.n_probs)
            prob = next((p for t, p in top if t == token), None)
            if prob is None:
                prob = token_prob(logits, token)
        if params.n_probs > 0:
            tb = model.token_bytes
            info = TokenInfo(id=token, text=model.detokenize([token]), prob=prob,
                             top=[TokenProb(t, model.detokenize([t]), p, tb(t)) for t, p in top],
                             raw=tb(token), post_sampling=params.post_sampling_probs)
        if run.n_decoded == 0:
            sched.stats.observe("first_token", now - run.task.t_created)
        else:
            sched.stats.observe("token", now - run.t_last_token)
        run.t_last_token = now
        run.n_decoded += 1
        if model.is_eog(token) and not params.ignore_eos:
            run.stopped_eos = True
            self.finish(slot)
            return
        run.generated.append(token)
        if info is not None:
            run.probs.append(info)
        piece = model.token_bytes(token)
        text = run.text
        n_before = len(text.text)
        stop_hit = text.push(piece)
        cut = -1
        if not stop_hit and params.n_indent > 0:
            cut = indent_cut(text.text, params.n_indent, text.text.rfind("\n", 0, n_before))
        if stop_hit:
            run.stopped_word = True
        elif cut >= 0:  # a line indented less than n_indent: cut it and stop (llama.cpp's n_indent)
            text.cut(cut)
            run.stopped_limit = True
        elif params.t_max_predict_ms > 0 and b"\n" in piece and (now - run.t_prompt_done) * 1e3 > params.t_max_predict_ms:
            run.stopped_limit = True  # past the time limit, at a new line (llama.cpp's t_max_predict_ms)
        elif params.n_predict != -1 and run.n_decoded >= params.n_predict:
            run.stopped_limit = True
        elif sched.n_predict_limit != -1 and run.n_decoded >= sched.n_predict_limit:
            run.stopped_limit = True
        if run.stopped_word or run.stopped_limit:
            self.finish(slot)
            return
        run.pending_token = token
        if params.stream:
            self.send_partial(run)

    def send_partial(self, run, final: bool = False) -> None:
        content = run.text.take_sendable(final)
        probs = run.probs[run.streamed_probs:]
        if not content and not probs:
            return
        tokens = run.generated[run.streamed_tokens:]
        run.streamed_probs = len(run.probs)
        run.streamed_tokens = len(run.generated)
        timings = None
        if run.params.timings_per_token and run.t_prompt_done:  # llama.cpp's timings in every chunk
            timings = Timings(cache_n=run.n_cached, prompt_n=len(run.prompt_tokens) - run.n_cached,
                              prompt_ms=(run.t_prompt_done - run.t_start) * 1e3, predicted_n=run.n_decoded,
                              predicted_ms=(run.t_last_token - run.t_prompt_done) * 1e3).to_json()
        self.sched.outbox.put(run.task.sink, ("partial", PartialResult(content, tokens, probs, run.n_decoded, timings)))

    def send_progress(self, run) -> None:
        """llama.cpp's `return_progress`: where a streamed request's prompt evaluation is."""
        p = run.params
        if not (p.stream and p.return_progress) or run.kind != "completion" or run.task is None:
            return
        self.sched.outbox.put(run.task.sink, ("progress", {
            "total": len(run.prompt_tokens), "cache": run.n_cached, "processed": run.n_prompt_done,
            "time_ms": int((time.perf_counter() - run.t_start) * 1e3)}))

    def finish_timings(self, run) -> Timings:
        stats = self.sched.stats
        now = time.perf_counter()
        t_prompt_done = run.t_prompt_done or now
        n_gen = run.n_decoded
        predicted_s = (run.t_last_token - t_prompt_done) if n_gen > 1 else 0.0
        if n_gen:
            stats.on_prediction_done(n_gen, max(predicted_s, 0.0))
        t_created = run.task.t_created
        stats.observe("request_done", now - t_created)
        stats.observe("queue_wait", run.queue_wait)
        return Timings(
            cache_n=run.n_cached,
            prompt_n=len(run.prompt_tokens) - run.n_cached,
            prompt_ms=(t_prompt_done - run.t_start) * 1e3,
            predicted_n=n_gen,
            predicted_ms=max(predicted_s, 0.0) * 1e3 if n_gen > 1 else 0.0,
            queue_ms=run.queue_wait * 1e3,
            ttft_ms=(t_prompt_done - t_created) * 1e3,
            t_created_ns=(wall := time.time_ns()) - int((now - t_created) * 1e9),
            t_start_ns=wall - int((now - run.t_start) * 1e9),
            t_prompt_done_ns=wall - int((now - t_prompt_done) * 1e9),
            t_end_ns=wall,
        )

    def finish(self, slot: Slot) -> None:
        """The run in `slot` ended: its final result, and the slot is free."""
        run = slot.run
        run.text.flush()
        if run.params.stream:
            self.send_partial(run, final=True)  # what was held back (possible stop string, bytes)
        timings = self.finish_timings(run)
        settings = run.params.settings()
        settings["n_ctx"] = slot.n_ctx
        settings["model"] = self.sched.model_name
        result = CompletionResult(
            content=run.text.text,
            tokens=list(run.generated),
            id_slot=slot.id,
            prompt_tokens=run.prompt_tokens,
            prompt_text=run.task.prompt_text,
            tokens_predicted=run.n_decoded,
            tokens_evaluated=len(run.prompt_tokens),
            tokens_cached=run.n_cached,
            truncated=run.truncated,
            stopped_eos=run.stopped_eos,
            stopped_limit=run.stopped_limit,
            stopped_word=run.stopped_word,
            stopping_word=run.text.stopping_word,
            probs=list(run.probs),
            timings=timings,
            settings=settings,
        )
        self.sched.outbox.put(run.task.sink, ("final", result))
        slot.release()

    def stop_full(self, slot: Slot) -> None:
        """The slot's context is full and cannot shift: it ends with what it has."""
        run = slot.run
        run.stopped_limit = True
        run.truncated = run.truncated or not self.sched.context_shift  # the context ran out (llama.cpp)
        self.finish(slot)

    # -- errors ----------------------------------------------------------------------
    def fail_task(self, task: Task, exc: BaseException) -> None:
        """Answer one task with an error (a 500 unless it is an APIError) and free what it holds."""
        exc = as_api_error(task, exc)
        slot = task.slot
        if slot is not None and slot.task is task:
            try:
                self.sched.ctx.seq_rm(slot.id, 0, -1)  # its KV may be half written
            finally:
                slot.cache_tokens = []
                slot.release()
        task.discard()
        task.done = True
        self.sched.outbox.put(task.sink, ("error", exc))

    def fail_all(self, exc: APIError) -> None:
        """A step failed as a whole (the batch, not one slot): fail the running tasks and drop
        their KV, whose state is unknown; queued tasks stay queued."""
        for slot in self.sched.slots:
            if slot.task is not None:
                try:
                    self.fail_task(slot.task, exc)
                except Exception:  # noqa: BLE001 - never stop failing the others
                    log.exception("slot %d: could not be reset", slot.id)
                    slot.release()

    def decode_failed(self, slots: list[Slot], ret: int, msg: str = "") -> None:
        if not msg:
            log.error("llama_decode failed (%d) for a batch of %d tokens", ret, self.sched.batch.n)
            msg = "llama_decode failed: no KV cache space left" if ret == 1 else f"llama_decode failed ({ret})"
        for slot in {s.id: s for s in slots}.values():
            if slot.task is not None:
                self.sched.outbox.put(slot.task.sink, ("error", APIError(msg, "server_error")))
            self.sched.ctx.seq_rm(slot.id, 0, -1)
            slot.cache_tokens = []
            slot.release()

    # -- embeddings and rerank ---------------------------------------------------------
    def pooled_results(self, slots: list[Slot]) -> None:
        """The pooled outputs of one embedding/rerank decode (sequences in batch order)."""
        ctx, model = self.sched.ctx, self.sched.model
        offset = 0
        for slot in slots:
            n = len(slot.run.prompt_tokens)
            if ctx.pooling_type == lc.LLAMA_POOLING_TYPE_NONE:  # llama.cpp: one raw vector per token
                rows = [ctx.embedding_ith(offset + k) for k in range(n)]
                zero = np.zeros(model.n_embd)
                self.deliver_pooled(slot, EmbeddingResult(
                    [[float(x) for x in (r if r is not None else zero)] for r in rows], n, slot.id))
            elif slot.run.kind == "rerank":
                self.deliver_rerank(slot, ctx.embedding_seq(slot.id))
            else:
                vec = ctx.embedding_seq(slot.id)
                if vec is None:  # never with pooling: average the token embeddings
                    rows = [ctx.embedding_ith(offset + k) for k in range(n)]
                    vec = np.mean([r for r in rows if r is not None], axis=0)
                self.deliver_embedding(slot, vec)
            offset += n

    def deliver_embedding(self, slot: Slot, vec: np.ndarray) -> None:
        norm = float(np.linalg.norm(vec))
        if norm > 0:
            vec = vec / norm
        self.deliver_pooled(slot, EmbeddingResult([float(x) for x in vec], len(slot.run.prompt_tokens), slot.id))

    def deliver_rerank(self, slot: Slot, scores: np.ndarray | None) -> None:
        """The reranker's first output is the score (llama.cpp's send_rerank; -1e6 when missing)."""
        if scores is None or len(scores) == 0:
            log.error("slot %d: no rerank score for task %d", slot.id, slot.run.task.id)
            score = -1e6
        else:
            score = float(scores[0])
        self.deliver_pooled(slot, RerankResult(score, len(slot.run.prompt_tokens), slot.id))

    def deliver_pooled(self, slot: Slot, result: EmbeddingResult | RerankResult) -> None:
        run, stats = slot.run, self.sched.stats
        now = time.perf_counter()
        stats.on_prompt_done(len(run.prompt_tokens), now - run.t_start, 0)
        stats.observe("request_done", now - run.task.t_created)
        self.sched.outbox.put(run.task.sink, ("final", result))
        self.sched.ctx.seq_rm(slot.id, 0, -1)
        slot.cache_tokens = []
        slot.release()
