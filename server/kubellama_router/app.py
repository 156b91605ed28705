"""The router's ASGI app: /health, /metrics and /router/replicas of its own; every other path
is proxied to a replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import strategies
from .metrics import RouterMetrics
from .pool import Pool
from .proxy import Proxy
from .scrape import scrape_loop
from .settings import RouterSettings

log = logging.getLogger("kubellama.router")

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


def create_app(settings: RouterSettings, *, kube=None) -> Starlette:
    """`kube`: a Kubernetes client to use instead of logging in (tests)."""
    strategy = strategies.make(settings.strategy, load_factor=settings.load_factor,
                               block_chars=settings.block_chars, index_capacity=settings.index_blocks,
                               seed=settings.seed)
    pool = Pool(strategy, max_inflight=settings.max_inflight, max_queue=settings.max_queue,
                queue_timeout=settings.queue_timeout)
    metrics = RouterMetrics(pool, settings.strategy)
    state: dict = {"kube": kube}

    async def health(_req: Request) -> Response:
        return JSONResponse({"status": "ok", "strategy": settings.strategy, "ready_replicas": len(pool.ready()),
                             "queued": pool.waiting})

    async def prometheus(_req: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def replicas(_req: Request) -> Response:
        ready = {r.url for r in pool.ready()}
        return JSONResponse({"strategy": settings.strategy, "replicas": [
            {"url": r.url, "ready": r.url in ready, "inflight": r.inflight, "served": r.served,
             "queued": r.queued, "processing": r.processing, "slots": r.slots,
             "ram_prompts": r.ram} for r in pool.replicas.values()]})

    async def forward(req: Request) -> Response:
        return await state["proxy"].handle(req)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        timeout = httpx.Timeout(connect=settings.connect_timeout, read=settings.read_timeout, write=60.0, pool=None)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            state["proxy"] = Proxy(pool, client, metrics, max_body=settings.max_body, retries=settings.retries,
                                   session_header=settings.session_header)
            tasks = []
            kube = state["kube"]
            if kube is None and (settings.endpoints_service or settings.autoscale):
                from kubellama_operator.kube import KubeClient

                from .endpoints import login
                kube = KubeClient(login)
            if settings.replicas:
                pool.set_replicas(settings.replicas)
            if settings.endpoints_service:
                from .endpoints import watch_endpoints
                tasks.append(asyncio.create_task(watch_endpoints(
                    pool, settings.endpoints_namespace, settings.endpoints_service, settings.endpoints_port,
                    client=kube)))
            tasks.append(asyncio.create_task(scrape_loop(pool, client, settings.scrape_interval)))
            if settings.autoscale:
                from .autoscale import Policy, scale_loop

                policy = Policy(settings.min_replicas, settings.max_replicas, settings.target_requests,
                                settings.autoscale_window, settings.scale_down_delay)
                tasks.append(asyncio.create_task(scale_loop(pool, kube, settings.endpoints_namespace,
                                                            settings.autoscale, policy,
                                                            on_scale=metrics.scaled.set)))
            try:
                yield
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if kube is not None:
                    await kube.close()

    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/router/replicas", replicas, methods=["GET"]),
        Route("/{path:path}", forward, methods=METHODS),
    ], lifespan=lifespan)
    app.state.pool = pool
    app.state.metrics = metrics
    return app
