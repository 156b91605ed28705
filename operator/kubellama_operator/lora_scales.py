"""Replicas agree on their LoRA scales: `POST /lora-adapters` changes one pod only, so the status pass scrapes
each Ready server pod's `kubellama_lora_adapter_scale` gauges (`/metrics`, `spec.server.metrics`) and reports
the pods whose default scales differ from `spec.model.loras[].scale` (condition `LoraScalesAgree`).

The comparison and the condition are pure functions; `scrape_scales` is the thin I/O.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from kubellama_server.promtext import MAX_PAGE_BYTES, read_samples

from .spec import SERVER_PORT, Model
from .status import pod_view

CONDITION = "LoraScalesAgree"
GAUGE = "kubellama_lora_adapter_scale"
#: Seconds one pod's /metrics may take: the status pass must not wait on a stuck server.
SCRAPE_TIMEOUT = 2.0
#: Largest /metrics answer read (bytes).
MAX_METRICS_BYTES = MAX_PAGE_BYTES
#: Pods named in the condition's message (the rest are counted).
MAX_LISTED = 5


def expected_scales(model: Model) -> tuple[float, ...]:
    """The spec's scales, in adapter-id order (unset is 1.0)."""
    return tuple(float(lora.scale) for lora in model.loras)


def parse_scales(page: str | bytes) -> tuple[float, ...] | None:
    """The adapters' scales (by id) from a /metrics page; None when the gauge is missing or malformed, its ids do
    not run 0..n-1, or the page is malformed."""
    found: dict[int, float] = {}
    for sample in read_samples(page, (GAUGE,), limit=MAX_METRICS_BYTES) or ():
        try:
            found[int(sample.labels["adapter"])] = float(sample.value)
        except (KeyError, ValueError):
            return None
    if not found or sorted(found) != list(range(len(found))):
        return None
    return tuple(found[i] for i in range(len(found)))


def drifted(expected: Sequence[float], observed: Mapping[str, Sequence[float] | None]) -> dict[str, tuple[float, ...]]:
    """The pods whose scales differ from `expected` (pod -> its scales); unreadable pods (None) are left out."""
    out = {}
    for pod, scales in sorted(observed.items()):
        if scales is None:
            continue
        if len(scales) != len(expected) or not all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(scales, expected)):
            out[pod] = tuple(scales)
    return out


def _fmt(scales: Sequence[float]) -> str:
    return "[" + ", ".join(f"{s:g}" for s in scales) + "]"


def scales_condition(expected: Sequence[float], observed: Mapping[str, Sequence[float] | None]) -> tuple[bool | None, str, str]:
    """(ok, reason, message) of the LoraScalesAgree condition."""
    drift = drifted(expected, observed)
    read = [pod for pod, s in observed.items() if s is not None]
    unread = sorted(pod for pod, s in observed.items() if s is None)
    if drift:
        listed = [f"{pod} {_fmt(s)}" for pod, s in list(drift.items())[:MAX_LISTED]]
        more = f" and {len(drift) - MAX_LISTED} more" if len(drift) > MAX_LISTED else ""
        return False, "ScalesDiffer", (f"{len(drift)} of {len(observed)} ready pods run other LoRA scales than the "
                                       f"spec's {_fmt(expected)}: {', '.join(listed)}{more} (POST /lora-adapters "
                                       "changed them, or restart the pod)")
    if not read:
        return None, "NotScraped", ("could not read the LoRA scales of any ready pod (/metrics)" if unread
                                    else "no ready pod to compare")
    message = (f"{len(read)} ready pods run" if len(read) > 1 else "the ready pod runs") + \
        f" the spec's LoRA scales {_fmt(expected)}"
    if unread:
        message += f"; could not read {', '.join(unread[:MAX_LISTED])}"
    return True, "ScalesAgree", message


def _ready_ips(pods: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Ready pods (as the status counts them) with an IP: pod name -> IP."""
    return {pod["metadata"]["name"]: ip for pod in pods
            if (ip := (pod.get("status") or {}).get("podIP")) and pod_view(pod).stage == "Ready"}


async def _scrape(session: aiohttp.ClientSession, ip: str, port: int) -> tuple[float, ...] | None:
    host = f"[{ip}]" if ":" in ip else ip
    try:
        async with session.get(f"http://{host}:{port}/metrics") as r:
            if r.status != 200:
                return None
            body = bytearray()
            async for chunk in r.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > MAX_METRICS_BYTES:  # parse_scales reads up to the last whole line within
                    break
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return None
    return parse_scales(bytes(body))


async def scrape_scales(pods: Sequence[dict[str, Any]], *, port: int | None = None,
                        timeout: float = SCRAPE_TIMEOUT) -> dict[str, tuple[float, ...] | None]:
    """Each Ready pod's scales (pod name -> scales, None when unreadable), scraped in parallel."""
    ips = _ready_ips(pods)
    if not ips:
        return {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        results = await asyncio.gather(*(_scrape(session, ip, port or SERVER_PORT) for ip in ips.values()))
    return dict(zip(ips, results))


def _find(status: Mapping[str, Any] | None, type_: str = CONDITION) -> dict[str, Any]:
    return next((c for c in (status or {}).get("conditions") or [] if c.get("type") == type_), {})


def scales_event(previous: Mapping[str, Any] | None, status: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """The Event (type, reason, message) for a change of LoraScalesAgree: drift found or changed, or gone."""
    old, new = _find(previous), _find(status)
    if new.get("status") == "False" and (old.get("status"), old.get("message")) != ("False", new.get("message")):
        return "Warning", "LoraScalesDiffer", new.get("message", "")
    if new.get("status") == "True" and old.get("status") == "False":
        return "Normal", "LoraScalesAgree", new.get("message", "")
    return None
