"""OpenTelemetry spans: in-memory exporter in process; the OTLP exporter from OTEL_* env in a subprocess."""

from __future__ import annotations

import http.server
import threading
import time

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from kubellama_server.observability.tracing import exporter_from_env
from kubellama_server.testing.live import ServerProcess

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def traced(live_server):
    srv = live_server("-np", "2", "-c", "1024")
    exporter = InMemorySpanExporter()
    srv.app.state.tracing.enable(SimpleSpanProcessor(exporter))
    srv.exporter = exporter
    return srv


def spans_by_name(exporter: InMemorySpanExporter) -> dict:
    out: dict = {}
    for s in exporter.get_finished_spans():
        out.setdefault(s.name, []).append(s)
    return out


def wait_spans(exporter: InMemorySpanExporter, n: int, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while len(exporter.get_finished_spans()) < n:
        assert time.monotonic() < deadline, [s.name for s in exporter.get_finished_spans()]
        time.sleep(0.01)
    return exporter.get_finished_spans()


def test_off_by_default(live_server):
    srv = live_server()
    assert srv.app.state.tracing.enabled is False
    assert httpx.post(srv.url + "/completion", json={"prompt": "hi", "n_predict": 2}).status_code == 200


def test_request_span_with_phase_children_and_attributes(traced):
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    body = {"prompt": "the llama server traces requests", "n_predict": 6, "ignore_eos": True}
    res = httpx.post(traced.url + "/completion", json=body, headers=headers).json()
    wait_spans(traced.exporter, 4)
    by = spans_by_name(traced.exporter)
    (req,) = by["POST /completion"]
    assert req.kind == SpanKind.SERVER
    # the caller's W3C trace context is honoured
    assert format(req.context.trace_id, "032x") == TRACE_ID
    assert format(req.parent.span_id, "016x") == PARENT_ID and req.parent.is_remote
    a = req.attributes
    assert a["http.route"] == "/completion" and a["http.response.status_code"] == 200
    assert a["kubellama.slot_id"] == res["id_slot"]
    assert a["kubellama.tokens.prompt"] == res["tokens_evaluated"]
    assert a["kubellama.tokens.cached"] == res["tokens_cached"] == 0
    assert a["kubellama.tokens.generated"] == res["tokens_predicted"] == 6
    assert a["kubellama.finish_reason"] == "length"
    assert a["gen_ai.usage.input_tokens"] == res["tokens_evaluated"] and a["gen_ai.usage.output_tokens"] == 6
    (queue,), (prompt,), (gen,) = by["queue wait"], by["prompt processing"], by["generation"]
    for child in (queue, prompt, gen):
        assert child.parent.span_id == req.context.span_id and child.context.trace_id == req.context.trace_id
        assert child.attributes["kubellama.slot_id"] == res["id_slot"]
        assert req.start_time <= child.start_time <= child.end_time <= req.end_time
    # the phases follow each other
    assert queue.end_time == prompt.start_time and prompt.end_time == gen.start_time
    assert prompt.attributes["kubellama.tokens.prompt"] == res["tokens_evaluated"]
    assert gen.attributes["kubellama.tokens.generated"] == 6
    prompt_ms = (prompt.end_time - prompt.start_time) / 1e6
    assert prompt_ms == pytest.approx(res["timings"]["prompt_ms"], abs=0.5)


def test_streaming_request_span_ends_after_the_stream(traced):
    body = {"prompt": "stream me", "n_predict": 5, "ignore_eos": True, "stream": True, "cache_prompt": True}
    with httpx.stream("POST", traced.url + "/completion", json=body) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert len(events) >= 2
    wait_spans(traced.exporter, 4)
    (req,) = spans_by_name(traced.exporter)["POST /completion"]
    assert req.attributes["kubellama.tokens.generated"] == 5
    assert format(req.context.trace_id, "032x") != TRACE_ID  # a new trace without a traceparent
    assert req.parent is None


def test_cached_tokens_and_error_status(traced):
    body = {"prompt": "a prompt that will be cached for the second call", "n_predict": 2, "cache_prompt": True, "id_slot": 0}
    httpx.post(traced.url + "/completion", json=body)
    second = httpx.post(traced.url + "/completion", json=body).json()
    assert httpx.post(traced.url + "/completion", json={"prompt": "x", "temperature": "hot"}).status_code == 400
    spans = wait_spans(traced.exporter, 9)
    reqs = [s for s in spans if s.name == "POST /completion"]
    assert reqs[1].attributes["kubellama.tokens.cached"] == second["tokens_cached"] > 0
    assert reqs[2].attributes["http.response.status_code"] == 400 and "kubellama.slot_id" not in reqs[2].attributes


@pytest.mark.parametrize("env,want", [
    ({}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, "otlp"),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
    ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, None),
])
def test_switched_on_by_the_standard_env_vars(env, want):
    assert exporter_from_env(env) == want


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        type(self).received.append((self.path, req))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_otlp_export_from_env_to_a_real_collector(tiny_model, tmp_path):
    """OTEL_EXPORTER_OTLP_ENDPOINT makes a real kubellama-server send OTLP/HTTP protobuf spans."""
    _Collector.received = []
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}",
        "OTEL_SERVICE_NAME": "kubellama-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    srv = ServerProcess(["-m", str(tiny_model), "-t", "1"], env=env).start(log_path=tmp_path / "server.log")
    try:
        headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        assert httpx.post(srv.url + "/completion", json={"prompt": "hello", "n_predict": 3}, headers=headers).status_code == 200
        deadline = time.monotonic() + 10
        names: dict = {}
        while "POST /completion" not in names:
            assert time.monotonic() < deadline, (names, srv.log())
            time.sleep(0.05)
            for path, req in list(_Collector.received):
                assert path == "/v1/traces"
                for rs in req.resource_spans:
                    service = {a.key: a.value.string_value for a in rs.resource.attributes}["service.name"]
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            names[span.name] = (service, span.trace_id.hex())
    finally:
        srv.stop()
        collector.shutdown()
    assert names["POST /completion"] == ("kubellama-test", TRACE_ID)
    assert {"queue wait", "prompt processing", "generation"} <= set(names)
