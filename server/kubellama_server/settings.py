"""Server settings: the llama.cpp server's flags (same names and defaults) plus kubellama's."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path


def available_cpus(cgroup_cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota.

    In a pod with `resources.limits.cpu: 2` on a 64-core node, os.cpu_count() says 64;
    64 llama.cpp threads on a 2-CPU quota spend their time waiting on each other.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path(cgroup_cpu_max).read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


CACHE_RAM_MIB = 8192  # llama.cpp's --cache-ram default
CGROUP_MEMORY_MAX = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v2, v1


def default_cache_ram_mib(paths: tuple[str, ...] = CGROUP_MEMORY_MAX) -> int:
    """--cache-ram's default: llama.cpp's 8192 MiB, at most a quarter of the container's memory
    limit (cgroup v2 memory.max, else v1), so a pod limited to 4 GiB keeps 3 GiB for the model
    and its KV cache instead of being OOM-killed by prompts kept in RAM."""
    for path in paths:
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:  # "max" / v1's huge number: no limit
            return max(0, min(CACHE_RAM_MIB, int(raw) // 4 >> 20))
        return CACHE_RAM_MIB
    return CACHE_RAM_MIB


@dataclass
class ServerSettings:
    # model
    model: str = ""
    model_url: str = ""
    hf_repo: str = ""
    hf_file: str = ""
    no_mmproj: bool = False
    hf_mmproj_file: str = ""  # set when -hf picked the repo's projector (not a flag)
    hf_revision: str = ""
    model_sha256: str = ""
    offline: bool = False
    alias: str = ""
    lora: list[str] = field(default_factory=list)
    #: --lora-scaled FNAME SCALE: adapters with a default scale, after the --lora ones (ids continue).
    lora_scaled: list[tuple[str, float]] = field(default_factory=list)
    lora_base: str = ""
    mmproj: str = ""
    spm_infill: bool = False
    reasoning_format: str = "auto"
    reasoning_budget: int = -1
    chat_template_kwargs: str = ""
    mmproj_url: str = ""
    mmproj_offload: bool = True
    # context and batching
    ctx_size: int = 512
    parallel: int = 1
    cont_batching: bool = True
    batch_size: int = 2048
    ubatch_size: int = 512
    threads: int = -1
    threads_batch: int = -1
    threads_http: int = -1
    n_predict: int = -1
    grp_attn_n: int = 1
    grp_attn_w: int = 512
    # hardware
    n_gpu_layers: int = 0
    main_gpu: int = 0
    tensor_split: list[float] = field(default_factory=list)
    mlock: bool = False
    no_mmap: bool = False
    numa: str = ""
    # HTTP
    host: str = "127.0.0.1"
    port: int = 8080
    timeout: int = 600
    path: str = ""
    api_key: list[str] = field(default_factory=list)
    api_key_file: str = ""
    ssl_key_file: str = ""
    ssl_cert_file: str = ""
    # features
    embedding: bool = False
    reranking: bool = False  # embeddings with pooling RANK and the rerank endpoints
    pooling: str = ""  # none | mean | cls | last | rank; "" = mean with --embedding (kubellama's default)
    system_prompt_file: str = ""
    chat_template: str = ""
    slots_endpoint_disable: bool = False
    metrics: bool = False
    slot_save_path: str = ""
    slot_persist: bool = False
    shutdown_timeout: float = 30.0
    # limits and security (kubellama; see README "Limits and security")
    max_body_bytes: int = 16 << 20
    max_prompt_bytes: int = 2 << 20
    max_images: int = 16
    max_image_bytes: int = 10 << 20
    max_image_pixels: int = 4096 * 4096
    max_stop_strings: int = 64
    max_stop_length: int = 1024
    max_logit_bias: int = 1024
    max_request_tasks: int = 1024
    max_queued_tasks: int = 2048
    max_grammar_bytes: int = 256 << 10
    max_grammar_depth: int = 4096
    max_connections: int = 512
    header_timeout: float = 30.0
    metrics_require_key: bool = False
    health_stall_timeout: float = 120.0
    slot_save_max_files: int = 64
    # logging
    log_disable: bool = False
    log_format: str = "json"
    verbose: bool = False
    # -- llama-server drop-in (issue 16): llama.cpp's sampling flags as request defaults,
    #    and today's server flags. Keep this block together.
    temp: float = 0.8
    seed: int = -1
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical: float = 1.0
    repeat_penalty: float = 1.1  # the seed's default (today's llama.cpp: 1.0)
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    dynatemp_range: float = 0.0
    dynatemp_exp: float = 1.0
    mirostat: int = 0
    mirostat_lr: float = 0.1
    mirostat_ent: float = 5.0
    samplers: str = ""  # ';'-separated names ("" = the default order)
    sampling_seq: str = ""  # sampler letters
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 64
    dry_sequence_breaker: list[str] = field(default_factory=list)  # [] = llama.cpp's defaults
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    top_nsigma: float = -1.0
    ignore_eos: bool = False
    logit_bias: list[str] = field(default_factory=list)  # TOKEN_ID(+/-)BIAS
    grammar: str = ""
    grammar_file: str = ""
    json_schema: str = ""
    json_schema_file: str = ""
    probs_format: str = "today"  # n_probs shape: today (id/token/logprob/bytes/top_logprobs) | seed (probs/tok_str)
    tags: str = ""  # comma-separated model tags (informational)
    cors_origins: str = "*"  # * = echo any Origin (llama.cpp's default) | localhost | a comma-separated list
    cors_methods: str = "GET, POST, DELETE, OPTIONS"
    cors_headers: str = "*"
    cors_credentials: bool = True
    flash_attn: str = "auto"  # -fa on|off|auto
    jinja: bool = True  # chat templates are always Jinja here (--jinja is accepted)
    kv_unified: bool = False  # one KV pool shared by all slots (each may use the whole context)
    cache_ram: int = field(default_factory=default_cache_ram_mib)  # MiB of slots' prompt caches kept in RAM; -1 no limit, 0 off
    context_shift: bool = False  # today's llama.cpp: a prompt that does not fit is a 400, generation stops at the context

    @property
    def n_threads(self) -> int:
        return self.threads if self.threads > 0 else available_cpus()

    @property
    def n_threads_batch(self) -> int:
        return self.threads_batch if self.threads_batch > 0 else self.n_threads

    @property
    def embeddings_enabled(self) -> bool:
        """--embedding, or --reranking (which turns embeddings on, as in llama.cpp)."""
        return self.embedding or self.reranking

    @property
    def pooling_name(self) -> str:
        """The pooling the context is created with when embeddings are on."""
        return "rank" if self.reranking else (self.pooling or "mean")

    @property
    def aliases(self) -> list[str]:
        """`--alias a,b`: every name of the model (llama.cpp takes a comma-separated list)."""
        return [a.strip() for a in self.alias.split(",") if a.strip()]

    @property
    def tag_list(self) -> list[str]:
        return [t.strip() for t in self.tags.split(",") if t.strip()]

    @property
    def model_name(self) -> str:
        """The name echoed in API responses: the first alias, else the model path."""
        return (self.aliases or [""])[0] or self.model
