import math

from bench import report
from bench.profile import format_summary, summarize_collapsed
from bench.runner import spread_of

import pytest


def wl(gen_rates, ttfts, api="/completion"):
    reps = [{"all": {"gen_tok_s": g, "ttft_p50": t, "ttft_p99": t, "itl_p50": 0.02, "itl_p99": 0.05,
                     "prompt_tok_s": 500.0, "req_s": 1.0}} for g, t in zip(gen_rates, ttfts)]
    return {"status": "ok", "api": api, "reps": reps, "spread": spread_of(reps), "peak_rss_bytes": 300 * 2**20,
            "load": [[1.0, 2.0]]}


def results():
    names = ["completion-1", "completion-4", "completion-4-np1", "shared-prefix", "no-prefix-cache"]
    return {
        "machine": {"cpu": "test"},
        "settings": {"model": "/m/gemma.gguf", "model_bytes": 2**20, "ctx_per_slot": 2048, "threads": 2,
                     "batch": 512, "reps": 3, "warmup": 1, "sampling": {}, "eog_tokens_banned": [1],
                     "workloads": {n: {"description": n, "slots": 4, "family": "completion"} for n in names}},
        "peers": {
            "llama-server": {"label": "C++", "status": "ok", "servers": {}, "workloads": {
                "completion-1": wl([50, 40, 45], [0.1, 0.1, 0.1]),
                "completion-4": wl([100, 80, 90], [0.2, 0.2, 0.2]),
            }},
            "llama-cpp-python": {"label": "py", "status": "ok", "servers": {}, "workloads": {
                "completion-4": wl([30, 30, 30], [1, 1, 1], api="/v1/completions"),
                "completion-1": {"status": "failed: HTTP 500"},
            }},
            "kubellama": {"label": "ours", "status": "ok", "servers": {}, "workloads": {
                # round-by-round: 0.96x, 1.0x, 0.98x of llama-server's completion-1 (a ratio of the
                # medians would be 44.1/45 = 0.98 too; the median of 0.96, 1.0, 0.98 is 0.98)
                "completion-1": wl([48, 40, 44.1], [0.1, 0.1, 0.1]),
                "completion-4": wl([110, 72, 99], [0.1, 0.1, 0.1]),
                "completion-4-np1": wl([50, 40, 45], [1, 1, 1]),
                "shared-prefix": wl([10, 10, 10], [0.1, 0.2, 0.1]),
                "no-prefix-cache": wl([10, 10, 10], [0.5, 0.5, 0.5]),
            }},
        },
        "notes": ["noisy"],
    }


def test_paired_ratio_is_the_median_of_per_round_ratios():
    r = results()["peers"]
    ours, theirs = r["kubellama"]["workloads"]["completion-4"], r["llama-server"]["workloads"]["completion-4"]
    # per round 110/100, 72/80, 99/90 = 1.1, 0.9, 1.1 -> median 1.1
    assert report.paired_ratio(ours, theirs, "gen_tok_s") == pytest.approx(1.1)
    ours1 = r["kubellama"]["workloads"]["completion-1"]
    theirs1 = r["llama-server"]["workloads"]["completion-1"]
    assert report.paired_ratio(ours1, theirs1, "gen_tok_s") == pytest.approx(0.98)
    assert math.isnan(report.paired_ratio(ours1, None, "gen_tok_s"))
    assert report.paired_ratio(ours, theirs, "ttft_p50", higher_is_better=False) == pytest.approx(2.0)


def test_targets_pass_miss_and_na():
    lines = report.targets(results())
    text = "\n".join(lines)
    assert "PASS 0.98x [rounds 0.96–1.00] — completion-1: gen tok/s vs llama-server >= 0.95x" in text
    assert "PASS 1.10x [rounds 0.90–1.10] — completion-4: gen tok/s vs llama-server >= 1.00x" in text
    assert "PASS 3.30x [rounds 2.40–3.67] — completion-4: gen tok/s vs llama-cpp-python >= 2.00x" in text
    # under it, what llama.cpp's own server reaches against the same peer (100/30, 80/30, 90/30)
    assert "  - 3.00x [rounds 2.67–3.33] — llama-server vs llama-cpp-python on completion-4 (peer, for reference)" in text
    assert "n/a — completion-8: gen tok/s vs llama-server" in text
    assert "PASS 2.20x [rounds 1.80–2.20] — issue 2" in text
    assert "PASS 5.00x [rounds 2.50–5.00] — kubellama: TTFT p50 with the shared prefix" in text


def test_miss_says_by_how_much():
    assert report._verdict("x", [0.8], 1.0) == "- MISS 0.80x — x (short by 20.0%)"
    assert report._verdict("x", [0.7, 0.8, 0.9], 1.0) == "- MISS 0.80x [rounds 0.70–0.90] — x (short by 20.0%)"
    # a near miss must not print as "1.00x"
    assert report._verdict("x", [0.996], 1.0) == "- MISS 0.996x — x (short by 0.4%)"


def test_markdown_has_tables_ratios_failures_and_notes():
    md = report.render_markdown(results())
    assert "| kubellama | /completion | 72.0" not in md  # median, not the first round
    assert "| kubellama | /completion | 99.0 (72.0–110.0)" in md
    assert "| llama-cpp-python | /v1/completions | 30.0" in md
    assert "_failed: HTTP 500_" in md
    assert "3.30x" in md
    assert "- noisy" in md
    assert "1-min load average during its runs 1.0–2.0" in md


def test_charts_are_png(tmp_path):
    paths = report.render_charts(results(), tmp_path)
    assert [p.name for p in paths] == ["gen_tok_s.png", "ttft_p50.png", "itl_p50.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 2_000 < len(data) < 200_000


def test_collapsed_stack_summary():
    raw = ("thread (0x1);main (app.py:1);step (engine.py:10);decode (llama.py:5) 60\n"
           "thread (0x1);main (app.py:1);step (engine.py:10);sample (engine.py:20) 30\n"
           "thread (0x2);serve (http.py:3) 10\n")
    s = summarize_collapsed(raw)
    assert s["samples"] == 100
    assert s["self"][0] == ("decode (llama.py:5)", 0.6)
    assert dict(s["inclusive"])["step (engine.py:10)"] == 0.9
    assert dict(s["threads"])["thread (0x2)"] == 0.1
    assert "60.0%  decode (llama.py:5)" in format_summary(s)
    with pytest.raises(ValueError, match="collapsed-stack"):
        summarize_collapsed("garbage")
