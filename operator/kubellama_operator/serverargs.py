"""`kubellama-server` flags derived from a LlamaServer's typed spec."""

from __future__ import annotations

from .api import LlamaServerSpec
from .spec import API_KEY_DIR, API_KEY_FILE, CONFIG_DIR, SERVER_PORT, SLOTS_DIR, SYSTEM_PROMPT_FILE, Model

#: -ngl value meaning "every layer" (llama.cpp clamps it to the model's layer count).
ALL_LAYERS = 999

# spec.server field -> flag, for plain numeric settings passed only when set.
_NUMERIC = [("context_size", "-c"), ("parallel", "-np"), ("batch_size", "-b"),
            ("ubatch_size", "-ub"), ("threads", "-t"), ("n_predict", "-n"), ("cache_ram_mib", "--cache-ram")]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def server_args(spec: LlamaServerSpec, model: Model, *, log_format: str = "json") -> list[str]:
    """The server container's arguments (after the `kubellama-server` command)."""
    server, gpu, slots = spec.server, spec.gpu, spec.storage.slots
    args = ["-m", model.path, "--host", "0.0.0.0", "--port", str(SERVER_PORT),
            "--alias", model.name, "--log-format", log_format]
    if model.mmproj is not None:
        args += ["--mmproj", model.mmproj.path]
        if not model.mmproj.offload:
            args.append("--no-mmproj-offload")
    scaled = any(lora.scale != 1.0 for lora in model.loras)
    for lora in model.loras:  # in order: the server's adapter ids are the list's indices
        # All --lora-scaled when one has a scale: the server numbers --lora adapters before --lora-scaled ones.
        args += ["--lora-scaled", lora.path, _num(lora.scale)] if scaled else ["--lora", lora.path]
    for field, flag in _NUMERIC:
        if getattr(server, field) is not None:
            args += [flag, str(getattr(server, field))]
    if server.gpu_layers is not None:
        args += ["-ngl", str(server.gpu_layers)]
    elif spec.uses_gpu:
        args += ["-ngl", str(ALL_LAYERS)]
    if spec.uses_gpu:
        if gpu.main_gpu is not None:
            args += ["-mg", str(gpu.main_gpu)]
        if gpu.tensor_split:
            args += ["-ts", ",".join(_num(x) for x in gpu.tensor_split)]
    if server.embedding:
        args.append("--embedding")
    if server.chat_template:
        args += ["--chat-template", server.chat_template]
    if server.system_prompt:
        args += ["-spf", f"{CONFIG_DIR}/{SYSTEM_PROMPT_FILE}"]
    if server.metrics:
        args.append("--metrics")
    if slots.enabled:
        args += ["--slot-save-path", SLOTS_DIR]
        if slots.restore_on_start:
            args.append("--slot-persist")
    if spec.api_key_secret_ref is not None:
        args += ["--api-key-file", f"{API_KEY_DIR}/{API_KEY_FILE}"]
    args += ["--shutdown-timeout", str(server.shutdown_timeout_seconds)]
    args += list(server.extra_args or [])
    return args
