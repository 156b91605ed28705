"""What one HTTP request did, gathered for its log line, its span and its metrics.

The middleware puts a `RequestRecord` in a context variable; the engine's final
results reach `on_result` in the same asyncio context (an `Engine.on_result` hook,
called by the HTTP layer that reads them), so the record learns the slot, token counts, timings
and finish reason without the routes having to report anything.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ResultInfo:
    kind: str  # completion | embedding | rerank
    slot: int
    n_prompt: int  # prompt tokens (cached ones included)
    n_cached: int = 0
    n_predicted: int = 0
    finish_reason: str = ""
    t_created_ns: int = 0
    t_start_ns: int = 0
    t_prompt_done_ns: int = 0
    t_end_ns: int = 0


@dataclass
class RequestRecord:
    method: str
    path: str
    t0: float = field(default_factory=time.perf_counter)
    t0_ns: int = field(default_factory=time.time_ns)
    status: int = 0
    endpoint: str = ""
    client: str = ""
    results: list[ResultInfo] = field(default_factory=list)
    body: bytearray | None = None  # captured only with --verbose

    @property
    def duration(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def slots(self) -> list[int]:
        return sorted({r.slot for r in self.results})

    def totals(self) -> dict[str, int]:
        return {
            "tokens_prompt": sum(r.n_prompt for r in self.results),
            "tokens_cached": sum(r.n_cached for r in self.results),
            "tokens_predicted": sum(r.n_predicted for r in self.results),
        }


CURRENT: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("kubellama_request", default=None)


def result_info(result: Any) -> ResultInfo | None:
    if hasattr(result, "tokens_predicted"):  # CompletionResult
        t = getattr(result, "timings", None)
        stop = "length" if result.stopped_limit else "stop"
        return ResultInfo(
            kind="completion",
            slot=result.id_slot,
            n_prompt=result.tokens_evaluated,
            n_cached=result.tokens_cached,
            n_predicted=result.tokens_predicted,
            finish_reason=stop,
            t_created_ns=getattr(t, "t_created_ns", 0),
            t_start_ns=getattr(t, "t_start_ns", 0),
            t_prompt_done_ns=getattr(t, "t_prompt_done_ns", 0),
            t_end_ns=getattr(t, "t_end_ns", 0),
        )
    if hasattr(result, "embedding"):  # EmbeddingResult
        return ResultInfo(kind="embedding", slot=result.id_slot, n_prompt=result.n_tokens)
    if hasattr(result, "score"):  # RerankResult
        return ResultInfo(kind="rerank", slot=result.id_slot, n_prompt=result.n_tokens)
    return None


def on_result(result: Any) -> None:
    """An `Engine.on_result` hook: attach a final result to the current request."""
    rec = CURRENT.get()
    if rec is None:
        return
    info = result_info(result)
    if info is not None:
        rec.results.append(info)
