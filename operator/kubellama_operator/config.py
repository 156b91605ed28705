"""Operator-wide settings (from `kubellama-operator` flags and environment variables)."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import __version__

IMAGE_REPO = "ghcr.io/kubellama"
DEFAULT_CPU_IMAGE = f"{IMAGE_REPO}/kubellama-server:{__version__}"
DEFAULT_CUDA_IMAGE = f"{IMAGE_REPO}/kubellama-server-cuda:{__version__}"
#: Where Prometheus runs, for the server pods' NetworkPolicy (kube-prometheus-stack's defaults).
DEFAULT_PROMETHEUS_NAMESPACES = (("kubernetes.io/metadata.name", "monitoring"),)
DEFAULT_PROMETHEUS_PODS = (("app.kubernetes.io/name", "prometheus"),)
DEFAULT_OPERATOR_PODS = (("app.kubernetes.io/component", "operator"),)

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class OperatorConfig:
    cpu_image: str = DEFAULT_CPU_IMAGE
    cuda_image: str = DEFAULT_CUDA_IMAGE
    image_pull_policy: str = "IfNotPresent"
    #: Log format of the server pods (--log-format).
    server_log_format: str = "json"
    #: Namespaces to watch; empty means the whole cluster.
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    #: Seconds between full reconciles of every LlamaServer (drift repair, status refresh).
    resync_seconds: float = 60.0
    log_format: str = "json"
    log_level: str = "INFO"
    bind_address: str = "0.0.0.0"
    metrics_port: int = 8080
    health_port: int = 8081
    #: The namespaces and pods (label selectors, matchLabels) of the Prometheus that scrapes the server pods:
    #: their NetworkPolicy admits it. () selects every namespace / every pod.
    prometheus_namespace_selector: Labels = DEFAULT_PROMETHEUS_NAMESPACES
    prometheus_pod_selector: Labels = DEFAULT_PROMETHEUS_PODS
    #: The operator's own namespace (POD_NAMESPACE) and pods (matchLabels): the NetworkPolicy of a server with LoRA
    #: adapters admits them (the status pass reads the pods' LoRA scales from /metrics). "": not in a cluster.
    operator_namespace: str = ""
    operator_pod_selector: Labels = DEFAULT_OPERATOR_PODS
    #: Allow-lists (glob patterns) for spec.image and spec.serviceAccountName; empty allows any.
    allowed_images: tuple[str, ...] = ()
    allowed_service_accounts: tuple[str, ...] = ()
    #: A Hugging Face Hub mirror for every huggingFace download (HF_ENDPOINT of the fetch containers): air-gapped
    #: clusters, or a cluster whose pods cannot reach huggingface.co. Empty: the Hub itself.
    hf_endpoint: str = ""
