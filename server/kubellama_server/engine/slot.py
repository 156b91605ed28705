"""A slot: one llama.cpp sequence id, its cached tokens and the task it serves."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from .params import SlotParams
from .sampling import SamplerChain
from .task import Task, TokenInfo
from .text import TextAssembler


class SlotState(enum.IntEnum):
    IDLE = 0
    PROCESSING = 1


@dataclass
class Slot:
    id: int
    n_ctx: int
    state: SlotState = SlotState.IDLE
    cache_tokens: list[int] = field(default_factory=list)  # tokens whose KV is in this sequence
    t_last_used: float = 0.0
    cache_lora: tuple[float, ...] = ()  # the LoRA scales its cached KV was computed with
    t_served: float = 0.0  # when its tokens last went into a decode (LoRA turn-taking)

    # -- the running task -------------------------------------------------
    task: Task | None = None
    params: SlotParams | None = None
    sampler: SamplerChain | None = None
    prompt_tokens: list[int] = field(default_factory=list)
    n_prompt_done: int = 0  # prompt tokens already in cache_tokens
    n_cached: int = 0  # prompt tokens reused from the cache
    i_batch: int = -1  # index of this slot's output in the current batch
    pending_token: int = -1  # sampled, not yet decoded
    generated: list[int] = field(default_factory=list)
    probs: list[TokenInfo] = field(default_factory=list)
    text: TextAssembler | None = None
    n_decoded: int = 0
    truncated: bool = False
    stopped_eos: bool = False
    stopped_limit: bool = False
    stopped_word: bool = False
    t_start: float = 0.0
    t_prompt_done: float = 0.0
    t_last_token: float = 0.0
    queue_wait: float = 0.0
    streamed_probs: int = 0
    streamed_tokens: int = 0
    last_prompt: str | list = ""
    last_task_id: int = -1

    @property
    def is_processing(self) -> bool:
        return self.state == SlotState.PROCESSING

    @property
    def in_prompt(self) -> bool:
        return self.is_processing and self.n_prompt_done < len(self.prompt_tokens)

    @property
    def n_past(self) -> int:
        return len(self.cache_tokens)

    def start(self, task: Task, params: SlotParams, prompt_tokens: list[int], n_cached: int) -> None:
        now = time.perf_counter()
        self.state = SlotState.PROCESSING
        self.task = task
        self.params = params
        self.prompt_tokens = prompt_tokens
        self.n_prompt_done = n_cached
        self.n_cached = n_cached
        self.i_batch = -1
        self.pending_token = -1
        self.generated = []
        self.probs = []
        self.text = TextAssembler(params.stop)
        self.n_decoded = 0
        self.truncated = False
        self.stopped_eos = self.stopped_limit = self.stopped_word = False
        self.t_start = now
        self.t_served = now
        self.t_prompt_done = 0.0
        self.t_last_token = 0.0
        self.queue_wait = now - task.t_created
        self.streamed_probs = 0
        self.streamed_tokens = 0
        self.last_prompt = task.prompt
        self.last_task_id = task.id

    @property
    def media(self):
        """The running task's images (a MediaPrompt), if its prompt has any."""
        return self.task.media if self.task is not None else None

    def release(self) -> None:
        if self.task is not None:
            self.task.drop_media()
        if self.sampler is not None:
            self.sampler.free()
            self.sampler = None
        self.state = SlotState.IDLE
        self.task = None
        self.i_batch = -1
        self.pending_token = -1
        self.t_last_used = time.perf_counter()

    def next_token_json(self) -> dict:
        p = self.params
        n_remain = -1
        if p is not None and p.n_predict != -1:
            n_remain = max(0, p.n_predict - self.n_decoded)
        return {
            "has_next_token": self.is_processing,
            "n_remain": n_remain,
            "n_decoded": self.n_decoded,
            "stopped_eos": self.stopped_eos,
            "stopped_limit": self.stopped_limit,
            "stopped_word": self.stopped_word,
            "stopping_word": self.text.stopping_word if self.text else "",
        }
