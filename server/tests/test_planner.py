"""The step planner and the scheduler loop, driven with a fake context and model (no model
file, no llama.cpp decode): batch planning under n_batch, queue order and admission, LoRA
turn-taking, context shifts and self-extend, cancellation, one decode per step."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from kubellama_server.engine.params import SlotParams
from kubellama_server.engine.planner import GENERATE, POOLED, Admission, PlanConfig, admit, plan_step
from kubellama_server.engine.run import Run
from kubellama_server.engine.scheduler import Scheduler
from kubellama_server.engine.self_extend import SelfExtend
from kubellama_server.engine.slot import Slot
from kubellama_server.engine.task import Task, TaskSink

EOG = 2
TOKEN = 50  # what the fake sampler always picks


class FakeModel:
    n_vocab, n_embd, add_bos, bos = 100, 4, False, 1

    def tokenize(self, text, *, add_special, parse_special=True):
        return [10 + ord(c) % 80 for c in text]

    def token_bytes(self, token, special=False):
        return b"x"

    def detokenize(self, tokens, special=False):
        return "x" * len(tokens)

    def is_eog(self, token):
        return token == EOG

    def valid_token(self, token):
        return 0 <= token < self.n_vocab


class FakeSampler:
    dead = False

    def __init__(self, token=TOKEN):
        self.token = token
        self.freed = False

    def sample(self, ctx_ptr, i):
        return self.token

    def free(self):
        self.freed = True


class FakeCtx:
    """Records every decode: [(seq_id, token, pos, logits), ...] and the LoRA scales in use."""

    ptr = None
    can_shift = True
    embeddings = False
    pooling_type = 0

    def __init__(self, n_batch=8, n_ctx_seq=64, n_slots=2, lora_paths=()):
        self.n_batch = self.n_ubatch = n_batch
        self.n_ctx_seq, self.n_ctx = n_ctx_seq, n_ctx_seq * n_slots
        self.lora_paths = list(lora_paths)
        self.lora_scales = tuple(1.0 for _ in lora_paths)
        self.decodes: list[tuple[tuple, list[tuple[int, int, int, bool]]]] = []
        self.kv_ops: list[tuple] = []

    def decode(self, batch):
        raw = batch.raw
        self.decodes.append((self.lora_scales, [(raw.seq_id[i][0], raw.token[i], raw.pos[i], bool(raw.logits[i]))
                                                for i in range(batch.n)]))
        return 0

    def set_lora_scales(self, scales):
        self.lora_scales = tuple(scales)

    def seq_rm(self, seq, p0, p1=-1):
        self.kv_ops.append(("rm", seq, p0, p1))
        return True

    def seq_add(self, seq, p0, p1, delta):
        self.kv_ops.append(("add", seq, p0, p1, delta))

    def seq_div(self, seq, p0, p1, d):
        self.kv_ops.append(("div", seq, p0, p1, d))

    def seq_cp(self, src, dst, p0=-1, p1=-1):
        self.kv_ops.append(("cp", src, dst))

    def set_embeddings(self, on):
        self.embedding_mode = on

    def embedding_seq(self, seq):
        return np.array([3.0, 4.0, 0.0, 0.0])


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def make_sched(n_slots=2, **ctx_kw) -> Scheduler:
    return Scheduler(FakeModel(), FakeCtx(n_slots=n_slots, **ctx_kw), n_slots=n_slots)


def prepared(loop, tokens, lora=None, kind="completion", **params) -> Task:
    """A task as `Engine.prepare` leaves it (tokens, sampler), without a model."""
    params.setdefault("n_predict", 3)
    task = Task(kind=kind, prompt=list(tokens), params=SlotParams(**params), sink=TaskSink(loop))
    task.tokens = task.launch_tokens = list(tokens)
    task.sampler = FakeSampler() if kind == "completion" else None
    task.lora = lora
    return task


def events(loop, task) -> list:
    loop.run_until_complete(asyncio.sleep(0))  # deliver what the outbox sent
    out = []
    while not task.sink.queue.empty():
        out.append(task.sink.queue.get_nowait())
    return out


def run_until_idle(sched, limit=200) -> int:
    """Turn the loop until it has no work; returns the number of turns."""
    for n in range(1, limit):
        sched.turn(block=False)
        if not sched.has_work():
            return n
    raise AssertionError("the loop never went idle")


# -- the loop with a fake context ----------------------------------------------------

def test_one_decode_per_step_and_prompt_chunks_under_n_batch(loop):
    sched = make_sched(n_slots=3, n_batch=8)
    tasks = [prepared(loop, range(10, 10 + n)) for n in (5, 7, 20)]
    for t in tasks:
        sched.submit(t)
    turns = run_until_idle(sched)
    decodes = sched.ctx.decodes
    assert len(decodes) == turns  # exactly one decode per turn (the last sample ends the last run)
    assert all(0 < len(batch) <= 8 for _, batch in decodes)
    # oldest task first: the first batch is task 0's whole prompt, then the start of task 1's
    assert [s for s, *_ in decodes[0][1]] == [0] * 5 + [1] * 3
    # every prompt token went in once, in order, at consecutive positions
    for slot_id, n in ((0, 5), (1, 7), (2, 20)):
        prompt = [(tok, pos) for _, batch in decodes for s, tok, pos, _ in batch if s == slot_id][:n]
        assert prompt == [(10 + k, k) for k in range(n)]
    # outputs only for the last prompt token and generated tokens; n_predict=3 each
    for t in tasks:
        (final,) = [p for kind, p in events(loop, t) if kind == "final"]
        assert final.tokens == [TOKEN] * 3 and final.tokens_evaluated == len(t.tokens)
    assert sched.max_batch_slots >= 2


def test_generating_slots_go_first_and_prompts_fill_the_rest(loop):
    sched = make_sched(n_slots=2, n_batch=4)
    first = prepared(loop, [10, 11], n_predict=10)
    sched.submit(first)
    sched.turn(block=False)  # launches and decodes `first`'s prompt: it has a pending token now
    second = prepared(loop, range(20, 30))
    sched.submit(second)
    sched.turn(block=False)
    _, batch = sched.ctx.decodes[-1]
    assert batch[0][:2] == (0, TOKEN) and [s for s, *_ in batch] == [0, 1, 1, 1]


def test_lora_scales_take_turns(loop):
    """Two requests with different adapter scales: each decode uses one set, and the set
    that waited longest goes next, so both advance (no starvation)."""
    sched = make_sched(n_slots=3, n_batch=16, lora_paths=["a.gguf"])
    a1, a2 = prepared(loop, [10, 11], lora=(1.0,), n_predict=6), prepared(loop, [12, 13], lora=(1.0,), n_predict=6)
    b = prepared(loop, [14, 15], lora=(0.5,), n_predict=6)
    for t in (a1, a2, b):
        sched.submit(t)
    run_until_idle(sched)
    scales = [lora for lora, _ in sched.ctx.decodes]
    assert all(x != y for x, y in zip(scales, scales[1:]))  # strictly alternating
    for lora, batch in sched.ctx.decodes:
        seqs = {s for s, *_ in batch}
        assert seqs == ({0, 1} if lora == (1.0,) else {2})
    for t in (a1, a2, b):
        assert [p for k, p in events(loop, t) if k == "final"][0].tokens_predicted == 6


def test_cancelling_frees_the_slot_and_the_queued_task_never_runs(loop):
    sched = make_sched(n_slots=1, n_batch=8)
    running, queued, after = (prepared(loop, [10 + k, 20], n_predict=-1, ignore_eos=True) for k in range(3))
    for t in (running, queued, after):
        sched.submit(t)
    sched.turn(block=False)
    assert sched.slots[0].task is running and len(sched.waiting) == 2
    queued_sampler = queued.sampler
    sched.cancel(queued)
    sched.cancel(running)
    sched.turn(block=False)  # both cancels, then `after` launches in the freed slot
    assert sched.slots[0].task is after and not sched.waiting
    assert queued_sampler.freed and sched.slots[0].last_run.task is after
    seqs = [tok for _, batch in sched.ctx.decodes for _, tok, *_ in batch]
    assert 11 not in seqs  # the cancelled queued task's prompt never went into a decode
    assert [k for k, _ in events(loop, queued)] == [] and queued.done
    assert sched.stats.snapshot().n_cancelled_total == 2
    sched.cancel(after)
    run_until_idle(sched)
    assert not sched.slots[0].is_processing


def test_a_failing_sample_fails_that_task_only(loop):
    sched = make_sched(n_slots=2)
    good, bad = prepared(loop, [10, 11], n_predict=4), prepared(loop, [12, 13], n_predict=4)
    bad.sampler.sample = lambda ptr, i: 1 / 0
    sched.submit(good)
    sched.submit(bad)
    run_until_idle(sched)
    assert [k for k, _ in events(loop, bad)] == ["error"]
    assert [k for k, _ in events(loop, good)] == ["final"]
    assert ("rm", 1, 0, -1) in sched.ctx.kv_ops  # its half-written KV is dropped


def test_prompt_cache_reuse_and_system_prompt_copy(loop):
    sched = make_sched(n_slots=2, n_batch=16)
    t1 = prepared(loop, [5, 6, 7, 8], cache_prompt=True, n_predict=1)
    sched.submit(t1)
    run_until_idle(sched)
    t2 = prepared(loop, [5, 6, 7, 9], cache_prompt=True, n_predict=1)
    sched.submit(t2)
    run_until_idle(sched)
    assert t2.n_cached == 3 and [p for k, p in events(loop, t2) if k == "final"][0].id_slot == 0
    # a system prompt (n_system) that slot 0 holds is copied into slot 1, not evaluated again
    t3 = prepared(loop, [5, 6, 7, 30, 31], n_predict=1, id_slot=1)
    t3.n_system = 3
    sched.submit(t3)
    sched.turn(block=False)
    assert ("cp", 0, 1) in sched.ctx.kv_ops and t3.n_cached == 3
    assert [tok for s, tok, *_ in sched.ctx.decodes[-1][1] if s == 1] == [30, 31]


def test_embeddings_share_a_decode_and_take_turns_with_generation(loop):
    sched = make_sched(n_slots=4, n_batch=16)
    sched.ctx.embeddings, sched.ctx.pooling_type = True, 1  # mean pooling
    gen = prepared(loop, [10, 11], n_predict=4)
    embeds = [prepared(loop, [20 + k, 30, 40], kind="embedding") for k in range(3)]
    sched.submit(gen)
    sched.turn(block=False)  # the completion starts first
    for t in embeds:
        sched.submit(t)
    run_until_idle(sched)
    kinds = ["pooled" if all(logits for *_, logits in batch) and len(batch) > 1 else "gen"
             for _, batch in sched.ctx.decodes]
    assert kinds[:3] == ["gen", "pooled", "gen"]  # turns, not one kind first
    (pooled,) = [batch for _, batch in sched.ctx.decodes if len(batch) == 9]  # three equal inputs, one decode
    assert sorted({s for s, *_ in pooled}) == [1, 2, 3]
    for t in embeds:
        (final,) = [p for k, p in events(loop, t) if k == "final"]
        assert final.embedding == pytest.approx([0.6, 0.8, 0.0, 0.0])  # L2-normalised
    assert [p for k, p in events(loop, gen) if k == "final"][0].tokens_predicted == 4


# -- the planner alone ----------------------------------------------------------------

def slot_with(slot_id, prompt, *, done=None, pending=-1, cache=None, n_ctx=64, lora=(), task_id=0, **params):
    task = Task(kind="completion", prompt="", params=SlotParams(**params), sink=None, id=task_id)
    slot = Slot(id=slot_id, n_ctx=n_ctx, cache_lora=lora)
    done = len(prompt) if done is None else done
    slot.cache_tokens = list(cache if cache is not None else prompt[:done])
    run = Run(task, task.params, list(prompt), 0)
    run.n_prompt_done, run.pending_token = done, pending
    slot.start(run)
    return slot


def test_plan_fills_the_batch_oldest_prompt_first():
    cfg = PlanConfig(n_batch=8, n_ubatch=8)
    young = slot_with(0, list(range(10)), done=0, task_id=7)
    old = slot_with(1, list(range(6)), done=0, task_id=3)
    gen = slot_with(2, [1, 2], pending=40, task_id=9)
    plan = plan_step([young, old, gen], cfg)
    assert plan.kind == GENERATE and plan.n_tokens == 8
    assert [(c.slot.id, c.start, c.n, c.pos, c.logits) for c in plan.chunks] == [
        (2, -1, 1, 2, True), (1, 0, 6, 0, True), (0, 0, 1, 0, False)]
    # without continuous batching, prompts wait while tokens are generated
    plan = plan_step([young, old, gen], PlanConfig(n_batch=8, n_ubatch=8, cont_batching=False))
    assert [c.slot.id for c in plan.chunks] == [2]


def test_plan_shifts_or_stops_a_full_context():
    cfg = PlanConfig(n_batch=8, n_ubatch=8, n_predict_limit=-1)
    full = slot_with(0, [1] * 10, pending=5, cache=[1] * 16, n_ctx=16, n_predict=100, n_keep=2)
    plan = plan_step([full], cfg)
    assert plan.shifts == [(full, 2, 7)] and plan.chunks[0].pos == 9
    # a model that adds a BOS: llama.cpp keeps it beyond n_keep
    bos = PlanConfig(n_batch=8, n_ubatch=8, n_predict_limit=-1, keep_bos=1)
    assert plan_step([full], bos).shifts == [(full, 3, 6)]
    unlimited = slot_with(0, [1] * 10, pending=5, cache=[1] * 16, n_ctx=16, n_predict=-1)
    plan = plan_step([unlimited], cfg)
    assert plan.stops == [unlimited] and not plan.chunks


def test_plan_self_extend_stays_in_the_window_and_compresses_it():
    se = SelfExtend(2, 8)
    cfg = PlanConfig(n_batch=64, n_ubatch=64, self_extend=se)
    slot = slot_with(0, list(range(20)), done=5)
    plan = plan_step([slot], cfg)
    (c,) = plan.chunks
    assert (c.start, c.n, c.pos) == (5, 3, 5)  # up to the end of the first window
    assert plan.compress == [(slot, 0, *se.compression(0))]
    slot2 = slot_with(0, list(range(20)), done=8)  # one compressed window: positions 4 ..
    (c,) = plan_step([slot2], cfg).chunks
    assert (c.start, c.n, c.pos) == (8, 8, se.position(8, 8))


def test_lora_turns_go_to_the_set_that_waited_longest():
    cfg = PlanConfig(n_batch=8, n_ubatch=8, lora=True)
    a = slot_with(0, [1], pending=3, lora=(1.0,))
    b = slot_with(1, [1], pending=3, lora=(0.0,))
    a.run.t_served, b.run.t_served = 2.0, 1.0
    plan = plan_step([a, b], cfg)
    assert plan.lora == (0.0,) and [c.slot for c in plan.chunks] == [b]


def test_pooled_inputs_share_one_ubatch_and_take_turns_with_generation():
    cfg = PlanConfig(n_batch=8, n_ubatch=8)
    slots = [slot_with(i, [1] * n, done=0) for i, n in enumerate((3, 3, 4, 3))]
    for s in slots:
        s.run.kind = "embedding"
    gen = slot_with(4, [1], pending=3)
    plan = plan_step(slots + [gen], cfg, last_kind=GENERATE)
    assert plan.kind == POOLED and [c.slot.id for c in plan.chunks] == [0, 1]  # equal lengths, <= n_ubatch
    assert plan_step(slots + [gen], cfg, last_kind=POOLED).kind == GENERATE
    assert plan_step(slots, cfg, last_kind=POOLED).kind == POOLED  # alone: every step


def test_admit_in_queue_order_with_prefix_reuse_and_requested_slots():
    a, b, c = Slot(0, 64), Slot(1, 64), Slot(2, 64)
    b.cache_tokens = [1, 2, 3]
    a.t_last_used, c.t_last_used = 5.0, 1.0

    def task(tokens, **params):
        t = Task(kind="completion", prompt="", params=SlotParams(**params), sink=None)
        t.tokens, t.lora = tokens, ()
        return t

    reuse, lru, pinned = task([1, 2, 3, 4], cache_prompt=True), task([9]), task([9], id_slot=1)
    def pairs(started):
        return [(s.task, s.slot) for s in started]

    assert pairs(admit([reuse, lru], [a, b, c])) == [(reuse, b), (lru, c)]
    assert pairs(admit([pinned, lru], [a, b, c])) == [(pinned, b), (lru, c)]
    b.start(Run(lru, lru.params, [9], 0))  # the pinned slot is busy: the pinned task waits, the next goes
    # the busy slot's 3 tokens are not worth a copy (slot_choice.COPY_COST): the LRU idle slot
    assert admit([pinned, reuse], [a, b, c]) == [Admission(reuse, c)]


def test_a_slot_taken_in_the_same_round_lends_nothing():
    a, b = Slot(0, 64), Slot(1, 64)
    shared = list(range(1, 41))
    a.cache_tokens = shared + [100] * 20  # another conversation sharing 40 tokens of system prompt
    a.t_last_used = 5.0

    def task(tokens):
        t = Task(kind="completion", prompt="", params=SlotParams(cache_prompt=True), sink=None)
        t.tokens, t.lora = tokens, ()
        return t

    own, new = task(a.cache_tokens + [7, 8]), task(shared + [9])
    assert admit([new], [a, b]) == [Admission(new, b, a, 40)]  # not into a: a keeps its conversation
    # no copies (self-extend): still the empty slot, a keeps the other conversation
    assert admit([new], [a, b], can_copy=False) == [Admission(new, b)]
    a.start(Run(new, new.params, [1], 0))  # a busy slot lends too (its cache is decoded between steps)
    assert admit([new], [a, b]) == [Admission(new, b, a, 40)]
    a.run = None
    # `own` takes a (its whole cache) first; its cache then changes, so `new` gets no copy from it
    assert admit([own, new], [a, b]) == [Admission(own, a), Admission(new, b)]
