"""The operator's own HTTP endpoints: `/healthz` and `/readyz` on the health port, `/metrics` on the
metrics port (both may be the same port).

`/healthz` (liveness) answers 200 while the event loop runs and kopf has not stopped; `/readyz`
answers 200 once kopf has started its watches, 503 before.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from . import metrics


def make_app(*, alive: Callable[[], bool], ready: Callable[[], bool], health: bool = True,
             serve_metrics: bool = True) -> web.Application:
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        ok = alive()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "operator stopped\n")

    async def readyz(_: web.Request) -> web.Response:
        ok = ready()
        return web.Response(status=200 if ok else 503, text="ready\n" if ok else "starting\n")

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    if health:
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
    if serve_metrics:
        app.router.add_get("/metrics", metrics_view)
    return app


async def start(host: str, health_port: int, metrics_port: int, *, alive: Callable[[], bool],
                ready: Callable[[], bool]) -> list[web.AppRunner]:
    """Start the endpoint servers; returns runners to `cleanup()` on shutdown."""
    runners = []
    if health_port == metrics_port:
        apps = [(make_app(alive=alive, ready=ready), health_port)]
    else:
        apps = [(make_app(alive=alive, ready=ready, serve_metrics=False), health_port),
                (make_app(alive=alive, ready=ready, health=False), metrics_port)]
    for app, port in apps:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
    return runners
