"""`kubellama-server` flags derived from a normalized LlamaServer spec."""

from __future__ import annotations

from .spec import (API_KEY_DIR, API_KEY_FILE, CONFIG_DIR, SERVER_PORT, SLOTS_DIR,
                   SYSTEM_PROMPT_FILE, Model, Spec, uses_gpu)

#: -ngl value meaning "every layer" (llama.cpp clamps it to the model's layer count).
ALL_LAYERS = 999

# spec.server field -> flag, for plain numeric settings passed only when set.
_NUMERIC = [("contextSize", "-c"), ("parallel", "-np"), ("batchSize", "-b"),
            ("ubatchSize", "-ub"), ("threads", "-t"), ("nPredict", "-n")]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def server_args(spec: Spec, model: Model, *, log_format: str = "json") -> list[str]:
    """The server container's arguments (after the `kubellama-server` command)."""
    server = spec.get("server", {})
    gpu = spec.get("gpu", {})
    slots = spec.get("storage", {}).get("slots", {})
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
        if server.get(field) is not None:
            args += [flag, str(server[field])]
    if server.get("gpuLayers") is not None:
        args += ["-ngl", str(server["gpuLayers"])]
    elif uses_gpu(spec):
        args += ["-ngl", str(ALL_LAYERS)]
    if uses_gpu(spec):
        if gpu.get("mainGpu") is not None:
            args += ["-mg", str(gpu["mainGpu"])]
        if gpu.get("tensorSplit"):
            args += ["-ts", ",".join(_num(x) for x in gpu["tensorSplit"])]
    if server.get("embedding"):
        args.append("--embedding")
    if server.get("chatTemplate"):
        args += ["--chat-template", server["chatTemplate"]]
    if server.get("systemPrompt"):
        args += ["-spf", f"{CONFIG_DIR}/{SYSTEM_PROMPT_FILE}"]
    if server.get("metrics", True):
        args.append("--metrics")
    if slots.get("enabled"):
        args += ["--slot-save-path", SLOTS_DIR]
        if slots.get("restoreOnStart"):
            args.append("--slot-persist")
    if spec.get("apiKeySecretRef"):
        args += ["--api-key-file", f"{API_KEY_DIR}/{API_KEY_FILE}"]
    args += ["--shutdown-timeout", str(server.get("shutdownTimeoutSeconds", 30))]
    args += list(server.get("extraArgs") or [])
    return args
