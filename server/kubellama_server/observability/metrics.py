"""Prometheus metrics: the llama.cpp server's `llamacpp:*` series and kubellama's own.

Each app gets its own `CollectorRegistry` (several servers can live in one process, as
in the tests). The `llamacpp:*` series are computed from `EngineStats` at scrape time;
the `kubellama_*` histograms are fed by a `StatsListener` registered in
`engine.stats.listeners` (observations come from the scheduler thread) and the
counters by the HTTP middleware and the slot routes.

Histogram buckets (seconds), chosen for CPU and GPU serving of small to mid-size models:

- `kubellama_time_to_first_token_seconds`: TTFT_BUCKETS (request received -> first token sampled)
- `kubellama_inter_token_latency_seconds`: ITL_BUCKETS (between two sampled tokens of one request)
- `kubellama_request_duration_seconds`: DURATION_BUCKETS (request received -> last token / embedding)
- `kubellama_queue_wait_seconds`: QUEUE_BUCKETS (request received -> slot assigned)
- `kubellama_image_seconds`: IMAGE_BUCKETS (one prompt image encoded and decoded into its slot)

`kubellama_lora_adapter_scale{adapter="ID"}` is the current default scale of each loaded
LoRA adapter (`--lora`, `--lora-scaled`, `POST /lora-adapters`); the operator compares it
across replicas. `kubellama_prompt_cache_*` describe the --cache-ram store (engine/prompt_cache.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.engine import Engine

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
IMAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# endpoints not counted in kubellama_requests_total (probes and scrapes)
UNCOUNTED = frozenset({"/health", "/v1/health", "/metrics"})


def engine_gauges(engine: "Engine") -> tuple[int, float, int, int]:
    """(kv cache tokens, kv cache usage ratio, requests processing, requests deferred).

    Read without the scheduler thread (list lengths): a slightly stale view is fine for
    a scrape and keeps /metrics answering while a long decode runs.
    """
    sched = engine.scheduler
    if sched is None or engine.ctx is None:
        return 0, 0.0, 0, 0
    slots = list(sched.slots)
    tokens = sum(len(s.cache_tokens) for s in slots)
    n_ctx = engine.ctx.n_ctx or 1
    processing = sum(1 for s in slots if s.is_processing)
    deferred = len(sched.waiting)
    return tokens, tokens / n_ctx, processing, deferred


class _EngineCollector:
    """A collector computing its metrics from the engine at scrape time (nothing to auto-describe)."""

    def __init__(self, engine: "Engine"):
        self.engine = engine

    def describe(self) -> Iterable[Metric]:
        return []


class LlamaCppCollector(_EngineCollector):
    """The llama.cpp server's metrics, from the engine's counters, at scrape time.

    Like llama.cpp, the throughput gauges (`prompt_tokens_seconds`,
    `predicted_tokens_seconds`) cover the time since the previous scrape: each collect
    resets that bucket.
    """

    def collect(self) -> Iterable[Metric]:
        stats = self.engine.stats
        s = stats.snapshot()
        stats.reset_bucket()
        kv_tokens, kv_ratio, processing, deferred = engine_gauges(self.engine)

        def counter(name: str, doc: str, value: float) -> Metric:
            return CounterMetricFamily(name, doc, value=value)

        def gauge(name: str, doc: str, value: float) -> Metric:
            return GaugeMetricFamily(name, doc, value=value)

        yield counter("llamacpp:prompt_tokens_total", "Number of prompt tokens processed.", s.n_prompt_tokens_processed_total)
        yield counter("llamacpp:prompt_seconds_total", "Prompt process time", s.t_prompt_processing_total)
        yield counter("llamacpp:tokens_predicted_total", "Number of generation tokens processed.", s.n_tokens_predicted_total)
        yield counter("llamacpp:tokens_predicted_seconds_total", "Predict process time", s.t_tokens_generation_total)
        yield counter("llamacpp:prompt_tokens_cached_total", "Number of prompt tokens reused from the prompt cache.", s.n_prompt_tokens_cached_total)
        yield counter("llamacpp:n_decode_total", "Total number of llama_decode() calls", s.n_decode_total)
        yield gauge("llamacpp:n_tokens_max", "Largest observed n_tokens.", s.n_tokens_max)
        yield gauge(
            "llamacpp:n_busy_slots_per_decode",
            "Average number of busy slots per llama_decode() call",
            s.n_busy_slots_total / s.n_decode_total if s.n_decode_total else 0.0,
        )
        yield gauge(
            "llamacpp:prompt_tokens_seconds",
            "Average prompt throughput in tokens/s.",
            s.n_prompt_tokens_processed / s.t_prompt_processing if s.t_prompt_processing > 0 else 0.0,
        )
        yield gauge(
            "llamacpp:predicted_tokens_seconds",
            "Average generation throughput in tokens/s.",
            s.n_generation_steps / s.t_tokens_generation if s.t_tokens_generation > 0 else 0.0,  # first tokens excluded
        )
        yield gauge("llamacpp:kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.", kv_ratio)
        yield gauge("llamacpp:kv_cache_tokens", "KV-cache tokens.", kv_tokens)
        yield gauge("llamacpp:requests_processing", "Number of requests processing.", processing)
        yield gauge("llamacpp:requests_deferred", "Number of requests deferred.", deferred)


class LoraCollector(_EngineCollector):
    """`kubellama_lora_adapter_scale`: the default scale of each loaded adapter, at scrape time."""

    def collect(self) -> Iterable[Metric]:
        sched = self.engine.scheduler
        if sched is None or self.engine.ctx is None or not self.engine.ctx.lora_paths:
            return
        family = GaugeMetricFamily("kubellama_lora_adapter_scale",
                                   "Default scale of each loaded LoRA adapter (GET/POST /lora-adapters).",
                                   labels=["adapter"])
        for i, scale in enumerate(sched.lora_default):
            family.add_metric([str(i)], float(scale))
        yield family


class PromptCacheCollector(_EngineCollector):
    """`kubellama_prompt_cache_*`: the --cache-ram store (absent when it is off), at scrape time."""

    def collect(self) -> Iterable[Metric]:
        sched = self.engine.scheduler
        cache = getattr(sched, "prompt_cache", None)
        if cache is None:
            return
        yield GaugeMetricFamily("kubellama_prompt_cache_entries", "Prompts kept in host memory (--cache-ram).", value=cache.n_entries)
        yield GaugeMetricFamily("kubellama_prompt_cache_bytes", "Bytes of the prompts kept in host memory (KV state and tokens).", value=cache.n_bytes)
        if cache.limit is not None:
            yield GaugeMetricFamily("kubellama_prompt_cache_limit_bytes", "--cache-ram in bytes.", value=cache.limit)
        yield CounterMetricFamily("kubellama_prompt_cache_saves", "Slot prompt caches saved to host memory.", value=cache.n_saved)
        yield CounterMetricFamily("kubellama_prompt_cache_loads", "Prompts loaded from host memory into a slot.", value=cache.n_loaded)
        yield CounterMetricFamily("kubellama_prompt_cache_evictions", "Prompts dropped from host memory to stay within --cache-ram.",
                                  value=cache.n_evicted)


class ServerMetrics:
    """Everything /metrics shows for one app; also the engine's StatsListener."""

    def __init__(self, engine: "Engine"):
        self.engine = engine
        self.t_start = int(time.time())
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        r.register(LlamaCppCollector(engine))
        r.register(LoraCollector(engine))
        r.register(PromptCacheCollector(engine))
        self.ttft = Histogram(
            "kubellama_time_to_first_token_seconds",
            "Time from receiving a completion request to its first sampled token.",
            buckets=TTFT_BUCKETS, registry=r,
        )
        self.itl = Histogram(
            "kubellama_inter_token_latency_seconds",
            "Time between two consecutive sampled tokens of one request.",
            buckets=ITL_BUCKETS, registry=r,
        )
        self.duration = Histogram(
            "kubellama_request_duration_seconds",
            "Time from receiving a request to its last token (or its embedding), in the engine.",
            buckets=DURATION_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "kubellama_queue_wait_seconds",
            "Time a request waited for a free slot.",
            buckets=QUEUE_BUCKETS, registry=r,
        )
        self.requests = Counter(
            "kubellama_requests", "HTTP requests by endpoint (route template) and status code "
            "(/health and /metrics are not counted).", ["endpoint", "status"], registry=r,
        )
        self.slot_saves = Counter(
            "kubellama_slot_saves", "Slot saves by result (ok, busy, invalid, not_found, incompatible, error).", ["result"], registry=r,
        )
        self.slot_restores = Counter(
            "kubellama_slot_restores", "Slot restores by result (ok, busy, invalid, not_found, incompatible, error).", ["result"], registry=r,
        )
        self.cancellations = Counter(
            "kubellama_cancellations", "Requests cancelled because the client went away.", registry=r,
        )
        self.images = Histogram(
            "kubellama_image_seconds",
            "Time to encode one prompt image and decode it into its slot (other slots wait meanwhile).",
            buckets=IMAGE_BUCKETS, registry=r,
        )

    # -- StatsListener (called on the scheduler thread) ------------------------
    def on_first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def on_token(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def on_queue_wait(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    def on_request_done(self, seconds: float) -> None:
        self.duration.observe(seconds)

    def on_cancel(self) -> None:
        self.cancellations.inc()

    def on_image(self, seconds: float) -> None:
        self.images.observe(seconds)

    # -- other observations ---------------------------------------------------
    def count_request(self, endpoint: str, status: int) -> None:
        if endpoint not in UNCOUNTED:
            self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def count_slot_action(self, action: str, result: str) -> None:
        if action == "save":
            self.slot_saves.labels(result=result).inc()
        elif action == "restore":
            self.slot_restores.labels(result=result).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def install_metrics(engine: "Engine") -> ServerMetrics:
    metrics = ServerMetrics(engine)
    engine.stats.listeners.append(metrics)
    return metrics
