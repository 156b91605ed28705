"""Pure statistics over the per-request records of the load generator."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence


@dataclass
class RequestRecord:
    """One streamed request as seen by the client (times from time.perf_counter)."""

    t_start: float
    t_end: float
    chunk_times: list[float] = field(default_factory=list)  # arrival of each content chunk
    n_generated: int = 0  # tokens generated (server-reported when it reports them)
    n_prompt: int = 0  # prompt tokens (server-reported, else counted locally)
    n_expected: int = 0  # the n_predict asked for
    error: str | None = None
    group: str = "main"  # e.g. "gen" / "arrival" in the mixed workload

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.t_start if self.chunk_times else None

    def inter_token_latencies(self) -> list[float]:
        """Gaps between consecutive chunks, spread over the tokens each chunk carries.

        Servers send one token per chunk, except when they hold bytes back (partial
        UTF-8, a possible stop string); the average gap per token is then the fairest
        estimate, so a gap is divided by the tokens it covers."""
        times = self.chunk_times
        if len(times) < 2:
            return []
        gaps = [b - a for a, b in zip(times, times[1:])]
        extra = max(self.n_generated - len(times), 0)
        if extra and gaps:
            scale = len(gaps) / (len(gaps) + extra)
            return [g * scale for g in gaps]
        return gaps


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    if not values:
        return math.nan
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def spread(values: Iterable[float]) -> dict[str, float]:
    """min / median / max of one figure over repetitions."""
    xs = [v for v in values if not math.isnan(v)]
    if not xs:
        return {"min": math.nan, "median": math.nan, "max": math.nan, "n": 0}
    return {"min": min(xs), "median": percentile(xs, 50), "max": max(xs), "n": len(xs)}


def summarize_run(records: Sequence[RequestRecord], group: str | None = None) -> dict[str, float]:
    """Figures of one repetition of one workload.

    Aggregate rates divide by the wall time from the first request's start to the last
    one's end, so they include scheduling gaps the way a user would feel them."""
    if group is not None:
        records = [r for r in records if r.group == group]
    ok = [r for r in records if r.ok]
    out: dict[str, float] = {
        "requests": float(len(records)),
        "errors": float(len(records) - len(ok)),
        # requests that stopped before n_predict: their token counts are not comparable
        "short_requests": float(sum(1 for r in ok if r.n_generated < r.n_expected)),
    }
    if not ok:
        return out | {k: math.nan for k in _RATE_KEYS}
    wall = max(r.t_end for r in ok) - min(r.t_start for r in ok)
    gen = sum(r.n_generated for r in ok)
    ttfts = [t for r in ok if (t := r.ttft) is not None]
    itls = [g for r in ok for g in r.inter_token_latencies()]
    prompt_rates = [r.n_prompt / t for r in ok if (t := r.ttft) and r.n_prompt]
    out.update(
        wall_s=wall,
        generated_tokens=float(gen),
        prompt_tokens=float(sum(r.n_prompt for r in ok)),
        gen_tok_s=gen / wall if wall > 0 else math.nan,
        prompt_tok_s=percentile(prompt_rates, 50),
        req_s=len(ok) / wall if wall > 0 else math.nan,
        ttft_p50=percentile(ttfts, 50),
        ttft_p99=percentile(ttfts, 99),
        itl_p50=percentile(itls, 50),
        itl_p99=percentile(itls, 99),
    )
    return out


_RATE_KEYS = ("wall_s", "generated_tokens", "prompt_tokens", "gen_tok_s", "prompt_tok_s",
              "req_s", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99")


def ratio(ours: float, theirs: float, higher_is_better: bool = True) -> float:
    """How many times better we are (>1 = better), for rates and for latencies alike."""
    if any(math.isnan(x) for x in (ours, theirs)) or ours <= 0 or theirs <= 0:
        return math.nan
    return ours / theirs if higher_is_better else theirs / ours
