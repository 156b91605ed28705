"""`kubellama-operator`: run the LlamaServer operator (kopf under the hood).

Every flag can also be set by an environment variable (the flag wins):

  -n, --namespace NS        KUBELLAMA_WATCH_NAMESPACES (comma-separated)
                            Namespace to watch; repeat for several. Default: all namespaces
                            (cluster-wide; needs a ClusterRole with `rbac.RULES`).
  -A, --all-namespaces      Watch every namespace (the default when no namespace is given).
  --cpu-image IMAGE         KUBELLAMA_CPU_IMAGE, default ghcr.io/kubellama/kubellama-server:0.1.0
  --cuda-image IMAGE        KUBELLAMA_CUDA_IMAGE, default ghcr.io/kubellama/kubellama-server-cuda:0.1.0
                            Server images for CPU and GPU (gpu.count > 0) LlamaServers, unless
                            a LlamaServer sets spec.image. The fetch init container uses the same image.
  --image-pull-policy P     KUBELLAMA_IMAGE_PULL_POLICY: IfNotPresent (default), Always or Never.
  --server-log-format F     KUBELLAMA_SERVER_LOG_FORMAT: json (default) or text, for the server pods.
  --log-format F            KUBELLAMA_LOG_FORMAT: json (default) or text, for the operator's own logs.
  --log-level L             KUBELLAMA_LOG_LEVEL: DEBUG, INFO (default), WARNING, ERROR.
  --bind-address ADDR       KUBELLAMA_BIND_ADDRESS, default 0.0.0.0 (health and metrics servers).
  --health-port PORT        KUBELLAMA_HEALTH_PORT, default 8081: GET /healthz (liveness) and
                            GET /readyz (readiness).
  --metrics-port PORT       KUBELLAMA_METRICS_PORT, default 8080: GET /metrics (Prometheus; names in
                            `kubellama_operator.metrics`). May equal --health-port.
  --resync-seconds S        KUBELLAMA_RESYNC_SECONDS, default 60: period of the full reconcile of
                            every LlamaServer (drift repair even without watch events).
  --prometheus-namespace-selector LABELS
                            KUBELLAMA_PROMETHEUS_NAMESPACE_SELECTOR, default
                            kubernetes.io/metadata.name=monitoring
  --prometheus-pod-selector LABELS
                            KUBELLAMA_PROMETHEUS_POD_SELECTOR, default app.kubernetes.io/name=prometheus
                            Where the Prometheus that scrapes the server pods runs (k=v,k2=v2; empty:
                            any namespace / any pod): the LlamaServers' NetworkPolicies admit it.
  --operator-pod-selector LABELS
                            KUBELLAMA_OPERATOR_POD_SELECTOR, default app.kubernetes.io/component=operator
                            The operator's own pods (in POD_NAMESPACE): the NetworkPolicies of servers
                            with LoRA adapters admit them (the operator reads their LoRA scales).
  --allowed-image PATTERN   KUBELLAMA_ALLOWED_IMAGES (comma-separated)
  --hf-endpoint URL         KUBELLAMA_HF_ENDPOINT
  --allowed-service-account PATTERN
                            KUBELLAMA_ALLOWED_SERVICE_ACCOUNTS (comma-separated)
                            Allow-lists (repeatable; glob patterns, `*` matches any characters) for a
                            LlamaServer's spec.image and spec.serviceAccountName; one outside them is
                            Failed (InvalidSpec). Default: none, anything is allowed.

Credentials: the in-cluster service account, else a kubeconfig (KUBECONFIG or ~/.kube/config).
kopf peering is off: run a single replica (Deployment strategy Recreate).
Exit status: 0 on SIGTERM/SIGINT after a clean stop, 2 on bad flags, 1 on a fatal error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
import threading
from collections.abc import Sequence
from typing import Any

import kopf

from . import __version__
from .config import (DEFAULT_CPU_IMAGE, DEFAULT_CUDA_IMAGE, DEFAULT_OPERATOR_PODS, DEFAULT_PROMETHEUS_NAMESPACES,
                     DEFAULT_PROMETHEUS_PODS,
                     Labels, OperatorConfig)
from .handlers import register
from .health import start as start_endpoints

log = logging.getLogger("kubellama_operator")


def _env(name: str, default: Any, convert: Any = None) -> Any:
    raw = os.environ.get(name, default)
    if convert is None:
        return raw
    try:
        return convert(raw)
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise ValueError(f"{name}={raw!r}: {e}") from None


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0-65535)")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def labels(text: str) -> Labels:
    """`k=v,k2=v2` -> ((k, v), (k2, v2)) (matchLabels of a label selector); "" -> () (select everything)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not _LABEL_KEY.match(key.strip()) or not _LABEL_VALUE.match(value.strip()):
            raise argparse.ArgumentTypeError(f"{part!r} is not a label key=value")
        out.append((key.strip(), value.strip()))
    return tuple(out)


def _list_env(name: str) -> list[str]:
    return [v.strip() for v in _env(name, "").split(",") if v.strip()]


def _labels_text(value: Labels) -> str:
    return ",".join(f"{k}={v}" for k, v in value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubellama-operator", description="Run the kubellama LlamaServer operator.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Environment variables: see `python -m pydoc kubellama_operator.cli`.")
    env_ns = [n.strip() for n in _env("KUBELLAMA_WATCH_NAMESPACES", "").split(",") if n.strip()]
    p.add_argument("-n", "--namespace", action="append", dest="namespaces", default=None,
                   help="namespace to watch (repeatable); default: all")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces")
    p.add_argument("--cpu-image", default=_env("KUBELLAMA_CPU_IMAGE", DEFAULT_CPU_IMAGE))
    p.add_argument("--cuda-image", default=_env("KUBELLAMA_CUDA_IMAGE", DEFAULT_CUDA_IMAGE))
    p.add_argument("--image-pull-policy", choices=["IfNotPresent", "Always", "Never"],
                   default=_env("KUBELLAMA_IMAGE_PULL_POLICY", "IfNotPresent"))
    p.add_argument("--server-log-format", choices=["json", "text"],
                   default=_env("KUBELLAMA_SERVER_LOG_FORMAT", "json"))
    p.add_argument("--log-format", choices=["json", "text"], default=_env("KUBELLAMA_LOG_FORMAT", "json"))
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   default=_env("KUBELLAMA_LOG_LEVEL", "INFO").upper())
    p.add_argument("--bind-address", default=_env("KUBELLAMA_BIND_ADDRESS", "0.0.0.0"))
    p.add_argument("--health-port", type=_port, default=_env("KUBELLAMA_HEALTH_PORT", "8081", _port))
    p.add_argument("--metrics-port", type=_port, default=_env("KUBELLAMA_METRICS_PORT", "8080", _port))
    p.add_argument("--resync-seconds", type=_positive, default=_env("KUBELLAMA_RESYNC_SECONDS", "60", _positive))
    p.add_argument("--prometheus-namespace-selector", type=labels, metavar="LABELS",
                   default=_env("KUBELLAMA_PROMETHEUS_NAMESPACE_SELECTOR",
                                _labels_text(DEFAULT_PROMETHEUS_NAMESPACES), labels))
    p.add_argument("--prometheus-pod-selector", type=labels, metavar="LABELS",
                   default=_env("KUBELLAMA_PROMETHEUS_POD_SELECTOR", _labels_text(DEFAULT_PROMETHEUS_PODS), labels))
    p.add_argument("--operator-pod-selector", type=labels, metavar="LABELS",
                   default=_env("KUBELLAMA_OPERATOR_POD_SELECTOR", _labels_text(DEFAULT_OPERATOR_PODS), labels))
    p.add_argument("--allowed-image", action="append", dest="allowed_images", default=None, metavar="PATTERN",
                   help="allowed spec.image (glob; repeatable); default: any")
    p.add_argument("--allowed-service-account", action="append", dest="allowed_service_accounts", default=None,
                   metavar="PATTERN", help="allowed spec.serviceAccountName (glob; repeatable); default: any")
    p.add_argument("--hf-endpoint", default=_env("KUBELLAMA_HF_ENDPOINT", ""), metavar="URL",
                   help="a Hugging Face Hub mirror for huggingFace model sources (HF_ENDPOINT of the downloads)")
    p.set_defaults(env_allowed_images=_list_env("KUBELLAMA_ALLOWED_IMAGES"),
                   env_allowed_service_accounts=_list_env("KUBELLAMA_ALLOWED_SERVICE_ACCOUNTS"))
    p.add_argument("--version", action="version", version=f"kubellama-operator {__version__}")
    p.set_defaults(env_namespaces=env_ns)
    return p


def parse_config(argv: Sequence[str] | None = None) -> OperatorConfig:
    p = parser()
    args = p.parse_args(argv)
    for action in p._actions:  # argparse does not check defaults (from the environment) against choices
        value = getattr(args, action.dest, None)
        if action.choices and value not in action.choices:
            env = "KUBELLAMA_" + action.dest.upper()
            raise ValueError(f"{env}={value!r}: expected one of {', '.join(action.choices)}")
    namespaces = () if args.all_namespaces else tuple(args.namespaces or args.env_namespaces)
    return OperatorConfig(
        cpu_image=args.cpu_image, cuda_image=args.cuda_image, image_pull_policy=args.image_pull_policy,
        server_log_format=args.server_log_format, namespaces=namespaces, resync_seconds=args.resync_seconds,
        log_format=args.log_format, log_level=args.log_level, bind_address=args.bind_address,
        metrics_port=args.metrics_port, health_port=args.health_port,
        prometheus_namespace_selector=args.prometheus_namespace_selector,
        prometheus_pod_selector=args.prometheus_pod_selector,
        operator_namespace=_env("POD_NAMESPACE", ""), operator_pod_selector=args.operator_pod_selector,
        allowed_images=tuple(args.allowed_images or args.env_allowed_images),
        allowed_service_accounts=tuple(args.allowed_service_accounts or args.env_allowed_service_accounts),
        hf_endpoint=args.hf_endpoint.rstrip("/"))


def configure_logging(config: OperatorConfig) -> None:
    fmt = kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(debug=config.log_level == "DEBUG", quiet=config.log_level in ("WARNING", "ERROR"),
                   log_format=fmt, log_refkey="object" if config.log_format == "json" else None)
    logging.getLogger().setLevel(config.log_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def serve(config: OperatorConfig, *, stop_flag: Any = None, ready_flag: Any = None,
                endpoints: bool = True) -> None:
    """Run the operator until `stop_flag` is set (or a signal arrives when in the main thread)."""
    registry, op = register(config)
    kopf_done = asyncio.Event()
    runners = []
    if endpoints:
        runners = await start_endpoints(config.bind_address, config.health_port, config.metrics_port,
                                        alive=lambda: not kopf_done.is_set(), ready=op.started.is_set)
    scope = ", ".join(config.namespaces) if config.namespaces else "all namespaces"
    log.info("kubellama-operator %s watching %s (CPU image %s, CUDA image %s)", __version__, scope,
             config.cpu_image, config.cuda_image)
    try:
        await kopf.operator(registry=registry, standalone=True, clusterwide=not config.namespaces,
                            namespaces=list(config.namespaces), stop_flag=stop_flag, ready_flag=ready_flag)
    finally:
        kopf_done.set()
        await op.client.close()
        for runner in runners:
            await runner.cleanup()


def run_in_thread(config: OperatorConfig, *, endpoints: bool = False) -> tuple[threading.Thread, threading.Event]:
    """Start the operator in a background thread (tests, embedding); set the returned event to stop."""
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(serve(config, stop_flag=stop, ready_flag=ready,
                                                               endpoints=endpoints)),
                              name="kubellama-operator", daemon=True)
    thread.start()
    if not ready.wait(30):
        stop.set()
        raise RuntimeError("the operator did not start within 30 s")
    return thread, stop


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_config(argv)
    except ValueError as e:  # bad environment values (bad flags exit in argparse)
        print(f"kubellama-operator: invalid environment setting: {e}", file=sys.stderr)
        return 2
    configure_logging(config)
    try:
        asyncio.run(serve(config))
    except KeyboardInterrupt:
        pass
    except OSError as e:
        log.error("cannot start: %s (is another process using port %s or %s?)", e,
                  config.health_port, config.metrics_port)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
