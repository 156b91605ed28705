"""``python -m bench.routing``: kubellama-router's strategies on a multi-turn chat workload.

Three (``--replicas``) kubellama-server processes on loopback, restarted cold for every arm, behind
one kubellama-router process per arm. Conversations come in a few groups; each group shares a long
system prompt, each turn re-sends the whole history (as chat clients do), conversations start at
seeded exponential arrival times and think a seeded while between turns. The external arm
`vllm-router` is vllm-router from PyPI (`--policy cache_aware`) in front of the same replicas. Per arm: TTFT p50/p90,
generated tokens/s, prompt tokens served from a replica's cache, and how evenly the replicas
were loaded. The first arm listed is the baseline of the ratios.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.machine import describe
from bench.peers import CACHE, PEERS, REPO, RunningServer, ServerConfig, free_port
from bench.stats import percentile
from kubellama_server.promtext import read_samples

ARMS = ("random", "round-robin", "least-load", "prefix", "kubeai-prefixhash", "vllm-router")
#: The external peer: vllm-router from PyPI (its cache_aware policy), in a virtualenv of its own.
VLLM_ROUTER = CACHE / "bench" / "venv-vllm-router" / "bin" / "vllm-router"
DEFAULT_MODEL = os.environ.get("KUBELLAMA_DEFAULT_MODEL", str(CACHE / "models" / "gemma-3-270m-q4_k_m.gguf"))
WORDS = ("orbit comet nebula galaxy quasar pulsar asteroid meteor crater eclipse solstice equinox zenith "
         "horizon aurora corona plasma photon neutron proton quark gravity inertia momentum velocity "
         "spectrum radiation telescope observatory satellite rocket capsule module station docking").split()


@dataclass(frozen=True)
class Conversation:
    cid: int
    group: int
    system: str
    questions: tuple[str, ...]  # one user message per turn
    start: float  # seconds after the arm starts
    think: tuple[float, ...]  # pause before each later turn


@dataclass(frozen=True)
class Workload:
    """Defaults: chats about a document, 18 conversations on the 12 slots of 3 replicas x 4 (slots
    oversubscribed), each conversation's history (~1,000-1,500 tokens) worth more than its group's
    system prompt (~400), so a turn sent away from its replica re-evaluates most of its prompt."""

    groups: int = 3
    per_group: int = 6
    turns: int = 6
    system_chars: int = 2400
    question_chars: int = 200
    document_chars: int = 4000  # a document of its own pasted into each conversation's first question
    max_tokens: int = 32
    rate: float = 0.3  # conversations started per second (exponential gaps)
    think_mean: float = 2.0
    seed: int = 7


def _text(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < chars:
        out.append(rng.choice(WORDS))
    return " ".join(out)[:chars]


def conversations(w: Workload) -> list[Conversation]:
    """The seeded conversations (pure): same workload, same conversations, whatever the arm."""
    rng = random.Random(w.seed)
    systems = [f"Group {g} instructions. " + _text(rng, w.system_chars) for g in range(w.groups)]
    out, t = [], 0.0
    order = [g for g in range(w.groups) for _ in range(w.per_group)]
    rng.shuffle(order)
    for cid, group in enumerate(order):
        questions = tuple(f"Question {cid}.{k}: " + _text(rng, w.question_chars) for k in range(w.turns))
        if w.document_chars:
            questions = (questions[0] + "\n\nDocument:\n" + _text(rng, w.document_chars),) + questions[1:]
        think = tuple(rng.expovariate(1 / w.think_mean) for _ in range(w.turns - 1))
        out.append(Conversation(cid, group, systems[group], questions, t, think))
        t += rng.expovariate(w.rate)
    return out


@dataclass
class TurnRecord:
    cid: int
    turn: int
    ttft: float | None = None
    latency: float = 0.0
    generated: int = 0
    prompt: int = 0
    cached: int = 0
    error: str | None = None


async def run_conversation(client: httpx.AsyncClient, url: str, conv: Conversation, w: Workload,
                           t0: float, out: list[TurnRecord]) -> None:
    await asyncio.sleep(max(0.0, conv.start - (time.perf_counter() - t0)))
    messages = [{"role": "system", "content": conv.system}]
    for k, question in enumerate(conv.questions):
        if k:
            await asyncio.sleep(conv.think[k - 1])
        messages.append({"role": "user", "content": question})
        rec = TurnRecord(conv.cid, k)
        body = {"messages": messages, "max_tokens": w.max_tokens, "stream": True, "temperature": 0.7,
                "seed": conv.cid * 100 + k, "ignore_eos": True, "stream_options": {"include_usage": True}}
        text, start = [], time.perf_counter()
        try:
            async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
                if resp.status_code != 200:
                    rec.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                else:
                    async for line in resp.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        for choice in chunk.get("choices") or []:
                            piece = (choice.get("delta") or {}).get("content")
                            if piece:
                                if rec.ttft is None:
                                    rec.ttft = time.perf_counter() - start
                                text.append(piece)
                        usage = chunk.get("usage")
                        if usage:
                            rec.generated = usage.get("completion_tokens", 0)
                            rec.prompt = usage.get("prompt_tokens", 0)
                            rec.cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        except httpx.HTTPError as exc:
            rec.error = f"{type(exc).__name__}: {exc}"
        rec.latency = time.perf_counter() - start
        out.append(rec)
        if rec.error:
            return  # a broken conversation stops (its history is lost)
        messages.append({"role": "assistant", "content": "".join(text)})


def summarize(records: list[TurnRecord], wall: float, served: list[int]) -> dict:
    """Per-arm figures (pure)."""
    ok = [r for r in records if r.error is None]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    prompt, cached = sum(r.prompt for r in ok), sum(r.cached for r in ok)
    later = [r.ttft for r in ok if r.turn > 0 and r.ttft is not None]
    mean_served = sum(served) / len(served) if served else 0.0
    return {
        "requests": len(records), "errors": len(records) - len(ok),
        "ttft_p50_s": percentile(ttfts, 50), "ttft_p90_s": percentile(ttfts, 90),
        "ttft_later_turns_p50_s": percentile(later, 50),
        "gen_tok_s": sum(r.generated for r in ok) / wall if wall > 0 else 0.0,
        "wall_s": wall, "prompt_tokens": prompt, "cached_tokens": cached,
        "cached_share": cached / prompt if prompt else 0.0,
        "served_per_replica": served, "max_over_mean_load": max(served) / mean_served if mean_served else 0.0,
    }


def _router_cmd(strategy: str, urls: list[str], port: int) -> list[str]:
    if strategy == "vllm-router":
        return [str(VLLM_ROUTER), "--host", "127.0.0.1", "--port", str(port), "--policy", "cache_aware",
                "--worker-urls", *urls]
    exe = Path(sys.executable).with_name("kubellama-router")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "kubellama_router"]
    return cmd + ["--strategy", strategy, "--seed", "1", "--host", "127.0.0.1", "--port", str(port),
                  "--log-level", "warning", *[a for u in urls for a in ("--replica", u)]]


def served_chats(url: str) -> int:
    """Chat requests a replica answered (its kubellama_requests_total), whichever router sent them."""
    samples = read_samples(httpx.get(url + "/metrics", timeout=10).content, ("kubellama_requests_total",), limit=None)
    if samples is None:
        raise RuntimeError(f"{url}/metrics is not a Prometheus text page")
    return sum(int(s.value) for s in samples if s.labels.get("endpoint") == "/v1/chat/completions")


def _wait(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not healthy after {timeout}s")


class _Replica:
    """kubellama-server as the bench starts it, plus --metrics (least-load scrapes it) and --server-arg flags."""

    name = "kubellama"
    health_path = PEERS["kubellama"].health_path

    def __init__(self, extra: list[str] | None = None):
        self.extra = list(extra or [])

    def command(self, cfg: ServerConfig, workdir: Path) -> list[str]:
        return PEERS["kubellama"].command(cfg, workdir) + ["--metrics"] + self.extra


def run_arm(arm: str, args, w: Workload, convs: list[Conversation], logdir: Path) -> dict:
    servers = []
    for i in range(args.replicas):
        cfg = ServerConfig(model=args.model, ctx=args.ctx_per_slot * args.slots, slots=args.slots,
                           threads=args.threads, port=free_port())
        (logdir / f"{arm}-{i}").mkdir(parents=True, exist_ok=True)
        servers.append(RunningServer(_Replica(args.server_arg), cfg, logdir / f"{arm}-{i}"))
    router = None
    try:
        for s in servers:
            s.wait_ready()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(logdir / f"router-{arm}.log", "wb") as log:
            router = subprocess.Popen(_router_cmd(arm, [s.base_url for s in servers], port), stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        _wait(url, router)

        async def drive() -> tuple[list[TurnRecord], float]:
            records: list[TurnRecord] = []
            limits = httpx.Limits(max_connections=None)
            async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as client:
                t0 = time.perf_counter()
                await asyncio.gather(*(run_conversation(client, url, c, w, t0, records) for c in convs))
                return records, time.perf_counter() - t0

        load_before = os.getloadavg()[0]
        records, wall = asyncio.run(drive())
        served = [served_chats(s.base_url) for s in servers]
        out = summarize(records, wall, served)
        out["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # 1-min, before/after
        out["records"] = [asdict(r) for r in records]
        return out
    finally:
        if router is not None and router.poll() is None:
            os.killpg(router.pid, signal.SIGTERM)
            router.wait(15)
        for s in servers:
            s.stop()


def render(results: dict) -> str:
    arms = results["arms"]
    base = results["baseline"]
    w = results["workload"]
    lines = [
        "# kubellama-router: strategies on a multi-turn chat workload", "",
        f"{w['groups']} groups x {w['per_group']} conversations x {w['turns']} turns "
        f"({w['groups'] * w['per_group']} conversations on {results['settings']['replicas'] * results['settings']['slots']}"
        f" slots); system prompts of "
        f"{w['system_chars']} characters shared per group, questions of {w['question_chars']}"
        + (f" (the first with a document of {w['document_chars']} characters of its own)"
           if w.get("document_chars") else "") + ", "
        f"{w['max_tokens']} tokens per answer; conversations start at {w['rate']}/s (seed {w['seed']}), think "
        f"{w['think_mean']} s on average between turns. {results['settings']['replicas']} kubellama-server replicas "
        f"(`-np {results['settings']['slots']} -t {results['settings']['threads']}`, "
        f"{results['settings']['ctx_per_slot']} tokens per slot), restarted cold for every arm.", "",
        f"Model: `{Path(results['settings']['model']).name}`. Machine: {results['machine'].get('cpu', '?')}, "
        f"{results['machine'].get('cpus', '?')} CPUs. Command: `{results['command']}`", "",
        "| arm | TTFT p50 | TTFT p90 | TTFT p50, turns 2+ | gen tok/s | prompt tokens from cache | "
        "max/mean replica load | requests per replica | errors | load average (1 min) before/after | "
        "TTFT p50 vs " + base + " |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    b = arms.get(base, {})
    for name, a in arms.items():
        ratio = b.get("ttft_p50_s", 0) / a["ttft_p50_s"] if a.get("ttft_p50_s") else float("nan")
        lines.append(
            f"| {name} | {a['ttft_p50_s'] * 1000:.0f} ms | {a['ttft_p90_s'] * 1000:.0f} ms | "
            f"{a['ttft_later_turns_p50_s'] * 1000:.0f} ms | {a['gen_tok_s']:.1f} | "
            f"{a['cached_tokens']}/{a['prompt_tokens']} ({a['cached_share'] * 100:.0f}%) | "
            f"{a['max_over_mean_load']:.2f} | {a['served_per_replica']} | {a['errors']} | "
            f"{'/'.join(str(x) for x in a.get('load_average', [])) or '?'} | {ratio:.2f}x |")
    if "prefix" in arms and base in arms:
        p = arms["prefix"]
        speedup = b["ttft_p50_s"] / p["ttft_p50_s"] if p["ttft_p50_s"] else 0.0
        others = [n for n in arms if n != "prefix"]
        best = all(p["ttft_p50_s"] <= arms[n]["ttft_p50_s"] for n in others)
        lines += ["", "## Targets (issue 18)", "",
                  f"- prefix TTFT p50 >= 5x lower than {base}: {speedup:.2f}x — {'PASS' if speedup >= 5 else 'MISS'}",
                  f"- prefix throughput >= {base}'s: {p['gen_tok_s']:.1f} vs {b['gen_tok_s']:.1f} tok/s — "
                  f"{'PASS' if p['gen_tok_s'] >= b['gen_tok_s'] * 0.98 else 'MISS'} (2% noise allowed)",
                  f"- prefix TTFT p50 lowest of all arms: {'PASS' if best else 'MISS'}"]
    for note in results.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, first is the baseline ({','.join(ARMS)})")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ctx-per-slot", type=int, default=4096)
    p.add_argument("--groups", type=int, default=Workload.groups)
    p.add_argument("--per-group", type=int, default=Workload.per_group)
    p.add_argument("--turns", type=int, default=Workload.turns)
    p.add_argument("--system-chars", type=int, default=Workload.system_chars)
    p.add_argument("--max-tokens", type=int, default=Workload.max_tokens)
    p.add_argument("--question-chars", type=int, default=Workload.question_chars)
    p.add_argument("--document-chars", type=int, default=Workload.document_chars,
                   help="a document of its own in each conversation's first question (chat about a file)")
    p.add_argument("--think", type=float, default=Workload.think_mean, help="mean pause between turns (s)")
    p.add_argument("--rate", type=float, default=Workload.rate)
    p.add_argument("--seed", type=int, default=Workload.seed)
    p.add_argument("--server-arg", action="append", default=[],
                   help="a kubellama-server flag for every replica (repeatable), e.g. --server-arg=--cache-ram=0")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "router")
    p.add_argument("--note", action="append", default=[])
    args = p.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        p.error(f"--arms: unknown {bad}; choose from {','.join(ARMS)}")
    if "vllm-router" in arms and not VLLM_ROUTER.exists():
        print(f"vllm-router not installed at {VLLM_ROUTER} (make bench-router-setup): arm skipped", flush=True)
        arms.remove("vllm-router")
    w = Workload(groups=args.groups, per_group=args.per_group, turns=args.turns, system_chars=args.system_chars,
                 max_tokens=args.max_tokens, rate=args.rate, seed=args.seed, question_chars=args.question_chars,
                 document_chars=args.document_chars, think_mean=args.think)
    convs = conversations(w)
    args.out.mkdir(parents=True, exist_ok=True)
    logdir = CACHE / "bench" / "logs" / "router"
    logdir.mkdir(parents=True, exist_ok=True)
    results = {"workload": asdict(w), "baseline": arms[0], "arms": {}, "notes": args.note,
               "settings": {"replicas": args.replicas, "slots": args.slots, "threads": args.threads,
                            "ctx_per_slot": args.ctx_per_slot, "model": args.model, "server_args": args.server_arg},
               "machine": describe(REPO), "command": "python -m bench.routing " + " ".join(argv or sys.argv[1:])}
    for arm in arms:
        print(f"==> {arm}", flush=True)
        res = run_arm(arm, args, w, convs, logdir)
        results["arms"][arm] = res
        print(f"    TTFT p50 {res['ttft_p50_s'] * 1000:.0f} ms, p90 {res['ttft_p90_s'] * 1000:.0f} ms, "
              f"{res['gen_tok_s']:.1f} tok/s, cached {res['cached_share'] * 100:.0f}%, "
              f"served {res['served_per_replica']}, errors {res['errors']}", flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "report.md").write_text(render(results))
    print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
