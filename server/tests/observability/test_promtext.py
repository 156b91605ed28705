"""The one /metrics reader (kubellama_server.promtext): samples by name with their labels, and never an
exception for a malformed or oversized page."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kubellama_server.promtext import read_samples

PAGE = """# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 5
# TYPE kubellama_lora_adapter_scale gauge
kubellama_lora_adapter_scale{adapter="0"} 1.0
kubellama_lora_adapter_scale{adapter="1",note="a \\"quoted\\", b"} 0.5
"""


def _values(samples):
    return [(s.name, s.labels, s.value) for s in samples]


def test_names_with_colons_and_labels_come_back_in_page_order():
    assert _values(read_samples(PAGE, ("llamacpp:requests_deferred", "llamacpp:requests_processing"))) == [
        ("llamacpp:requests_processing", {}, 2), ("llamacpp:requests_deferred", {}, 5)]
    assert _values(read_samples(PAGE.encode(), ["kubellama_lora_adapter_scale"])) == [
        ("kubellama_lora_adapter_scale", {"adapter": "0"}, 1.0),
        ("kubellama_lora_adapter_scale", {"adapter": "1", "note": 'a "quoted", b'}, 0.5)]
    assert read_samples(PAGE, "llamacpp:requests_deferred")[0].value == 5, "one name as a str"


def test_a_missing_metric_is_no_samples_and_a_malformed_page_is_none():
    assert read_samples(PAGE, ("llamacpp:kv_cache_usage_ratio",)) == []
    assert read_samples("", ("x",)) == []
    for bad in ("llamacpp:requests_deferred five\n", 'x{a="1" 2\n', "x{a=1} 2\n", "1x 2\n", "x 1 2 3 _\n",
                "# TYPE x\n"):
        assert read_samples(PAGE + bad, ("llamacpp:requests_deferred",)) is None, bad


def test_series_names_of_counters_and_histograms_as_prometheus_client_writes_them():
    registry = CollectorRegistry()
    Counter("kubellama_requests", "r", ["endpoint"], registry=registry).labels("/v1/chat/completions").inc(3)
    Histogram("kubellama_image_seconds", "i", registry=registry, buckets=(1.0,)).observe(0.5)
    Gauge("llamacpp:requests_deferred", "d", registry=registry).set(4)
    page = generate_latest(registry)
    assert _values(read_samples(page, ("kubellama_requests_total", "llamacpp:requests_deferred"))) == [
        ("kubellama_requests_total", {"endpoint": "/v1/chat/completions"}, 3.0), ("llamacpp:requests_deferred", {}, 4.0)]
    count, total = read_samples(page, ("kubellama_image_seconds_count", "kubellama_image_seconds_sum"))
    assert (count.value, total.value) == (1.0, 0.5)


def test_a_page_over_the_limit_is_read_up_to_its_last_whole_line():
    page = "a 1\nb 2\nc 3\n"
    assert _values(read_samples(page, ("a", "b", "c"), limit=9)) == [("a", {}, 1), ("b", {}, 2)], "c is cut mid-line"
    assert _values(read_samples(page.encode(), ("a", "b", "c"), limit=8)) == [("a", {}, 1), ("b", {}, 2)]
    assert read_samples(page, ("a", "b", "c"), limit=3) == [], "no whole line within the limit"
    assert len(read_samples(page * 1000, ("a", "b", "c"), limit=None)) == 3000
    assert len(read_samples(page * 100_000, ("a", "b", "c"))) == (1 << 20) // 4, "1 MiB by default"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*'ab:_{}=",# \t\n1.e-+\\', "TYPE", "HELP", "NaN", "Inf", "counter", "le"]),
                max_size=40).map("".join))
def test_no_page_raises(text):
    out = read_samples(PAGE + text, ("llamacpp:requests_deferred", "a", "b"))
    assert out is None or isinstance(out, list)
