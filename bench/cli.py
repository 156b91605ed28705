"""``python -m bench``: set up the peers, run the benchmark, render the report, profile."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from bench import report
from bench.machine import describe
from bench.peers import CACHE, PEERS, REPO
from bench.runner import RunSettings, run_all
from bench.workloads import FULL, QUICK, all_workloads

DEFAULT_MODEL = os.environ.get("KUBELLAMA_DEFAULT_MODEL", str(CACHE / "models" / "gemma-3-270m-q4_k_m.gguf"))
DEFAULT_OUT = REPO / "bench" / "results"


def _log(msg: str) -> None:
    print(msg, flush=True)


def _csv(choices):
    def parse(value: str) -> list[str]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in items if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(choices)}")
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    wl_names = [w.name for w in all_workloads(FULL)]

    s = sub.add_parser("setup", help="build llama-server and the llama-cpp-python peers (cached)")
    s.set_defaults(func=cmd_setup)

    r = sub.add_parser("run", help="run the workloads against the peers and write the report")
    r.add_argument("--model", default=DEFAULT_MODEL, help="GGUF model file (default: %(default)s)")
    r.add_argument("--peers", type=_csv(list(PEERS)), default=list(PEERS),
                   help=f"comma-separated subset of {','.join(PEERS)}")
    r.add_argument("--workloads", type=_csv(wl_names), default=wl_names,
                   help=f"comma-separated subset of {','.join(wl_names)}")
    r.add_argument("--quick", action="store_true", help="small run: fewer tokens, 1 repetition")
    r.add_argument("--reps", type=int, help="measured repetitions (default 3, quick 1)")
    r.add_argument("--warmup", type=int, default=1, help="short discarded warm-up requests per API after each server start (default 1)")
    r.add_argument("--threads", type=int, default=2, help="threads for every server (default 2)")
    r.add_argument("--ctx-per-slot", type=int, default=2048, help="context per slot (default 2048)")
    r.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default bench/results)")
    r.add_argument("--note", action="append", default=[], help="a note to add to the report")
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser("report", help="re-render report.md and the charts from a results.json")
    rp.add_argument("results", type=Path)
    rp.set_defaults(func=cmd_report)

    pf = sub.add_parser("profile", help="py-spy profile of kubellama-server under one workload")
    pf.add_argument("--model", default=DEFAULT_MODEL)
    pf.add_argument("--workload", choices=wl_names, default="completion-8")
    pf.add_argument("--threads", type=int, default=2)
    pf.add_argument("--ctx-per-slot", type=int, default=2048)
    pf.add_argument("--idle", action="store_true", help="include idle (waiting) samples")
    pf.add_argument("--out", type=Path, default=DEFAULT_OUT)
    pf.set_defaults(func=cmd_profile)
    return p


def cmd_setup(args) -> int:
    for script in ("build_llama_server.sh", "setup_peers.sh"):
        rc = subprocess.call(["bash", str(REPO / "bench" / script)])
        if rc:
            print(f"error: bench/{script} failed (exit {rc})", file=sys.stderr)
            return rc
    return 0


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise SystemExit(f"error: {name} must be >= 0, got {value}")


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the peers' servers are stopped on the way out."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


def cmd_run(args) -> int:
    _exit_on_sigterm()
    if not Path(args.model).is_file():
        print(f"error: model file {args.model} not found; run 'make model' or pass --model PATH",
              file=sys.stderr)
        return 2
    for name in ("reps", "warmup"):
        _check_positive("--" + name, getattr(args, name))
    sizes = QUICK if args.quick else FULL
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    workloads = [w for w in all_workloads(sizes) if w.name in args.workloads]
    args.out.mkdir(parents=True, exist_ok=True)
    logs = CACHE / "bench" / "logs"  # server logs stay out of the repository
    logs.mkdir(parents=True, exist_ok=True)
    settings = RunSettings(model=args.model, peers=args.peers, workloads=workloads, reps=reps,
                           warmup=args.warmup, threads=args.threads, ctx_per_slot=args.ctx_per_slot)
    machine = describe(REPO)
    _log(f"benchmark: {len(args.peers)} peer(s) x {len(workloads)} workload(s), "
         f"{reps} round(s); results in {args.out}")
    results = run_all(settings, logs, _log)
    machine["load_average_at_end"] = list(os.getloadavg())
    results["machine"] = machine
    results["notes"] = args.note
    path = args.out / "results.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    return _render(path)


def _render(path: Path) -> int:
    results = json.loads(path.read_text())
    md = report.render_markdown(results)
    (path.parent / "report.md").write_text(md)
    charts = report.render_charts(results, path.parent)
    print(md)
    print(f"wrote {path.parent / 'report.md'} and {', '.join(c.name for c in charts)}")
    return 0


def cmd_report(args) -> int:
    if not args.results.is_file():
        print(f"error: {args.results} not found; run 'python -m bench run' first", file=sys.stderr)
        return 2
    return _render(args.results)


def cmd_profile(args) -> int:
    _exit_on_sigterm()
    from bench import profile
    from bench.api import Sampling

    wl = next(w for w in all_workloads(FULL) if w.name == args.workload)
    args.out.mkdir(parents=True, exist_ok=True)
    logs = CACHE / "bench" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    summary = profile.profile_kubellama(args.model, wl, args.threads, args.ctx_per_slot, logs,
                                        Sampling(), idle=args.idle)
    text = profile.format_summary(summary)
    (args.out / f"profile-{wl.name}.txt").write_text(text + "\n")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
