"""A request's run in a slot: its prompt, sampler, generated tokens, stop state and timings.

The slot (`slot.Slot`) is the KV sequence and what it caches; a `Run` lives from the
launch of one task into a slot to its end. GET /slots reports a slot's latest run.
"""

from __future__ import annotations

import time

from .params import SlotParams
from .task import Task, TokenInfo
from .text import TextAssembler


class Run:
    __slots__ = (
        "task", "params", "sampler", "prompt_tokens", "n_prompt_done", "n_cached", "i_batch", "pending_token",
        "generated", "probs", "text", "n_decoded", "truncated", "stopped_eos", "stopped_limit", "stopped_word",
        "t_start", "t_served", "t_prompt_done", "t_last_token", "queue_wait", "streamed_probs", "streamed_tokens",
        "active", "task_id", "prompt", "kind",
    )

    def __init__(self, task: Task, params: SlotParams, prompt_tokens: list[int], n_cached: int, sampler=None,
                 truncated: bool = False):
        now = time.perf_counter()
        self.task = task
        self.params = params
        self.sampler = sampler  # a SamplerChain (completions); owned by the run
        self.prompt_tokens = prompt_tokens
        self.n_prompt_done = n_cached  # prompt tokens already in the slot's cache
        self.n_cached = n_cached  # prompt tokens reused from the cache
        self.i_batch = -1  # index of this run's output in the current batch
        self.pending_token = -1  # sampled, not yet decoded
        self.generated: list[int] = []
        self.probs: list[TokenInfo] = []
        self.text = TextAssembler(params.stop)
        self.n_decoded = 0
        self.truncated = truncated
        self.stopped_eos = self.stopped_limit = self.stopped_word = False
        self.t_start = now
        self.t_served = now  # when its tokens last went into a decode (LoRA turn-taking)
        self.t_prompt_done = 0.0
        self.t_last_token = 0.0
        self.queue_wait = now - task.t_created
        self.streamed_probs = 0
        self.streamed_tokens = 0
        self.active = True  # False once it ended (finished, failed or cancelled)
        self.task_id = task.id  # kept for GET /slots when the task is gone
        self.prompt = task.prompt
        self.kind = task.kind  # "completion" | "embedding" | "rerank"

    @property
    def in_prompt(self) -> bool:
        return self.n_prompt_done < len(self.prompt_tokens)

    @property
    def media(self):
        """The task's images (a MediaPrompt) until they are all in the KV cache."""
        return self.task.media

    def close(self) -> None:
        """The run ended: free its sampler and images, let go of the task (its sink, its image files)."""
        self.active = False
        if self.task is not None:
            self.task.drop_media()
            self.task = None
        if self.sampler is not None:
            self.sampler.free()
            self.sampler = None

    def next_token_json(self, has_next: bool) -> dict:
        p = self.params
        n_remain = max(0, p.n_predict - self.n_decoded) if p.n_predict != -1 else -1
        return {
            "has_next_token": has_next,
            "n_remain": n_remain,
            "n_decoded": self.n_decoded,
            "stopped_eos": self.stopped_eos,
            "stopped_limit": self.stopped_limit,
            "stopped_word": self.stopped_word,
            "stopping_word": self.text.stopping_word,
        }
