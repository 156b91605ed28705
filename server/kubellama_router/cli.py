"""`kubellama-router`: command line; every flag also reads KUBELLAMA_ROUTER_<FLAG> from the environment."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__, strategies
from .settings import RouterSettings

#: (flag, dest, type, help)
FLAGS: list[tuple[str, str, type, str]] = [
    ("--host", "host", str, "listen address [0.0.0.0]"),
    ("--port", "port", int, "listen port [8080]"),
    ("--strategy", "strategy", str, f"routing strategy: {', '.join(strategies.NAMES)} [prefix]"),
    ("--service", "endpoints_service", str, "follow the ready endpoints of this Kubernetes Service "
     "(its EndpointSlices, watched with the pod's service account)"),
    ("--namespace", "endpoints_namespace", str, "the Service's namespace [the pod's own]"),
    ("--service-port", "endpoints_port", str, "the endpoint port name [http]"),
    ("--load-factor", "load_factor", float, "bounded-load factor of prefix, session and kubeai-prefixhash: "
     "a replica takes a request while its in-flight + 1 <= factor x mean [1.25]"),
    ("--block-chars", "block_chars", int, "prefix: characters per prompt block [64]"),
    ("--index-blocks", "index_blocks", int, "prefix: blocks remembered per replica (LRU) [31250]"),
    ("--session-header", "session_header", str, "session: the header naming a session, else the "
     "body's `user` (OpenAI) or `metadata.user_id` (Anthropic) [x-session-id]"),
    ("--max-inflight", "max_inflight", int, "requests in flight per replica above which it is saturated [32]"),
    ("--max-queue", "max_queue", int, "requests waiting for a replica before 503 [256]"),
    ("--queue-timeout", "queue_timeout", float, "seconds a request waits for a replica before 503 [30]"),
    ("--max-body", "max_body", int, "largest request body in bytes (413 above) [67108864]"),
    ("--retries", "retries", int, "other replicas tried after a connection error or 503 [2]"),
    ("--connect-timeout", "connect_timeout", float, "seconds to connect to a replica [5]"),
    ("--read-timeout", "read_timeout", float, "seconds without a byte from a replica before giving up [600]"),
    ("--scrape-interval", "scrape_interval", float, "seconds between reads of the replicas' /metrics [1]"),
    ("--seed", "seed", int, "seed of the random choices (tests, benchmarks)"),
    ("--autoscale", "autoscale", str, "autoscale this LlamaServer (in --namespace) through its scale subresource: "
     "replicas = ceil(moving average of in-flight + queued requests / --target-requests); a request held while "
     "no replica exists scales to one at once (scale from zero; raise --queue-timeout to cover the model load)"),
    ("--min-replicas", "min_replicas", int, "autoscaling: fewest replicas (0: scale to zero when idle) [1]"),
    ("--max-replicas", "max_replicas", int, "autoscaling: most replicas [3]"),
    ("--target-requests", "target_requests", float, "autoscaling: in-flight + queued requests per replica [4]"),
    ("--autoscale-window", "autoscale_window", float, "autoscaling: seconds of the moving average [60]"),
    ("--scale-down-delay", "scale_down_delay", float, "autoscaling: seconds a lower count must hold before "
     "scaling down [120]"),
    ("--log-level", "log_level", str, "debug, info, warning, error [info]"),
]


def env_name(flag: str) -> str:
    return "KUBELLAMA_ROUTER_" + flag[2:].upper().replace("-", "_")


def parse(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> RouterSettings:
    environ = os.environ if environ is None else environ
    p = argparse.ArgumentParser(prog="kubellama-router", description="Routes OpenAI, Anthropic and llama.cpp "
                                "API requests across kubellama-server replicas by cache affinity and load.")
    p.add_argument("--version", action="version", version=f"kubellama-router {__version__}")
    p.add_argument("--replica", dest="replicas", action="append", metavar="URL",
                   help="a replica's base URL, e.g. http://10.0.0.5:8080 (repeatable; env "
                        "KUBELLAMA_ROUTER_REPLICAS, comma-separated)")
    defaults = RouterSettings()
    for flag, dest, typ, help_ in FLAGS:
        p.add_argument(flag, dest=dest, type=typ, metavar=flag[2:].upper().replace("-", "_"),
                       help=f"{help_} (env {env_name(flag)})")
    args = p.parse_args(argv)
    values = {}
    for flag, dest, typ, _ in FLAGS:
        v = getattr(args, dest)
        if v is None and environ.get(env_name(flag)):
            try:
                v = typ(environ[env_name(flag)])
            except ValueError:
                p.error(f"{env_name(flag)}: not a valid {typ.__name__}: {environ[env_name(flag)]!r}")
        values[dest] = getattr(defaults, dest) if v is None else v
    replicas = args.replicas or [u for u in environ.get("KUBELLAMA_ROUTER_REPLICAS", "").split(",") if u.strip()]
    s = RouterSettings(replicas=[u.strip() for u in replicas], **values)
    problems = []
    if s.strategy not in strategies.NAMES:
        problems.append(f"--strategy: {s.strategy!r} is not one of {', '.join(strategies.NAMES)}")
    if not s.replicas and not s.endpoints_service:
        problems.append("no replicas: give --replica URL (repeatable) or --service NAME")
    for u in s.replicas:
        if not u.startswith(("http://", "https://")):
            problems.append(f"--replica: {u!r} is not an http(s) URL")
    for dest, low in (("max_inflight", 1), ("max_queue", 0), ("max_body", 1), ("retries", 0), ("block_chars", 1),
                      ("index_blocks", 1)):
        if getattr(s, dest) < low:
            problems.append(f"--{dest.replace('_', '-')} must be >= {low}")
    if s.load_factor < 1.0:
        problems.append("--load-factor must be >= 1")
    if s.autoscale and not s.endpoints_service:
        problems.append("--autoscale needs --service (the replicas it starts are found through their endpoints)")
    if s.autoscale and not 0 <= s.min_replicas <= s.max_replicas:
        problems.append("--min-replicas must be >= 0 and <= --max-replicas")
    if s.autoscale and (s.target_requests <= 0 or s.autoscale_window <= 0 or s.scale_down_delay < 0):
        problems.append("--target-requests and --autoscale-window must be > 0, --scale-down-delay >= 0")
    if s.queue_timeout < 0 or s.scrape_interval <= 0:
        problems.append("--queue-timeout must be >= 0 and --scrape-interval > 0")
    if problems:
        p.error("; ".join(problems))
    if (s.endpoints_service or s.autoscale) and not s.endpoints_namespace:
        try:
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                s.endpoints_namespace = f.read().strip()
        except OSError:
            s.endpoints_namespace = "default"
    return s


def main(argv: list[str] | None = None) -> None:
    settings = parse(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from .app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False)
