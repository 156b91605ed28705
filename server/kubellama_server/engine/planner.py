"""The step planner: what the next `llama_decode` holds (pure: no llama.cpp call).

As vLLM's v1 core splits `schedule()`, the model runner and `update_from_output`, the
scheduler loop calls `plan_step` for a `StepPlan`, the executor (`executor.py`) fills one
batch from it and decodes it once, and `output.py` turns the outputs into tokens and
results. Everything here reads slots and runs and decides:

- queue order and admission: which queued task goes into which idle slot (`admit`);
- which generating slots decode their pending token, and which prompt chunks fill the rest
  of the batch (`n_batch`), oldest task first;
- LoRA turn-taking: one set of adapter scales per decode, the set that waited longest;
- context shifts of full slots, and self-extend's window compressions after the decode;
- embeddings and rerank inputs: equal-length inputs pooled in one micro-batch, taking turns
  with generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

from .self_extend import SelfExtend
from .slot_choice import IdleSlot, choose

# task kinds decoded by the pooled step: one pooled output per input, no generation
POOLED_KINDS = ("embedding", "rerank")

GENERATE, POOLED, POOLED_MEDIA = "generate", "pooled", "pooled_media"


@dataclass(frozen=True)
class PlanConfig:
    """The server settings the plans depend on."""

    n_batch: int
    n_ubatch: int
    cont_batching: bool = True
    self_extend: SelfExtend | None = None
    lora: bool = False  # LoRA adapters are loaded: one set of scales per decode
    context_shift: bool = True  # --context-shift
    can_shift: bool = True  # the KV cache's positions can be shifted
    keep_bos: int = 0  # 1 when the model adds a BOS token: a context shift keeps it
    n_predict_limit: int = -1  # the server's -n


class Chunk:
    """One slot's part of the batch: its pending token (`start` -1) or prompt tokens
    `start .. start + n` at positions `pos ..`, after evaluating `image` (libmtmd) when set."""

    __slots__ = ("slot", "run", "start", "n", "pos", "image", "logits")

    def __init__(self, slot, run, start: int, n: int, pos: int, image=None, logits: bool = True):
        self.slot, self.run, self.start, self.n, self.pos, self.image, self.logits = slot, run, start, n, pos, image, logits

    def __repr__(self) -> str:
        return f"Chunk(slot={self.slot.id}, start={self.start}, n={self.n}, pos={self.pos}, image={self.image is not None})"


class StepPlan:
    """One step: `chunks` go into one decode with adapter scales `lora`; before it, `shifts`
    (slot, n_keep, n_discard) make room and `stops` end slots whose context is full; after a
    successful decode, `compress` (slot, window, seq_add args, seq_div args) apply self-extend."""

    __slots__ = ("kind", "lora", "chunks", "shifts", "stops", "compress", "n_tokens")

    def __init__(self, kind: str = GENERATE, lora: tuple[float, ...] | None = None):
        self.kind = kind
        self.lora = lora
        self.chunks: list[Chunk] = []
        self.shifts: list[tuple] = []
        self.stops: list = []
        self.compress: list[tuple] = []
        self.n_tokens = 0

    def __bool__(self) -> bool:
        return bool(self.chunks or self.stops)


def plan_step(slots: Sequence, config: PlanConfig, last_kind: str = "") -> StepPlan:
    """The next step for `slots` (their runs are read, never changed). Pooled inputs and
    generation take turns when both have work (`last_kind`: the kind of the previous plan)."""
    pooled = [s for s in slots if s.run is not None and s.run.kind in POOLED_KINDS]
    if pooled:
        generating = any(s.run is not None and s.run.kind == "completion" for s in slots)
        if not generating or last_kind == GENERATE:
            return plan_pooled(pooled, config)
    return plan_generation(slots, config)


def plan_pooled(pooled: Sequence, config: PlanConfig) -> StepPlan:
    """Embedding/rerank inputs. One micro-batch of equal-length sequences: with one KV stream
    per slot llama.cpp splits a batch evenly across sequences, and a sequence pooled over two
    micro-batches gets the mean of its last part only; other inputs wait for a later step.
    An input with images is decoded alone, piece by piece (`POOLED_MEDIA`)."""
    for slot in pooled:
        if slot.run.media is not None:
            plan = StepPlan(POOLED_MEDIA)
            plan.chunks.append(Chunk(slot, slot.run, 0, len(slot.run.prompt_tokens), 0))
            plan.n_tokens = len(slot.run.prompt_tokens)
            return plan
    plan = StepPlan(POOLED)
    length = len(pooled[0].run.prompt_tokens)
    limit = min(config.n_batch, config.n_ubatch)
    for slot in pooled:
        if len(slot.run.prompt_tokens) != length or plan.n_tokens + length > limit:
            continue
        plan.chunks.append(Chunk(slot, slot.run, 0, length, 0))
        plan.n_tokens += length
    return plan


def batch_lora(slots: Sequence, cont_batching: bool = True) -> tuple[float, ...] | None:
    """The LoRA scales of this step's decode: those of the slot that has waited longest.

    llama.cpp applies one set of adapter scales per decode, so slots whose requests use
    other scales wait for a later step (as in llama.cpp's server); with a single set,
    every slot is in every decode.
    """
    generating = [s for s in slots if s.run is not None and s.run.kind == "completion" and s.run.pending_token >= 0]
    prompting = [s for s in slots if s.run is not None and s.run.kind == "completion" and s.run.in_prompt]
    # without continuous batching a prompt joins only a decode that has no generated tokens
    waiting = generating + prompting if cont_batching or not generating else generating
    if not waiting:
        return None
    return min(waiting, key=lambda s: s.run.t_served).cache_lora


def context_room(slot, config: PlanConfig) -> tuple[int, int] | None:
    """A full slot's context shift (n_keep, n_discard: keep n_keep, drop half the rest), or
    None when it must stop instead: no shifting, self-extend, an image in its cache, or an
    unlimited request (it would never end)."""
    run = slot.run
    params = run.params
    unlimited = params.n_predict == -1 and config.n_predict_limit == -1
    if (unlimited or not config.context_shift or not config.can_shift or config.self_extend
            or any(t < 0 for t in slot.cache_tokens)):
        return None
    # llama.cpp keeps n_keep tokens plus the BOS (-1: the whole prompt, plus one)
    n_keep = (len(run.prompt_tokens) if params.n_keep < 0 else params.n_keep) + config.keep_bos
    n_keep = min(n_keep, slot.n_ctx - 4)
    return n_keep, max(1, (slot.n_past - n_keep) // 2)


def plan_generation(slots: Sequence, config: PlanConfig) -> StepPlan:
    """One pending token of every generating slot, then prompt chunks up to `n_batch` tokens
    (continuous batching: alongside generation), oldest task first; only slots whose cache
    has this decode's LoRA scales."""
    se = config.self_extend
    lora = batch_lora(slots, config.cont_batching) if config.lora else None
    plan = StepPlan(GENERATE, lora)
    chunks = plan.chunks
    n = 0
    for slot in slots:  # 1. one pending generated token from every generating slot
        run = slot.run
        if run is None or run.kind != "completion" or run.pending_token < 0:
            continue
        if lora is not None and slot.cache_lora != lora:  # other LoRA scales: a later step
            continue
        n_past = len(slot.cache_tokens)
        if n_past + 1 > slot.n_ctx:
            room = context_room(slot, config)
            if room is None:
                plan.stops.append(slot)
                continue
            plan.shifts.append((slot, room[0], room[1]))
            n_past -= room[1]
        chunks.append(Chunk(slot, run, -1, 1, se.position(n_past, n_past) if se else n_past))
        n += 1
        if se and (n_past + 1) % se.w == 0:
            _compress(plan, slot, se, n_past + 1)
    if config.cont_batching or n == 0:  # 2. prompt chunks
        prompting = sorted((s for s in slots if s.run is not None and s.run.kind == "completion" and s.run.in_prompt),
                           key=lambda s: s.run.task.id)
        for slot in prompting:
            free = config.n_batch - n
            if free == 0:
                break
            if lora is not None and slot.cache_lora != lora:
                continue
            run = slot.run
            prompt = run.prompt_tokens
            start, n_past, image = run.n_prompt_done, len(slot.cache_tokens), None
            media = run.task.media
            if media is not None and start in media.images:  # an image first, evaluated whole
                image = media.images[start]
                start += image.n_tokens
                n_past += image.n_tokens
            take = min(len(prompt) - start, free)
            if media is not None:
                take = media.text_run(start, start + take)
            if se:
                take = min(take, se.room(n_past))
            if take <= 0 and image is None:  # another image next: a later step evaluates it
                continue
            chunks.append(Chunk(slot, run, start, max(take, 0), se.position(n_past, n_past) if se else n_past, image,
                                start + take == len(prompt)))
            n += max(take, 0)
            if se and take > 0 and (n_past + take) % se.w == 0:
                _compress(plan, slot, se, n_past + take)
    plan.n_tokens = n
    return plan


def _compress(plan: StepPlan, slot, se: SelfExtend, n_after: int) -> None:
    """Self-extend: the slot's open window is full after this decode; divide its positions."""
    window = se.windows(n_after) - 1
    add, div = se.compression(window)
    plan.compress.append((slot, window, add, div))


# -- queue order and admission ------------------------------------------------------

def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Admission(NamedTuple):
    """A queued task starting in `slot`; with `donor`, the first `n_copy` tokens of the
    donor's cache are copied into the slot first (cheaper than evaluating them again)."""

    task: Any
    slot: Any
    donor: Any = None
    n_copy: int = 0


def pick_slot(task, idle: Sequence, slots: Sequence, can_copy: bool = True,
              lenders: Sequence | None = None) -> Admission | None:
    """The requested slot (if idle); else, for a cached completion, the idle slot
    `slot_choice.choose` values most (reuse minus what it destroys, maybe seeded with a copy
    of the longest matching prefix one of `lenders` (default: every slot) holds); else the
    least recently used idle slot."""
    if task.params.id_slot >= 0:
        slot = slots[task.params.id_slot]
        return Admission(task, slot) if slot in idle else None
    if not idle:
        return None
    if not (task.kind == "completion" and task.params.cache_prompt):
        return Admission(task, min(idle, key=lambda s: s.t_last_used))

    known: dict[int, int] = {}  # slot id -> common prefix (idle slots are also lenders: computed once)

    def common(s) -> int:  # computed with other LoRA scales: nothing to reuse
        n = known.get(id(s))
        if n is None:
            n = known[id(s)] = common_prefix(s.cache_tokens, task.tokens) if s.cache_lora == task.lora else 0
        return n

    donor, lend = None, 0
    if can_copy and task.media is None:  # images are evaluated whole: never copied
        for s in slots if lenders is None else lenders:
            n = common(s)
            if n > lend:
                donor, lend = s, n
    i, copy = choose([IdleSlot(common(s), len(s.cache_tokens), s.t_last_used) for s in idle], lend)
    slot = idle[i]
    if copy and donor is not None and donor is not slot:
        return Admission(task, slot, donor, lend)
    return Admission(task, slot)


def admit(tasks: Sequence, slots: Sequence, can_copy: bool = True) -> list[Admission]:
    """The queued `tasks` (prepared, in queue order) that start now, each in the slot
    `pick_slot` gives it; a task whose slot is busy waits, later ones may go. A slot taken
    in this round lends nothing (its cache changes when its task starts)."""
    idle = [s for s in slots if s.run is None]
    out: list[Admission] = []
    for task in tasks:
        if not idle:
            break
        taken = {id(a.slot) for a in out}
        pick = pick_slot(task, idle, slots, can_copy, [s for s in slots if id(s) not in taken])
        if pick is not None:
            idle.remove(pick.slot)
            out.append(pick)
    return out
