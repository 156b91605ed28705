"""OpenTelemetry tracing: one span per HTTP request, children for the engine's phases.

Off by default. The standard environment variables switch it on:

- `OTEL_TRACES_EXPORTER=otlp` (or `console`), or any of `OTEL_EXPORTER_OTLP_ENDPOINT` /
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set (the OTLP/HTTP exporter reads its usual
  `OTEL_EXPORTER_OTLP_*` settings: endpoint, headers, timeout);
- `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` keep it off;
- `OTEL_SERVICE_NAME` (default `kubellama-server`), `OTEL_RESOURCE_ATTRIBUTES`,
  `OTEL_TRACES_SAMPLER[_ARG]` as usual.

A W3C `traceparent` (and `tracestate`) header from the caller makes the request span
its child. Spans: `<METHOD> <route>` (kind SERVER) with, per engine result,
`queue wait` (received -> slot assigned), `prompt processing` (slot assigned -> prompt
evaluated) and `generation` (-> last token). Attributes: `kubellama.slot_id`,
`kubellama.tokens.prompt`, `kubellama.tokens.cached`, `kubellama.tokens.generated`,
`kubellama.finish_reason`, and the `gen_ai.usage.*` / `gen_ai.response.finish_reasons`
semantic-convention equivalents.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .record import RequestRecord

log = logging.getLogger("kubellama.tracing")

DEFAULT_SERVICE = "kubellama-server"
_PROPAGATOR = TraceContextTextMapPropagator()


def exporter_from_env(environ: Mapping[str, str]) -> str | None:
    """'otlp', 'console' or None (tracing off), from the standard OTEL_* variables."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if names:
        if "none" in names:
            return None
        if "otlp" in names:
            return "otlp"
        if "console" in names:
            return "console"
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported (use otlp or console): tracing stays off", ",".join(names))
        return None
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return None


class Tracing:
    """A per-app tracer; `tracer` is None while tracing is off."""

    def __init__(self) -> None:
        self.provider: TracerProvider | None = None
        self.tracer: trace.Tracer | None = None

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def enable(self, processor: SpanProcessor, environ: Mapping[str, str] | None = None) -> None:
        """Turn tracing on with `processor` (tests: a SimpleSpanProcessor(InMemorySpanExporter()))."""
        env = os.environ if environ is None else environ
        attrs = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": DEFAULT_SERVICE}
        self.provider = TracerProvider(resource=Resource.create(attrs))
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("kubellama_server")

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()

    # -- per request -------------------------------------------------------------
    def start(self, scope: dict) -> tuple[Any, Any]:
        """Start the request span (the caller's traceparent honoured); returns (span, token)."""
        if self.tracer is None:
            return None, None
        carrier = {}
        for k, v in scope.get("headers") or ():
            name = k.decode("latin-1").lower()
            if name in ("traceparent", "tracestate"):
                carrier[name] = v.decode("latin-1")
        parent = _PROPAGATOR.extract(carrier)
        method = scope.get("method", "")
        span = self.tracer.start_span(
            f"{method} {scope.get('path', '')}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope.get("path", "")},
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span, token

    def end(self, span: Any, token: Any, rec: RequestRecord) -> None:
        if span is None:
            return
        try:
            if rec.endpoint:
                span.update_name(f"{rec.method} {rec.endpoint}")
                span.set_attribute("http.route", rec.endpoint)
            span.set_attribute("http.response.status_code", rec.status)
            if rec.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            if rec.results:
                slots = rec.slots
                span.set_attribute("kubellama.slot_id", slots[0] if len(slots) == 1 else slots)
                totals = rec.totals()
                span.set_attribute("kubellama.tokens.prompt", totals["tokens_prompt"])
                span.set_attribute("kubellama.tokens.cached", totals["tokens_cached"])
                span.set_attribute("kubellama.tokens.generated", totals["tokens_predicted"])
                span.set_attribute("gen_ai.usage.input_tokens", totals["tokens_prompt"])
                span.set_attribute("gen_ai.usage.output_tokens", totals["tokens_predicted"])
                reasons = [r.finish_reason for r in rec.results if r.finish_reason]
                if reasons:
                    span.set_attribute("kubellama.finish_reason", reasons[0] if len(reasons) == 1 else ",".join(reasons))
                    span.set_attribute("gen_ai.response.finish_reasons", reasons)
                self._children(span, rec)
        finally:
            span.end()
            if token is not None:
                otel_context.detach(token)

    def _children(self, span: Any, rec: RequestRecord) -> None:
        ctx = trace.set_span_in_context(span)
        for r in rec.results:
            if not (r.t_created_ns and r.t_start_ns and r.t_end_ns):
                continue
            common = {"kubellama.slot_id": r.slot}
            phases = [
                ("queue wait", r.t_created_ns, r.t_start_ns, {}),
                ("prompt processing", r.t_start_ns, r.t_prompt_done_ns or r.t_end_ns,
                 {"kubellama.tokens.prompt": r.n_prompt, "kubellama.tokens.cached": r.n_cached}),
                ("generation", r.t_prompt_done_ns or r.t_end_ns, r.t_end_ns,
                 {"kubellama.tokens.generated": r.n_predicted, "kubellama.finish_reason": r.finish_reason}),
            ]
            for name, t0, t1, attrs in phases:
                child = self.tracer.start_span(name, context=ctx, start_time=t0, attributes={**common, **attrs})
                child.end(end_time=max(t0, t1))


def tracing_from_env(environ: Mapping[str, str] | None = None) -> Tracing:
    env = os.environ if environ is None else environ
    tracing = Tracing()
    kind = exporter_from_env(env)
    if kind == "otlp":
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
        if protocol != "http/protobuf":
            log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported: spans are sent as OTLP http/protobuf "
                        "(point the endpoint at the collector's HTTP port, usually 4318)", protocol)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracing.enable(BatchSpanProcessor(OTLPSpanExporter()), env)
        log.info("tracing on: OTLP/HTTP to %s", env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318")
    elif kind == "console":
        tracing.enable(BatchSpanProcessor(ConsoleSpanExporter()), env)
    return tracing
