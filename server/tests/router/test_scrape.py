"""The scraper sets aside a replica it cannot reach, not one that is slow to answer (real HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from kubellama_router import strategies
from kubellama_router.pool import Pool
from kubellama_router.scrape import MAX_HEALTH_BYTES, parse_metrics, parse_slots, ram_prompts, scrape_once
from kubellama_server.engine.prompt_cache import MAX_ENTRIES, MIB, Entry, PromptCache
from kubellama_server.observability.metrics import PromptCacheCollector
from kubellama_server.testing.wait import free_port


def cache_page(limit: int | None, n_entries: int, entry_bytes: int = MIB) -> bytes:
    """A kubellama-server's /metrics lines for a --cache-ram store holding `n_entries` prompts of
    about `entry_bytes` each (its own collector and store; no model)."""
    cache = PromptCache(limit)
    for i in range(n_entries):
        tokens = np.full(4, i, dtype=np.int32)  # distinct prompts: none a prefix of another
        assert cache.add(Entry(tokens, (), bytes(entry_bytes - tokens.nbytes))) is not None
    registry = CollectorRegistry()
    registry.register(PromptCacheCollector(SimpleNamespace(scheduler=SimpleNamespace(prompt_cache=cache))))
    return b"llamacpp:requests_processing 1\n" + generate_latest(registry)

@pytest.mark.asyncio
async def test_a_slow_replica_stays_and_an_unreachable_one_is_set_aside():
    async def slow(_req):
        await asyncio.sleep(1.0)
        return web.json_response({"status": "ok", "slots_idle": 2, "slots_processing": 0})

    app = web.Application()
    app.router.add_get("/health", slow)
    app.router.add_get("/metrics", slow)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with serving(app) as busy:
        pool = Pool(strategies.make("prefix", seed=0), down_seconds=30)
        pool.set_replicas([busy, closed])
        pool.replicas[busy].processing = 3.0
        async with httpx.AsyncClient() as client:
            await scrape_once(pool, client, timeout=0.2)
        assert [r.url for r in pool.ready()] == [busy]
        assert pool.replicas[busy].processing == 3.0  # the last figures stand


@contextlib.asynccontextmanager
async def serving(app: web.Application):
    """`app` on a loopback port; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def fake_replicas(pages: dict[str, str | bytes], slots_idle: int, slots_processing: int):
    """Replicas `http://127.0.0.1:PORT/<name>` on loopback: /health reports the slots, /metrics
    serves `pages[name]`."""
    async def health(_req):
        return web.json_response({"status": "ok", "slots_idle": slots_idle, "slots_processing": slots_processing})

    async def metrics(req):
        page = pages[req.match_info["page"]]
        return web.Response(body=page.encode() if isinstance(page, str) else page, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/{page}/health", health)
    app.router.add_get("/{page}/metrics", metrics)
    async with serving(app) as base:
        yield base


@pytest.mark.asyncio
async def test_load_is_read_from_a_page_of_any_size_and_zero_when_malformed():
    pages = {"ok": "# TYPE llamacpp:requests_deferred gauge\nllamacpp:requests_deferred 4\n"
                   "llamacpp:requests_processing{slot=\"all\"} 2\n",
             # past the 1 MB cap: read up to its last whole line within it
             "huge": "llamacpp:requests_deferred 3\n" + "# filler\n" * 200_000 + "llamacpp:requests_processing 9\n",
             "bad": "llamacpp:requests_deferred 4\nllamacpp:requests_processing two\n"}

    async with fake_replicas(pages, 1, 1) as base:
        pool = Pool(strategies.make("least-load", seed=0), down_seconds=30)
        pool.set_replicas([f"{base}/{name}" for name in pages])
        for rep in pool.replicas.values():
            rep.queued = rep.processing = 7.0
        async with httpx.AsyncClient() as client:
            await scrape_once(pool, client)
    loads = {url.rsplit("/", 1)[1]: (rep.queued, rep.processing, rep.slots) for url, rep in pool.replicas.items()}
    assert loads == {"ok": (4.0, 2.0, 2), "huge": (3.0, 0.0, 2), "bad": (0.0, 0.0, 2)}


def test_parse_metrics_reads_the_llamacpp_load_gauges():
    def parse_load(page):
        return parse_metrics(page)[:2]

    assert parse_load(b"llamacpp:requests_processing 2\nllamacpp:requests_deferred 1\n") == (1.0, 2.0)
    assert parse_load("llamacpp:n_decode_total 5\n") == (0.0, 0.0), "absent"
    assert parse_load("llamacpp:requests_deferred NaN\nllamacpp:requests_processing +Inf\n") == (0.0, 0.0)
    assert parse_load("llamacpp:requests_deferred 1\nllamacpp:requests_processing{ 2\n") == (0.0, 0.0), "malformed"


def test_ram_prompts_estimates_what_a_prompt_cache_keeps_beyond_the_slots():
    assert ram_prompts(None, None, None) == 0, "no --cache-ram (or llama.cpp's llama-server)"
    assert ram_prompts(3, 3 * MIB, None) == MAX_ENTRIES, "--cache-ram -1: bounded by entries only"
    assert ram_prompts(0, 0, 8192 * MIB) == MAX_ENTRIES, "empty: far below its bound"
    assert ram_prompts(10, 10 * MIB, 10 * MIB) == 10, "full: what it holds"
    assert ram_prompts(10, 10 * MIB, 40 * MIB) == 40, "a quarter full: four times as many at that size"
    assert ram_prompts(10, 10 * MIB, 8192 * MIB) == MAX_ENTRIES
    assert ram_prompts(0, 0, 0) == 0


def test_the_prompt_cache_gauges_are_read_from_a_kubellama_server_page():
    assert parse_metrics(cache_page(8 * MIB, 8)) == (0.0, 1.0, 8)  # full
    assert parse_metrics(cache_page(16 * MIB, 4)) == (0.0, 1.0, 16)
    assert parse_metrics(cache_page(None, 2))[2] == MAX_ENTRIES
    assert parse_metrics(b"llamacpp:requests_processing 1\n") == (0.0, 1.0, 0), "--cache-ram 0: no gauges"
    assert parse_metrics(cache_page(8 * MIB, 8) + b"kubellama_prompt_cache_entries{ 2\n")[2] == 0, "malformed"


@pytest.mark.asyncio
async def test_scrape_reads_each_replicas_prompt_cache_into_its_candidate():
    pages = {"full": cache_page(4 * MIB, 4), "none": b"llamacpp:requests_processing 0\n"}

    async with fake_replicas(pages, 2, 0) as base:
        pool = Pool(strategies.make("prefix", seed=0), down_seconds=30)
        pool.set_replicas([f"{base}/{name}" for name in pages])
        async with httpx.AsyncClient() as client:
            await scrape_once(pool, client)
    got = {url.rsplit("/", 1)[1]: (rep.candidate().slots, rep.candidate().ram) for url, rep in pool.replicas.items()}
    assert got == {"full": (2, 4), "none": (2, 0)}


@pytest.mark.asyncio
async def test_health_is_read_up_to_its_cap_and_an_oversized_or_odd_answer_counts_no_slots():
    bodies = {"ok": b'{"status": "ok", "slots_idle": 3, "slots_processing": 1}',
              # a JSON object past MAX_HEALTH_BYTES: not read to its end, no slots counted
              "huge": b'{"slots_idle": 3, "slots_processing": 1, "pad": "' + b"x" * (4 * MAX_HEALTH_BYTES) + b'"}',
              "odd": b'["not", "an", "object"]'}

    async def health(req):
        return web.Response(body=bodies[req.match_info["page"]], content_type="application/json")

    async def metrics(_req):
        return web.Response(text="llamacpp:requests_processing 1\n")

    app = web.Application()
    app.router.add_get("/{page}/health", health)
    app.router.add_get("/{page}/metrics", metrics)
    async with serving(app) as base:
        pool = Pool(strategies.make("least-load", seed=0), down_seconds=30)
        pool.set_replicas([f"{base}/{name}" for name in bodies])
        async with httpx.AsyncClient() as client:
            await scrape_once(pool, client)
    got = {url.rsplit("/", 1)[1]: (rep.slots, rep.processing) for url, rep in pool.replicas.items()}
    assert got == {"ok": (4, 1.0), "huge": (0, 1.0), "odd": (0, 1.0)}
    assert len(pool.ready()) == 3, "an odd /health answer with status 200 is still up"
    assert parse_slots(bodies["ok"]) == 4 and parse_slots(b"not json") == 0
