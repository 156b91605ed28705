"""Tasks submitted to the scheduler and the thread-safe channel that carries their results.

HTTP handlers (asyncio) create a task with a `TaskSink`; the scheduler thread
pushes events into it with `loop.call_soon_threadsafe`, never blocking on the loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import APIError
from .params import Prompt, SlotParams

_ids = itertools.count()


def next_task_id() -> int:
    return next(_ids)


# The event loop of the request being built, for tasks created off it (a worker thread
# rendering a big chat template: `serving.limits.off_loop`).
_request_loop: contextvars.ContextVar[asyncio.AbstractEventLoop | None] = contextvars.ContextVar("request_loop", default=None)


def bind_loop(loop: asyncio.AbstractEventLoop) -> None:
    _request_loop.set(loop)


def _current_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        loop = _request_loop.get()
        if loop is None:
            raise
        return loop


class TaskSink:
    """Delivers scheduler events to one asyncio consumer."""

    __slots__ = ("loop", "queue", "closed")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self.loop = loop or _current_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def put(self, event: Any) -> None:
        if self.closed:
            return
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # loop closed: the client is gone
            self.closed = True

    async def get(self) -> Any:
        return await self.queue.get()


def _deliver(items: list[tuple[TaskSink, Any]]) -> None:
    for sink, event in items:
        sink.queue.put_nowait(event)


class Outbox:
    """Collects the events of one scheduler step; `flush` wakes each event loop once.

    One `call_soon_threadsafe` per step instead of one per token keeps the scheduler
    thread from paying a self-pipe write and a GIL hand-off for every slot.
    """

    def __init__(self) -> None:
        self._items: dict[asyncio.AbstractEventLoop, list[tuple[TaskSink, Any]]] = {}

    def put(self, sink: TaskSink, event: Any) -> None:
        if not sink.closed:
            self._items.setdefault(sink.loop, []).append((sink, event))

    def flush(self) -> None:
        if not self._items:
            return
        items, self._items = self._items, {}
        for loop, batch in items.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # loop closed: its clients are gone
                for sink, _ in batch:
                    sink.closed = True


@dataclass
class TokenProb:
    id: int
    text: str
    prob: float
    raw: bytes = b""  # the token's bytes (may be part of a UTF-8 character)


@dataclass
class TokenInfo:
    """One generated token with its probabilities (only when `n_probs` > 0)."""

    id: int
    text: str
    prob: float
    top: list[TokenProb]
    raw: bytes = b""
    post_sampling: bool = False  # probabilities after the sampler chain (post_sampling_probs)


@dataclass
class PartialResult:
    """A streamed chunk: new text since the last chunk."""

    content: str
    tokens: list[int]
    probs: list[TokenInfo]
    n_decoded: int
    timings: dict[str, Any] | None = None  # with timings_per_token


@dataclass
class Timings:
    cache_n: int = 0
    prompt_n: int = 0
    prompt_ms: float = 0.0
    predicted_n: int = 0
    predicted_ms: float = 0.0
    queue_ms: float = 0.0
    ttft_ms: float = 0.0
    # wall-clock instants (time.time_ns()) for tracing: received, slot assigned, prompt done, finished
    t_created_ns: int = 0
    t_start_ns: int = 0
    t_prompt_done_ns: int = 0
    t_end_ns: int = 0

    def to_json(self) -> dict[str, float | int]:
        return {
            "cache_n": self.cache_n,
            "prompt_n": self.prompt_n,
            "prompt_ms": self.prompt_ms,
            "prompt_per_token_ms": self.prompt_ms / self.prompt_n if self.prompt_n else 0.0,
            "prompt_per_second": 1e3 * self.prompt_n / self.prompt_ms if self.prompt_ms > 0 else 0.0,
            # the first token comes with the prompt's logits: the rate counts the steps after it (llama.cpp)
            "predicted_n": self.predicted_n,
            "predicted_ms": self.predicted_ms,
            "predicted_per_token_ms": self.predicted_ms / (self.predicted_n - 1) if self.predicted_n > 1 else 0.0,
            "predicted_per_second": 1e3 * (self.predicted_n - 1) / self.predicted_ms if self.predicted_ms > 0 else 0.0,
        }


@dataclass
class CompletionResult:
    content: str
    tokens: list[int]
    id_slot: int
    prompt_tokens: list[int]
    prompt_text: str | None  # the task's `prompt_text`: the evaluated prompt as text, for token-id prompts
    tokens_predicted: int
    tokens_evaluated: int
    tokens_cached: int
    truncated: bool
    stopped_eos: bool
    stopped_limit: bool
    stopped_word: bool
    stopping_word: str
    probs: list[TokenInfo]
    timings: Timings
    settings: dict[str, Any]

    @property
    def stop_type(self) -> str:
        if self.stopped_eos:
            return "eos"
        if self.stopped_word:
            return "word"
        if self.stopped_limit:
            return "limit"
        return "none"

    @property
    def finish_reason(self) -> str:
        return "length" if self.stopped_limit else "stop"


@dataclass
class EmbeddingResult:
    embedding: list[float] | list[list[float]]  # one vector per token with --pooling none
    n_tokens: int
    id_slot: int


@dataclass
class RerankResult:
    """One (query, document) pair's relevance score (the reranker's first pooled output)."""

    score: float
    n_tokens: int
    id_slot: int


@dataclass(eq=False)  # compared by identity: a queue lookup must never compare prompts
class Task:
    """A unit of work for one slot.

    `prompt` is tokenized before the task is submitted (`Engine.prepare`, BOS rules of the
    reference), else when it is launched; `build_prompt`, when set, replaces that step
    (infill, pre-tokenized chat).
    """

    kind: str  # "completion" | "embedding" | "rerank"
    prompt: Prompt
    params: SlotParams
    sink: TaskSink
    build_prompt: Callable[[Any], list[int]] | None = None
    allow_truncate: bool = True  # False: a too-long prompt is an exceed_context_size_error
    use_system_prompt: bool = True  # completions get the shared system prompt in front
    n_system: int = 0  # system prompt tokens at the start of `tokens` (set with them)
    id: int = field(default_factory=next_task_id)
    t_created: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    tokens: list[int] | None = None  # the tokenized prompt (set by `Engine.prepare`; None: not prepared)
    slot: Any = None  # the slot serving it, once launched
    images: list[bytes] = field(default_factory=list)  # image files, in the order of the prompt's media markers
    media: Any = None  # the MediaPrompt of `tokens` when there are images
    lora: tuple[float, ...] | None = None  # its LoRA scales, one per adapter (set at launch)
    n_cached: int = 0  # prompt tokens its slot reused (set at launch)
    prompt_bytes: int = -1  # the prompt text's size when `prompt` does not hold it all (infill); -1: measure `prompt`
    done: bool = False  # answered with an error or cancelled before it reached a slot (scheduler thread)
    system_prompt: str | None = None  # this request's own `system_prompt` (None: the server's -spf one)
    launch_tokens: list[int] | None = None  # what its slot evaluates: `tokens` cut to the context (prepared)
    truncated: bool = False  # `launch_tokens` is a cut prompt
    prompt_text: str | None = None  # `launch_tokens` as text when `prompt` is not a string (prepared, off the event loop)
    sampler: Any = None  # its SamplerChain, built and primed when prepared; its run owns it once launched

    def drop_media(self) -> None:
        """Free the image chunks (the task ended, or its slot has evaluated them)."""
        if self.media is not None:
            self.media.close()
            self.media = None

    def discard(self) -> None:
        """Free what a prepared task holds that never ran (cancelled, failed, not submitted)."""
        self.drop_media()
        if self.sampler is not None:
            self.sampler.free()
            self.sampler = None


def error_event(exc: APIError) -> tuple[str, APIError]:
    return ("error", exc)
