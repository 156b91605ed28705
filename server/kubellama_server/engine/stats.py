"""Counters the scheduler keeps (the llama.cpp server's metrics) and a listener hook.

The scheduler thread writes; readers take `snapshot()` copies. A listener (e.g. the
Prometheus exporter) receives per-request observations: time to first token,
inter-token latency, request duration, queue wait, cancellations.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from typing import Protocol


class StatsListener(Protocol):
    def on_first_token(self, seconds: float) -> None: ...
    def on_token(self, seconds: float) -> None: ...
    def on_queue_wait(self, seconds: float) -> None: ...
    def on_request_done(self, seconds: float) -> None: ...
    def on_cancel(self) -> None: ...
    def on_image(self, seconds: float) -> None: ...


@dataclass
class StatsSnapshot:
    n_prompt_tokens_processed_total: int = 0
    t_prompt_processing_total: float = 0.0  # seconds
    n_tokens_predicted_total: int = 0
    t_tokens_generation_total: float = 0.0
    n_prompt_tokens_cached_total: int = 0
    n_decode_total: int = 0
    n_busy_slots_total: int = 0
    n_tokens_max: int = 0
    n_cancelled_total: int = 0
    # since the last reset_bucket() (llama.cpp resets these on each /metrics scrape)
    n_prompt_tokens_processed: int = 0
    t_prompt_processing: float = 0.0
    n_tokens_predicted: int = 0
    n_generation_steps: int = 0  # tokens after each request's first (the generation rate's numerator)
    t_tokens_generation: float = 0.0
    # gauges, filled by the engine when taking a snapshot
    kv_cache_tokens: int = 0
    kv_cache_used_ratio: float = 0.0
    requests_processing: int = 0
    requests_deferred: int = 0


class EngineStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._s = StatsSnapshot()
        self.listeners: list[StatsListener] = []

    def on_decode(self, n_busy: int, n_tokens_max: int) -> None:
        with self._lock:
            s = self._s
            s.n_decode_total += 1
            s.n_busy_slots_total += n_busy
            s.n_tokens_max = max(s.n_tokens_max, n_tokens_max)

    def on_prompt_done(self, n_tokens: int, seconds: float, n_cached: int) -> None:
        with self._lock:
            s = self._s
            s.n_prompt_tokens_processed_total += n_tokens
            s.t_prompt_processing_total += seconds
            s.n_prompt_tokens_processed += n_tokens
            s.t_prompt_processing += seconds
            s.n_prompt_tokens_cached_total += n_cached

    def on_prediction_done(self, n_tokens: int, seconds: float) -> None:
        with self._lock:
            s = self._s
            s.n_tokens_predicted_total += n_tokens
            s.t_tokens_generation_total += seconds
            s.n_tokens_predicted += n_tokens
            s.n_generation_steps += max(0, n_tokens - 1)
            s.t_tokens_generation += seconds

    def on_cancel(self) -> None:
        with self._lock:
            self._s.n_cancelled_total += 1
        for listener in self.listeners:
            listener.on_cancel()

    def observe(self, kind: str, seconds: float) -> None:
        """kind: first_token | token | queue_wait | request_done | image."""
        for listener in self.listeners:
            getattr(listener, f"on_{kind}")(seconds)

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(**{f.name: getattr(self._s, f.name) for f in fields(StatsSnapshot)})

    def reset_bucket(self) -> None:
        with self._lock:
            s = self._s
            s.n_prompt_tokens_processed = 0
            s.t_prompt_processing = 0.0
            s.n_tokens_predicted = 0
            s.n_generation_steps = 0
            s.t_tokens_generation = 0.0
