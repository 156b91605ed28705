import math

import pytest

from bench.stats import RequestRecord, percentile, ratio, spread, summarize_run


def rec(start, chunks, end, n=None, prompt=10, expected=None, group="main", error=None):
    n = len(chunks) if n is None else n
    return RequestRecord(t_start=start, t_end=end, chunk_times=list(chunks), n_generated=n,
                         n_prompt=prompt, n_expected=expected if expected is not None else n,
                         group=group, error=error)


def test_percentile_interpolates_like_numpy_linear():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 4.0
    assert percentile(xs, 50) == 2.5
    assert percentile(xs, 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_percentile_rejects_out_of_range_q():
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)


def test_spread_ignores_nan_and_reports_count():
    s = spread([3.0, math.nan, 1.0, 2.0])
    assert s == {"min": 1.0, "median": 2.0, "max": 3.0, "n": 3}
    assert spread([])["n"] == 0


def test_summarize_run_aggregates_over_wall_time():
    # two overlapping requests, 4 tokens each, spanning 0..2 s of wall time
    a = rec(0.0, [0.5, 0.6, 0.7, 0.8], 1.0)
    b = rec(1.0, [1.2, 1.5, 1.8, 2.0], 2.0)
    s = summarize_run([a, b])
    assert s["wall_s"] == 2.0
    assert s["generated_tokens"] == 8
    assert s["gen_tok_s"] == 4.0
    assert s["req_s"] == 1.0
    assert s["ttft_p50"] == pytest.approx(0.35)  # ttfts 0.5 and 0.2
    assert s["itl_p50"] == pytest.approx(0.15)  # gaps .1 .1 .1 .2 .3 .3 -> median .15
    assert s["prompt_tok_s"] == pytest.approx((10 / 0.5 + 10 / 0.2) / 2)
    assert s["errors"] == 0 and s["short_requests"] == 0


def test_summarize_run_counts_errors_and_short_requests_and_excludes_errors():
    ok = rec(0.0, [0.1, 0.2], 1.0, expected=4)  # stopped after 2 of 4 tokens
    bad = rec(0.0, [], 5.0, error="HTTP 500")
    s = summarize_run([ok, bad])
    assert s["errors"] == 1
    assert s["short_requests"] == 1
    assert s["wall_s"] == 1.0  # the failed request does not stretch the wall time


def test_summarize_run_by_group():
    gen = rec(0.0, [0.1, 0.2, 0.3], 0.3, group="gen")
    arrival = rec(0.1, [0.9], 1.0, group="arrival")
    assert summarize_run([gen, arrival], group="arrival")["ttft_p50"] == pytest.approx(0.8)
    assert summarize_run([gen, arrival], group="gen")["generated_tokens"] == 3


def test_summarize_run_all_failed_gives_nan_rates():
    s = summarize_run([rec(0, [], 1, error="x")])
    assert math.isnan(s["gen_tok_s"]) and s["errors"] == 1


def test_inter_token_latency_spreads_gaps_over_held_back_tokens():
    # 3 chunks but 5 tokens: two tokens arrived merged into other chunks
    r = rec(0.0, [1.0, 2.0, 3.0], 3.0, n=5)
    itl = r.inter_token_latencies()
    assert len(itl) == 2
    assert sum(itl) == pytest.approx(2.0 * 2 / 4)  # 2 s over 4 token gaps, 2 gaps observed


def test_ratio_direction():
    assert ratio(120.0, 100.0) == pytest.approx(1.2)
    assert ratio(0.1, 0.3, higher_is_better=False) == pytest.approx(3.0)
    assert math.isnan(ratio(math.nan, 1.0))
    assert math.isnan(ratio(1.0, 0.0))
