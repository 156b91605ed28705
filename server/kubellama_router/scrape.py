"""Reads each replica's queue and running counts and its host-memory prompt cache from its Prometheus
/metrics, and its readiness and slot count from /health (a 503 there sets it aside while it loads).

Only a replica that cannot be reached (connection refused or reset) is set aside: one that is slow
to answer (a busy CPU) keeps its requests and its conversations, and its last figures stand;
the kubelet's readiness probe takes a replica that stays unresponsive out of the endpoints."""

from __future__ import annotations

import asyncio
import json
import logging
import math

import httpx

from kubellama_server.engine.prompt_cache import MAX_ENTRIES
from kubellama_server.promtext import read_samples

from .pool import Pool

log = logging.getLogger("kubellama.router")

QUEUED = "llamacpp:requests_deferred"
PROCESSING = "llamacpp:requests_processing"
RAM_ENTRIES = "kubellama_prompt_cache_entries"
RAM_BYTES = "kubellama_prompt_cache_bytes"
RAM_LIMIT = "kubellama_prompt_cache_limit_bytes"
#: Largest /metrics answer read (bytes).
MAX_METRICS_BYTES = 1_000_000
#: Largest /health answer read (bytes): a few counters; more is not a server's health.
MAX_HEALTH_BYTES = 65_536


def parse_metrics(page: str | bytes) -> tuple[float, float, int]:
    """(requests_deferred, requests_processing, `ram_prompts`) from a Prometheus text page; a gauge
    absent or not a finite number counts as absent (0), and all do on a malformed page."""
    samples = read_samples(page, (QUEUED, PROCESSING, RAM_ENTRIES, RAM_BYTES, RAM_LIMIT), limit=MAX_METRICS_BYTES)
    values = {s.name: float(s.value) for s in samples or () if math.isfinite(s.value)}
    return (values.get(QUEUED, 0.0), values.get(PROCESSING, 0.0),
            ram_prompts(values.get(RAM_ENTRIES), values.get(RAM_BYTES), values.get(RAM_LIMIT)))


def ram_prompts(entries: float | None, n_bytes: float | None, limit: float | None) -> int:
    """How many prompts a replica's host-memory prompt cache (kubellama-server's --cache-ram) keeps
    beyond its slots, from its `kubellama_prompt_cache_*` gauges; 0 without them (llama.cpp's
    llama-server, or --cache-ram 0: a prompt evicted from its slot is gone).

    The cache keeps at most MAX_ENTRIES prompts within `limit` bytes, dropping the oldest first:
    - no `limit` (--cache-ram -1): MAX_ENTRIES;
    - entries held: as many more as fit at their mean size, `entries x limit / bytes` (about
      `entries` when the bytes are near the limit, more when far below it), at most MAX_ENTRIES;
    - none held yet (no prompt has left a slot): MAX_ENTRIES, as the cache is empty, far below its
      limit; the first scrape after prompts are saved corrects it (prompts larger than the limit are
      never kept, and the estimate then stays high: a turn sent back to a replica that lost its
      conversation evaluates its history there, as it would anywhere else).
    A loaded prompt stays in the cache too, so this may count a slot's conversation twice (an
    overestimate of at most the slot count)."""
    if entries is None or entries < 0:
        return 0
    if limit is None:
        return MAX_ENTRIES
    if entries < 1 or not n_bytes or n_bytes <= 0:
        return MAX_ENTRIES if limit > 0 else 0
    return int(min(MAX_ENTRIES, max(entries, entries * limit // n_bytes)))


async def _get_capped(client: httpx.AsyncClient, url: str, timeout: float, limit: int) -> tuple[int, bytes]:
    """(status, body) of a GET; stops reading once the body passes `limit` bytes (the readers cut or refuse it)."""
    async with client.stream("GET", url, timeout=timeout) as resp:
        body = bytearray()
        async for chunk in resp.aiter_bytes():
            body += chunk
            if len(body) > limit:
                break
        return resp.status_code, bytes(body)


def parse_slots(body: bytes) -> int:
    """A kubellama-server's (or llama.cpp's) slot count from its /health answer; 0 when it says none, or
    when the answer is not a JSON object of at most MAX_HEALTH_BYTES."""
    if len(body) > MAX_HEALTH_BYTES:
        return 0
    try:
        health = json.loads(body)
        return max(0, int(health.get("slots_idle", 0)) + int(health.get("slots_processing", 0)))
    except (ValueError, TypeError, AttributeError):
        return 0


async def scrape_once(pool: Pool, client: httpx.AsyncClient, timeout: float = 2.0) -> None:
    async def one(url: str) -> None:
        try:
            (health_status, health), (metrics_status, metrics) = await asyncio.gather(
                _get_capped(client, url + "/health", timeout, MAX_HEALTH_BYTES),
                _get_capped(client, url + "/metrics", timeout, MAX_METRICS_BYTES))
        except (httpx.ReadTimeout, httpx.PoolTimeout, httpx.WriteTimeout):
            return  # busy, not gone
        except httpx.TransportError:
            pool.mark_down(url)
            return
        if health_status == 503:  # loading the model, or shutting down
            pool.mark_down(url)
            return
        pool.mark_up(url)
        rep = pool.replicas.get(url)
        if rep is None:
            return
        rep.slots = parse_slots(health)
        if metrics_status == 200:
            rep.queued, rep.processing, rep.ram = parse_metrics(metrics)

    await asyncio.gather(*(one(url) for url in list(pool.replicas)))
    pool.notify()


async def scrape_loop(pool: Pool, client: httpx.AsyncClient, interval: float) -> None:
    while True:
        try:
            await scrape_once(pool, client)
        except Exception:  # noqa: BLE001 - a bad page must not stop the loop
            log.exception("scraping replicas failed")
        await asyncio.sleep(interval)
