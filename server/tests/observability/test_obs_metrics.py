"""GET /metrics: names, HELP/TYPE, and values that move by exactly what the test did."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubellama_server.observability.metrics import DURATION_BUCKETS, ITL_BUCKETS, QUEUE_BUCKETS, TTFT_BUCKETS
from kubellama_server.promtext import read_samples

LLAMACPP = [
    "llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total", "llamacpp:prompt_tokens_seconds",
    "llamacpp:predicted_tokens_seconds", "llamacpp:kv_cache_usage_ratio", "llamacpp:kv_cache_tokens",
    "llamacpp:requests_processing", "llamacpp:requests_deferred", "llamacpp:prompt_seconds_total",
    "llamacpp:tokens_predicted_seconds_total", "llamacpp:n_decode_total", "llamacpp:n_busy_slots_per_decode",
    "llamacpp:prompt_tokens_cached_total",
]
HISTOGRAMS = {
    "kubellama_time_to_first_token_seconds": TTFT_BUCKETS,
    "kubellama_inter_token_latency_seconds": ITL_BUCKETS,
    "kubellama_request_duration_seconds": DURATION_BUCKETS,
    "kubellama_queue_wait_seconds": QUEUE_BUCKETS,
}


def scrape(url: str) -> dict[tuple, float]:
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200, r.text
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))), 0.0)


def delta(after: dict, before: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def complete(url: str, **body) -> dict:
    r = httpx.post(url + "/completion", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def srv(live_server):
    return live_server("-np", "2", "-c", "2048", "--metrics", "--slot-save-path", "/nonexistent-kubellama-test/slots")


def test_metrics_disabled_is_501_with_the_reference_message(live_server):
    s = live_server()
    r = httpx.get(s.url + "/metrics")
    assert r.status_code == 501
    assert r.json() == {"error": {"code": 501, "message": "This server does not support metrics endpoint.", "type": "not_supported_error"}}


def test_every_contract_name_has_help_and_type(srv):
    r = httpx.get(srv.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    assert abs(int(r.headers["Process-Start-Time-Unix"]) - time.time()) < 120
    text = r.text
    for name in LLAMACPP:
        kind = "counter" if name.endswith("_total") else "gauge"
        assert f"# HELP {name} " in text and f"# TYPE {name} {kind}\n" in text, name
    for name, buckets in HISTOGRAMS.items():
        assert f"# TYPE {name} histogram\n" in text
        les = [sample.labels["le"] for sample in read_samples(text, (name + "_bucket",))]
        assert les == [repr(float(b)) for b in buckets] + ["+Inf"], (name, les)
    for name in ("kubellama_requests_total", "kubellama_slot_saves_total", "kubellama_slot_restores_total", "kubellama_cancellations_total"):
        assert f"# TYPE {name.removesuffix('_total')} counter\n" in text or f"# TYPE {name} counter\n" in text, name


def test_counters_move_by_exactly_what_was_done(srv):
    url = srv.url
    before = scrape(url)
    results = [
        complete(url, prompt="one two three four", n_predict=5, ignore_eos=True),
        complete(url, prompt="the llama server counts tokens", n_predict=7, ignore_eos=True),
        complete(url, prompt=[1, 5, 9, 12, 40, 41], n_predict=3, ignore_eos=True),
    ]
    # a cache hit: same prompt, same slot, cache_prompt
    results.append(complete(url, prompt="the llama server counts tokens", n_predict=2, ignore_eos=True, cache_prompt=True, id_slot=results[1]["id_slot"]))
    assert results[-1]["tokens_cached"] > 0
    bad = httpx.post(url + "/completion", json={"prompt": "x", "n_predict": "many"})
    assert bad.status_code == 400
    after = scrape(url)

    evaluated = sum(r["tokens_evaluated"] - r["tokens_cached"] for r in results)
    cached = sum(r["tokens_cached"] for r in results)
    predicted = sum(r["tokens_predicted"] for r in results)
    assert predicted == 5 + 7 + 3 + 2
    assert delta(after, before, "llamacpp:prompt_tokens_total") == evaluated
    assert delta(after, before, "llamacpp:prompt_tokens_cached_total") == cached
    assert delta(after, before, "llamacpp:tokens_predicted_total") == predicted
    assert delta(after, before, "llamacpp:prompt_seconds_total") == pytest.approx(sum(r["timings"]["prompt_ms"] for r in results) / 1e3, rel=1e-3, abs=1e-4)
    assert delta(after, before, "llamacpp:tokens_predicted_seconds_total") > 0
    # one decode per generated token but the last (sampled, never decoded) and one per prompt: no batching here
    assert delta(after, before, "llamacpp:n_decode_total") == sum(1 + r["tokens_predicted"] - 1 for r in results)
    assert value(after, "llamacpp:n_busy_slots_per_decode") == pytest.approx(1.0)
    assert value(after, "llamacpp:requests_processing") == 0 and value(after, "llamacpp:requests_deferred") == 0
    assert value(after, "llamacpp:prompt_tokens_seconds") > 0 and value(after, "llamacpp:predicted_tokens_seconds") > 0

    assert delta(after, before, "kubellama_requests_total", endpoint="/completion", status=200) == 4
    assert delta(after, before, "kubellama_requests_total", endpoint="/completion", status=400) == 1
    for name in ("kubellama_time_to_first_token_seconds", "kubellama_request_duration_seconds", "kubellama_queue_wait_seconds"):
        assert delta(after, before, name + "_count") == 4, name
        assert delta(after, before, name + "_bucket", le="+Inf") == 4, name
    assert delta(after, before, "kubellama_inter_token_latency_seconds_count") == predicted - len(results)
    ttft_sum = delta(after, before, "kubellama_time_to_first_token_seconds_sum")
    assert 0 < ttft_sum < 5

    # kv cache gauges: the slots' cached tokens over the whole context
    slots = httpx.get(url + "/slots").json()
    n_past = sum(s["n_past"] for s in slots)
    assert value(after, "llamacpp:kv_cache_tokens") == n_past > 0
    assert value(after, "llamacpp:kv_cache_usage_ratio") == pytest.approx(n_past / 2048)


def test_throughput_gauges_cover_the_time_since_the_last_scrape(srv):
    complete(srv.url, prompt="hello", n_predict=4, ignore_eos=True)
    first = scrape(srv.url)
    assert value(first, "llamacpp:predicted_tokens_seconds") > 0
    second = scrape(srv.url)  # nothing happened in between
    assert value(second, "llamacpp:predicted_tokens_seconds") == 0 and value(second, "llamacpp:prompt_tokens_seconds") == 0
    assert value(second, "llamacpp:tokens_predicted_total") == value(first, "llamacpp:tokens_predicted_total")


HOLD = 0.3


def test_processing_and_deferred_gauges(live_server):
    s = live_server("-np", "1", "-c", "512", "--metrics", "-n", "100000", "--context-shift")  # runs until cancelled
    body = {"prompt": "go", "n_predict": 100000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", s.url + "/completion", json=body, timeout=30) as r:
        lines = r.iter_lines()
        next(lines)
        waiting = threading.Thread(target=lambda: httpx.post(s.url + "/completion", json={"prompt": "later", "n_predict": 2}, timeout=30))
        waiting.start()
        deadline = time.monotonic() + 5
        while value(m := scrape(s.url), "llamacpp:requests_deferred") != 1:
            assert time.monotonic() < deadline, m
            time.sleep(0.01)
        assert value(m, "llamacpp:requests_processing") == 1
        assert value(m, "llamacpp:kv_cache_tokens") > 1
        time.sleep(HOLD)  # the deferred request is queued; keep its slot busy for a known time
    waiting.join(10)
    deadline = time.monotonic() + 5
    while value(m := scrape(s.url), "kubellama_cancellations_total") != 1:
        assert time.monotonic() < deadline, m
        time.sleep(0.01)
    assert value(m, "llamacpp:requests_deferred") == 0 and value(m, "llamacpp:requests_processing") == 0
    assert value(m, "kubellama_queue_wait_seconds_count") == 2
    # the deferred request was queued before the hold and assigned only after the stream closed
    assert value(m, "kubellama_queue_wait_seconds_sum") >= HOLD


def test_slot_action_counters(live_server, tmp_path):
    s = live_server("-np", "1", "-c", "512", "--metrics", "--slot-save-path", str(tmp_path))
    complete(s.url, prompt="cache me", n_predict=2)
    url = s.url + "/slots/0?action="
    assert httpx.post(url + "save", json={"filename": "a.bin"}).status_code == 200
    assert httpx.post(url + "save", json={"filename": "../a.bin"}).status_code == 400
    assert httpx.post(url + "restore", json={"filename": "a.bin"}).status_code == 200
    assert httpx.post(url + "restore", json={"filename": "missing.bin"}).status_code == 404
    assert httpx.post(url + "restore", json={"filename": "a.bin"}).status_code == 200
    m = scrape(s.url)
    assert value(m, "kubellama_slot_saves_total", result="ok") == 1
    assert value(m, "kubellama_slot_saves_total", result="invalid") == 1
    assert value(m, "kubellama_slot_restores_total", result="ok") == 2
    assert value(m, "kubellama_slot_restores_total", result="not_found") == 1
    assert value(m, "kubellama_requests_total", endpoint="/slots/{id_slot}", status=200) == 3
    assert value(m, "kubellama_requests_total", endpoint="/slots/{id_slot}", status=404) == 1


def test_probes_and_scrapes_are_not_counted_and_paths_are_route_templates(srv):
    for _ in range(3):
        httpx.get(srv.url + "/health")
    httpx.get(srv.url + "/no/such/path/123")
    httpx.get(srv.url + "/no/such/path/456")
    m = scrape(srv.url)
    counted = {dict(labels)["endpoint"]: v for (name, labels), v in m.items() if name == "kubellama_requests_total"}
    assert "/health" not in counted and "/metrics" not in counted
    # raw paths never become label values (bounded cardinality): a route template or "other"
    assert not any(e.startswith("/no/such") for e in counted), counted
    not_found = sum(v for (name, labels), v in m.items() if name == "kubellama_requests_total" and dict(labels)["status"] == "404")
    assert not_found == 2, counted


def test_embeddings_count_prompt_tokens(live_server):
    s = live_server("-np", "1", "-c", "512", "--metrics", "--embedding")
    r = httpx.post(s.url + "/embedding", json={"content": "count these tokens please"})
    if r.status_code == 404:
        pytest.skip("no /embedding route in this build yet")
    assert r.status_code == 200, r.text
    tokens = httpx.post(s.url + "/tokenize", json={"content": "count these tokens please", "add_special": True}).json()["tokens"]
    m = scrape(s.url)
    assert value(m, "llamacpp:prompt_tokens_total") == len(tokens)
    assert value(m, "kubellama_request_duration_seconds_count") == 1


def test_rejected_api_keys_are_counted(live_server):
    s = live_server("--metrics", "--api-key", "sekret")
    assert httpx.post(s.url + "/completion", json={"prompt": "x", "n_predict": 1}).status_code == 401
    r = httpx.get(s.url + "/metrics", headers={"Authorization": "Bearer sekret"})
    assert r.status_code == 200
    m = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(r.text) for s in f.samples}
    assert value(m, "kubellama_requests_total", endpoint="other", status=401) == 1


def test_metrics_answer_while_the_model_loads(tiny_model):
    from kubellama_server.testing.live import LiveServer, wait_healthy

    release = threading.Event()

    def slow_resolve(settings):
        release.wait(20)
        return str(tiny_model)

    srv = LiveServer(["-m", str(tiny_model), "-t", "1", "--metrics"], wait=False,
                     prepare=lambda engine: setattr(engine, "resolve_model", slow_resolve)).start()
    try:
        assert httpx.get(srv.url + "/health").status_code == 503
        m = scrape(srv.url)  # scrapes keep working: the pod is not "down" while it loads
        assert value(m, "llamacpp:requests_processing") == 0 and value(m, "llamacpp:kv_cache_tokens") == 0
        assert httpx.get(srv.url + "/slots").status_code == 503
        release.set()
        wait_healthy(srv.url)
        assert scrape(srv.url)
    finally:
        release.set()
        srv.stop()
