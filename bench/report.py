"""Turn a results.json into a Markdown report (tables, ratios, targets) and PNG charts."""
from __future__ import annotations

import math
from pathlib import Path

from bench.peers import OURS
from bench.stats import percentile, ratio

# (key, column title, scale, format, higher is better)
COLUMNS = [
    ("gen_tok_s", "gen tok/s", 1.0, "{:.1f}", True),
    ("prompt_tok_s", "prompt tok/s", 1.0, "{:.0f}", True),
    ("ttft_p50", "TTFT p50 ms", 1000.0, "{:.0f}", False),
    ("ttft_p99", "TTFT p99 ms", 1000.0, "{:.0f}", False),
    ("itl_p50", "ITL p50 ms", 1000.0, "{:.1f}", False),
    ("itl_p99", "ITL p99 ms", 1000.0, "{:.1f}", False),
    ("req_s", "req/s", 1.0, "{:.2f}", True),
]
# Issue 6 / issue 2 targets: (workload, peer, minimum ratio of our gen tok/s to the peer's)
REFERENCE = "llama-server"  # llama.cpp's own server: what the hardware allows
THROUGHPUT_TARGETS = [
    ("completion-1", "llama-server", 0.95), ("chat-1", "llama-server", 0.95),
    ("completion-4", "llama-server", 1.0), ("chat-4", "llama-server", 1.0),
    ("completion-8", "llama-server", 1.0), ("chat-8", "llama-server", 1.0),
    ("completion-4", "llama-cpp-python", 2.0), ("chat-4", "llama-cpp-python", 2.0),
    ("completion-8", "llama-cpp-python", 2.0), ("chat-8", "llama-cpp-python", 2.0),
]


def figure(wl: dict | None, key: str, group: str = "all", stat: str = "median") -> float:
    """One figure of one workload result (median over repetitions by default)."""
    try:
        return float(wl["spread"][group][key][stat])
    except (KeyError, TypeError):
        return math.nan


def paired_ratios(ours: dict | None, theirs: dict | None, key: str, group: str = "all",
                  higher_is_better: bool = True) -> list[float]:
    """Our figure / the peer's, round by round."""
    try:
        pairs = zip(ours["reps"], theirs["reps"])
        rs = [ratio(a[group][key], b[group][key], higher_is_better) for a, b in pairs]
    except (KeyError, TypeError):
        return []
    return [r for r in rs if not math.isnan(r)]


def paired_ratio(ours: dict | None, theirs: dict | None, key: str, group: str = "all",
                 higher_is_better: bool = True) -> float:
    """Median over rounds of our figure / the peer's in the same round.

    Peers take turns round by round, so pairing by round cancels most of the drift
    caused by other load on a shared machine."""
    rs = paired_ratios(ours, theirs, key, group, higher_is_better)
    return percentile(rs, 50) if rs else math.nan


def _fmt(x: float, fmt: str, scale: float = 1.0) -> str:
    return "n/a" if x is None or math.isnan(x) else fmt.format(x * scale)


def _fmt_ratio(r: float) -> str:
    return "n/a" if math.isnan(r) else f"{r:.2f}x"


def workload_table(results: dict, wname: str, group: str = "all") -> list[str]:
    peers = results["peers"]
    ours = peers.get(OURS, {}).get("workloads", {}).get(wname)
    head = ["peer", "API"] + [c[1] for c in COLUMNS] + ["peak RSS MiB", "ours / peer (gen tok/s)",
                                                         "ours / peer (TTFT p50)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, p in peers.items():
        wl = p.get("workloads", {}).get(wname)
        if wl is None:
            continue
        if wl.get("status") != "ok" or not wl.get("reps"):
            lines.append(f"| {name} | {wl.get('api', '')} | " + " | ".join(["n/a"] * (len(head) - 2))
                         + f" |\n|  | _{wl.get('status', 'no data')}_ |")
            continue
        cells = [name, wl.get("api", "")]
        for key, _, scale, fmt, _ in COLUMNS:
            med = figure(wl, key, group)
            cell = _fmt(med, fmt, scale)
            if key == "gen_tok_s" and wl["spread"][group][key]["n"] > 1:
                cell += f" ({_fmt(figure(wl, key, group, 'min'), fmt)}–{_fmt(figure(wl, key, group, 'max'), fmt)})"
            cells.append(cell)
        rss = wl.get("peak_rss_bytes")
        cells.append(f"{rss / 2**20:.0f}" if rss else "n/a")
        if name == OURS:
            cells += ["—", "—"]
        else:
            cells.append(_fmt_ratio(paired_ratio(ours, wl, "gen_tok_s", group)))
            cells.append(_fmt_ratio(paired_ratio(ours, wl, "ttft_p50", group, higher_is_better=False)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def targets(results: dict) -> list[str]:
    """The issue's targets as PASS/MISS lines (n/a when a side has no data)."""
    peers = results["peers"]
    ours = peers.get(OURS, {}).get("workloads", {})
    out = []
    for wname, peer, want in THROUGHPUT_TARGETS:
        theirs = peers.get(peer, {}).get("workloads", {}).get(wname)
        rs = paired_ratios(ours.get(wname), theirs, "gen_tok_s")
        out.append(_verdict(f"{wname}: gen tok/s vs {peer} >= {want:.2f}x", rs, want))
        if peer != REFERENCE and OURS in peers and REFERENCE in peers:
            # what the C++ server reaches against the same peer: the bar the hardware allows
            ref = paired_ratios(peers[REFERENCE].get("workloads", {}).get(wname),
                                theirs, "gen_tok_s")
            out.append("  " + _verdict(f"{REFERENCE} vs {peer} on {wname} (peer, for reference)", ref, None))
    rs = paired_ratios(ours.get("completion-4"), ours.get("completion-4-np1"), "gen_tok_s")
    out.append(_verdict("issue 2: kubellama -np 4 vs -np 1 with 4 clients, gen tok/s >= 2.00x", rs, 2.0))
    for name, p in peers.items():
        if name != OURS:
            wls = p.get("workloads", {})
            rs = paired_ratios(wls.get("completion-4"), wls.get("completion-4-np1"), "gen_tok_s")
            out.append(_verdict(f"{name}: -np 4 vs -np 1 with 4 clients, gen tok/s (peer, for reference)",
                                rs, None))
    for name, p in peers.items():
        wls = p.get("workloads", {})
        rs = paired_ratios(wls.get("shared-prefix"), wls.get("no-prefix-cache"), "ttft_p50",
                           higher_is_better=False)
        want = 3.0 if name == OURS else None
        out.append(_verdict(f"{name}: TTFT p50 with the shared prefix vs without caching"
                            + (" >= 3.00x" if want else " (peer, for reference)"), rs, want))
    return out


def _verdict(what: str, rounds: list[float], want: float | None) -> str:
    """One target line: the median of the per-round ratios, and their range."""
    if not rounds:
        return f"- n/a — {what} (no data on one side)"
    r = percentile(rounds, 50)
    # three decimals where two would hide which side of the target we are on
    digits = 3 if want is not None and round(r, 2) == round(want, 2) and r != want else 2
    rng = f" [rounds {min(rounds):.{digits}f}–{max(rounds):.{digits}f}]" if len(rounds) > 1 else ""
    if want is None:
        return f"- {r:.2f}x{rng} — {what}"
    if r >= want:
        return f"- PASS {r:.{digits}f}x{rng} — {what}"
    return f"- MISS {r:.{digits}f}x{rng} — {what} (short by {(1 - r / want) * 100:.1f}%)"


def render_markdown(results: dict) -> str:
    m, s = results.get("machine", {}), results["settings"]
    lines = ["# kubellama benchmark", ""]
    lines += ["## Machine", ""] + [f"- {k}: {v}" for k, v in m.items()] + [""]
    lines += ["## Method", "",
              f"- model `{Path(s['model']).name}` ({s['model_bytes'] / 2**20:.0f} MiB); every peer gets "
              f"the same context ({s['ctx_per_slot']} tokens per slot x slots), slots, "
              f"{s['threads']} threads and batch {s['batch']}",
              f"- every peer is started once per slot count and all those servers stay up together (an idle "
              f"server costs no CPU); each gets {s['warmup']} discarded short warm-up request(s) per API; then "
              f"{s['reps']} round(s): in each round the workloads run in order, each on every peer back to "
              "back (peer order rotated every round), so load from other users of the machine hits all "
              "peers, and a peer's successive workloads, alike (the shared-prefix workload runs once more "
              "just before, discarded, to fill the prompt caches as in steady state); tables "
              "show the median over rounds (gen tok/s also min–max); a ratio is the median over rounds of "
              "the two figures measured in the same round",
              f"- identical sampling {s['sampling']}, fixed seeds; end-of-generation tokens "
              f"{s['eog_tokens_banned']} banned with logit_bias (and ignore_eos) so every request "
              "generates exactly n_predict tokens on every peer",
              "- gen tok/s = generated tokens of all clients / wall time of the repetition; TTFT = time "
              "to the first streamed token; ITL = gap between streamed tokens; prompt tok/s = median over "
              "requests of prompt tokens / TTFT; peak RSS = VmHWM of the server process",
              "- peers that have no /completion are measured on /v1/completions (the API column says which)",
              ""]
    lines += ["## Targets", ""] + targets(results) + [""]
    lines += ["## Results", ""]
    for wname, w in s["workloads"].items():
        lines += [f"### {wname}", "", f"{w['description']} ({w['slots']} slot(s)).", ""]
        lines += workload_table(results, wname)
        if wname == "mixed":
            for g, what in (("gen", "the generating clients"), ("arrival", "the arriving long prompts")):
                lines += ["", f"Only {what}:", ""] + workload_table(results, wname, g)
        lines.append("")
    lines += ["## Peer status", ""]
    for name, p in results["peers"].items():
        loads = [x for wl in p.get("workloads", {}).values() for pair in wl.get("load", []) for x in pair]
        load = f"; 1-min load average during its runs {min(loads):.1f}–{max(loads):.1f}" if loads else ""
        lines.append(f"- {name} ({p['label']}): {p['status']}{load}")
        for slots, srv in p.get("servers", {}).items():
            if "cmd" in srv:
                lines.append(f"  - np={slots}: `{' '.join(srv['cmd'])}`"
                             + (f" — {srv['error']}" if "error" in srv else ""))
    notes = results.get("notes")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def render_charts(results: dict, out_dir: Path) -> list[Path]:
    """Bar charts (PNG) of gen tok/s and of latencies per workload and peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = list(results["peers"])
    wnames = list(results["settings"]["workloads"])
    paths = []
    for fname, key, scale, title in (
        ("gen_tok_s.png", "gen_tok_s", 1.0, "aggregate generated tokens/s (higher is better)"),
        ("ttft_p50.png", "ttft_p50", 1000.0, "time to first token p50, ms (lower is better)"),
        ("itl_p50.png", "itl_p50", 1000.0, "inter-token latency p50, ms (lower is better)"),
    ):
        fig, ax = plt.subplots(figsize=(10, 3.6), dpi=72)
        width = 0.8 / max(len(peers), 1)
        for i, name in enumerate(peers):
            wls = results["peers"][name].get("workloads", {})
            med = [figure(wls.get(w), key) * scale for w in wnames]
            lo = [max(m - figure(wls.get(w), key, stat="min") * scale, 0) if not math.isnan(m) else 0
                  for m, w in zip(med, wnames)]
            hi = [max(figure(wls.get(w), key, stat="max") * scale - m, 0) if not math.isnan(m) else 0
                  for m, w in zip(med, wnames)]
            xs = [j + (i - (len(peers) - 1) / 2) * width for j in range(len(wnames))]
            ax.bar(xs, [0 if math.isnan(m) else m for m in med], width, yerr=[lo, hi], label=name,
                   capsize=2)
        ax.set_xticks(range(len(wnames)))
        ax.set_xticklabels(wnames, rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
