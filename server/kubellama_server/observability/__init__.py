"""Metrics, tracing and request logs for the HTTP server.

`install_observability(app, settings, engine)` wires them into an app: the metrics
(`app.state.metrics`, also a StatsListener of the engine), the tracer
(`app.state.tracing`, off unless OTEL_* says otherwise) and the request logger, all
driven by one ASGI middleware.
"""

from __future__ import annotations

from .metrics import ServerMetrics, install_metrics
from .middleware import ObservabilityMiddleware
from .record import on_result
from .request_log import RequestLogger
from .tracing import Tracing, tracing_from_env

__all__ = ["install_observability", "ServerMetrics", "Tracing"]


def install_observability(app, settings, engine) -> ServerMetrics:
    metrics = install_metrics(engine)
    tracing = tracing_from_env()
    request_log = RequestLogger(settings.log_format, verbose=settings.verbose, disabled=settings.log_disable)
    if on_result not in engine.on_result:
        engine.on_result.append(on_result)
    app.state.metrics = metrics
    app.state.tracing = tracing
    app.state.request_log = request_log
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, tracing=tracing, request_log=request_log)
    engine.on_shutdown.append(lambda _engine: tracing.shutdown())
    return metrics
