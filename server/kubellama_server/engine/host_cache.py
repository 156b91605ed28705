"""--cache-ram on the scheduler thread: a slot's cache into host memory and back (`prompt_cache.py` decides).

`prepare_slot` runs for each admitted task before its launch: it looks up the entry sharing the
longest prefix with the prompt, saves the slot's cache when the task would keep less than half of
it, then loads the entry into the slot when it reuses more than the slot's own prefix or a copy from
another slot would (the copy is then skipped). `stash` saves a slot whose cache is about to be
dropped anyway (--kv-unified making room in the shared pool, which a load may need too).
"""

from __future__ import annotations

import logging
import time

from .planner import common_prefix
from .prompt_cache import Entry, MIB, PromptCache, as_tokens, should_load, should_save

log = logging.getLogger("kubellama.scheduler")


def stash(sched, slot, protect: Entry | None = None) -> bool:
    """Save `slot`'s cache as an entry (unless one holds it already or it cannot fit); whether it was stored."""
    cache: PromptCache | None = sched.prompt_cache
    if cache is None or not slot.cache_tokens:
        return False
    tokens = as_tokens(slot.cache_tokens)
    if cache.contains(tokens, slot.cache_lora):
        return False
    t0 = time.perf_counter()
    size = sched.ctx.state_seq_size(slot.id)
    if not cache.fits(size + tokens.nbytes, protect):  # measured before anything is copied
        return _not_kept(slot, len(tokens), size + tokens.nbytes, cache)
    try:
        state = sched.ctx.state_seq_get(slot.id, size)
    except MemoryError:
        gone = cache.shrink()
        log.warning("slot %d: no host memory for a prompt of %.1f MiB: --cache-ram lowered to %.1f MiB, %d prompts dropped",
                    slot.id, size / MIB, cache.limit / MIB, len(gone))
        return False
    if state is None:
        log.warning("slot %d: llama.cpp could not copy the prompt cache to host memory", slot.id)
        return False
    entry = Entry(tokens, slot.cache_lora, state)
    gone = cache.add(entry, protect)
    if gone is None:
        return _not_kept(slot, entry.n_tokens, entry.size, cache)
    for e in gone:
        log.info("prompt cache: removed the oldest entry, %d tokens (%.1f MiB)", e.n_tokens, e.size / MIB)
    log.info("slot %d: prompt of %d tokens saved to RAM, %.1f MiB in %.1f ms (cache: %d prompts, %.1f of %s MiB)",
             slot.id, entry.n_tokens, entry.size / MIB, (time.perf_counter() - t0) * 1e3, cache.n_entries,
             cache.n_bytes / MIB, _limit(cache))
    return True


def prepare_slot(sched, task, slot, n_copy: int) -> bool:
    """Before `task` starts in `slot` (`n_copy`: tokens the admission copies in from a donor):
    save the slot's cache if the task loses most of it, load the best entry if it beats the slot
    and the copy. Returns True when the slot was loaded (the copy is then not made)."""
    cache: PromptCache | None = sched.prompt_cache
    if cache is None:
        return False
    reuse = task.kind == "completion" and task.params.cache_prompt
    tokens = task.launch_tokens if task.launch_tokens is not None else task.tokens
    own = common_prefix(slot.cache_tokens, tokens) if reuse and slot.cache_lora == task.lora else 0
    hit, n_hit = (None, 0)
    if reuse and cache.entries:
        hit, n_hit = cache.best(as_tokens(tokens), task.lora)
    load = hit is not None and should_load(n_hit, own, n_copy)
    keep = 0 if (load or n_copy) else own
    if should_save(len(slot.cache_tokens), keep):
        stash(sched, slot, protect=hit if load else None)
    if not load:
        return False
    return _load(sched, slot, hit, n_hit)


def _load(sched, slot, entry: Entry, n_hit: int) -> bool:
    t0 = time.perf_counter()
    ctx = sched.ctx
    ctx.seq_rm(slot.id, 0, -1)
    slot.cache_tokens = []
    if sched.kv_unified:  # the shared pool needs room for the whole entry
        sched.launcher.make_pool_room(slot, entry.n_tokens, protect=entry)
    if not ctx.state_seq_set(slot.id, entry.state):
        ctx.seq_rm(slot.id, 0, -1)
        log.warning("slot %d: llama.cpp refused a prompt of %d tokens from RAM (no room in the KV cache?)", slot.id, entry.n_tokens)
        return False
    slot.cache_tokens, slot.cache_lora = entry.tokens.tolist(), entry.lora
    sched.prompt_cache.touch(entry, n_hit)
    log.info("slot %d: prompt of %d tokens loaded from RAM (%d shared with the new prompt) in %.1f ms",
             slot.id, entry.n_tokens, n_hit, (time.perf_counter() - t0) * 1e3)
    return True


def _not_kept(slot, n_tokens: int, size: int, cache: PromptCache) -> bool:
    log.info("slot %d: prompt of %d tokens (%.1f MiB) not kept in RAM: larger than --cache-ram %s",
             slot.id, n_tokens, size / MIB, _limit(cache))
    return False


def _limit(cache: PromptCache) -> str:
    return "unlimited" if cache.limit is None else f"{cache.limit / MIB:.0f}"
