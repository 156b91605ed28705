"""The router's settings (from `cli`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RouterSettings:
    host: str = "0.0.0.0"
    port: int = 8080
    replicas: list[str] = field(default_factory=list)  # static replica URLs
    endpoints_service: str = ""  # watch this Service's EndpointSlices (Kubernetes)
    endpoints_namespace: str = ""
    endpoints_port: str = "http"
    strategy: str = "prefix"
    load_factor: float = 1.25
    block_chars: int = 64
    index_blocks: int = 31250
    session_header: str = "x-session-id"
    max_inflight: int = 32
    max_queue: int = 256
    queue_timeout: float = 30.0
    max_body: int = 64 * 1024 * 1024
    retries: int = 2
    connect_timeout: float = 5.0
    read_timeout: float = 600.0
    scrape_interval: float = 1.0
    seed: int | None = None
    autoscale: str = ""  # set this LlamaServer's replicas (scale subresource) from the load
    min_replicas: int = 1
    max_replicas: int = 3
    target_requests: float = 4.0
    autoscale_window: float = 60.0
    scale_down_delay: float = 120.0
    log_level: str = "info"
