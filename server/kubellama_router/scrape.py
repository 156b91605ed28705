"""Reads each replica's queue and running counts from its Prometheus /metrics."""

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


async def scrape_once(pool: Pool, client: httpx.AsyncClient) -> None:
    async def one(url: str) -> None:
        try:
            r = await client.get(url + "/metrics", timeout=2.0)
        except httpx.TransportError:
            pool.mark_down(url)
            return
        pool.mark_up(url)
        rep = pool.replicas.get(url)
        if r.status_code == 200 and rep is not None:
            rep.queued, rep.processing = parse_load(r.text[:1_000_000])

    await asyncio.gather(*(one(url) for url in list(pool.replicas)))
    pool.notify()


async def scrape_loop(pool: Pool, client: httpx.AsyncClient, interval: float) -> None:
    while True:
        try:
            await scrape_once(pool, client)
        except Exception:  # noqa: BLE001 - a bad page must not stop the loop
            log.exception("scraping replicas failed")
        await asyncio.sleep(interval)
