"""Reads each replica's queue and running counts from its Prometheus /metrics, and its readiness and
slot count from /health (a 503 there sets it aside while it loads).

Only a replica that cannot be reached (connection refused or reset) is set aside: one that is slow
to answer (a busy CPU) keeps its requests and its conversations, and its last figures stand;
the kubelet's readiness probe takes a replica that stays unresponsive out of the endpoints."""

from __future__ import annotations

import asyncio
import logging

import httpx

from .pool import Pool

log = logging.getLogger("kubellama.router")

QUEUED = "llamacpp:requests_deferred"
PROCESSING = "llamacpp:requests_processing"


def parse_load(text: str) -> tuple[float, float]:
    """(requests_deferred, requests_processing) from a Prometheus text page (0 when absent)."""
    values = {QUEUED: 0.0, PROCESSING: 0.0}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, rest = line.partition(" ")
        name = name.split("{", 1)[0]
        if name in values:
            try:
                values[name] = float(rest.split()[0])
            except (ValueError, IndexError):
                pass
    return values[QUEUED], values[PROCESSING]


def parse_slots(resp: httpx.Response) -> int:
    """A kubellama-server's (or llama.cpp's) slot count from its /health answer; 0 when it says none."""
    try:
        body = resp.json()
        return max(0, int(body.get("slots_idle", 0)) + int(body.get("slots_processing", 0)))
    except (ValueError, TypeError, AttributeError):
        return 0


async def scrape_once(pool: Pool, client: httpx.AsyncClient, timeout: float = 2.0) -> None:
    async def one(url: str) -> None:
        try:
            health, metrics = await asyncio.gather(client.get(url + "/health", timeout=timeout),
                                                   client.get(url + "/metrics", timeout=timeout))
        except (httpx.ReadTimeout, httpx.PoolTimeout, httpx.WriteTimeout):
            return  # busy, not gone
        except httpx.TransportError:
            pool.mark_down(url)
            return
        if health.status_code == 503:  # loading the model, or shutting down
            pool.mark_down(url)
            return
        pool.mark_up(url)
        rep = pool.replicas.get(url)
        if rep is None:
            return
        rep.slots = parse_slots(health)
        if metrics.status_code == 200:
            rep.queued, rep.processing = parse_load(metrics.text[:1_000_000])

    await asyncio.gather(*(one(url) for url in list(pool.replicas)))
    pool.notify()


async def scrape_loop(pool: Pool, client: httpx.AsyncClient, interval: float) -> None:
    while True:
        try:
            await scrape_once(pool, client)
        except Exception:  # noqa: BLE001 - a bad page must not stop the loop
            log.exception("scraping replicas failed")
        await asyncio.sleep(interval)
