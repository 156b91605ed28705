import json

import pytest

from bench import api
from bench.api import Sampling, build_body, parse_event, sse_data


def test_native_body_bans_eog_and_asks_for_exact_length():
    body = build_body(api.NATIVE, "Hi", 32, 7, Sampling(), [1, 106], system="Sys. ")
    assert body["prompt"] == "Sys. Hi"
    assert body["n_predict"] == 32 and body["ignore_eos"] is True and body["stream"] is True
    assert body["logit_bias"] == [[1, False], [106, False]]
    assert body["seed"] == 7 and body["temperature"] == Sampling().temperature


def test_openai_bodies_use_max_tokens_and_string_keyed_bias():
    chat = build_body(api.CHAT, "Hi", 16, 1, Sampling(), [1], system="S")
    assert chat["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    assert chat["max_tokens"] == 16 and chat["logit_bias"] == {"1": -100}
    assert chat["stream_options"] == {"include_usage": True}
    comp = build_body(api.COMPLETIONS, "Hi", 16, 1, Sampling(), [], cache_prompt=False)
    assert comp["prompt"] == "Hi" and comp["cache_prompt"] is False
    with pytest.raises(ValueError, match="unknown API flavour"):
        build_body("grpc", "Hi", 1, 1, Sampling(), [])


def test_parse_native_stream():
    ev = parse_event(api.NATIVE, json.dumps({"content": "Hel", "stop": False}))
    assert ev.text == "Hel" and not ev.done
    final = parse_event(api.NATIVE, json.dumps({"content": "", "stop": True, "tokens_predicted": 32,
                                                "tokens_evaluated": 9, "timings": {"predicted_n": 32}}))
    assert final.done and final.n_generated == 32 and final.n_prompt == 9


def test_parse_openai_stream_text_usage_and_done():
    ev = parse_event(api.CHAT, json.dumps({"choices": [{"delta": {"content": "lo"}}]}))
    assert ev.text == "lo"
    ev = parse_event(api.COMPLETIONS, json.dumps({"choices": [{"text": "x"}]}))
    assert ev.text == "x"
    usage = parse_event(api.CHAT, json.dumps({"choices": [], "usage": {"completion_tokens": 16,
                                                                       "prompt_tokens": 5}}))
    assert usage.n_generated == 16 and usage.n_prompt == 5 and usage.text == ""
    assert parse_event(api.CHAT, "[DONE]").done


def test_parse_errors_are_clear():
    with pytest.raises(ValueError, match="not JSON"):
        parse_event(api.CHAT, "{oops")
    with pytest.raises(ValueError, match="server error in stream: boom"):
        parse_event(api.NATIVE, json.dumps({"error": {"message": "boom"}}))


def test_sse_data():
    assert sse_data("data: {}") == "{}"
    assert sse_data("data:[DONE]") == "[DONE]"
    assert sse_data(": ping") is None and sse_data("event: x") is None
