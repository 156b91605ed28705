"""GET/POST /lora-adapters: the loaded LoRA adapters (`--lora`) and their scales, changed at run time.

As today's llama.cpp: POST sets the scale of each listed adapter, and an adapter left out of
the list is switched off (scale 0). These are the scales of requests that do not name their
own (`lora` in a request); a running request keeps its scales. Every slot's cache records
the scales it was computed with and is only reused by a request with the same ones.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import invalid


def adapters_json(engine) -> list[dict[str, Any]]:
    paths, scales = engine.ctx.lora_paths, engine.scheduler.lora_default
    return [{"id": i, "path": path, "scale": scale} for i, (path, scale) in enumerate(zip(paths, scales))]


def parse_scales(engine, body: Any) -> list[float]:
    """The new scale of every adapter from a POST body `[{"id": N, "scale": S}, ...]`."""
    n = len(engine.ctx.lora_paths)
    if not isinstance(body, list):
        raise invalid("the body must be an array of {\"id\": adapter id, \"scale\": number} objects")
    scales = [0.0] * n
    for k, item in enumerate(body):
        if not isinstance(item, dict):
            raise invalid(f"item {k} must be an object with 'id' and 'scale'")
        i, scale = item.get("id"), item.get("scale")
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            raise invalid(f"item {k}: 'id' must be the id of a loaded adapter (0..{n - 1}; GET /lora-adapters lists them)"
                          if n else "this server has no LoRA adapters: start it with --lora FILE")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise invalid(f"item {k}: 'scale' must be a finite number")
        scales[i] = float(scale)
    return scales


def apply_scales(sched, scales: list[float]) -> dict[str, bool]:
    """On the scheduler thread: the scales of requests launched from now on."""
    sched.lora_default = tuple(scales)
    return {"success": True}
