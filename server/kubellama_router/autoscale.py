"""Queue-driven autoscaling of the replicas, decided by the router (which sees every request).

`Autoscaler` is the policy, pure (time is passed in): replicas = ceil(moving average of active
requests (in flight + queued) / target), within [min, max]; a request waiting while no replica
exists scales to one at once (scale from zero: the request is held in the queue meanwhile);
scaling up is immediate, scaling down waits until the lower count has held for the delay.
`scale_loop` applies it to a LlamaServer through its scale subresource.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from .pool import Pool

log = logging.getLogger("kubellama.router")


@dataclass(frozen=True)
class Policy:
    min_replicas: int = 0
    max_replicas: int = 3
    target: float = 4.0  # active requests per replica
    window: float = 60.0  # seconds averaged
    scale_down_delay: float = 120.0


class Autoscaler:
    def __init__(self, policy: Policy):
        self.policy = policy
        self.samples: deque[tuple[float, float]] = deque()
        self.lower_since: float | None = None

    def observe(self, now: float, active: float) -> None:
        self.samples.append((now, active))
        while self.samples and self.samples[0][0] < now - self.policy.window:
            self.samples.popleft()

    def average(self) -> float:
        return sum(a for _, a in self.samples) / len(self.samples) if self.samples else 0.0

    def desired(self, now: float, current: int, waiting: int) -> int:
        p = self.policy
        want = math.ceil(self.average() / p.target - 1e-9) if p.target > 0 else p.max_replicas
        if waiting > 0:
            want = max(want, 1)  # someone is held in the queue: at least one replica
        want = max(p.min_replicas, min(p.max_replicas, want))
        if want >= current:
            self.lower_since = None
            return want
        if self.lower_since is None:
            self.lower_since = now
        if now - self.lower_since >= p.scale_down_delay:
            self.lower_since = None
            return want
        return current


def scale_path(namespace: str, name: str) -> str:
    return f"/apis/kubellama.dev/v1alpha1/namespaces/{namespace}/llamaservers/{name}/scale"


async def _replicas(client: Any, path: str) -> int:
    return int(((await client.request("GET", path)).get("spec") or {}).get("replicas") or 0)


async def scale_loop(pool: Pool, client: Any, namespace: str, name: str, policy: Policy,
                     interval: float = 1.0, on_scale=None) -> None:
    """Sample the pool every `interval` and set the LlamaServer's replicas when the policy says so.

    `client` is the operator's `KubeClient`; the router's Role allows get/patch on this
    LlamaServer's `scale` subresource only."""
    loop = asyncio.get_running_loop()
    auto = Autoscaler(policy)
    path = scale_path(namespace, name)
    current: int | None = None
    while True:
        try:
            if current is None:
                current = await _replicas(client, path)
            now = loop.time()
            auto.observe(now, sum(r.inflight for r in pool.replicas.values()) + pool.waiting)
            want = auto.desired(now, current, pool.waiting)
            if want != current:  # someone else (kubectl scale) may have changed it: read again first
                fresh = await _replicas(client, path)
                if fresh != current:
                    current = fresh
                    want = auto.desired(now, current, pool.waiting)
            if want != current:
                log.info("scaling %s/%s from %d to %d replicas (%.1f active on average)", namespace, name,
                         current, want, auto.average())
                await client.request("PATCH", path, body={"spec": {"replicas": want}},
                                     content_type="application/merge-patch+json")
                current = want
                if on_scale is not None:
                    on_scale(want)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep trying; read the count again
            log.warning("autoscaling %s/%s: %s", namespace, name, exc)
            current = None
        await asyncio.sleep(interval)
