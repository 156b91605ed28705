"""Runs the workloads against each peer, one peer at a time, and collects results."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from bench import api as apis
from bench.loadgen import ClientPlan, RequestSpec, Workload, api_for, run_workload
from bench.peers import PEERS, RunningServer, ServerConfig, free_port, render_chat
from bench.stats import spread, summarize_run
from bench.tokens import Vocab

GROUPS = ("gen", "arrival")
Log = Callable[[str], None]


@dataclasses.dataclass
class RunSettings:
    model: str
    peers: list[str]
    workloads: list[Workload]
    reps: int = 3  # rounds: each starts every peer afresh and measures each workload once
    warmup: int = 1  # short discarded warm-up requests per API after each start
    threads: int = 2
    ctx_per_slot: int = 2048
    batch: int = 512
    sampling: apis.Sampling = dataclasses.field(default_factory=apis.Sampling)
    request_timeout_s: float = 600.0


def summarize_records(records) -> dict:
    out = {"all": summarize_run(records)}
    for g in GROUPS:
        if any(r.group == g for r in records):
            out[g] = summarize_run(records, group=g)
    return out


def spread_of(reps: list[dict]) -> dict:
    """min/median/max over repetitions of every figure of every record group."""
    out: dict = {}
    for group in reps[0] if reps else {}:
        keys = reps[0][group].keys()
        out[group] = {k: spread(r[group][k] for r in reps if group in r) for k in keys}
    return out


def load_average() -> list[float]:
    return list(os.getloadavg())


def _new_peer_result(peer_name: str) -> dict:
    peer = PEERS[peer_name]
    result: dict = {"label": peer.label, "status": "ok", "servers": {}, "workloads": {}}
    missing = peer.installed()
    if missing:
        result["status"] = f"not run: {missing}"
    return result


def start_servers(names: list[str], slots: int, s: RunSettings, results: dict, workdir: Path,
                  log: Log) -> dict[str, RunningServer]:
    """Start every peer with ``slots`` slots (each on its own port) and wait until ready."""
    servers = {}
    for name in names:
        peer = PEERS[name]
        cfg = ServerConfig(model=s.model, ctx=s.ctx_per_slot * slots, slots=slots,
                           threads=s.threads, batch=s.batch, port=free_port())
        t0 = time.perf_counter()
        server = RunningServer(peer, cfg, workdir)
        srv = results["peers"][name]["servers"].setdefault(str(slots), {"cmd": server.cmd})
        try:
            server.wait_ready()
        except RuntimeError as exc:
            srv["error"] = str(exc)
            log(f"[{name}] np={slots}: failed to start: {exc}")
            server.stop()
            continue
        srv["startup_s"] = time.perf_counter() - t0
        log(f"[{name}] np={slots} ctx={cfg.ctx}: ready in {srv['startup_s']:.1f}s")
        servers[name] = server
    return servers


WARM_UP_PROMPT = "Hello, how are you?"


def chat_prompt_problem(reported: int, expected: int) -> str | None:
    """Why a peer's chat figures are not comparable, or None: it must evaluate the prompt
    the shared template makes (one token of slack for a BOS rule)."""
    if not reported or abs(reported - expected) <= 1:
        return None
    return (f"its chat template is not the shared one: a warm-up chat prompt took {reported} prompt "
            f"tokens where the template gives {expected}")


def warm_up(peer_name, peer_apis, server: RunningServer, workloads: list[Workload], s: RunSettings,
            eog, vocab, log) -> str | None:
    """After a start: one short request per API used, ``s.warmup`` times (threads,
    allocations, first-use paths), discarded. Returns a problem with the peer's chat
    prompts (see chat_prompt_problem), if any."""
    families = sorted({w.family for w in workloads})
    problem = None
    expected = None  # prompt tokens of the warm-up chat under the shared template
    if server.cfg.chat_template and "chat" in families:
        expected = vocab.count_rendered(render_chat(
            server.cfg.chat_template, [{"role": "user", "content": WARM_UP_PROMPT}], vocab.bos_text()))
    for family in families:
        api = api_for(family, peer_apis)
        if api is None:
            continue
        w = Workload("warm-up", family, [ClientPlan([RequestSpec(WARM_UP_PROMPT, 8, seed=1)])])
        for _ in range(s.warmup):
            recs = asyncio.run(run_workload(server.base_url, api, w, s.sampling, eog, timeout_s=120))
            if recs[0].error:
                log(f"[{peer_name}] warm-up on {apis.PATHS[api]} failed: {recs[0].error[:150]}")
            elif api == apis.CHAT and expected is not None and problem is None:
                problem = chat_prompt_problem(recs[0].n_prompt, expected)
                if problem:
                    log(f"[{peer_name}] chat figures will not be compared: {problem}")
    return problem


def run_reps(peer_name, peer_apis, server: RunningServer, w: Workload, s: RunSettings, eog, vocab,
             log, out: dict, round_no: int) -> None:
    """One measured repetition (after a discarded one for workloads that prime caches)."""
    api = api_for(w.family, peer_apis)
    if api is None:
        out["status"] = f"unsupported: no {w.family} endpoint"
        return
    out["api"] = apis.PATHS[api]
    load_before = load_average()[0]
    n_discard = 1 if w.prime else 0
    for i in range(n_discard + 1):
        records = asyncio.run(run_workload(server.base_url, api, w, s.sampling, eog,
                                           timeout_s=s.request_timeout_s, count_tokens=vocab.count))
        errors = [r.error for r in records if r.error]
        if errors and len(errors) == len(records):
            out["status"] = f"failed: {errors[0]}"
            log(f"[{peer_name}] {w.name}: every request failed: {errors[0]}")
            return
        summary = summarize_records(records)
        tag = "priming (discarded)" if i < n_discard else f"round {round_no}"
        a = summary["all"]
        log(f"[{peer_name}] {w.name} {tag}: {a.get('gen_tok_s', float('nan')):.1f} gen tok/s, "
            f"ttft p50 {a.get('ttft_p50', float('nan')) * 1000:.0f} ms, "
            f"itl p50 {a.get('itl_p50', float('nan')) * 1000:.1f} ms"
            + (f", {len(errors)} errors ({errors[0][:100]})" if errors else "")
            + (f", {a['short_requests']:.0f} short" if a.get("short_requests") else ""))
        if i >= n_discard:
            out["reps"].append(summary)
    out["load"].append([load_before, load_average()[0]])
    out["peak_rss_bytes"] = max(server.peak_rss() or 0, out.get("peak_rss_bytes") or 0)
    out["spread"] = spread_of(out["reps"])


def run_all(s: RunSettings, workdir: Path, log: Log) -> dict:
    vocab = Vocab(s.model)
    settings = {
        "model": s.model, "model_bytes": Path(s.model).stat().st_size, "threads": s.threads,
        "ctx_per_slot": s.ctx_per_slot, "batch": s.batch, "reps": s.reps, "warmup": s.warmup,
        "sampling": dataclasses.asdict(s.sampling), "eog_tokens_banned": vocab.eog_tokens(),
        "workloads": {w.name: {"description": w.description, "slots": w.n_slots,
                               "family": w.family} for w in s.workloads},
    }
    results = {"settings": settings, "peers": {n: _new_peer_result(n) for n in s.peers}}
    for name, p in results["peers"].items():
        if p["status"] != "ok":
            log(f"[{name}] skipped: {p['status']}")
    eog = vocab.eog_tokens()
    by_slots: dict[int, list[Workload]] = defaultdict(list)
    for w in s.workloads:
        by_slots[w.n_slots].append(w)
    # Every peer is started once per slot count and all of them stay up together (an
    # idle server costs no CPU). In each round the workloads run in order, each on every
    # peer back to back (peer order rotated every round), so load from other users of a
    # shared machine hits all peers alike, and so do comparisons across workloads
    # (e.g. -np 4 vs -np 1) of one peer: ratios pair figures of the same round.
    names = [n for n, p in results["peers"].items() if p["status"] == "ok"]
    servers: dict[tuple[str, int], RunningServer] = {}
    try:
        for slots, workloads in sorted(by_slots.items()):
            for name, server in start_servers(names, slots, s, results, workdir, log).items():
                servers[(name, slots)] = server
                problem = warm_up(name, PEERS[name].apis, server, workloads, s, eog, vocab, log)
                if problem:
                    for w in workloads:
                        if w.family == "chat":
                            results["peers"][name]["workloads"][w.name] = {"status": f"not comparable: {problem}"}
        for round_no in range(1, s.reps + 1):
            k = (round_no - 1) % max(len(names), 1)
            order = names[k:] + names[:k]
            for w in s.workloads:
                for name in order:
                    server = servers.get((name, w.n_slots))
                    if server is None:
                        results["peers"][name]["workloads"].setdefault(w.name, {"status": "server failed to start"})
                        continue
                    wl = results["peers"][name]["workloads"].setdefault(
                        w.name, {"status": "ok", "reps": [], "load": []})
                    if wl["status"] == "ok":
                        run_reps(name, PEERS[name].apis, server, w, s, eog, vocab, log, wl, round_no)
    finally:
        for (name, slots), server in servers.items():
            results["peers"][name]["servers"][str(slots)]["peak_rss_bytes"] = server.peak_rss()
            server.stop()
    return results
