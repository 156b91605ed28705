"""GET/POST /lora-adapters: the loaded LoRA adapters (`--lora`) and their scales, changed at run time.

As today's llama.cpp: POST sets the scale of each listed adapter, and an adapter left out of
the list is switched off (scale 0). A change applies from the next scheduler step; cached
prompts were computed with the old scales, so no slot reuses them afterwards.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import invalid


def adapters_json(engine) -> list[dict[str, Any]]:
    ctx = engine.ctx
    return [{"id": i, "path": path, "scale": scale} for i, (path, scale) in enumerate(zip(ctx.lora_paths, ctx.lora_scales))]


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
    """On the scheduler thread: set the scales; every slot's cached KV is now stale."""
    sched.ctx.set_lora_scales(scales)
    for slot in sched.slots:
        if slot.is_processing:
            slot.stale = True  # cleared when it takes its next task
        else:
            sched.ctx.seq_rm(slot.id, 0, -1)
            slot.cache_tokens = []
    return {"success": True}
