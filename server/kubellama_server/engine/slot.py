"""A slot: one llama.cpp sequence id, the tokens its KV holds, and the run it serves.

The slot's cache state (`cache_tokens`, `cache_lora`, `t_last_used`) outlives requests;
the request's own state is a `run.Run` (`slot.run` while it runs, `slot.last_run` after).
The read-only properties below (`task`, `params`, `prompt_tokens`, ...) show the latest run,
as GET /slots and the metrics read them.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from .params import SlotParams
from .run import Run
from .task import Task


class SlotState(enum.IntEnum):
    IDLE = 0
    PROCESSING = 1


@dataclass(eq=False)
class Slot:
    id: int
    n_ctx: int
    cache_tokens: list[int] = field(default_factory=list)  # tokens whose KV is in this sequence
    cache_lora: tuple[float, ...] = ()  # the LoRA scales its cached KV was computed with
    t_last_used: float = 0.0
    run: Run | None = None  # the request running in it
    last_run: Run | None = None  # the latest run (also after it ended)

    @property
    def is_processing(self) -> bool:
        return self.run is not None

    @property
    def state(self) -> SlotState:
        return SlotState.PROCESSING if self.run is not None else SlotState.IDLE

    @property
    def n_past(self) -> int:
        return len(self.cache_tokens)

    @property
    def in_prompt(self) -> bool:
        return self.run is not None and self.run.in_prompt

    def start(self, run: Run) -> Run:
        self.run = self.last_run = run
        return run

    def release(self) -> None:
        """The run ended: free what it holds; the cache stays."""
        if self.run is not None:
            self.run.close()
        self.run = None
        self.t_last_used = time.perf_counter()

    # -- the latest run, for GET /slots, /metrics and the slot files -------------------
    @property
    def task(self) -> Task | None:
        return self.run.task if self.run is not None else None

    @property
    def media(self):
        return self.run.task.media if self.run is not None else None

    @property
    def params(self) -> SlotParams | None:
        return self.last_run.params if self.last_run is not None else None

    @property
    def prompt_tokens(self) -> list[int]:
        return self.last_run.prompt_tokens if self.last_run is not None else []

    @property
    def n_cached(self) -> int:
        return self.last_run.n_cached if self.last_run is not None else 0

    @property
    def n_decoded(self) -> int:
        return self.last_run.n_decoded if self.last_run is not None else 0

    @property
    def last_prompt(self) -> str | list:
        return self.last_run.prompt if self.last_run is not None else ""

    @property
    def last_task_id(self) -> int:
        return self.last_run.task_id if self.last_run is not None else -1

    def next_token_json(self) -> dict:
        if self.last_run is None:
            return {"has_next_token": False, "n_remain": -1, "n_decoded": 0, "stopped_eos": False,
                    "stopped_limit": False, "stopped_word": False, "stopping_word": ""}
        return self.last_run.next_token_json(self.is_processing)
