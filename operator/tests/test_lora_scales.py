"""Replicas agree on their LoRA scales: the pure comparison, the condition and event, and the scrape of real servers."""

from __future__ import annotations

import asyncio

import httpx

from kubellama_operator.lora_scales import (MAX_METRICS_BYTES, drifted, expected_scales, parse_scales, scales_condition,
                                            scales_event, scrape_scales)
from kubellama_operator.spec import parse, resolve_model
from kubellama_server.testing.live import LiveServer
from kubellama_server.testing.tiny_gguf import build_tiny_gguf, build_tiny_lora

URL = "https://models.test/gemma.gguf"
SPEC = {"model": {"url": URL, "loras": [{"url": "https://models.test/a.gguf"},
                                         {"url": "https://models.test/b.gguf", "scale": 0.5}]}}


def test_expected_scales_follow_the_spec_in_order_unset_is_one():
    spec = parse(SPEC)
    assert expected_scales(resolve_model(spec)) == (1.0, 0.5)
    assert spec.checks_lora_scales
    assert not parse({**SPEC, "server": {"metrics": False}}).checks_lora_scales, "metrics off: nothing to read"
    assert not parse({"model": {"url": URL}}).checks_lora_scales


def test_parse_scales_reads_the_gauge_by_adapter_id():
    text = ('# HELP kubellama_lora_adapter_scale x\n# TYPE kubellama_lora_adapter_scale gauge\n'
            'kubellama_lora_adapter_scale{adapter="1"} 0.5\nkubellama_lora_adapter_scale{adapter="0"} 1.0\n'
            'llamacpp:n_decode_total 3.0\n')
    assert parse_scales(text) == (1.0, 0.5)
    assert parse_scales("llamacpp:n_decode_total 3.0\n") is None, "no gauge: an older server, or no adapters"
    assert parse_scales('kubellama_lora_adapter_scale{adapter="1"} 0.5\n') is None, "ids must run from 0"
    assert parse_scales('kubellama_lora_adapter_scale{adapter="x"} 0.5\n') is None
    assert parse_scales('kubellama_lora_adapter_scale 0.5\n') is None, "no adapter label"


def test_parse_scales_of_a_malformed_or_huge_page_is_none_or_the_whole_lines():
    good = 'kubellama_lora_adapter_scale{adapter="0"} 0.25\n'
    assert parse_scales(good + 'kubellama_lora_adapter_scale{adapter="1"} one\n') is None
    assert parse_scales(good + "llamacpp:n_decode_total{broken 3\n") is None, "a malformed page is not trusted"
    assert parse_scales(good.encode()) == (0.25,), "the body's bytes"
    filler = "# " + "x" * 100 + "\n"
    cut = good + filler * (MAX_METRICS_BYTES // len(filler)) + 'kubellama_lora_adapter_scale{adapter="1"} 1.0\n'
    assert parse_scales(cut.encode()) == (0.25,), "read up to the last whole line within the cap"


def test_drifted_lists_the_pods_whose_scales_differ():
    observed = {"s-0": (1.0, 0.5), "s-1": (1.0, 2.0), "s-2": None, "s-3": (1.0,)}
    assert drifted((1.0, 0.5), observed) == {"s-1": (1.0, 2.0), "s-3": (1.0,)}
    assert drifted((1.0, 0.5), {"s-0": (1.0, 0.5000000001)}) == {}


def test_condition_names_the_drifted_pods_and_their_scales():
    ok, reason, message = scales_condition((1.0, 0.5), {"s-0": (1.0, 0.5), "s-1": (0.0, 2.0)})
    assert (ok, reason) == (False, "ScalesDiffer")
    assert "s-1 [0, 2]" in message and "[1, 0.5]" in message and "1 of 2" in message and "s-0" not in message
    many = {f"s-{i}": (0.0, 0.0) for i in range(8)}
    assert "and 3 more" in scales_condition((1.0, 0.5), many)[2]
    assert scales_condition((1.0, 0.5), {"s-0": (1.0, 0.5), "s-1": None}) == (
        True, "ScalesAgree", "the ready pod runs the spec's LoRA scales [1, 0.5]; could not read s-1")
    assert scales_condition((1.0,), {"s-0": None})[:2] == (None, "NotScraped")
    assert scales_condition((1.0,), {})[:2] == (None, "NotScraped")


def _status(state, message="m"):
    return {"conditions": [{"type": "Available", "status": "True"},
                           {"type": "LoraScalesAgree", "status": state, "message": message}]}


def test_event_when_drift_appears_changes_or_ends():
    assert scales_event(_status("True"), _status("False", "s-1 [0]")) == ("Warning", "LoraScalesDiffer", "s-1 [0]")
    assert scales_event({}, _status("False", "s-1 [0]"))[1] == "LoraScalesDiffer"
    assert scales_event(_status("False", "s-1 [0]"), _status("False", "s-1 [0]")) is None, "no repeats"
    assert scales_event(_status("False", "s-1 [0]"), _status("False", "s-2 [0]"))[1] == "LoraScalesDiffer"
    assert scales_event(_status("False"), _status("True", "ok")) == ("Normal", "LoraScalesAgree", "ok")
    assert scales_event(_status("True"), _status("True")) is None
    assert scales_event(_status("Unknown"), _status("True")) is None


def _pod(name, ip, ready=True):
    return {"metadata": {"name": name}, "status": {"podIP": ip, "containerStatuses": [
        {"name": "server", "ready": ready, "state": {"running": {}}}]}}


def test_scrape_reads_real_servers_and_sees_a_post(tmp_path):
    """The scrape against two real servers (loopback): one changed by POST /lora-adapters drifts."""
    model = build_tiny_gguf(tmp_path / "tiny.gguf")
    a, b = build_tiny_lora(tmp_path / "a.gguf"), build_tiny_lora(tmp_path / "b.gguf", seed=7)
    args = ["-m", str(model), "-t", "1", "-np", "1", "--metrics", "--lora", str(a), "--lora-scaled", str(b), "0.5"]
    one, two = LiveServer(args).start(), LiveServer(args).start()
    try:
        assert httpx.post(two.url + "/lora-adapters", json=[{"id": 0, "scale": 1.0}, {"id": 1, "scale": 2.0}]).status_code == 200
        pods = [_pod("s-0", "127.0.0.1"), _pod("s-9", "127.0.0.1", ready=False)]
        assert asyncio.run(scrape_scales(pods, port=one.port)) == {"s-0": (1.0, 0.5)}, "only Ready pods are read"
        observed = {"s-0": asyncio.run(scrape_scales(pods[:1], port=one.port))["s-0"],
                    "s-1": asyncio.run(scrape_scales(pods[:1], port=two.port))["s-0"]}  # one port per test server
        assert scales_condition((1.0, 0.5), observed)[:2] == (False, "ScalesDiffer")
        assert "s-1 [1, 2]" in scales_condition((1.0, 0.5), observed)[2]
    finally:
        one.stop()
        two.stop()
    # A server that is gone answers nothing: unreadable, not drifted, and quickly.
    assert asyncio.run(scrape_scales([_pod("s-0", "127.0.0.1")], port=one.port, timeout=1)) == {"s-0": None}



def test_scrape_reads_a_long_page_to_its_end_within_the_cap():
    """A page sent in many chunks is read to its end (aiohttp's read(n) returns the first), not beyond 1 MiB."""
    from aiohttp import web

    filler = "# " + "x" * 98 + "\n"
    gauge = 'kubellama_lora_adapter_scale{adapter="0"} 0.5\n'
    serving = {}

    async def metrics(req):
        resp = web.StreamResponse()
        await resp.prepare(req)
        for i in range(0, len(serving["page"]), 8192):
            await resp.write(serving["page"][i:i + 8192])
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    async def scrape(page: str):
        serving["page"] = page.encode()
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            return (await scrape_scales([_pod("s-0", "127.0.0.1")], port=runner.addresses[0][1]))["s-0"]
        finally:
            await runner.cleanup()

    assert asyncio.run(scrape(filler * 5000 + gauge)) == (0.5,)
    assert asyncio.run(scrape(filler * 11_000 + gauge)) is None, "past the cap: not read"
