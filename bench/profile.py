"""py-spy profile of kubellama-server under a workload, summarized by function."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

from bench.loadgen import api_for, run_workload
from bench.peers import PEERS, RunningServer, ServerConfig, free_port, lcp_venv
from bench.tokens import Vocab


def summarize_collapsed(text: str, top: int = 15) -> dict:
    """Self and inclusive sample shares from py-spy's raw (collapsed-stack) output.

    Each line is ``frame;frame;...;leaf COUNT``; the first frame is the thread when
    py-spy ran with --threads."""
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            raise ValueError(f"not a collapsed-stack line: {line[:120]!r}")
        n = int(count)
        frames = stack.split(";")
        total += n
        if frames[0].startswith("thread ") or frames[0].startswith("process "):
            threads[frames[0]] += n
        self_c[frames[-1]] += n
        for f in set(frames):
            incl_c[f] += n

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(f, n / total) for f, n in c.most_common(top)] if total else []

    return {"samples": total, "self": share(self_c), "inclusive": share(incl_c), "threads": share(threads)}


def format_summary(summary: dict) -> str:
    lines = [f"{summary['samples']} samples"]
    for key, title in (("threads", "by thread"), ("self", "self time (leaf frame)"),
                       ("inclusive", "inclusive time")):
        if summary[key]:
            lines.append(f"{title}:")
            lines += [f"  {share * 100:5.1f}%  {frame}" for frame, share in summary[key]]
    return "\n".join(lines)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(lcp_venv() / "bin" / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("py-spy not found; run bench/setup_peers.sh (make bench-setup)")
    return found


def profile_kubellama(model: str, workload, threads: int, ctx_per_slot: int, out_dir: Path,
                      sampling, idle: bool = False) -> dict:
    """Start kubellama-server, record it with py-spy while the workload runs."""
    peer = PEERS["kubellama"]
    cfg = ServerConfig(model=model, ctx=ctx_per_slot * workload.n_slots, slots=workload.n_slots,
                       threads=threads, port=free_port())
    server = RunningServer(peer, cfg, out_dir)
    vocab = Vocab(model)
    try:
        server.wait_ready()
        api = api_for(workload.family, peer.apis)
        eog = vocab.eog_tokens()
        asyncio.run(run_workload(server.base_url, api, workload, sampling, eog))  # warm-up
        raw = out_dir / f"py-spy-{workload.name}.txt"
        cmd = [py_spy(), "record", "-p", str(server.proc.pid), "--format", "raw", "-o", str(raw),
               "--threads", "--nonblocking", "-r", "200"] + (["--idle"] if idle else [])
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        asyncio.run(run_workload(server.base_url, api, workload, sampling, eog))
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        _, err = spy.communicate(timeout=60)
        if not raw.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")
        summary = summarize_collapsed(raw.read_text())
        summary["raw_path"] = str(raw)
        return summary
    finally:
        server.stop()
