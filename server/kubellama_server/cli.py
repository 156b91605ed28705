"""`kubellama-server`: the llama.cpp server's command line, plus LLAMA_ARG_* environment variables.

Every flag can also come from an environment variable: llama.cpp's own name where it
has one (e.g. LLAMA_ARG_CTX_SIZE, LLAMA_ARG_N_PARALLEL) and LLAMA_ARG_<LONG_FLAG>
(e.g. LLAMA_ARG_SLOT_SAVE_PATH) for every flag. A flag on the command line wins.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import Any

from . import __version__
from .settings import ServerSettings

TRUE = {"1", "true", "yes", "on", "enabled"}
FALSE = {"0", "false", "no", "off", "disabled", ""}


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]
    dest: str
    kind: str  # str | int | float | bool | list | floats | choice
    help: str
    env: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    invert: bool = False  # a bool flag that sets dest to False

    @property
    def env_names(self) -> tuple[str, ...]:
        long = next(n for n in self.names if n.startswith("--"))
        derived = "LLAMA_ARG_" + long[2:].upper().replace("-", "_")
        return tuple(dict.fromkeys(self.env + (derived,)))


FLAGS: list[Flag] = [
    Flag(("-m", "--model"), "model", "str", "path of the GGUF model file", ("LLAMA_ARG_MODEL",), metavar="FNAME"),
    Flag(("-mu", "--model-url"), "model_url", "str", "download the model from this http(s) URL", ("LLAMA_ARG_MODEL_URL",), metavar="URL"),
    Flag(("-hf", "-hfr", "--hf-repo"), "hf_repo", "str", "Hugging Face model repository, org/name[:QUANT]: without --hf-file the file is picked by its quantization (Q4_K_M by default) and a projector beside it is fetched too", ("LLAMA_ARG_HF_REPO",), metavar="REPO"),
    Flag(("-hff", "--hf-file"), "hf_file", "str", "file in the Hugging Face repository (instead of picking one)", ("LLAMA_ARG_HF_FILE",), metavar="FILE"),
    Flag(("--no-mmproj",), "no_mmproj", "bool", "with -hf: do not fetch the repository's multimodal projector", ("LLAMA_ARG_NO_MMPROJ",)),
    Flag(("--hf-revision",), "hf_revision", "str", "Hugging Face revision (branch, tag or commit; kubellama)", metavar="REV"),
    Flag(("--model-sha256",), "model_sha256", "str", "expected sha256 of the downloaded model (kubellama)", metavar="HEX"),
    Flag(("--offline",), "offline", "bool", "never touch the network; use the cached model or fail (kubellama)", ("LLAMA_OFFLINE",)),
    Flag(("-a", "--alias"), "alias", "str", "model names, comma-separated; the first is returned in API responses", ("LLAMA_ARG_ALIAS",), metavar="ALIAS"),
    Flag(("--lora",), "lora", "list", "apply a LoRA adapter (repeatable)", ("LLAMA_ARG_LORA",), metavar="FNAME"),
    Flag(("--lora-scaled",), "lora_scaled", "pairs", "apply a LoRA adapter with a default scale, FNAME SCALE "
         "(repeatable; its id follows the --lora adapters'); the env var takes FNAME:SCALE,...", metavar="FNAME SCALE"),
    Flag(("--lora-base",), "lora_base", "str", "base model for the LoRA layers", metavar="FNAME"),
    Flag(("-mm", "--mmproj"), "mmproj", "str", "multimodal projector file (images in prompts)", ("LLAMA_ARG_MMPROJ",), metavar="FILE"),
    Flag(("--reasoning-format",), "reasoning_format", "choice", "where thinking models' <think> text goes: deepseek/auto = reasoning_content, none = left in content [auto]", ("LLAMA_ARG_THINK",), choices=("auto", "deepseek", "none"), metavar="FORMAT"),
    Flag(("--reasoning-budget",), "reasoning_budget", "int", "-1 = think freely, 0 = no thinking (enable_thinking=false for the template) [-1]", ("LLAMA_ARG_THINK_BUDGET",), metavar="N"),
    Flag(("--chat-template-kwargs",), "chat_template_kwargs", "str", "JSON object of extra chat template variables, e.g. '{\"enable_thinking\": false}'", ("LLAMA_CHAT_TEMPLATE_KWARGS",), metavar="JSON"),
    Flag(("--spm-infill",), "spm_infill", "bool", "infill prompts in suffix/prefix/middle order (some models want it)", ("LLAMA_ARG_SPM_INFILL",)),
    Flag(("-mmu", "--mmproj-url"), "mmproj_url", "str", "download the multimodal projector from this http(s) URL", ("LLAMA_ARG_MMPROJ_URL",), metavar="URL"),
    Flag(("--no-mmproj-offload",), "mmproj_offload", "bool", "keep the multimodal projector on the CPU", ("LLAMA_ARG_NO_MMPROJ_OFFLOAD",), invert=True),
    Flag(("-c", "--ctx-size"), "ctx_size", "int", "context size shared by all slots (0 = the model's) [512]", ("LLAMA_ARG_CTX_SIZE",), metavar="N"),
    Flag(("-np", "--parallel"), "parallel", "int", "number of slots [1]", ("LLAMA_ARG_N_PARALLEL",), metavar="N"),
    Flag(("-cb", "--cont-batching"), "cont_batching", "bool", "continuous batching (on by default)", ("LLAMA_ARG_CONT_BATCHING",)),
    Flag(("-nocb", "--no-cont-batching"), "cont_batching", "bool", "disable continuous batching", ("LLAMA_ARG_NO_CONT_BATCHING",), invert=True),
    Flag(("-b", "--batch-size"), "batch_size", "int", "logical batch size [2048]", ("LLAMA_ARG_BATCH",), metavar="N"),
    Flag(("-ub", "--ubatch-size"), "ubatch_size", "int", "physical batch size [512]", ("LLAMA_ARG_UBATCH",), metavar="N"),
    Flag(("-t", "--threads"), "threads", "int", "threads for generation [the CPUs available: affinity and cgroup quota]", ("LLAMA_ARG_THREADS",), metavar="N"),
    Flag(("-tb", "--threads-batch"), "threads_batch", "int", "threads for prompt processing [same as --threads]", ("LLAMA_ARG_THREADS_BATCH",), metavar="N"),
    Flag(("--threads-http",), "threads_http", "int", "HTTP worker threads (asyncio here: accepted, unused)", ("LLAMA_ARG_THREADS_HTTP",), metavar="N"),
    Flag(("-n", "--n-predict"), "n_predict", "int", "the most tokens one request may generate; caps its n_predict [-1 = 4 slot contexts]", ("LLAMA_ARG_N_PREDICT",), metavar="N"),
    Flag(("--grp-attn-n",), "grp_attn_n", "int", "self-extend group attention factor: positions of old tokens grow N times slower [1 = off]", ("LLAMA_ARG_GRP_ATTN_N",), metavar="N"),
    Flag(("--grp-attn-w",), "grp_attn_w", "int", "self-extend group attention width, a multiple of N [512]", ("LLAMA_ARG_GRP_ATTN_W",), metavar="N"),
    Flag(("-ngl", "--n-gpu-layers", "--gpu-layers"), "n_gpu_layers", "int", "layers to offload to the GPU (-1 = all)", ("LLAMA_ARG_N_GPU_LAYERS",), metavar="N"),
    Flag(("-mg", "--main-gpu"), "main_gpu", "int", "GPU for small tensors and scratch [0]", ("LLAMA_ARG_MAIN_GPU",), metavar="I"),
    Flag(("-ts", "--tensor-split"), "tensor_split", "floats", "fraction of the model per GPU, e.g. 3,2", ("LLAMA_ARG_TENSOR_SPLIT",), metavar="SPLIT"),
    Flag(("--mlock",), "mlock", "bool", "lock the model in RAM", ("LLAMA_ARG_MLOCK",)),
    Flag(("--no-mmap",), "no_mmap", "bool", "do not memory-map the model", ("LLAMA_ARG_NO_MMAP",)),
    Flag(("--numa",), "numa", "choice", "NUMA strategy", ("LLAMA_ARG_NUMA",), choices=("distribute", "isolate", "numactl"), metavar="STRATEGY"),
    Flag(("--host",), "host", "str", "addresses to listen on, comma-separated, or UNIX socket paths ending in .sock [127.0.0.1]", ("LLAMA_ARG_HOST",), metavar="HOST"),
    Flag(("--port",), "port", "int", "port to listen on [8080]", ("LLAMA_ARG_PORT",), metavar="PORT"),
    Flag(("-to", "--timeout"), "timeout", "int", "read/write timeout in seconds [600]", ("LLAMA_ARG_TIMEOUT",), metavar="N"),
    Flag(("--path",), "path", "str", "serve static files from this folder", ("LLAMA_ARG_STATIC_PATH",), metavar="DIR"),
    Flag(("--api-key",), "api_key", "list", "API key required as 'Authorization: Bearer KEY' (repeatable)", ("LLAMA_API_KEY", "LLAMA_ARG_API_KEY"), metavar="KEY"),
    Flag(("--api-key-file",), "api_key_file", "str", "file with one API key per line", ("LLAMA_ARG_API_KEY_FILE",), metavar="FNAME"),
    Flag(("--ssl-key-file",), "ssl_key_file", "str", "PEM-encoded SSL private key", ("LLAMA_ARG_SSL_KEY_FILE",), metavar="FNAME"),
    Flag(("--ssl-cert-file",), "ssl_cert_file", "str", "PEM-encoded SSL certificate", ("LLAMA_ARG_SSL_CERT_FILE",), metavar="FNAME"),
    Flag(("--embedding", "--embeddings"), "embedding", "bool", "enable the embedding endpoints", ("LLAMA_ARG_EMBEDDINGS",)),
    Flag(("--rerank", "--reranking"), "reranking", "bool", "enable the reranking endpoints (/rerank, /v1/rerank): embeddings with pooling rank", ("LLAMA_ARG_RERANKING",)),
    Flag(("--pooling",), "pooling", "choice", "pooling type for embeddings (with --embedding) [mean]; rank: a reranker's score", ("LLAMA_ARG_POOLING",),
         choices=("none", "mean", "cls", "last", "rank"), metavar="{none,mean,cls,last,rank}"),
    Flag(("-spf", "--system-prompt-file"), "system_prompt_file", "str", "JSON file with the system prompt of all slots", metavar="FNAME"),
    Flag(("--chat-template",), "chat_template", "str", "Jinja chat template or a built-in name", ("LLAMA_ARG_CHAT_TEMPLATE",), metavar="TEMPLATE"),
    Flag(("--slots-endpoint-disable",), "slots_endpoint_disable", "bool", "disable GET /slots", ("LLAMA_ARG_NO_ENDPOINT_SLOTS",)),
    Flag(("--metrics",), "metrics", "bool", "enable GET /metrics (Prometheus)", ("LLAMA_ARG_ENDPOINT_METRICS",)),
    Flag(("--slot-save-path",), "slot_save_path", "str", "folder for slot save/restore files", ("LLAMA_ARG_SLOT_SAVE_PATH",), metavar="PATH"),
    Flag(("--slot-persist",), "slot_persist", "bool", "save slots on SIGTERM and restore them at start-up (kubellama)"),
    Flag(("--shutdown-timeout",), "shutdown_timeout", "float", "seconds to let running requests finish on SIGTERM [30] (kubellama)", metavar="SECONDS"),
    # limits and security (kubellama; README "Limits and security")
    Flag(("--max-body-bytes",), "max_body_bytes", "int", "largest request body; larger is a 413 [16777216]", metavar="N"),
    Flag(("--max-prompt-bytes",), "max_prompt_bytes", "int", "largest prompt text (and /tokenize content) before tokenizing [2097152]", metavar="N"),
    Flag(("--max-images",), "max_images", "int", "images per request [16]", metavar="N"),
    Flag(("--max-image-bytes",), "max_image_bytes", "int", "largest image file [10485760]", metavar="N"),
    Flag(("--max-image-pixels",), "max_image_pixels", "int", "largest image, width x height [16777216]", metavar="N"),
    Flag(("--max-stop-strings",), "max_stop_strings", "int", "stop strings per request [64]", metavar="N"),
    Flag(("--max-stop-length",), "max_stop_length", "int", "longest stop string, in characters [1024]", metavar="N"),
    Flag(("--max-logit-bias",), "max_logit_bias", "int", "logit_bias entries per request [1024]", metavar="N"),
    Flag(("--max-request-tasks",), "max_request_tasks", "int", "tasks per request: prompts x n, embedding inputs, rerank documents [1024]", metavar="N"),
    Flag(("--max-queued-tasks",), "max_queued_tasks", "int", "tasks waiting for a slot; beyond it requests get 503 with Retry-After [2048]", metavar="N"),
    Flag(("--max-grammar-bytes",), "max_grammar_bytes", "int", "largest grammar, also one converted from a JSON schema [262144]", metavar="N"),
    Flag(("--max-grammar-depth",), "max_grammar_depth", "int", "deepest nesting of groups in a grammar (llama.cpp's parser recurses) [4096]", metavar="N"),
    Flag(("--max-connections",), "max_connections", "int", "concurrent connections and requests; beyond it uvicorn answers 503 [512]", metavar="N"),
    Flag(("--header-timeout",), "header_timeout", "float", "seconds a new connection has to send its request headers [30]", metavar="SECONDS"),
    Flag(("--metrics-require-key",), "metrics_require_key", "bool", "GET /metrics needs the API key too (default: public, counts only)"),
    Flag(("--health-stall-timeout",), "health_stall_timeout", "float", "/health answers 503 when the scheduler has work but has not stepped for this long [120]", metavar="SECONDS"),
    Flag(("--slot-save-max-files",), "slot_save_max_files", "int", "slot files kept under --slot-save-path; a save beyond it is a 507 [64]", metavar="N"),
    Flag(("--log-disable",), "log_disable", "bool", "disable logging", ("LLAMA_LOG_DISABLE",)),
    Flag(("--log-format",), "log_format", "choice", "log format [json]", ("LLAMA_LOG_FORMAT",), choices=("json", "text"), metavar="FORMAT"),
    Flag(("-v", "--verbose"), "verbose", "bool", "verbose logs (llama.cpp's too; prompts in request logs)", ("LLAMA_ARG_VERBOSE",)),
    # -- llama-server drop-in (issue 16): sampling flags (the defaults of every request), today's server flags
    Flag(("--temp", "--temperature"), "temp", "float", "temperature [0.8]", ("LLAMA_ARG_TEMPERATURE",), metavar="N"),
    Flag(("-s", "--seed"), "seed", "int", "RNG seed [-1 = random]", metavar="SEED"),
    Flag(("--top-k",), "top_k", "int", "top-k sampling [40, 0 = off]", ("LLAMA_ARG_TOP_K",), metavar="N"),
    Flag(("--top-p",), "top_p", "float", "top-p sampling [0.95, 1.0 = off]", ("LLAMA_ARG_TOP_P",), metavar="N"),
    Flag(("--min-p",), "min_p", "float", "min-p sampling [0.05, 0.0 = off]", ("LLAMA_ARG_MIN_P",), metavar="N"),
    Flag(("--typical", "--typical-p"), "typical", "float", "locally typical sampling, parameter p [1.0 = off]", metavar="N"),
    Flag(("--repeat-penalty",), "repeat_penalty", "float", "penalize repeated tokens [1.1, 1.0 = off]", ("LLAMA_ARG_REPEAT_PENALTY",), metavar="N"),
    Flag(("--repeat-last-n",), "repeat_last_n", "int", "last n tokens to penalize [64, 0 = off]", metavar="N"),
    Flag(("--presence-penalty",), "presence_penalty", "float", "presence penalty [0.0 = off]", ("LLAMA_ARG_PRESENCE_PENALTY",), metavar="N"),
    Flag(("--frequency-penalty",), "frequency_penalty", "float", "frequency penalty [0.0 = off]", ("LLAMA_ARG_FREQUENCY_PENALTY",), metavar="N"),
    Flag(("--dynatemp-range",), "dynatemp_range", "float", "dynamic temperature range [0.0 = off]", metavar="N"),
    Flag(("--dynatemp-exp",), "dynatemp_exp", "float", "dynamic temperature exponent [1.0]", metavar="N"),
    Flag(("--mirostat",), "mirostat", "int", "Mirostat sampling: 0 = off, 1 = Mirostat, 2 = Mirostat 2.0 [0]", metavar="N"),
    Flag(("--mirostat-lr",), "mirostat_lr", "float", "Mirostat learning rate, eta [0.1]", metavar="N"),
    Flag(("--mirostat-ent",), "mirostat_ent", "float", "Mirostat target entropy, tau [5.0]", metavar="N"),
    Flag(("--samplers",), "samplers", "str", "samplers in order, ';'-separated [penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature]", metavar="SAMPLERS"),
    Flag(("--sampling-seq", "--sampler-seq"), "sampling_seq", "str", "samplers in order as letters [edskypmxt]", metavar="SEQUENCE"),
    Flag(("--dry-multiplier",), "dry_multiplier", "float", "DRY sampling multiplier [0.0 = off]", metavar="N"),
    Flag(("--dry-base",), "dry_base", "float", "DRY sampling base [1.75]", metavar="N"),
    Flag(("--dry-allowed-length",), "dry_allowed_length", "int", "DRY: repetitions longer than this are penalized [2]", metavar="N"),
    Flag(("--dry-penalty-last-n",), "dry_penalty_last_n", "int", "DRY: tokens scanned for repetitions [64, 0 = off]", metavar="N"),
    Flag(("--dry-sequence-breaker",), "dry_sequence_breaker", "list", "DRY sequence breaker (repeatable; replaces the defaults '\\n' ':' '\"' '*'; 'none' = no breakers)", metavar="STRING"),
    Flag(("--xtc-probability",), "xtc_probability", "float", "XTC probability [0.0 = off]", metavar="N"),
    Flag(("--xtc-threshold",), "xtc_threshold", "float", "XTC threshold [0.1, > 0.5 = off]", metavar="N"),
    Flag(("--top-nsigma", "--top-n-sigma"), "top_nsigma", "float", "top-n-sigma sampling [-1.0 = off]", metavar="N"),
    Flag(("--ignore-eos",), "ignore_eos", "bool", "ignore end of stream tokens and keep generating"),
    Flag(("-l", "--logit-bias"), "logit_bias", "list", "TOKEN_ID+BIAS or TOKEN_ID-BIAS, e.g. 15043+1 (repeatable)", metavar="TOKEN_ID(+/-)BIAS"),
    Flag(("--grammar",), "grammar", "str", "GBNF grammar that constrains every generation without its own", metavar="GRAMMAR"),
    Flag(("--grammar-file",), "grammar_file", "str", "file to read that grammar from", metavar="FNAME"),
    Flag(("-j", "--json-schema"), "json_schema", "str", "JSON schema that constrains every generation without its own grammar", metavar="SCHEMA"),
    Flag(("-jf", "--json-schema-file"), "json_schema_file", "str", "file to read that JSON schema from", metavar="FILE"),
    Flag(("--tags",), "tags", "str", "model tags, comma-separated (informational: /v1/models, /props)", ("LLAMA_ARG_TAGS",), metavar="STRING"),
    Flag(("--no-slots",), "slots_endpoint_disable", "bool", "disable GET /slots (as --slots-endpoint-disable)"),
    Flag(("--slots",), "slots_endpoint_disable", "bool", "enable GET /slots (the default)", ("LLAMA_ARG_ENDPOINT_SLOTS",), invert=True),
    Flag(("--cors-origins",), "cors_origins", "str", "allowed CORS origins: * (echo any Origin), localhost (only localhost pages) or a comma-separated list [*]", ("LLAMA_ARG_CORS_ORIGINS",), metavar="ORIGINS"),
    Flag(("--cors-methods",), "cors_methods", "str", "methods allowed by CORS pre-flight answers [GET, POST, DELETE, OPTIONS]", ("LLAMA_ARG_CORS_METHODS",), metavar="METHODS"),
    Flag(("--cors-headers",), "cors_headers", "str", "headers allowed by CORS pre-flight answers [*]", ("LLAMA_ARG_CORS_HEADERS",), metavar="HEADERS"),
    Flag(("--cors-credentials",), "cors_credentials", "bool", "allow credentials for CORS (the default)", ("LLAMA_ARG_CORS_CREDENTIALS",)),
    Flag(("--no-cors-credentials",), "cors_credentials", "bool", "do not allow credentials for CORS", invert=True),
    Flag(("--context-shift",), "context_shift", "bool", "cut a prompt longer than the context and shift the context when generation fills it (off: a 400, and generation stops) [off]", ("LLAMA_ARG_CONTEXT_SHIFT",)),
    Flag(("--no-context-shift",), "context_shift", "bool", "no context shift (the default)", invert=True),
    Flag(("-kvu", "--kv-unified"), "kv_unified", "bool", "one KV pool shared by all slots: each may use the whole --ctx-size (idle slots' caches make room) [off]", ("LLAMA_ARG_KV_UNIFIED",)),
    Flag(("-no-kvu", "--no-kv-unified"), "kv_unified", "bool", "a KV pool per slot, --ctx-size / --parallel each (the default)", invert=True),
    Flag(("-cram", "--cache-ram"), "cache_ram", "int", "MiB of host memory for prompt caches evicted from slots, loaded back when a prompt "
         "continues one (-1 = no limit, 0 = off) [8192, at most a quarter of the container's memory limit]", ("LLAMA_ARG_CACHE_RAM",), metavar="N"),
    Flag(("-fa", "--flash-attn"), "flash_attn", "choice", "Flash Attention: on, off or auto [auto]", ("LLAMA_ARG_FLASH_ATTN",), choices=("on", "off", "auto"), metavar="{on,off,auto}"),
    Flag(("--jinja",), "jinja", "bool", "render chat templates with Jinja (always on here)", ("LLAMA_ARG_JINJA",)),
    Flag(("--no-jinja",), "jinja", "bool", "refused: chat templates are always rendered with Jinja", invert=True),
    Flag(("--probs-format",), "probs_format", "choice", "n_probs shape: today (id, token, logprob, bytes, top_logprobs) or seed (content, probs, tok_str, prob) [today] (kubellama)", choices=("today", "seed"), metavar="FORMAT"),
]

# Flags accepted now but not implemented yet: a start-up warning names them when used.
NOT_IMPLEMENTED: dict[str, str] = {
    "lora_base": "--lora-base (llama.cpp applies adapters to the loaded model; no base file is needed)",
}


# limits that must be positive (README "Limits and security")
LIMIT_FLAGS = ("max_body_bytes", "max_prompt_bytes", "max_images", "max_image_bytes", "max_image_pixels", "max_stop_strings",
               "max_stop_length", "max_logit_bias", "max_request_tasks", "max_queued_tasks", "max_grammar_bytes",
               "max_grammar_depth", "max_connections", "header_timeout", "health_stall_timeout", "slot_save_max_files")


class UsageError(Exception):
    pass


def _convert(flag: Flag, raw: str, source: str) -> Any:
    try:
        if flag.kind == "int":
            return int(raw)
        if flag.kind == "float":
            return float(raw)
        if flag.kind == "floats":
            return [float(x) for x in raw.replace("/", ",").split(",") if x.strip()]
        if flag.kind == "bool":
            v = raw.strip().lower()
            if v in TRUE:
                return not flag.invert
            if v in FALSE:
                return flag.invert
            raise ValueError(raw)
        if flag.kind == "choice":
            if raw not in flag.choices:
                raise ValueError(raw)
            return raw
        if flag.kind == "list":
            return [x for x in raw.split(",") if x] if source.startswith("env") else [raw]
        if flag.kind == "pairs":
            pairs = [x.rsplit(":", 1) for x in raw.split(",") if x] if isinstance(raw, str) else raw
            if any(len(p) != 2 or not p[0] for p in pairs):
                raise ValueError(raw)
            return [(str(path), float(scale)) for path, scale in pairs]
        return raw
    except ValueError:
        expected = {
            "int": "an integer",
            "float": "a number",
            "floats": "comma-separated numbers",
            "bool": "true/false",
            "choice": "one of " + ", ".join(flag.choices),
            "pairs": "a file and a number (FNAME SCALE; FNAME:SCALE,... in the environment)",
        }.get(flag.kind, "a value")
        raise UsageError(f"invalid value {raw!r} for {source}: expected {expected}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubellama-server",
        allow_abbrev=False,  # as llama.cpp: --hos is not --host (the operator relies on it for extraArgs)
        description="A llama.cpp-compatible HTTP server with continuous batching. "
        "Every flag can also be set with an environment variable (LLAMA_ARG_<FLAG>).",
    )
    parser.add_argument("--version", action="version", version=f"kubellama-server {__version__}")
    for flag in FLAGS:
        kw: dict[str, Any] = {"help": flag.help + "  [env: " + ", ".join(flag.env_names) + "]"}
        if flag.kind == "bool":
            kw.update(action="store_const", const=not flag.invert, dest=flag.dest)
        elif flag.kind == "pairs":
            kw.update(dest=flag.dest, metavar=tuple(flag.metavar.split()), nargs=2, action="append")
        else:
            kw.update(dest=flag.dest, metavar=flag.metavar, action="append" if flag.kind == "list" else "store")
        kw["default"] = argparse.SUPPRESS
        parser.add_argument(*flag.names, **kw)
    return parser


def parse_settings(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> tuple[ServerSettings, list[str]]:
    """Returns the settings and the names of the flags that were set explicitly.

    Raises SystemExit(2) with a usage message on unknown flags or bad values.
    """
    environ = os.environ if environ is None else environ
    parser = build_parser()
    ns = parser.parse_args(argv)
    settings = ServerSettings()
    given: set[str] = set()
    try:
        # environment first, the command line overrides it
        for flag in FLAGS:
            for name in flag.env_names:
                if name in environ and (flag.dest not in vars(ns)):
                    setattr(settings, flag.dest, _convert(flag, environ[name], f"env {name}"))
                    given.add(flag.dest)
                    break
        for flag in FLAGS:
            if flag.dest in vars(ns):  # defaults are suppressed: present means given
                value = getattr(ns, flag.dest)
                if flag.kind not in ("bool", "list"):
                    value = _convert(flag, value, f"argument {'/'.join(flag.names)}")
                setattr(settings, flag.dest, value)
                given.add(flag.dest)
        _validate(settings)
    except UsageError as exc:
        parser.error(str(exc))
    return settings, sorted(given)


def _validate(s: ServerSettings) -> None:
    checks: list[tuple[bool, str]] = [
        (s.ctx_size >= 0, "--ctx-size must be >= 0"),
        (s.parallel >= 1, "--parallel must be >= 1"),
        (s.batch_size >= 1, "--batch-size must be >= 1"),
        (s.ubatch_size >= 1, "--ubatch-size must be >= 1"),
        (0 <= s.port <= 65535, "--port must be between 0 and 65535"),
        (all(h.strip() for h in s.host.split(",")), f"--host {s.host!r}: give addresses separated by commas, without empty ones"),
        (s.n_predict >= -1, "--n-predict must be >= -1"),
        (s.timeout > 0, "--timeout must be > 0"),
        (s.shutdown_timeout >= 0, "--shutdown-timeout must be >= 0"),
        (s.cache_ram >= -1, "--cache-ram must be -1 (no limit), 0 (off) or a size in MiB"),
        *[(getattr(s, name) >= 1, f"--{name.replace('_', '-')} must be >= 1") for name in LIMIT_FLAGS],
        (not (s.ssl_key_file and not s.ssl_cert_file) and not (s.ssl_cert_file and not s.ssl_key_file),
         "--ssl-key-file and --ssl-cert-file must be given together"),
        (not (s.slot_persist and not s.slot_save_path), "--slot-persist needs --slot-save-path"),
        (not (s.reranking and s.pooling not in ("", "rank")), f"--reranking uses pooling rank: drop --pooling {s.pooling}"),
        (s.reasoning_budget in (-1, 0), "--reasoning-budget must be -1 (unrestricted) or 0 (no thinking)"),
        (all(math.isfinite(scale) for _, scale in s.lora_scaled), "--lora-scaled: the scale must be a finite number"),
        (not (s.embeddings_enabled and (s.lora or s.lora_scaled) and s.parallel & (s.parallel - 1)),
         "--embedding/--reranking with --lora needs --parallel 1, 2, 4, 8, ...: llama.cpp aborts on a pooled "
         "decode with LoRA adapters when the slot count is not a power of two"),
        (not ((s.mmproj or s.mmproj_url) and s.grp_attn_n > 1), "--mmproj cannot be combined with --grp-attn-n (self-extend would split images)"),
        (s.jinja, "--no-jinja: kubellama always renders chat templates with Jinja (drop the flag)"),
        (not (s.kv_unified and s.embeddings_enabled), "--kv-unified cannot be combined with --embedding/--reranking (pooled inputs are decoded one KV stream per slot)"),
        (not s.mmproj or s.mmproj_url or os.path.isfile(s.mmproj),
         f"--mmproj {s.mmproj}: no such file (pass the projector GGUF that goes with the model, or -mmu URL)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    sources = [bool(s.model_url), bool(s.hf_repo)]
    if sum(sources) > 1:
        raise UsageError("give only one of --model-url and --hf-repo")
    if s.hf_repo and s.hf_file and ":" in s.hf_repo:
        raise UsageError("give the quantization (-hf org/name:QUANT) or the file (--hf-file), not both")
    if not (s.model or s.model_url or s.hf_repo):
        raise UsageError("no model: pass -m FILE.gguf (or -mu URL, or -hf org/name[:QUANT])")
    _check_openai_flags(s)
    _check_sampling_flags(s)
    from .engine.self_extend import SelfExtend, SelfExtendError

    try:
        SelfExtend.from_settings(s.grp_attn_n, s.grp_attn_w)
    except SelfExtendError as exc:
        raise UsageError(str(exc)) from None


def _check_openai_flags(s: ServerSettings) -> None:
    """--api-key-file, -spf, --chat-template, --path: start-up errors, not per-request ones."""
    from .http import auth, static
    from .serving import chat_templates, system_prompt

    try:
        auth.load_keys(s)
        if s.system_prompt_file:
            system_prompt.load_file(s.system_prompt_file)
        if s.chat_template:
            chat_templates.from_cli(s.chat_template)
        if s.chat_template_kwargs:
            chat_templates.parse_kwargs(s.chat_template_kwargs, "--chat-template-kwargs")
        if s.path:
            static.check_folder(s.path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _check_sampling_flags(s: ServerSettings) -> None:
    """The sampling flags make valid request defaults (grammar and schema files read, the schema converted)."""
    from .engine.sampler_names import default_params
    from .errors import APIError

    try:
        params = default_params(s)
        if params.json_schema is not None:
            from .engine.sampling import schema_gbnf

            schema_gbnf(params.json_schema, "--json-schema")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except APIError as exc:
        raise UsageError(exc.message) from None


def unimplemented(given: list[str], settings: ServerSettings) -> list[str]:
    defaults = ServerSettings()
    return sorted(
        {f"{name} ({what})" for name, what in NOT_IMPLEMENTED.items() if name in given and getattr(settings, name) != getattr(defaults, name)}
    )


def main(argv: list[str] | None = None) -> None:
    settings, given = parse_settings(argv)
    from .main import serve

    serve(settings, warnings=unimplemented(given, settings))

