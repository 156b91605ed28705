"""Launching queued tasks into slots: admission (`planner.admit`) and KV prefix reuse.

A launched task becomes a `Run` in its slot. The slot keeps the longest prefix its cache
shares with the prompt (same LoRA scales; whole images; self-extend's compressed windows
whole), gets the system prompt's KV copied from another slot when it lacks it, and with
--kv-unified idle slots' caches are dropped, least recently used first, to make room. With
--cache-ram a slot's cache goes to host memory before a task discards most of it, and a prompt
found there is loaded back into the slot (`host_cache.py`).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from . import host_cache
from .planner import POOLED_KINDS, admit, common_prefix
from .run import Run
from .slot import Slot
from .task import Task

log = logging.getLogger("kubellama.scheduler")


class Launcher:
    def __init__(self, sched: Any):
        self.sched = sched  # slots, waiting, ctx, preparer, output, stats, self_extend, kv_unified, lora_default

    def launch_waiting(self) -> None:
        """Drop cancelled tasks, prepare the ones submitted unprepared, start what fits."""
        sched = self.sched
        if not sched.waiting:
            return
        ready: deque[Task] = deque()
        try:
            while sched.waiting:
                task = sched.waiting.popleft()
                if task.cancelled:
                    task.discard()
                    continue
                if task.tokens is None:  # submitted without Engine.prepare: prepared here
                    try:
                        sched.preparer.prepare(task)
                    except Exception as exc:
                        sched.output.fail_task(task, exc)
                        continue
                if task.lora is None:  # no scales of its own: the server's, as of its launch
                    task.lora = sched.lora_default
                ready.append(task)
        finally:  # what was taken from the queue goes back in front, in order
            ready.extend(sched.waiting)
            sched.waiting = ready
        started = admit(ready, sched.slots, can_copy=not sched.self_extend)
        if not started:
            return
        for task, slot, donor, n_copy in started:
            try:
                loaded = host_cache.prepare_slot(sched, task, slot, n_copy if donor is not None else 0)
                if donor is not None and not loaded:
                    self.copy_prefix(donor, slot, task.tokens[:n_copy])
                self.launch(slot, task)
            except Exception as exc:  # this task only: the others stay queued or running
                if slot.run is None and task.slot is slot:  # picked, not started: the slot stays free
                    task.slot = None
                sched.output.fail_task(task, exc)
        gone = {id(a.task) for a in started}
        sched.waiting = deque(t for t in ready if id(t) not in gone)

    def launch(self, slot: Slot, task: Task) -> None:
        sched = self.sched
        ctx = sched.ctx
        tokens = task.launch_tokens if task.launch_tokens is not None else task.tokens
        task.slot = slot
        if task.kind in POOLED_KINDS:
            ctx.seq_rm(slot.id, 0, -1)
            slot.cache_tokens = []
            slot.start(Run(task, task.params, tokens, 0))
            return
        if slot.cache_lora != task.lora:  # its cache was computed with other LoRA scales
            ctx.seq_rm(slot.id, 0, -1)
            slot.cache_tokens, slot.cache_lora = [], task.lora
        # reuse the cached prefix (always keep >= 1 token to evaluate for logits)
        n_cached = common_prefix(slot.cache_tokens, tokens) if task.params.cache_prompt else 0
        if task.n_system:
            n_cached = max(n_cached, self.share_prefix(slot, tokens[:task.n_system]))
        n_cached = min(n_cached, len(tokens) - 1)
        if task.media is not None:  # an image is evaluated whole: never keep part of one
            n_cached = task.media.boundary(n_cached)
        p_cut = n_cached
        se = sched.self_extend
        if se:  # positions are compressed: cut at a window boundary or in the open window
            n_cached = se.keepable(n_cached, slot.n_past)
            p_cut = se.position(n_cached, slot.n_past)
        if not ctx.seq_rm(slot.id, p_cut, -1):
            ctx.seq_rm(slot.id, 0, -1)
            n_cached = 0
        slot.cache_tokens = tokens[:n_cached]
        task.n_cached = n_cached
        if sched.kv_unified:
            self.make_pool_room(slot, len(tokens) - n_cached)
        sampler, task.sampler = task.sampler, None
        run = slot.start(Run(task, task.params, tokens, n_cached, sampler, task.truncated))
        sched.output.send_progress(run)  # 0%: the request has started (return_progress)
        log.debug("slot %d: task %d, %d prompt tokens, %d cached", slot.id, task.id, len(tokens), n_cached)

    def share_prefix(self, slot: Slot, prefix: list[int]) -> int:
        """Give `slot` the KV of `prefix` (the system prompt) without evaluating it again.

        Returns len(prefix) when the slot holds it afterwards, else 0 (the slot
        evaluates it itself and later slots copy it from there).
        """
        sched = self.sched
        n = len(prefix)
        if slot.cache_tokens[:n] == prefix:
            return n
        if sched.self_extend:  # the other slot's positions may be compressed past the prefix
            return 0
        for other in sched.slots:
            if (other is not slot and other.cache_lora == slot.cache_lora and len(other.cache_tokens) >= n
                    and other.cache_tokens[:n] == prefix):
                sched.ctx.seq_cp(other.id, slot.id)  # a whole-sequence copy (one KV stream per slot)
                sched.ctx.seq_rm(slot.id, n, -1)
                slot.cache_tokens = list(prefix)
                log.debug("slot %d: system prompt copied from slot %d (%d tokens)", slot.id, other.id, n)
                return n
        return 0

    def copy_prefix(self, donor: Slot, slot: Slot, prefix: list[int]) -> None:
        """Seed idle `slot` with the KV of `prefix`, which `donor` holds (`planner.pick_slot`
        chose this over evaluating it again); nothing when the donor no longer holds it."""
        n = len(prefix)
        if donor.cache_tokens[:n] != prefix:
            return
        ctx = self.sched.ctx
        ctx.seq_rm(slot.id, 0, -1)
        ctx.seq_cp(donor.id, slot.id)  # a whole-sequence copy (one KV stream per slot), then trimmed
        ctx.seq_rm(slot.id, n, -1)
        slot.cache_tokens, slot.cache_lora = list(prefix), donor.cache_lora
        log.debug("slot %d: %d prompt tokens copied from slot %d", slot.id, n, donor.id)

    def make_pool_room(self, slot: Slot, need: int, protect: Any = None) -> None:
        """--kv-unified: drop idle slots' caches, least recently used first, until the shared
        pool has room for `need` more tokens (llama.cpp clears idle slots with a unified KV);
        with --cache-ram they go to host memory first (`protect`: an entry that must stay there)."""
        sched = self.sched

        def used() -> int:
            return sum(len(s.cache_tokens) for s in sched.slots)

        for other in sorted((s for s in sched.slots if s is not slot and s.run is None and s.cache_tokens),
                            key=lambda s: s.t_last_used):
            if used() + need <= sched.ctx.n_ctx:
                return
            self.drop_cache(other, protect)
            log.debug("slot %d: cache dropped to make room in the unified KV pool", other.id)

    def drop_cache(self, slot: Slot, protect: Any = None) -> None:
        """--kv-unified: an idle slot's cache leaves the shared pool (with --cache-ram it goes to host
        memory first; `protect`: an entry that must stay there)."""
        host_cache.stash(self.sched, slot, protect)
        self.sched.ctx.seq_rm(slot.id, 0, -1)
        slot.cache_tokens = []

    def free_idle_caches(self) -> bool:
        """--kv-unified: drop every idle slot's cache; whether there was any."""
        sched = self.sched
        idle = [s for s in sched.slots if s.run is None and s.cache_tokens]
        for s in idle:
            self.drop_cache(s)
        if idle:
            log.debug("unified KV pool full: dropped the caches of %d idle slots", len(idle))
        return bool(idle)
