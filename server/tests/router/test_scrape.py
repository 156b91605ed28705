"""The scraper sets aside a replica it cannot reach, not one that is slow to answer (real HTTP)."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from aiohttp import web

from kubellama_router import strategies
from kubellama_router.pool import Pool
from kubellama_router.scrape import scrape_once

pytestmark = pytest.mark.asyncio


async def test_a_slow_replica_stays_and_an_unreachable_one_is_set_aside():
    async def slow(_req):
        await asyncio.sleep(1.0)
        return web.json_response({"status": "ok", "slots_idle": 2, "slots_processing": 0})

    app = web.Application()
    app.router.add_get("/health", slow)
    app.router.add_get("/metrics", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    busy = f"http://127.0.0.1:{runner.addresses[0][1]}"
    pool = Pool(strategies.make("prefix", seed=0), down_seconds=30)
    pool.set_replicas([busy, closed])
    pool.replicas[busy].processing = 3.0
    try:
        async with httpx.AsyncClient() as client:
            await scrape_once(pool, client, timeout=0.2)
        assert [r.url for r in pool.ready()] == [busy]
        assert pool.replicas[busy].processing == 3.0  # the last figures stand
    finally:
        await runner.cleanup()
