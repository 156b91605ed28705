"""Replicas agree on their LoRA scales: the pure comparison, the condition and event, and the scrape of real servers."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from kubellama_operator.lora_scales import (drifted, expected_scales, parse_scales, scales_condition, scales_event,
                                            scrape_scales, wants_check)
from kubellama_operator.spec import parse, resolve_model
from kubellama_server.testing.live import LiveServer
from kubellama_server.testing.tiny_gguf import build_tiny_gguf, build_tiny_lora

URL = "https://models.test/gemma.gguf"
SPEC = {"model": {"url": URL, "loras": [{"url": "https://models.test/a.gguf"},
                                         {"url": "https://models.test/b.gguf", "scale": 0.5}]}}


def test_expected_scales_follow_the_spec_in_order_unset_is_one():
    spec = parse(SPEC)
    assert expected_scales(resolve_model(spec)) == (1.0, 0.5)
    assert wants_check(spec)
    assert not wants_check(parse({**SPEC, "server": {"metrics": False}})), "metrics off: nothing to read"
    assert not wants_check(parse({"model": {"url": URL}}))


def test_parse_scales_reads_the_gauge_by_adapter_id():
    text = ('# HELP kubellama_lora_adapter_scale x\n# TYPE kubellama_lora_adapter_scale gauge\n'
            'kubellama_lora_adapter_scale{adapter="1"} 0.5\nkubellama_lora_adapter_scale{adapter="0"} 1.0\n'
            'llamacpp:n_decode_total 3.0\n')
    assert parse_scales(text) == (1.0, 0.5)
    assert parse_scales("llamacpp:n_decode_total 3.0\n") is None, "no gauge: an older server, or no adapters"
    assert parse_scales('kubellama_lora_adapter_scale{adapter="1"} 0.5\n') is None, "ids must run from 0"
    assert parse_scales('kubellama_lora_adapter_scale{adapter="x"} 0.5\n') is None


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
